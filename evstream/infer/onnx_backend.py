"""The Predictor's interface with the network run by onnxruntime (`--backend onnxruntime`).

    p = OnnxPredictor.from_infer_config(InferConfig(model="evdistill-r18q-seg",
                                                    backend="onnxruntime"), sensor_hw=(260, 346))
    out = p.predict([voxels])                 # the same results as Predictor.predict
    p.info["backend"], p.info["providers"]    # "onnxruntime", ["CPUExecutionProvider"]

OnnxPredictor is a Predictor (evstream/infer/predictor.py) whose network is an onnxruntime
session: everything around the network (staging, the input geometry, argmax / softmax / top-k,
warm-up, the output check, timing, batching) is the Predictor's own code, so the two backends
give results of the same form for the same windows. Only the forward pass differs: `_OrtNetwork`
is a parameterless torch module that hands the (N, C, h, w) float32 network input to the
session and returns its logits as a tensor. It runs the exported fp32 graph: `--precision`
fp16/bf16, `--compile` and `--cuda-graphs` are the torch backend's and are refused here.

Where the ONNX model comes from (`onnx_file_for`):
- `--model FILE.onnx`, or a directory holding model.onnx (what `evstream export --format onnx`
  writes): that file; its config (representation, geometry, classes...) is read from its
  metadata (evstream/infer/onnx_export.py), no checkpoint needed.
- otherwise a checkpoint (a name under models/, model.pt, a directory, "untrained"): exported
  on the fly (onnx_export.export_onnx, checked against torch on the trace input) and cached in
  $XDG_CACHE_HOME/evstream/onnx/ (~/.cache/...) under a hash of the config, the weights and the
  exporter's versions, so the next run starts without exporting; a model directory is never
  written to (it may be read-only, or a shipped model in the checkout). A cache that cannot be
  written is skipped with a warning: the session is then made from the export in memory.

Devices: CPUExecutionProvider; CUDAExecutionProvider where this onnxruntime has it and the
device asks for CUDA (`--device auto` picks CUDA only when both torch and onnxruntime see it).
On CUDA the input tensor and a torch output tensor are bound to the session in place (I/O
binding), after torch's stream is synchronised (the session runs on its own stream and returns
once its outputs are written). Threads: the Predictor's (InferConfig.threads, 0 = automatic)
for both torch's pre/post-processing and the session's intra-op pool, one inter-op thread, no
spinning between runs. `info["device"]` reads e.g. "cpu (onnxruntime)", so the summary, the
viewer's HUD and the prediction messages say which runtime ran the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from evstream.errors import EvstreamError
from evstream.infer.device import PRECISIONS, resolve_device, resolve_precision
from evstream.infer.onnx_export import (DEFAULT_EXPORTER, FORMAT_VERSION, INPUT_NAME, OPSET,
                                        OUTPUT_NAME, TOLERANCE, check_onnx, example_input,
                                        export_onnx, onnx_session, read_onnx_config,
                                        read_onnx_metadata)
from evstream.infer.predictor import Predictor

log = logging.getLogger("evstream.infer")

ONNX_NAME = "model.onnx"


# -- where the model comes from --------------------------------------------------------------------

def onnx_file_for(name) -> Path | None:
    """The .onnx a --model value names (a .onnx path, existing or not; a directory or a shipped
    model name with model.onnx in it), else None (a checkpoint, or "untrained")."""
    from evstream.nn.checkpoint import MODELS_DIR

    text = str(name)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".onnx":
        return path
    if path.is_dir():
        return path / ONNX_NAME if (path / ONNX_NAME).is_file() else None
    if text and "/" not in text and os.sep not in text and not path.suffix \
            and (MODELS_DIR / text / ONNX_NAME).is_file():
        return MODELS_DIR / text / ONNX_NAME
    return None


def has_checkpoint(name) -> bool:
    """Whether --model NAME gives the torch backend something to load."""
    from evstream.nn.checkpoint import UNTRAINED, resolve_model

    if str(name) == UNTRAINED:
        return True
    try:
        resolve_model(name)
    except EvstreamError:
        return False
    return not str(name).lower().endswith(".onnx")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evstream" / "onnx"


def cache_key(model: torch.nn.Module, config: dict, exporter: str = DEFAULT_EXPORTER,
              opset: int = OPSET) -> str:
    """A hash of what the export depends on: the config, every weight, the exporter's versions."""
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "exporter": exporter, "opset": opset,
                         "torch": torch.__version__, "onnx": version("onnx"),
                         "config": config}, sort_keys=True).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def exported_onnx(model: torch.nn.Module, config: dict) -> tuple[Path | bytes, str]:
    """The ONNX model of a loaded checkpoint: (a cached .onnx path, or its bytes where the cache
    cannot be written; where it came from, in words). Exports and checks on a cache miss."""
    from evstream.atomic import atomic_write

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(config.get("name", "model")))[:48]
    path = cache_dir() / f"{safe}-{cache_key(model, config)[:20]}.onnx"
    if path.is_file():
        try:
            read_onnx_metadata(path)
            return path, f"{path} (cached export)"
        except EvstreamError as e:                   # damaged: made again below
            log.warning("%s; exporting again", e)
    example = example_input(config)
    data = export_onnx(model, config, example)
    diff = check_onnx(data, model, example)
    if not diff <= TOLERANCE:
        raise EvstreamError(f"model {config.get('name')!r}: its ONNX export differs from torch "
                            f"by {diff:g} (> {TOLERANCE}); use --backend torch")
    try:
        atomic_write(path, lambda f: f.write(data), what="ONNX cache file")
    except (OSError, EvstreamError) as e:
        log.warning("cannot cache the ONNX export (%s); using it from memory", e)
        return data, f"exported on the fly (max abs diff {diff:.1e}, not cached)"
    return path, f"{path} (exported on the fly, max abs diff {diff:.1e})"


# -- the network as a torch module -----------------------------------------------------------------

def placement(device: str) -> tuple[torch.device, list, list | None]:
    """(torch device, onnxruntime providers, provider options) for --device (see the module
    comment); a CUDA device this onnxruntime cannot use is a one-line error."""
    import onnxruntime as ort

    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    name = (device or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if has_cuda_ep and torch.cuda.is_available() else "cpu"
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev, ["CPUExecutionProvider"], None
    if not has_cuda_ep:
        raise EvstreamError(f"--device {device}: onnxruntime {ort.__version__} here has no "
                            f"CUDAExecutionProvider (install onnxruntime-gpu); use --device cpu "
                            f"or --backend torch")
    return dev, ["CUDAExecutionProvider", "CPUExecutionProvider"], \
        [{"device_id": dev.index or 0}, {}]


class _OrtNetwork(torch.nn.Module):
    """(N, C, h, w) float32 tensor -> logits tensor on the same device, through a session."""

    def __init__(self, task: str, num_classes: int):
        super().__init__()
        self.task, self.num_classes = task, num_classes
        self.session = None

    def open(self, source, threads: int, providers: list, options) -> None:
        try:
            self.session = onnx_session(source, threads, providers, options)
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail/InvalidGraph/...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EvstreamError(f"onnxruntime cannot load the model: {type(e).__name__}: "
                                f"{first[:200]}") from None
        names = ([i.name for i in self.session.get_inputs()],
                 [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise EvstreamError(f"ONNX model has inputs {names[0]} and outputs {names[1]}; an "
                                f"evstream export has [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return self._forward_cuda(x)
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def _forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()                       # NCHW (the Predictor makes it channels_last)
        n, _, h, w = x.shape
        shape = (n, self.num_classes) if self.task == "classification" \
            else (n, self.num_classes, h, w)
        out = torch.empty(shape, dtype=torch.float32, device=x.device)
        index = x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, shape, out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()      # x is written
        self.session.run_with_iobinding(binding)
        return out


# -- the predictor ---------------------------------------------------------------------------------

def check_options(precision: str = "auto", cuda_graphs: bool = False,
                  compile: bool | str = False) -> None:
    """One-line errors for the torch-only options (before anything is loaded)."""
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        resolve_precision(p, torch.device("cpu"))       # its one-line error for a bad value
    if p not in ("auto", "fp32"):
        raise EvstreamError(f"--precision {precision}: --backend onnxruntime runs the exported "
                            f"fp32 graph; use --backend torch for {p}")
    if cuda_graphs:
        raise EvstreamError("--cuda-graphs is the torch backend's: use --backend torch")
    if compile:
        raise EvstreamError("--compile is the torch backend's: use --backend torch")


class OnnxPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, source, config: dict, device: str = "auto", precision: str = "auto",
                 threads: int = 0, cuda_graphs: bool = False, compile: bool | str = False,
                 warmup: int = 3, topk: int = 5, max_batch: int = 8,
                 sensor_hw: tuple[int, int] | None = None, origin: str = ""):
        """source: a .onnx path or the bytes of one; config: its model config."""
        check_options(precision, cuda_graphs, compile)
        dev, providers, options = placement(device)
        net = _OrtNetwork(config.get("task"), config.get("num_classes"))
        super().__init__(net, config, device=str(dev), precision="fp32", threads=threads,
                         warmup=warmup, topk=topk, max_batch=max_batch)
        net.open(source, self.threads, providers, options)
        self.providers = net.session.get_providers()
        self.origin = origin or (str(source) if isinstance(source, (str, Path)) else "in memory")
        got = net.session.get_inputs()[0].shape
        if len(got) != 4 or (isinstance(got[1], int) and got[1] != self.in_channels):
            raise EvstreamError(f"model {self.name!r}: the ONNX graph takes {got}, its config "
                                f"says {self.in_channels} channels")
        if sensor_hw is not None:
            self.prepare(sensor_hw)

    @classmethod
    def from_infer_config(cls, infer_cfg, sensor_hw=None) -> "OnnxPredictor":
        """The model infer_cfg.model names: an .onnx (or a directory with model.onnx), else a
        checkpoint exported on the fly (see the module comment)."""
        from evstream.nn.checkpoint import load_model

        check_options(infer_cfg.precision, infer_cfg.cuda_graphs, infer_cfg.compile)
        placement(infer_cfg.device)               # a device it cannot use fails before the load
        path = onnx_file_for(infer_cfg.model)
        if path is not None:
            config, source, origin = read_onnx_config(path), path, str(path)
        else:
            model, config = load_model(infer_cfg.model, device="cpu")
            source, origin = exported_onnx(model, config)
        return cls(source, config, device=infer_cfg.device, precision=infer_cfg.precision,
                   threads=infer_cfg.threads, warmup=infer_cfg.warmup, topk=infer_cfg.topk,
                   max_batch=infer_cfg.max_batch, sensor_hw=sensor_hw, origin=origin)

    @property
    def info(self) -> dict:
        info = super().info
        info.update(device=f"{info['device']} (onnxruntime)", providers=list(self.providers),
                    onnx=self.origin)
        return info
