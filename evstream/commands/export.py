"""`evstream export RUN_OR_CKPT --out DIR`: the trained student alone, in the forms a deployment
reads.

    DIR/model.pt   evstream model checkpoint (evstream.nn.checkpoint.save_checkpoint): the
                   student's state dict + its model config (classes, colours, representation,
                   window, input geometry, trained, metrics); `evstream run --model DIR` and
                   load_model read it. Only the network: no BMR, teacher, optimiser or RNG state.
    DIR/model.ts   TorchScript (torch.jit.trace of the network in eval mode on one input of the
                   config's padded input size; sizes stay dynamic, so other input sizes run
                   too). The model config is embedded as the extra file "config.json":
                   `torch.jit.load(path, _extra_files={"config.json": ""})`.
RUN_OR_CKPT is a training run directory (its student/model.pt), a model directory (model.pt) or
a checkpoint file. After writing, both files are loaded back and run on the trace input; an
output differing from the trained network's (beyond 1e-5) is an error. --json prints one object
(paths, the checks' max abs differences, the config).

TorchScript is deprecated as of torch 2.13 (trace warns "Please switch to torch.compile or
torch.export"); it still is the format a plain libtorch/C++ runtime loads, so the export
silences that one warning here and nowhere else.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

from evstream.atomic import atomic_write
from evstream.errors import EvstreamError
from evstream.outpaths import ensure_dir

HELP = "export a student (state dict + config, TorchScript) for the worker"
EXAMPLES = """  evstream export runs/tiny --out student_export
  evstream export runs/tiny/student/model.pt --out student_export --json
  evstream export runs/tiny --out exp --no-torchscript"""
TOLERANCE = 1e-5


def configure(p) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="training run directory, model directory or checkpoint file")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--no-torchscript", action="store_true", help="write model.pt only")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def resolve_source(source: str) -> Path:
    p = Path(source)
    if p.is_dir():
        for cand in (p / "student" / "model.pt", p / "model.pt"):
            if cand.is_file():
                return cand
        raise EvstreamError(f"{p}: neither a training run with a finished student "
                            f"(student/model.pt) nor a model directory (model.pt)")
    if not p.exists():
        raise EvstreamError(f"{p}: no such checkpoint or directory")
    return p


def example_input(cfg: dict):
    import torch

    from evstream.nn.geometry import network_input_hw

    inp = cfg.get("input") or {}
    h, w = inp.get("height") or 260, inp.get("width") or 346
    hw = network_input_hw({**inp, "crop": None, "resize": None}, (h, w))
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, cfg["in_channels"], *hw, generator=gen)


def trace(model, x):
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            return torch.jit.trace(model, x, check_trace=False)


def load_torchscript(path):
    import torch

    extra = {"config.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["config.json"])


def export(source: str, out: str, torchscript: bool = True) -> dict:
    import torch

    from evstream.nn import load_checkpoint, load_model, save_checkpoint

    src = resolve_source(source)
    ckpt = load_checkpoint(src)
    model, cfg = load_model(src)                  # checks weights against the config
    if cfg.get("modality") == "images":
        warnings.warn(f"{src}: exporting a network that reads images (a teacher)")
    out_dir = ensure_dir(out, "export")
    x = example_input(cfg)
    with torch.no_grad():
        ref = model(x)
    save_checkpoint(out_dir / "model.pt", model.state_dict(), cfg,
                    extra={"exported_from": str(src), **{k: v for k, v in ckpt["extra"].items()
                                                         if k in ("stage", "iterations")}})
    result = {"source": str(src), "model_pt": str(out_dir / "model.pt"), "model_ts": None,
              "input_shape": list(x.shape), "check": {}, "config": cfg}
    back, _ = load_model(out_dir / "model.pt")
    with torch.no_grad():
        result["check"]["model_pt_max_abs_diff"] = float((back(x) - ref).abs().max())
    if torchscript:
        ts = trace(model, x)
        path = out_dir / "model.ts"
        buf = io.BytesIO()          # in memory first: see nn.checkpoint.save_torch
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is deprecated")
            torch.jit.save(ts, buf, _extra_files={"config.json": json.dumps(cfg)})
        atomic_write(path, lambda f: f.write(buf.getbuffer()), what="TorchScript file")
        result["model_ts"] = str(path)
        loaded, _ = load_torchscript(path)
        with torch.no_grad():
            result["check"]["model_ts_max_abs_diff"] = float((loaded(x) - ref).abs().max())
    for name, diff in result["check"].items():
        if not diff <= TOLERANCE:
            raise EvstreamError(f"{out_dir}: exported {name.split('_max')[0]} differs from the "
                                f"trained network by {diff:g} (> {TOLERANCE})")
    return result


def main(args) -> int:
    r = export(args.source, args.out, torchscript=not args.no_torchscript)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"exported {r['source']} ({r['config'].get('name')})")
        print(f"  {r['model_pt']}   checkpoint + config "
              f"(max abs diff {r['check']['model_pt_max_abs_diff']:.2e})")
        if r["model_ts"]:
            print(f"  {r['model_ts']}   TorchScript, input {r['input_shape']} "
                  f"(max abs diff {r['check']['model_ts_max_abs_diff']:.2e})")
    return 0
