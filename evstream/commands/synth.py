"""`evstream synth seg|cls OUT`: generate a labelled synthetic event dataset (evstream.sim).

Writes the layout of the dataset contract (OUT/manifest.json, OUT/seq_NNNN/events.aedat4 with
events and APS frames, or events.h5 + frames.npz with --format h5, and labels.npz), atomically:
the dataset appears under OUT only when complete. A non-empty OUT is refused unless --force.
Progress goes to stderr (evstream.progress: a bar on a terminal, a line every 30 s in a log;
--quiet for none); --json prints a one-object summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os

from evstream.commands.common import nonnegative_int, positive_int
from evstream.errors import EvstreamError

HELP = "generate labelled synthetic event datasets (segmentation / classification)"
EXAMPLES = """  evstream synth seg data/seg --sequences 8 --seconds 10 --seed 1
  evstream synth cls data/cls --sequences 1000 --seed 2 --workers 2
  evstream synth seg data/seg_h5 --sequences 3 --seconds 2 --format h5 --json
  evstream synth seg data/tiny --sequences 3 --seconds 0.2 --width 64 --height 48 --force"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: three numbers like 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: three numbers (train,val,test)")
    return parts


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=("seg", "cls"),
                   help="seg: driving scenes with DDD17's 6 classes per pixel; cls: one of 10 "
                   "shapes per sample seen through 3 saccades (N-Caltech101 style)")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument("--sequences", type=positive_int, default=8,
                   help="number of sequences (cls: samples) (default 8)")
    p.add_argument("--seconds", type=_positive_float,
                   help="length of each sequence (default: seg 10, cls 0.3)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="dataset seed (default 0)")
    p.add_argument("--width", type=positive_int, help="sensor width (default: seg 346, cls 128)")
    p.add_argument("--height", type=positive_int,
                   help="sensor height (default: seg 260, cls 128)")
    p.add_argument("--frame-rate", type=_positive_float, default=25.0,
                   help="APS frames (and label maps) per second (default 25)")
    p.add_argument("--format", dest="fmt", choices=("aedat4", "h5"), default="aedat4",
                   help="events.aedat4 with frames (default), or events.h5 + frames.npz")
    p.add_argument("--split", type=_split, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST",
                   help="fractions of sequences per split (default 0.7,0.15,0.15)")
    p.add_argument("--workers", type=positive_int,
                   help="worker processes (default: CPU count, at most --sequences)")
    p.add_argument("--threshold", type=_positive_float, metavar="C",
                   help="ESIM contrast threshold, ON and OFF (default 0.25)")
    p.add_argument("--max-virtual-fps", type=_positive_float, metavar="HZ",
                   help="highest virtual frame rate of the adaptive stepping (default 1000)")
    p.add_argument("--min-virtual-fps", type=_positive_float, metavar="HZ",
                   help="lowest virtual frame rate (default 150)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress (a bar on a terminal, a line every 30 s elsewhere)")


def build_config(args):
    from dataclasses import replace

    from evstream.sim.dataset import SynthConfig
    from evstream.sim.driver import StepConfig

    cfg = SynthConfig(task=args.task, sequences=args.sequences, seconds=args.seconds,
                      seed=args.seed, width=args.width, height=args.height,
                      frame_rate=args.frame_rate, fmt=args.fmt, split=args.split)
    if args.threshold is not None:
        cfg = replace(cfg, sim=replace(cfg.sim, c_on=args.threshold, c_off=args.threshold))
    step = {}
    if args.max_virtual_fps is not None:
        step["max_virtual_fps"] = args.max_virtual_fps
    if args.min_virtual_fps is not None:
        step["min_virtual_fps"] = args.min_virtual_fps
    if step:
        try:
            cfg = replace(cfg, step=replace(cfg.step, **step))
        except ValueError:
            raise EvstreamError(f"--min-virtual-fps must not exceed --max-virtual-fps "
                                f"({step.get('min_virtual_fps', StepConfig.min_virtual_fps)} > "
                                f"{step.get('max_virtual_fps', StepConfig.max_virtual_fps)})"
                                ) from None
    return cfg.resolved()


def main(args) -> int:
    from evstream.sim.dataset import generate_dataset

    cfg = build_config(args)
    workers = args.workers or min(os.cpu_count() or 1, cfg.sequences)
    summary = generate_dataset(args.out, cfg, workers=workers, force=args.force,
                               progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['out']}: {summary['sequences']} {cfg.task} sequences "
              f"({', '.join(f'{k} {v}' for k, v in summary['splits'].items())}), "
              f"{summary['events']:,} events, {summary['frames']:,} frames, "
              f"{summary['bytes'] / 1e6:.1f} MB in {summary['wall_s']:.1f} s "
              f"({summary['simulated_s_per_wall_s']:.3f} simulated s per s)")
    return 0
