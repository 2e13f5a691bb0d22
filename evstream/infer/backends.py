"""Which runtime runs the network: `--backend torch | onnxruntime | auto` (InferConfig.backend).

    p = make_predictor(infer_cfg, sensor_hw)     # a Predictor or an OnnxPredictor
    backend, why = choose_backend(infer_cfg, model_config)

- torch: evstream/infer/predictor.py's Predictor (the only one with --precision fp16/bf16,
  --compile and --cuda-graphs).
- onnxruntime: evstream/infer/onnx_backend.py's OnnxPredictor, the same interface and results;
  the only backend for a model given as .onnx (or a directory holding only model.onnx).
- auto (the default): onnxruntime only where it was measured faster, else torch. Measured by
  tools/bench/onnx.py (`evstream bench onnx`, docs/benchmarks.md "torch vs ONNX Runtime"):
  per window on the CPU, batch 1, 346x260, one thread each, for the shipped students. The rule
  is per model family (architecture, backbone) and CPU only: ORT_FASTER_ON_CPU below holds the
  families where onnxruntime won, with the figures. Not measured (so torch): CUDA, any other
  family (the untrained ResNet-18 default, the "tiny" test networks), the torch-only options.
  Should onnxruntime fail to run a model auto chose it for (an export error), auto says so in a
  warning and runs it in torch.
"""

from __future__ import annotations

import logging

from evstream.errors import EvstreamError

log = logging.getLogger("evstream.infer")

BACKENDS = ("auto", "torch", "onnxruntime")

# (arch, backbone) -> (torch ms, onnxruntime ms): a 346x260 window through the whole predictor
# (geometry, network, post-processing), p50, batch 1, one thread each, on the 2-core CPU of
# docs/benchmarks.md "torch vs ONNX Runtime" (2026-12-08); for each family the shipped student
# where onnxruntime won by the least. Families not listed were not measured faster: torch.
ORT_FASTER_ON_CPU: dict[tuple[str, str], tuple[float, float]] = {
    ("deeplabv3plus", "resnet18q"): (37.1, 21.2),   # evdistill-r18q-seg (baselines: 1.8-1.9x)
    ("classifier", "resnet18q"): (15.6, 7.3),       # nmnist-cls (evdistill-r18q-cls: 2.3x)
}


def check_backend(name: str) -> str:
    b = (name or "auto").strip().lower()
    if b not in BACKENDS:
        raise EvstreamError(f"--backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return b


def check_infer_config(infer_cfg) -> None:
    """What the launcher can say before any process starts: a bad --backend, the torch-only
    options with --backend onnxruntime, an .onnx model with --backend torch."""
    from evstream.infer.onnx_backend import check_options, has_checkpoint, onnx_file_for

    b = check_backend(infer_cfg.backend)
    if b == "onnxruntime":
        check_options(infer_cfg.precision, infer_cfg.cuda_graphs, infer_cfg.compile)
    elif b == "torch" and not has_checkpoint(infer_cfg.model) \
            and onnx_file_for(infer_cfg.model) is not None:
        raise EvstreamError(f"--model {infer_cfg.model}: an ONNX model runs with --backend "
                            f"onnxruntime (or auto); --backend torch needs a checkpoint "
                            f"(model.pt)")


def choose_backend(infer_cfg, model_config: dict) -> tuple[str, str]:
    """(backend, why) for this InferConfig and model config (see the module comment)."""
    from evstream.infer.device import resolve_device
    from evstream.infer.onnx_backend import has_checkpoint, onnx_file_for

    b = check_backend(infer_cfg.backend)
    if b != "auto":
        return b, "asked for"
    if not has_checkpoint(infer_cfg.model) and onnx_file_for(infer_cfg.model) is not None:
        return "onnxruntime", "the model is ONNX"
    if infer_cfg.cuda_graphs or infer_cfg.compile \
            or (infer_cfg.precision or "auto").lower() not in ("auto", "fp32"):
        return "torch", "torch-only options"
    if resolve_device(infer_cfg.device).type != "cpu":
        return "torch", "onnxruntime not measured faster on CUDA"
    family = (str(model_config.get("arch")), str(model_config.get("backbone")))
    if family in ORT_FASTER_ON_CPU:
        t, o = ORT_FASTER_ON_CPU[family]
        return "onnxruntime", f"{'/'.join(family)} measured faster on CPU ({o:g} vs {t:g} ms)"
    return "torch", f"{'/'.join(family)}: onnxruntime not measured faster"


def model_config_of(name) -> dict:
    """The config of --model NAME without building the network (checkpoint, ONNX or untrained)."""
    from evstream.infer.onnx_backend import has_checkpoint, onnx_file_for
    from evstream.infer.onnx_export import read_onnx_config
    from evstream.nn.checkpoint import (UNTRAINED, complete_config, default_config,
                                        load_checkpoint, resolve_model)

    if str(name) == UNTRAINED:
        return dict(default_config(), trained=False)
    onnx = onnx_file_for(name)
    if onnx is not None and not has_checkpoint(name):
        return read_onnx_config(onnx)
    return complete_config(load_checkpoint(resolve_model(name))["config"])


def make_predictor(infer_cfg, sensor_hw=None):
    """The worker's predictor for infer_cfg (Predictor or OnnxPredictor, same interface)."""
    from evstream.infer.onnx_backend import OnnxPredictor
    from evstream.infer.predictor import Predictor

    check_infer_config(infer_cfg)
    backend, why = choose_backend(infer_cfg, model_config_of(infer_cfg.model))
    log.info("backend %s (%s)", backend, why)
    if backend == "torch":
        return Predictor.from_infer_config(infer_cfg, sensor_hw)
    try:
        return OnnxPredictor.from_infer_config(infer_cfg, sensor_hw)
    except EvstreamError as e:
        if check_backend(infer_cfg.backend) != "auto" or why == "the model is ONNX":
            raise
        log.warning("--backend auto: onnxruntime cannot run this model (%s); running it in "
                    "torch", e)
        return Predictor.from_infer_config(infer_cfg, sensor_hw)
