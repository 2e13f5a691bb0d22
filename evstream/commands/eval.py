"""`evstream eval MODEL --data DIR [--split test] [--json]`: a trained network's scores on a split.

MODEL is a checkpoint file, a model directory (DIR/model.pt), a shipped model name, or a
training run directory (RUN/student/model.pt; RUN/teacher/model.pt with --modality images).
The dataset is read with the model's own representation, window and input geometry, so the
network sees what it saw in training. --modality events (default for students) runs the network
on event windows; --modality images on the APS frames (teachers, whose configs say so).

--json prints ONE object: model, name, data, split, modality, task, samples, seconds,
samples_per_s and the metrics of evstream.distill.evaluate (segmentation: miou, pixel_acc,
pixels, per_class {class: IoU}; classification: top1, top5) with "conditions" holding the same
metrics per illumination / motion value of the synthetic manifest. Without --json: the per-class
table, then one line per condition. Unknown files, missing splits and mismatched models are one
line on stderr, exit 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from evstream.commands.common import positive_int
from evstream.errors import EvstreamError

HELP = "evaluate a checkpoint or shipped model on a dataset split"
EXAMPLES = """  evstream eval models/student --data data/seg --split test --json
  evstream eval runs/tiny --data data/seg                     # the run's student
  evstream eval runs/tiny --data data/seg --modality images   # the run's teacher on APS frames"""


def configure(p) -> None:
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL_DIR",
                   help="checkpoint file, model directory, model name or training run directory")
    p.add_argument("--data", metavar="DIR", required=True, help="dataset directory")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--modality", choices=("events", "images"),
                   help="what the network reads (default: the model config's, else events)")
    p.add_argument("--kind", help="dataset layout, when auto-detection is not enough")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-batches", type=positive_int, help="stop after this many batches")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def resolve(model: str, modality: str | None) -> str:
    """A run directory -> its student (or teacher for images); anything else as given."""
    p = Path(model)
    if p.is_dir() and not (p / "model.pt").exists():
        which = "teacher" if modality == "images" else "student"
        if (p / which / "model.pt").is_file():
            return str(p / which / "model.pt")
        if (p / "config.json").is_file():
            raise EvstreamError(f"{p}: training run without a finished {which} "
                                f"({p / which / 'model.pt'} is missing)")
    return model


def run_eval(model_spec: str, data: str, split: str = "test", modality: str | None = None,
             kind: str | None = None, batch_size: int = 8, max_batches: int = 0,
             device: str = "cpu") -> dict:
    import torch

    from evstream.distill import data as D
    from evstream.distill.evaluate import Parts, evaluate, make_loader
    from evstream.nn import load_model

    path = resolve(model_spec, modality)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvstreamError(f"--device {device}: CUDA is not available on this machine")
    model, mcfg = load_model(path, device=dev)
    modality = modality or mcfg.get("modality") or "events"
    if not Path(data).exists():
        raise EvstreamError(f"{data}: no such dataset directory")
    ds = D.open_dataset(data, split=split, task=mcfg.get("task"),
                        representation=mcfg.get("representation"),
                        window_us=(mcfg.get("window") or {}).get("window_us", 50_000),
                        input_cfg=mcfg.get("input"), kind=kind)
    key = "image" if modality == "images" else "events"
    if not ds.has_labels:
        raise EvstreamError(f"{data}: split {split!r} has no labels to evaluate against")
    if (modality == "images" and not ds.has_images) or (modality == "events"
                                                         and not ds.has_events):
        raise EvstreamError(f"{data}: split {split!r} has no {modality}")
    if ds.classes and len(ds.classes) != mcfg["num_classes"]:
        raise EvstreamError(f"{path}: model has {mcfg['num_classes']} classes, {data} has "
                            f"{len(ds.classes)} ({', '.join(ds.classes)})")
    if not len(ds):
        raise EvstreamError(f"{data}: split {split!r} is empty")
    probe = ds[0][key]
    if probe.shape[0] != mcfg["in_channels"]:
        raise EvstreamError(f"{path}: model reads {mcfg['in_channels']} channels, the {modality} "
                            f"of {data} have {probe.shape[0]} (wrong --modality?)")
    view = Parts(ds, (key, "label", "meta"))
    loader = make_loader(view, batch_size, collate_fn=D.collate)
    t0 = time.perf_counter()
    metrics = evaluate(model, loader, task=mcfg["task"], classes=mcfg["classes"],
                       modality=modality, device=dev, max_batches=max_batches)
    seconds = time.perf_counter() - t0
    return {"model": str(path), "name": mcfg.get("name"), "trained": mcfg.get("trained"),
            "data": str(data), "split": split, **metrics, "seconds": round(seconds, 3),
            "samples_per_s": round(metrics["samples"] / seconds, 2) if seconds > 0 else None}


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def format_result(r: dict) -> str:
    from evstream.distill.metrics import format_table

    head = (f"{r['name']} ({r['model']}) on {r['data']} [{r['split']}], {r['modality']}, "
            f"{r['samples']} samples")
    if r["task"] == "segmentation":
        names = list(r["per_class"])
        vals = [float("nan") if v is None else v for v in r["per_class"].values()]
        body = [format_table(vals, names, header="IoU %"),
                f"pixel accuracy {_pct(r['pixel_acc'])}%   mIoU {_pct(r['miou'])}%"]
        key = ("miou", "mIoU")
    else:
        body = [f"top-1 {_pct(r['top1'])}%   top-5 {_pct(r['top5'])}%"]
        key = ("top1", "top-1")
    for name, values in r["conditions"].items():
        parts = [f"{v} {_pct(m[key[0]])}% ({m['samples']})" for v, m in sorted(values.items())]
        body.append(f"{key[1]} by {name}: " + ", ".join(parts))
    return "\n".join([head] + body)


def main(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = run_eval(args.model, args.data, split=args.split, modality=args.modality,
                 kind=args.kind, batch_size=args.batch_size, max_batches=args.max_batches or 0,
                 device=args.device)
    print(json.dumps(r) if args.json else format_result(r))
    return 0
