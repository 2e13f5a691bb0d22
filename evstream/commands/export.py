"""`evstream export RUN_OR_CKPT --out DIR [--format ...]`: the trained student alone, in the forms
a deployment reads.

    DIR/model.pt   evstream model checkpoint (evstream.nn.checkpoint.save_checkpoint): the
                   student's state dict + its model config (classes, colours, representation,
                   window, input geometry, trained, metrics); `evstream run --model DIR` and
                   load_model read it. Only the network: no BMR, teacher, optimiser or RNG state.
    DIR/model.ts   TorchScript (torch.jit.trace of the network in eval mode on one input of the
                   config's padded input size; sizes stay dynamic, so other input sizes run
                   too). The model config is embedded as the extra file "config.json":
                   `torch.jit.load(path, _extra_files={"config.json": ""})`.
    DIR/model.onnx ONNX (opset 18, dynamic batch, height and width; evstream/infer/onnx_export.py):
                   the network alone, input "x" after the input geometry, output "logits"; the
                   whole model config in its metadata_props ("evstream_config"; also
                   "evstream_representation", "evstream_geometry", "evstream_window"), so
                   `evstream run --model DIR --backend onnxruntime` (or --model DIR/model.onnx)
                   needs nothing else. Exported with torch's TorchScript-based exporter by
                   default (12-60x faster here than the dynamo one, same graph speed: see
                   onnx_export.py), `--onnx-exporter dynamo` for the new one.
--format picks the files: pt (model.pt alone), torchscript, onnx, all, or a comma list
(default pt,torchscript, as before; model.pt is always written: the other forms are made from
it and `evstream run --model DIR` reads it). --no-torchscript is --format pt.
RUN_OR_CKPT is a training run directory (its student/model.pt), a model directory (model.pt) or
a checkpoint file. After writing, every file is loaded back and run on the trace input; an
output differing from the trained network's beyond the tolerance (1e-5 for model.pt and the
TorchScript file, run by torch; 1e-4 for model.onnx, run by onnxruntime, whose fp32 convolutions
sum in another order) is an error. --json prints one object (paths, the checks' max abs
differences, the ONNX opset and exporter, the config).

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

HELP = "export a student (state dict + config, TorchScript, ONNX) for the worker"
EXAMPLES = """  evstream export runs/tiny --out student_export
  evstream export runs/tiny/student/model.pt --out student_export --json
  evstream export runs/tiny --out exp --no-torchscript
  evstream export models/evdistill-r18q-seg --out seg_onnx --format onnx
  evstream export runs/tiny --out exp --format all --json"""
TOLERANCE = 1e-5
FORMATS = ("pt", "torchscript", "onnx")
DEFAULT_FORMATS = ("pt", "torchscript")


def configure(p) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="training run directory, model directory or checkpoint file")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--format", action="append", metavar="F[,F...]",
                   help="pt | torchscript | onnx | all, or a comma list (default "
                        "pt,torchscript; model.pt is always written)")
    p.add_argument("--onnx-exporter", default="torchscript", choices=("torchscript", "dynamo"),
                   help="torch's ONNX exporter (default torchscript: 12-60x faster to export "
                        "here than dynamo, and the same graph speed)")
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


def parse_formats(formats, no_torchscript: bool = False) -> tuple[str, ...]:
    """--format values (repeated or comma lists; "all") -> the formats in FORMATS order."""
    asked = [f.strip().lower() for item in (formats or []) for f in str(item).split(",")
             if f.strip()]
    bad = [f for f in asked if f not in FORMATS + ("all",)]
    if bad:
        raise EvstreamError(f"--format {bad[0]!r}: expected {', '.join(FORMATS)}, all or a "
                            f"comma list of them")
    chosen = set(FORMATS) if "all" in asked else set(asked or DEFAULT_FORMATS)
    if no_torchscript:
        if formats and "torchscript" in chosen:
            raise EvstreamError("--no-torchscript contradicts --format torchscript")
        chosen.discard("torchscript")
    return tuple(f for f in FORMATS if f in chosen or f == "pt")


def write_onnx(model, cfg: dict, x, path, exporter: str) -> dict:
    """DIR/model.onnx, loaded back by onnxruntime and run on the trace input (and a batch of
    two: the dynamic batch): -> the JSON's "onnx" entry."""
    from evstream.infer.onnx_export import (OPSET, TOLERANCE as ONNX_TOLERANCE, check_onnx,
                                            export_onnx)

    data = export_onnx(model, cfg, x, exporter=exporter)
    atomic_write(path, lambda f: f.write(data), what="ONNX file")
    return {"path": str(path), "opset": OPSET, "exporter": exporter,
            "tolerance": ONNX_TOLERANCE, "max_abs_diff": check_onnx(path, model, x),
            "dynamic_axes": ["batch", "height", "width"], "bytes": len(data)}


def export(source: str, out: str, torchscript: bool = True, formats=None,
           onnx_exporter: str = "torchscript") -> dict:
    """formats: any of FORMATS (None: pt, plus torchscript unless torchscript=False)."""
    import torch

    from evstream.nn import load_checkpoint, load_model, save_checkpoint

    if formats is None:
        formats = DEFAULT_FORMATS if torchscript else ("pt",)
    src = resolve_source(source)
    ckpt = load_checkpoint(src)
    model, cfg = load_model(src)                  # checks weights against the config
    if cfg.get("modality") == "images":
        warnings.warn(f"{src}: exporting a network that reads images (a teacher)")
    out_dir = ensure_dir(out, "export")
    from evstream.infer.onnx_export import example_input

    x = example_input(cfg)
    with torch.no_grad():
        ref = model(x)
    save_checkpoint(out_dir / "model.pt", model.state_dict(), cfg,
                    extra={"exported_from": str(src), **{k: v for k, v in ckpt["extra"].items()
                                                         if k in ("stage", "iterations")}})
    result = {"source": str(src), "formats": list(formats), "model_pt": str(out_dir / "model.pt"),
              "model_ts": None, "model_onnx": None, "onnx": None,
              "input_shape": list(x.shape), "check": {}, "removed": [], "config": cfg}
    back, _ = load_model(out_dir / "model.pt")
    with torch.no_grad():
        result["check"]["model_pt_max_abs_diff"] = float((back(x) - ref).abs().max())
    if "torchscript" in formats:
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
    if "onnx" in formats:
        result["onnx"] = write_onnx(model, cfg, x, out_dir / "model.onnx", onnx_exporter)
        result["model_onnx"] = result["onnx"]["path"]
        result["check"]["model_onnx_max_abs_diff"] = result["onnx"]["max_abs_diff"]
    # a model.ts / model.onnx left by an earlier export to DIR was made from other weights
    # (the worker would run a stale model.onnx with --backend onnxruntime): removed, and said
    for fmt, name in (("torchscript", "model.ts"), ("onnx", "model.onnx")):
        if fmt not in formats and (out_dir / name).is_file():
            (out_dir / name).unlink()
            result["removed"].append(str(out_dir / name))
    for name, diff in result["check"].items():
        limit = result["onnx"]["tolerance"] if name.startswith("model_onnx") else TOLERANCE
        if not diff <= limit:
            raise EvstreamError(f"{out_dir}: exported {name.split('_max')[0]} differs from the "
                                f"trained network by {diff:g} (> {limit})")
    return result


def main(args) -> int:
    formats = parse_formats(args.format, args.no_torchscript)
    r = export(args.source, args.out, formats=formats, onnx_exporter=args.onnx_exporter)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"exported {r['source']} ({r['config'].get('name')})")
        print(f"  {r['model_pt']}   checkpoint + config "
              f"(max abs diff {r['check']['model_pt_max_abs_diff']:.2e})")
        if r["model_ts"]:
            print(f"  {r['model_ts']}   TorchScript, input {r['input_shape']} "
                  f"(max abs diff {r['check']['model_ts_max_abs_diff']:.2e})")
        if r["model_onnx"]:
            o = r["onnx"]
            print(f"  {r['model_onnx']}   ONNX opset {o['opset']} ({o['exporter']} exporter), "
                  f"dynamic batch/height/width, onnxruntime max abs diff "
                  f"{o['max_abs_diff']:.2e} (tolerance {o['tolerance']:g})")
        for path in r["removed"]:
            print(f"  removed {path} (from an earlier export, made from other weights)")
    return 0
