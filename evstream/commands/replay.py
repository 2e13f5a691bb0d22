"""`evstream replay FILE`: a recording through the streaming pipeline.

Source -> shared-memory ring -> windows -> representation -> zmq -> consumer, each in its own
process. With `--no-model` the consumer is a sink that measures delivery; the inference worker and
viewer are the consumer once they exist.
"""

from __future__ import annotations

import argparse
import json
import sys

from evstream.commands.common import add_replay_args, add_source_args, source_spec
from evstream.config import PipelineConfig, SourceConfig, WindowConfig
from evstream.errors import EvstreamError

HELP = "replay a recording through the pipeline (same as run, from a file)"
EXAMPLES = """  evstream replay file.aedat4 --no-model
  evstream replay file.aedat4 --speed max --no-model --lossless --json
  evstream replay file.raw --speed 0.5 --loop --start 1.0 --end 3.0 --no-model"""


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument("--no-model", action="store_true",
                   help="no inference: windows go to a sink that measures delivery")
    g.add_argument("--lossless", action="store_true",
                   help="deliver every window (writers wait for readers); default is live: the "
                        "newest window wins and drops are counted")
    g.add_argument("--window-ms", type=float, default=50.0, help="time window length (ms)")
    g.add_argument("--stride-ms", type=float, help="time between window starts (default: window)")
    g.add_argument("--count", type=int, help="count windows of this many events instead of time")
    g.add_argument("--representation", default="voxel", help="voxel | histogram | ... "
                   "(see evstream.represent)")
    g.add_argument("--bins", type=int, default=5, help="voxel grid bins")
    g.add_argument("--normalize", action="store_true", help="voxel non-zero mean/std normalisation")
    g.add_argument("--deadline-ms", type=float, default=10.0,
                   help="sparse scenes: emit a window this long after its end even without "
                        "later events (0: off)")
    g.add_argument("--ring-events", type=int, default=1 << 22,
                   help="shared-memory ring capacity in events (16 bytes each)")
    g.add_argument("--status-every", type=float, default=2.0, metavar="S",
                   help="print a status line every S seconds (0: never)")
    g.add_argument("--json", action="store_true", help="print a final JSON summary on stdout")
    g.add_argument("--dump-windows", metavar="NPZ", help=argparse.SUPPRESS)
    g.add_argument("--slow-consumer-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def configure(p: argparse.ArgumentParser) -> None:
    add_source_args(p)
    add_replay_args(p)
    add_pipeline_args(p)


def _positive(name: str, value, allow_none=True):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise EvstreamError(f"{name} must be > 0, not {value}")


def pipeline_config(args, spec: str, live: bool) -> PipelineConfig:
    _positive("--window-ms", args.window_ms, allow_none=False)
    _positive("--stride-ms", args.stride_ms)
    _positive("--count", args.count)
    _positive("--bins", args.bins, allow_none=False)
    _positive("--ring-events", args.ring_events, allow_none=False)
    from evstream.represent import list_representations

    if args.representation not in list_representations():
        raise EvstreamError(f"unknown representation {args.representation!r} "
                            f"(known: {', '.join(list_representations())})")
    options = {k: v for k, v in vars(args).items()
               if k in _source_option_names() and v is not None}
    speed = getattr(args, "speed", None)
    speed = 1.0 if speed is None else (None if speed == "max" else float(speed))
    source = SourceConfig(spec=spec, options=options,
                          speed=None if live else speed,
                          loop=getattr(args, "loop", False), start_s=getattr(args, "start", None),
                          end_s=getattr(args, "end", None),
                          ring_capacity_events=args.ring_events)
    window = WindowConfig(mode="count" if args.count else "time",
                          window_us=int(args.window_ms * 1000),
                          stride_us=int(args.stride_ms * 1000) if args.stride_ms else None,
                          count=args.count or 100_000, representation=args.representation,
                          num_bins=args.bins, normalize=args.normalize,
                          deadline_ms=args.deadline_ms)
    return PipelineConfig(source=source, window=window, lossless=args.lossless,
                          telemetry_interval_s=args.status_every,
                          dump_windows=args.dump_windows or "",
                          slow_consumer_ms=args.slow_consumer_ms)


_NAMES: set[str] | None = None


def _source_option_names() -> set[str]:
    """The attribute names `add_source_args` defines (forwarded to the source process)."""
    global _NAMES
    if _NAMES is None:
        p = argparse.ArgumentParser()
        add_source_args(p)
        _NAMES = {a.dest for a in p._actions if a.dest not in ("help", "source")}
    return _NAMES


def run_and_report(cfg: PipelineConfig, args) -> int:
    from evstream.pipeline import run_pipeline

    quiet = args.json or not args.status_every
    res = run_pipeline(cfg, status=None if not quiet else (lambda line: print(line, file=sys.stderr)))
    if res.exit_code:
        if res.user_error:
            raise EvstreamError(res.error)
        print(f"evstream: stage {res.error_stage!r} failed:\n{res.error}", file=sys.stderr)
        return res.exit_code
    s = res.summary
    if args.json:
        print(json.dumps(s, default=str))
    else:
        print(format_summary(s))
    return 0


def format_summary(s: dict) -> str:
    lat = s.get("latency_ms", {})
    rate = s["events_in"] / s["stream_s"] / 1e6 if s.get("stream_s") else 0.0
    lines = [
        f"source      {s.get('camera', '')} {s.get('width')}x{s.get('height')}",
        f"events      in {s['events_in']:,}  delivered in windows {s['events_out']:,}  "
        f"({rate:.2f} M ev/s over {s['stream_s']:.2f} s streaming, {s['wall_s']:.2f} s in all)",
        f"windows     {s['windows']:,} delivered, {s['dropped_windows']:,} dropped (live mode "
        f"keeps the newest; {s.get('dropped_window_events', 0):,} events in them)",
        f"drops       {s['dropped_events']:,} events lost before windowing",
        f"side        frames {s.get('frames', 0):,}  imu {s.get('imu', 0):,}  "
        f"triggers {s.get('triggers', 0):,}  (dropped {s.get('dropped_side', 0):,})",
        f"latency     window end -> delivery p50 {lat.get('p50', 0):.2f} ms  "
        f"p99 {lat.get('p99', 0):.2f} ms  max {lat.get('max', 0):.2f} ms",
    ]
    if s.get("end_reason"):
        lines.append(f"ended       {s['end_reason']}")
    return "\n".join(lines)


def main(args) -> int:
    if not args.no_model:
        raise EvstreamError("the inference worker is not built yet: use --no-model")
    if getattr(args, "camera", None):
        raise EvstreamError("replay takes a recording; use `evstream run --camera ...` for a camera")
    spec = source_spec(args)
    return run_and_report(pipeline_config(args, spec, live=False), args)
