"""`evstream record OUT [SOURCE | --camera MODEL]`: any source into a recording, in any format
of sources/writers.py (.aedat4 by default; .raw, .dat, .aedat, .bin, .npy, .npz, .h5, or
--format NAME, e.g. --format rosbag2 for a ROS 2 bag folder).

- Records events plus the frames, IMU samples and triggers the source has (what OUT's format
  cannot hold is dropped and counted in the summary, never silently). Which side streams an
  .aedat4 gets: the source's declared `streams` where it has them (.aedat4 files); otherwise
  the side streams seen in the first packets (PEEK_PACKETS packets or PEEK_US of source time),
  and all three for a live source that says nothing.
- Stops at the end of a finite source, after --duration S of source time (events with
  t < first + S), after --max-events N (exactly N), on Ctrl-C or SIGTERM. The first signal
  finishes the packet in hand and closes the file; a second one interrupts a source that is
  blocked waiting for data. Either way the file is finalised and the exit code is 0.
- OUT is written as the recording goes. An .aedat4 (sources.writer, streaming): killed by
  SIGKILL, a crash or a power cut, it holds everything recorded up to about a second before,
  and dv-processing and `evstream info` read it (a finished file, cut short later, needs
  `evstream repair`). The other formats guarantee less, each as sources/writers.py's table
  says: EVT, DAT, AEDAT 2.0, .bin and .npy files keep everything written (flushed at every
  packet); a .npz is only written when the recording ends (a killed record leaves nothing
  readable); an HDF5 file is flushed every 0.25 s with no guarantee from HDF5.
  An error after recording started (a damaged input, a disk that filled up, an event the format
  cannot hold) finishes OUT with what was recorded and says so in its one line; an error before
  anything was recorded leaves no OUT. Errors are one line, exit 2.
- Times: --time auto|keep|zero (sources.writers.TimeBase: auto starts times at 0 only where the
  format cannot hold the source's first time; an .aedat4 keeps them).
- OUT's format must be known and OUT must not be the input; an existing OUT is refused unless
  --force (it is then replaced as soon as recording starts, not when it ends).
- Progress goes to stderr (evstream.progress: a bar on a terminal, a line every 30 s in a log;
  --quiet for none); `--json` prints one summary object
  (events, frames, imu, triggers, dropped, t_start_us, t_end_us, t_shift_us, bytes, wall_s,
  ...) on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from evstream.commands.common import add_source_args, open_from_args, source_spec
from evstream.errors import EvstreamError
from evstream.sources import writers
from evstream.sources.base import SIDE_STREAMS, declared_side_streams
from evstream.sources.stream_writer import NAMES
from evstream.types import Packet

HELP = "record any source (camera, network, file, synthetic) to .aedat4 or any output format"
EXAMPLES = """  evstream record out.aedat4 --camera davis346 --duration 10
  evstream record out.aedat4 tcp://127.0.0.1:7777 --max-events 5000000
  evstream record out.aedat4 in.raw --json          # convert a file (see also evstream convert)
  evstream record out.raw --camera davis346         # EVT 3.0, times from 0 (frames/IMU dropped)
  evstream record out.h5 --camera any --duration 5  # DSEC-layout HDF5
  evstream record out.aedat4 --camera davis346 --force   # replace an existing out.aedat4
  # killed midway? out.aedat4 is readable as it is; a finished file cut short later:
  evstream repair cut.aedat4 fixed.aedat4"""

PEEK_PACKETS = 64
PEEK_US = 500_000


def configure(p) -> None:
    p.add_argument("out", metavar="OUT", help="the recording to write (.aedat4, or any format "
                   f"of --format: {writers.names()})")
    add_source_args(p)
    p.add_argument("--format", metavar="NAME",
                   help="output format (default: from OUT's suffix; rosbag2 only by name)")
    p.add_argument("--time", choices=writers.TIME_MODES, default="auto",
                   help="times as they are (keep), from 0 (zero), or from 0 only where the "
                   "format cannot hold them (auto, the default)")
    p.add_argument("--source", dest="source_flag", metavar="SOURCE",
                   help="the source, as an option (same as the positional SOURCE)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds of source time")
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, a line every 30 s elsewhere)")


class _Stop:
    """SIGINT/SIGTERM: the first one asks the loop to stop; a second raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:   # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def check_output(out: str, spec: str | None, force: bool, flag: str = "--force",
                 fmt: str | None = None) -> writers.WriterFormat:
    """OUT may be written: a known format (writers.resolve), not the input, not a folder, not
    an existing file unless forced (`run --record` checks the same); -> its format."""
    f = writers.resolve(out, fmt)
    writers.check_output(out, f, spec, force, flag)
    return f


def peek(packets, declared):
    """-> (packets read ahead, side streams to declare)."""
    ahead = []
    if declared is not None:
        return ahead, declared
    seen, t0 = set(), None
    for pkt in packets:
        ahead.append(pkt)
        seen |= {k for k in SIDE_STREAMS if len(getattr(pkt, k))}
        if len(pkt.events):
            t0 = int(pkt.events["t"][0]) if t0 is None else t0
            if int(pkt.events["t"][-1]) - t0 >= PEEK_US:
                break
        if len(ahead) >= PEEK_PACKETS:
            break
    return ahead, seen


def _cut(pkt: Packet, t_limit: int | None, n_left: int | None) -> tuple[Packet, bool]:
    """Trim pkt to events with t < t_limit and to at most n_left events, and its frames, IMU
    and triggers to the same time span; -> (packet, a limit was reached)."""
    ev = pkt.events
    keep, t_side = len(ev), None
    if t_limit is not None and len(ev) and int(ev["t"][-1]) >= t_limit:
        keep, t_side = int(np.searchsorted(ev["t"], t_limit, "left")), t_limit
    if n_left is not None and keep >= n_left:
        keep = n_left
        t_end = int(ev["t"][keep - 1]) + 1 if keep else None
        t_side = t_end if t_side is None or t_end is None else min(t_side, t_end)
    elif t_side is None:
        return pkt, False
    if t_side is None:
        return Packet(ev[:keep], pkt.frames, pkt.imu, pkt.triggers), True
    return Packet(ev[:keep], [f for f in pkt.frames if f.t_us < t_side],
                  pkt.imu[pkt.imu["t"] < t_side], pkt.triggers[pkt.triggers["t"] < t_side]), True


def record(src, out: str, *, fmt: writers.WriterFormat | None = None, time_mode: str = "auto",
           duration_s: float | None = None, max_events: int | None = None,
           progress: bool = False, stop: _Stop | None = None) -> dict:
    """Copy src into out (in fmt, default: from OUT's suffix); returns the summary dict. See the
    module doc."""
    t_wall = time.perf_counter()
    fmt = fmt or writers.resolve(out)
    if fmt.name == "aedat4" and hasattr(src, "share_dv_stores"):
        src.share_dv_stores = True
    packets = src.packets()
    ahead, side = peek(packets, declared_side_streams(src))
    frame_size = getattr(src, "frame_size", None)
    timebase = writers.TimeBase(time_mode, fmt.time_limit_us)
    handed = dict.fromkeys(SIDE_STREAMS, 0)
    writer = writers.open_writer(out, fmt, width=src.width, height=src.height,
                                 camera=src.camera or "unknown", frames="frames" in side,
                                 imu="imu" in side, triggers="triggers" in side,
                                 frame_size=frame_size)
    bar = None
    if progress:
        from evstream.progress import progress as progress_bar

        bar = progress_bar(unit="ev", unit_scale=True, desc=os.path.basename(out))
    interrupted = False
    t_limit = None
    try:
        with writer:      # an exception finishes OUT with what was written (streaming writer)
            try:
                def stream():
                    yield from ahead
                    yield from packets

                for pkt in stream():
                    if t_limit is None and duration_s is not None and len(pkt.events):
                        t_limit = int(pkt.events["t"][0]) + int(round(duration_s * 1e6))
                    n_left = None if max_events is None else \
                        max_events - writer.counts["events"]
                    pkt, done = _cut(pkt, t_limit, n_left)
                    pkt = timebase.apply(pkt)
                    for k in SIDE_STREAMS:
                        handed[k] += len(getattr(pkt, k))
                    writer.write(pkt)
                    if bar is not None:
                        bar.update(len(pkt.events))
                    if done:
                        break
                    if stop is not None and stop.requested:
                        interrupted = True
                        break
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if bar is not None:
                    bar.close()
    except EvstreamError as e:
        kept = writer.written           # what reached dv (a failed write took none of its events)
        if not any(kept.values()):
            writers.remove_output(writer, out, fmt)
            raise
        raise EvstreamError(f"{e} ({out} keeps what was recorded before: {kept['events']:,} "
                            f"events, {kept['frames']} frames, {kept['imu']} IMU samples, "
                            f"{kept['triggers']} triggers)") from None
    return {
        "out": out,
        "format": fmt.name,
        "source": src.name,
        "camera": writer.camera,
        "width": writer.width,
        "height": writer.height,
        **writers.written(writer, handed, timebase),
        "bytes": writer.bytes,
        "wall_s": round(time.perf_counter() - t_wall, 6),
        "interrupted": interrupted or bool(stop and stop.requested),
        "dropped_out_of_order": src.stats.dropped_out_of_order,
        "dropped_outside_sensor": src.stats.dropped_outside_sensor,
    }


def main(args) -> int:
    if args.source_flag:
        if args.source or args.camera:
            raise EvstreamError("give the source once: positional SOURCE, --source or --camera")
        args.source = args.source_flag
    spec = source_spec(args)
    out = args.out
    fmt = check_output(out, spec, args.force, fmt=args.format)
    if args.duration is not None and not args.duration > 0:
        raise EvstreamError(f"--duration must be > 0 seconds, not {args.duration}")
    if args.max_events is not None and args.max_events <= 0:
        raise EvstreamError(f"--max-events must be > 0, not {args.max_events}")
    with _Stop() as stop:
        src = open_from_args(args, spec)
        try:
            summary = record(src, out, fmt=fmt, time_mode=args.time,
                             duration_s=args.duration, max_events=args.max_events,
                             progress=not args.quiet, stop=stop)
        finally:
            src.close()
    if args.json:
        print(json.dumps(summary))
    else:
        span = "" if summary["t_start_us"] is None else \
            f", {(summary['t_end_us'] - summary['t_start_us']) / 1e6:.3f} s of events"
        print(f"wrote {out}: {summary['events']:,} events, {summary['frames']} frames, "
              f"{summary['imu']} IMU samples, {summary['triggers']} triggers{span}, "
              f"{summary['bytes']:,} bytes in {summary['wall_s']:.2f} s"
              + (" (stopped by signal)" if summary["interrupted"] else ""))
        if summary["t_shift_us"]:
            print(f"times start at 0: shifted by -{summary['t_shift_us']} us")
        for k, d in summary["dropped"].items():
            print(f"dropped {d['n']:,} {NAMES[k]}: {d['why']}")
    return 0
