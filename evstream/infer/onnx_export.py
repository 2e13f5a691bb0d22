"""A student network -> an ONNX model that carries its evstream model config.

    data = export_onnx(model, config, example)      # bytes of a serialised ONNX ModelProto
    diff = check_onnx(data, model, example)         # max |onnxruntime - torch| on the example
    config = read_onnx_config("exp/model.onnx")     # the config back, from the .onnx alone

What the file holds:
- The network alone (evstream.nn: DeepLabv3+ or classifier), eval mode, fp32, one input "x"
  (N, C, h, w) as the network sees it (after the config's input geometry: crop, resize, padding)
  and one output "logits": (N, K, h, w) for segmentation, (N, K) for classification. The
  geometry and the post-processing (argmax, softmax, top-k) stay outside the graph, in the
  code that runs it (evstream.infer.onnx_backend reuses the torch Predictor's).
- Dynamic batch, height and width: both networks are fully convolutional up to a global mean
  (ASPP's image pooling, the classifier's pooling), and the bilinear upsampling takes its size
  from the input, so any size the backbone's strides allow runs (tested at other sizes).
- metadata_props (strings; JSON where structured), so a deployment needs nothing but the file:
      evstream_format          "evstream-onnx"        evstream_format_version  "1"
      evstream_config          the whole model config (what model.pt carries)
      evstream_representation  config["representation"] (name, bins, normalisation)
      evstream_geometry        config["input"] (crop, resize, pad_multiple, height, width)
      evstream_window          config["window"]       evstream_task   "segmentation" | ...
      evstream_exporter        "torchscript" | "dynamo"
  onnxruntime reads them as `session.get_modelmeta().custom_metadata_map`.
- Opset 18: the opset the new exporter (dynamo) builds its graphs in (another one would go
  through onnxscript's version converter), read by onnxruntime >= 1.14 (pyproject asks for
  1.18); the networks need nothing newer (Conv, Relu, Add, Concat, Resize, ReduceMean, Gemm).

Which exporter. torch 2.13 has two: the TorchScript-based one (dynamo=False, deprecated: it
warns) and the torch.export-based one (dynamo=True, the default since torch 2.9). Both export
the shipped students correctly (DeepLabv3+ with ASPP pooling and bilinear upsampling, and the
classifier), with dynamic batch and spatial dims, agree with torch to ~1e-5, and give graphs of
equal speed in onnxruntime (5.1 vs 5.2 ms a forward of evdistill-r18q-seg, 1 thread). They differ in
export time: on this 2-core machine the TorchScript exporter takes 1.5 s for a shipped student
and the dynamo exporter 13-25 s (torch.export 9 s, decompositions 8 s, translation 7 s), and 31 s
even for a "tiny" DeepLabv3+. The worker exports a checkpoint on the fly when asked to run it in
onnxruntime, so the default is "torchscript" (its deprecation warning is silenced here and
only here, as commands/export.py does for torch.jit.trace); "dynamo" stays available
(`evstream export --onnx-exporter dynamo`, tested) for the day torch drops the old one.
The dynamo exporter specialises a batch of 1 (torch.export's 0/1 specialisation), so it traces
a batch of 2.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import warnings
from pathlib import Path

from evstream.errors import EvstreamError

log = logging.getLogger("evstream.infer")

FORMAT = "evstream-onnx"
FORMAT_VERSION = 1
OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
INPUT_NAME, OUTPUT_NAME = "x", "logits"
# |onnxruntime - torch| allowed on the logits: fp32 with another summation order (MLAS vs
# oneDNN convolutions) differs by ~1e-5 on the shipped students' logits (magnitudes ~10); a
# wrong graph differs by far more
TOLERANCE = 1e-4


def example_input(config: dict):
    """The trace input: one seeded window (1, C, h, w) at the padded size the network sees for
    the config's input geometry on its own sensor size (346x260 where it says none)."""
    import torch

    from evstream.nn.geometry import network_input_hw

    inp = config.get("input") or {}
    h, w = inp.get("height") or 260, inp.get("width") or 346
    hw = network_input_hw({**inp, "crop": None, "resize": None}, (h, w))
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, config["in_channels"], *hw, generator=gen)


def onnx_metadata(config: dict, exporter: str) -> dict[str, str]:
    return {"evstream_format": FORMAT, "evstream_format_version": str(FORMAT_VERSION),
            "evstream_config": json.dumps(config),
            "evstream_representation": json.dumps(config.get("representation") or {}),
            "evstream_geometry": json.dumps(config.get("input") or {}),
            "evstream_window": json.dumps(config.get("window") or {}),
            "evstream_task": str(config.get("task", "")),
            "evstream_exporter": exporter}


def _export_torchscript(model, example, task: str, opset: int) -> bytes:
    import torch

    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = axes if task == "segmentation" else {0: "batch"}
    # an older torch (pyproject allows 2.4) may take no `dynamo` argument: it exports this way
    which = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters \
        else {}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the exporter's own deprecation warnings (torch 2.13: "legacy TorchScript-based ONNX
        # export", and "The feature will be removed" from its logging set-up)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), buf, **which, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset,
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes})
    return buf.getvalue()


def _export_dynamo(model, example, opset: int) -> bytes:
    import torch

    batch2 = torch.cat([example, example.flip(-1)])       # see the module comment
    auto = torch.export.Dim.AUTO
    quiet = logging.getLogger("torch.onnx")               # "torchvision is not installed" x4
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prog = torch.onnx.export(model, (batch2,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], opset_version=opset,
                                     dynamic_shapes={"x": {0: auto, 2: auto, 3: auto}},
                                     verbose=False, optimize=True)
    finally:
        quiet.setLevel(level)
    return prog.model_proto.SerializeToString()


def export_onnx(model, config: dict, example, exporter: str = DEFAULT_EXPORTER,
                opset: int = OPSET) -> bytes:
    """The serialised ONNX model (see the module comment) of `model` (eval mode), traced on
    `example` (1, C, h, w), with `config` in its metadata."""
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise EvstreamError(f"--onnx-exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    model = model.eval()
    with torch.no_grad():
        try:
            data = (_export_dynamo(model, example, opset) if exporter == "dynamo"
                    else _export_torchscript(model, example, config.get("task", ""), opset))
        except Exception as e:  # noqa: BLE001 - an exporter's failure, said in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EvstreamError(f"ONNX export ({exporter}) of model {config.get('name')!r} "
                                f"failed: {type(e).__name__}: {first[:200]}") from None
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in onnx_metadata(config, exporter).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"evstream {config.get('task')} network {config.get('name')!r}: input "
                        f"{INPUT_NAME} (N, {config.get('in_channels')}, h, w) after the input "
                        f"geometry in metadata evstream_geometry, output {OUTPUT_NAME}")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_session(source, threads: int = 1, providers=("CPUExecutionProvider",),
                 provider_options=None):
    """An onnxruntime InferenceSession on a path or the bytes of a model; threads intra-op
    threads, one inter-op, no spinning between runs (the other stages share the host's cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3          # warnings about unused initialisers are not the user's
    src = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(src, so, providers=list(providers),
                                provider_options=provider_options)


def check_onnx(source, model, example, threads: int = 1) -> float:
    """Max |onnxruntime - torch| over the example and a batch of two (the dynamic batch), on
    the CPU; an error above TOLERANCE is the caller's to raise."""
    import numpy as np
    import torch

    sess = onnx_session(source, threads)
    diff = 0.0
    for x in (example, torch.cat([example, example.flip(-1)])):
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            return float("inf")
        diff = max(diff, float(np.abs(got - ref).max()))
    return diff


def read_onnx_metadata(path) -> dict[str, str]:
    """metadata_props of an .onnx file (one line naming the file when it is no ONNX model).
    Read through onnxruntime with no graph optimisation (0.1 s), not the onnx package, whose
    import alone takes 1-3 s here (ml_dtypes): the launcher and the worker need only this."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise EvstreamError(f"{path}: no such ONNX file")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - InvalidProtobuf, Fail, NoSuchFile...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EvstreamError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                            f"{first[:120]})") from None
    return dict(sess.get_modelmeta().custom_metadata_map)


def read_onnx_config(path) -> dict:
    """The complete model config an evstream .onnx carries (one-line errors otherwise)."""
    from evstream.nn.checkpoint import complete_config

    meta = read_onnx_metadata(path)
    if meta.get("evstream_format") != FORMAT or "evstream_config" not in meta:
        raise EvstreamError(f"{path}: an ONNX model without evstream metadata (export one with "
                            f"`evstream export MODEL --out DIR --format onnx`)")
    version = meta.get("evstream_format_version", "?")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise EvstreamError(f"{path}: evstream ONNX format {version!r}; this evstream reads "
                            f"{FORMAT_VERSION}")
    try:
        return complete_config(json.loads(meta["evstream_config"]))
    except (ValueError, EvstreamError) as e:
        raise EvstreamError(f"{path}: bad evstream_config metadata: {e}") from None
