"""`evstream convert IN OUT`: a recording from any format evstream reads into any it writes.

- OUT's format comes from its suffix or --format NAME (sources/writers.py: .aedat4, .raw (EVT
  3.0; --format evt2 for EVT 2.0), .dat, .aedat/.aedat2, .bin, .npy, .npz, .h5/.hdf5, .mcap (a
  ROS 2 bag in one file), and --format rosbag2 for a ROS 2 bag folder).
- What is written: IN's events, frames, IMU samples and triggers, after --start/--end (seconds
  from the first event: items before first + start are dropped, reading stops at first + end)
  and the source options `record` takes (--roi, --polarity, --hot-pixels, --refractory-us,
  --ba-filter-us; --width/--height/--stream/--bad-events for the reader). What OUT's format
  cannot hold is dropped and counted, one line per stream in the summary, never silently;
  events it cannot hold (coordinates beyond its fields, times beyond its clock) stop the
  conversion with a one-line error and no OUT.
- Times: --time auto|keep|zero (writers.TimeBase: auto starts times at 0 only where the format
  cannot hold the input's first time, e.g. a DAVIS's microseconds since 1970 going to EVT, DAT,
  AEDAT 2.0 or .bin). The shift is in the summary.
- Bounded memory: packets go to the writer as the reader yields them, cut to at most
  --packet-events events; every writer's own buffer is bounded (writers.py), so a file larger
  than memory converts where its reader streams (all do, except .npz inputs, whose fields numpy
  loads whole, and an AEDAT4 packet, which dv-processing decodes whole).
- --verify reads OUT back with evstream's reader for its format and compares an EventDigest of
  the events handed to the writer with one of the events read: count, sums of t, x, y, p
  (mod 2^64) and a BLAKE2b hash of (t, x, y, p) in order; exact equality, plus the frame, IMU
  and trigger counts. A mismatch is one line and exit 1 (OUT is kept to look at).
- One-line errors, exit 2: an unknown output format, OUT existing without --force, OUT = IN, a
  live source, events the format cannot hold; a conversion that fails midway (or Ctrl-C)
  removes OUT.
- Progress on stderr (evstream.progress; --quiet for none); --json prints one summary object
  (events, frames, imu, triggers, dropped, t_shift_us, bytes, wall_s, peak_buffered_events,
  verify) on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from itertools import chain

import numpy as np

from evstream.commands.common import add_source_args, open_from_args, positive_int, seconds, \
    source_spec
from evstream.errors import EvstreamError
from evstream.sources import writers
from evstream.sources.stream_writer import NAMES
from evstream.types import Packet

HELP = "convert a recording between formats (aedat4, raw, dat, aedat, bin, npy, npz, h5, ...)"
EXAMPLES = """  evstream convert in.aedat4 out.raw                 # EVT 3.0 (frames/IMU dropped, said)
  evstream convert in.raw out.raw --format evt2 --force
  evstream convert in.aedat4 out.h5 --start 1.0 --end 3.5 --verify --json
  evstream convert in.aedat out.npz --roi 0,0,120,90 --refractory-us 500
  evstream convert in.raw bag --format rosbag2       # a ROS 2 bag folder (or: out.mcap)
  evstream convert in.aedat4 nmnist.bin --time zero  # times from 0 (auto does it where needed)"""

PACKET_EVENTS = 1 << 18
SIDE = ("frames", "imu", "triggers")


class VerifyFailed(EvstreamError):
    """OUT does not read back as what was written: exit 1."""

    exit_code = 1


def configure(p) -> None:
    p.add_argument("source", metavar="IN", nargs="?", help="the recording to read")
    p.add_argument("out", metavar="OUT", nargs="?", help="the file (or bag folder) to write")
    p.add_argument("--format", metavar="NAME",
                   help=f"output format: {writers.names()} (default: from OUT's suffix)")
    add_source_args(p, positional=False)
    g = p.add_argument_group("conversion")
    g.add_argument("--start", type=seconds, metavar="S",
                   help="start S seconds after the first event")
    g.add_argument("--end", type=seconds, metavar="S",
                   help="stop S seconds after the first event")
    g.add_argument("--time", choices=writers.TIME_MODES, default="auto",
                   help="times as they are (keep), from 0 (zero), or from 0 only where the "
                   "format cannot hold them (auto, the default)")
    g.add_argument("--packet-events", type=positive_int, default=PACKET_EVENTS, metavar="N",
                   help=f"hand the writer at most N events at a time (default {PACKET_EVENTS})")
    g.add_argument("--verify", action="store_true",
                   help="read OUT back and check it holds exactly the events written")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, a line every 30 s elsewhere)")


# -- what was written, what is read back ---------------------------------------------------------

_DIGEST_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])  # packed
_MASK64 = (1 << 64) - 1


class EventDigest:
    """A streaming checksum of events: count, sums of t, x, y, p (mod 2^64; p as 0/1) and a
    BLAKE2b hash of the packed (t, x, y, p) records in order. Equal digests: the same events in
    the same order (up to a hash collision)."""

    def __init__(self):
        self.events = 0
        self.sums = [0, 0, 0, 0]
        self._hash = hashlib.blake2b(digest_size=16)

    def update(self, ev: np.ndarray) -> None:
        if not len(ev):
            return
        rec = np.empty(len(ev), _DIGEST_DTYPE)
        rec["t"], rec["x"], rec["y"], rec["p"] = ev["t"], ev["x"], ev["y"], ev["p"] > 0
        self._hash.update(rec.tobytes())
        self.events += len(ev)
        for i, k in enumerate(("t", "x", "y", "p")):
            s = int(rec[k].astype(np.uint64).sum(dtype=np.uint64))
            self.sums[i] = (self.sums[i] + s) & _MASK64

    def as_dict(self) -> dict:
        return {"events": self.events, "sum_t": self.sums[0], "sum_x": self.sums[1],
                "sum_y": self.sums[2], "sum_p": self.sums[3], "blake2b": self._hash.hexdigest()}


def read_back(out: str, fmt: writers.WriterFormat, width: int, height: int,
              progress: bool = False) -> tuple[EventDigest, dict, tuple[int, int]]:
    """OUT through evstream's reader: (its EventDigest, side-stream counts, its geometry)."""
    from evstream.sources import open_source

    options = {} if fmt.stores_geometry else {"width": width, "height": height}
    digest, side = EventDigest(), dict.fromkeys(SIDE, 0)
    bar = _bar(progress, f"verify {os.path.basename(out)}")
    try:
        with open_source(out, **options) as src:
            for pkt in src.packets():
                digest.update(pkt.events)
                for k in SIDE:
                    side[k] += len(getattr(pkt, k))
                if bar is not None:
                    bar.update(len(pkt.events))
            geometry = (src.width, src.height)
    finally:
        if bar is not None:
            bar.close()
    return digest, side, geometry


def verify(out: str, fmt: writers.WriterFormat, written: EventDigest, writer, width: int,
           height: int, progress: bool = False) -> dict:
    """{"ok", "mismatch" (one line, "" when ok), "written", "read"}."""
    try:
        got, side, geometry = read_back(out, fmt, width, height, progress)
    except EvstreamError as e:
        return {"ok": False, "mismatch": f"reading it back failed: {e}",
                "written": written.as_dict(), "read": None}
    want, have = written.as_dict(), got.as_dict()
    problems = []
    if want != have:
        what = [k for k in want if want[k] != have[k]]
        problems.append(f"events differ ({', '.join(what)}: {want['events']:,} written, "
                        f"{have['events']:,} read)")
    for k in SIDE:
        if side[k] != writer.counts[k]:
            problems.append(f"{k}: {writer.counts[k]} written, {side[k]} read")
    if fmt.stores_geometry and geometry != (width, height):
        problems.append(f"geometry {geometry[0]}x{geometry[1]} read, {width}x{height} written")
    return {"ok": not problems, "mismatch": "; ".join(problems), "written": want,
            "read": {**have, **side}}


# -- the conversion --------------------------------------------------------------------------------

def _us(s: float) -> int:
    return int(round(s * 1e6))


def trimmed(packets, start_s: float | None, end_s: float | None):
    """--start/--end: items with first + start <= t < first + end (first: the first event);
    reading stops at the first event at or after first + end."""
    from evstream.sources.pacing import trim_packet   # (the replay's own --start/--end cut)

    if start_s is None and end_s is None:
        yield from packets
        return
    lo = hi = None
    first = None
    for pkt in packets:
        if first is None:
            if not len(pkt.events):
                if not start_s:          # before the first event: kept unless cut by --start
                    yield pkt
                continue
            first = int(pkt.events["t"][0])
            lo = first + _us(start_s) if start_s else None
            hi = first + _us(end_s) if end_s is not None else None
        cut = trim_packet(pkt, lo, hi)
        if not cut.is_empty():
            yield cut
        if hi is not None and len(pkt.events) and int(pkt.events["t"][-1]) >= hi:
            return


def pieces(pkt: Packet, n: int):
    """pkt with at most n events per piece (side items ride with the first piece)."""
    ev = pkt.events
    if len(ev) <= n:
        yield pkt
        return
    yield Packet(ev[:n], pkt.frames, pkt.imu, pkt.triggers)
    for i in range(n, len(ev), n):
        yield Packet(ev[i:i + n])


def _bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from evstream.progress import progress

    return progress(unit="ev", unit_scale=True, desc=desc)


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path) if os.path.exists(path) else 0


def convert(src, out: str, fmt: writers.WriterFormat, *, start_s: float | None = None,
            end_s: float | None = None, time_mode: str = "auto",
            packet_events: int = PACKET_EVENTS, check: bool = False, progress: bool = False,
            writer_options: dict | None = None) -> dict:
    """Write src into out in fmt; returns the summary (see the module doc). `check`: --verify
    (the summary's "verify"; the caller decides what a mismatch means)."""
    from evstream.commands.record import peek
    from evstream.sources.base import declared_side_streams   # (loads numba: not at start-up)

    t_wall = time.perf_counter()
    if fmt.name == "aedat4" and hasattr(src, "share_dv_stores"):
        src.share_dv_stores = True      # an .aedat4 copy hands dv its own stores
    packets = trimmed(src.packets(), start_s, end_s)
    if fmt.declares_streams:     # read ahead (record.peek) only for a writer that needs to know
        ahead, side = peek(packets, declared_side_streams(src))
    else:
        ahead, side = [], set()
    timebase = writers.TimeBase(time_mode, fmt.time_limit_us)
    writer = writers.open_writer(out, fmt, width=src.width, height=src.height,
                                 camera=src.camera or "unknown", frames="frames" in side,
                                 imu="imu" in side, triggers="triggers" in side,
                                 frame_size=getattr(src, "frame_size", None),
                                 **(writer_options or {}))
    digest, handed = EventDigest(), dict.fromkeys(SIDE, 0)
    bar = _bar(progress, os.path.basename(os.path.normpath(out)))
    try:
        for pkt in chain(ahead, packets):
            pkt = timebase.apply(pkt)
            for piece in pieces(pkt, packet_events):
                digest.update(piece.events)
                for k in SIDE:
                    handed[k] += len(getattr(piece, k))
                writer.write(piece)
            if bar is not None:
                bar.update(len(pkt.events))
        writer.close()
    except KeyboardInterrupt:
        writers.remove_output(writer, out, fmt)
        raise EvstreamError(f"{out}: interrupted; nothing written") from None
    except EvstreamError as e:
        writers.remove_output(writer, out, fmt)
        raise EvstreamError(f"{e} ({out} not written)") from None
    except BaseException:
        writers.remove_output(writer, out, fmt)
        raise
    finally:
        if bar is not None:
            bar.close()
    summary = {
        "in": src.name,
        "out": out,
        "format": fmt.name,
        "camera": src.camera,
        "width": src.width,
        "height": src.height,
        **writers.written(writer, handed, timebase),
        "filtered": src.stats.filtered,
        "time_mode": time_mode,
        "bytes": _size(out),
        "peak_buffered_events": getattr(writer, "peak_buffered", None),
        "wall_s": None,
        "verify": None,
    }
    if check:
        summary["verify"] = verify(out, fmt, digest, writer, src.width, src.height, progress)
    summary["wall_s"] = round(time.perf_counter() - t_wall, 6)
    return summary


def _text(s: dict) -> str:
    lines = [f"wrote {s['out']} ({writers.FORMATS[s['format']].title}): {s['events']:,} events, "
             f"{s['frames']} frames, {s['imu']} IMU samples, {s['triggers']} triggers, "
             f"{s['bytes']:,} bytes in {s['wall_s']:.2f} s"]
    if s["t_shift_us"]:
        why = "--time zero" if s["time_mode"] == "zero" else \
            f"{writers.FORMATS[s['format']].title} cannot hold them as they are"
        lines.append(f"times start at 0: every time shifted by -{s['t_shift_us']} us ({why})")
    for k, d in s["dropped"].items():
        lines.append(f"dropped {d['n']:,} {NAMES[k]}: {d['why']}")
    v = s["verify"]
    if v is not None and v["ok"]:
        lines.append(f"verify: read back {v['read']['events']:,} events, equal to those written "
                     f"(blake2b {v['read']['blake2b']})")
    return "\n".join(lines)


def main(args) -> int:
    if not args.source or not args.out:
        raise EvstreamError("give IN and OUT: evstream convert IN OUT (see --help)")
    spec = source_spec(args)
    out = args.out
    fmt = writers.resolve(out, args.format)
    writers.check_output(out, fmt, spec, args.force)
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise EvstreamError(f"--end {args.end} must be after --start {args.start}")
    if args.end is not None and args.end <= 0:
        raise EvstreamError(f"--end {args.end}: must be > 0 seconds")
    src = open_from_args(args, spec)
    try:
        if src.live:
            raise EvstreamError(f"{spec}: is a live source; convert reads recordings "
                                "(evstream record writes live sources)")
        summary = convert(src, out, fmt, start_s=args.start, end_s=args.end,
                          time_mode=args.time, packet_events=args.packet_events,
                          check=args.verify, progress=not args.quiet)
    finally:
        src.close()
    print(json.dumps(summary) if args.json else _text(summary))
    v = summary["verify"]
    if v is not None and not v["ok"]:
        raise VerifyFailed(f"verify failed: {out}: {v['mismatch']} ({out} kept)")
    return 0
