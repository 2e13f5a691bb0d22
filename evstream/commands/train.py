"""`evstream train`: EvDistill training (teacher on images, distilled event student).

The config is built in this order, each step overriding the last: the preset (or --config FILE,
or with --resume and neither given, the run's own RUN/config.json), then the dedicated flags
(--data, --out, --stage, --setting, --teacher, --device, --threads, --amp, --fp32-math), then
every --set key.path=value in order. The device is checked before any data loads (a GPU this
machine does not have is one line, exit 2). The resolved config is printed once it is checked
(on stderr with --json, where stdout carries only the summary object) and saved as
RUN/config.json and RUN/config.toml.

Under torchrun (`python -m torch.distributed.run --nproc_per_node N -m evstream train ...`) every
rank runs this command; only rank 0 prints and writes. See evstream/distill/train.py for the
run directory, resuming and DDP.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

from evstream.commands.common import positive_int
from evstream.distill import config as C
from evstream.errors import EvstreamError
from evstream.outpaths import check_can_create

HELP = "EvDistill training: teacher on images, distilled event student"
EXAMPLES = """  evstream train --preset tiny --data data/seg --out runs/tiny
  evstream train --preset realtime --data data/seg --out runs/rt --setting paired
  evstream train --preset cpu --data data/seg --out runs/u --stage 2 --setting unpaired --teacher T
  evstream train --preset cpu --data N-MNIST --out runs/nm --setting events_gt --stage 2 \
      --set data.hflip=false --set data.shift=3 --set data.window_us=400000
  evstream train --preset tiny --data data/seg --out runs/s2 --stage 2 --teacher runs/tiny/teacher
  evstream train --out runs/tiny --resume                      # continue a killed run
  evstream train --preset realtime --data data/seg --out runs/rt --device cuda --amp bf16
  evstream train --preset cpu --data data/seg --out runs/g --device cuda:1 --amp off \
      --fp32-math tf32
  evstream train --preset tiny --data d --out r --set stage2.iterations=50 --set loss.affinity=0
  python -m torch.distributed.run --nproc_per_node 2 -m evstream train --preset tiny ..."""


def configure(p) -> None:
    p.add_argument("--preset", choices=sorted(C.PRESETS), default=None,
                   help="starting config (default tiny)")
    p.add_argument("--config", metavar="FILE", help="start from a saved config (.json or .toml, "
                   "e.g. another run's config.json) instead of a preset")
    p.add_argument("--data", metavar="DIR", help="dataset directory (evstream synth output, ...)")
    p.add_argument("--out", metavar="RUN", help="run directory for checkpoints and logs")
    p.add_argument("--stage", choices=C.STAGES, help="1: teacher only, 2: student only, "
                   "all: both (default)")
    p.add_argument("--setting", choices=C.SETTING_CHOICES,
                   help="paired (EvDistill on events + APS frames of the same instant, no "
                   "labels, BMR), unpaired (events + labelled images of other instants, BMR; "
                   "old name paper), events_gt, pseudo_aps (the two baselines)")
    p.add_argument("--teacher", metavar="CKPT", help="use this trained teacher (skips stage 1)")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN from its last checkpoint (stages already done are kept)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. stage2.iterations=50 (repeatable)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N (under torchrun every "
                   "rank uses cuda:LOCAL_RANK)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"),
                   help="mixed precision: auto (default: bf16 on CUDA, or fp16 with a "
                   "GradScaler where bf16 is missing; off on CPU), off, bf16, fp16 (CUDA)")
    p.add_argument("--fp32-math", choices=("ieee", "tf32"),
                   help="how CUDA computes fp32 convolutions and matmuls: ieee (strict, "
                   "default) or tf32 (tensor cores, ~1e-3 relative)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress (a bar on a terminal, a line every 30 s elsewhere)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")


def _load_config_file(path: str) -> C.TrainCfg:
    p = Path(path)
    if not p.is_file():
        raise EvstreamError(f"{path}: no such config file")
    try:
        text = p.read_text()
        d = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EvstreamError(f"{path}: not a valid {p.suffix.lstrip('.') or 'config'} file "
                            f"({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise EvstreamError(f"{path}: expected a table of settings")
    try:
        return C.from_dict(d)
    except EvstreamError as e:
        raise EvstreamError(f"{path}: {e}") from None


def build_config(args) -> C.TrainCfg:
    """The resolved TrainCfg of these arguments (see the module doc for the order)."""
    if args.preset and args.config:
        raise EvstreamError("give --preset or --config, not both")
    if args.config:
        cfg = _load_config_file(args.config)
    elif args.preset is None and args.resume and args.out and \
            (Path(args.out) / "config.json").is_file():
        cfg = _load_config_file(str(Path(args.out) / "config.json"))
    else:
        cfg = C.preset(args.preset or "tiny")
    changes = {}
    if args.data is not None:
        changes["data"] = replace(cfg.data, root=args.data)
    for flag, key in (("out", "out"), ("stage", "stage"), ("setting", "setting"),
                      ("teacher", "teacher_ckpt"), ("device", "device"), ("threads", "threads"),
                      ("amp", "amp"), ("fp32_math", "fp32_math")):
        value = getattr(args, flag)
        if value is not None:
            changes[key] = value
    if args.no_progress:
        changes["progress"] = False
    cfg = C.with_changes(cfg, **changes)
    return C.apply_overrides(cfg, args.overrides)


def _human(summary: dict) -> str:
    amp = summary.get("amp", "off")
    lines = [f"run         {summary['run']}  ({summary['preset']} preset, {summary['setting']} "
             f"setting, {summary['task']}, {summary['world_size']} process(es) on "
             f"{summary['device']}, amp {amp}"
             + (f", fp32 math {summary['fp32_math']}" if "cuda" in summary["device"] else "")
             + ")"]
    for stage, s in summary["stages"].items():
        name = "teacher" if stage == "1" else "student"
        if s.get("skipped"):
            lines.append(f"stage {stage}     {name}: {s['skipped']} -> {s['checkpoint']}")
            continue
        val = s.get("val") or {}
        score = ""
        if "miou" in val:
            score = f", val mIoU {_pct(val['miou'])}, pixel acc {_pct(val['pixel_acc'])}"
        elif "top1" in val:
            score = f", val top-1 {_pct(val['top1'])}, top-5 {_pct(val['top5'])}"
        rate = f"{s['samples_per_s']:.1f} samples/s" if s.get("samples_per_s") else "-"
        lines.append(f"stage {stage}     {name}: {s['ran']}/{s['iterations']} iterations in "
                     f"{s['seconds']:.1f} s ({rate}){score} -> {s['checkpoint']}")
    lines.append(f"total       {summary['seconds']:.1f} s")
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def main(args) -> int:
    from evstream.distill.runtime import check_device, resolve_amp
    from evstream.distill.train import main as train_main

    cfg = build_config(args)
    resolve_amp(cfg.amp, check_device(cfg.device))     # before the data and networks load
    if cfg.out:
        check_can_create(cfg.out, "run")        # before the data and the networks load
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def show(resolved: C.TrainCfg) -> None:
        print(f"resolved config (saved as {Path(resolved.out) / 'config.toml'}):\n"
              + C.to_toml(resolved), file=sys.stderr if args.json else sys.stdout, flush=True)

    summary = train_main(cfg, resume=args.resume, on_start=show)
    if rank0:
        print(json.dumps(summary) if args.json else _human(summary), flush=True)
    return 0
