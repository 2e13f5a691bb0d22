"""The streaming writers, by output format: what `evstream convert` and `evstream record` write.

    fmt = writers.resolve("out.raw")                      # -> FORMATS["evt3"]
    w = writers.open_writer("out.raw", fmt, width=640, height=480)
    w.write(packet) ... w.close()

Every writer has writer.Aedat4Writer's interface (stream_writer.StreamWriter for the others):
write(packet), close(), a context manager, counts / written, t_first_us / t_last_us, bytes, and
(StreamWriter) dropped / drop_reasons / peak_buffered / abort(). Factories import their module
only when called, so importing this registry loads no writer.

Which format OUT is written in: `--format NAME` where given (OUT must then carry one of that
format's suffixes, so evstream's readers find it again), else OUT's suffix (the first format
listing it: .raw is EVT 3.0, .dat Prophesee DAT, .mcap a ROS 2 bag). A ROS 2 bag
(sources.rosbag_writer.RosbagWriter) is a folder, chosen by `--format rosbag2` (OUT: the bag's
folder, sqlite3 storage; it must not exist, or --force replaces an empty folder or one that
holds a bag's metadata.yaml), or one mcap file, chosen by OUT's suffix .mcap. Anything else is
a one-line error.

format   OUT                holds (the rest is dropped and counted)   times        a killed record
aedat4   .aedat4            events, frames, IMU, triggers             int64        all but ~0.5 s
evt3     .raw               events, triggers of dv type 1/2 (edges)   0..2^40 us   all written
evt2     .raw + --format    events, triggers of dv type 1/2 (edges)   0..2^40 us   all written
dat      .dat               events                                    0..2^32-1    all written
aedat2   .aedat, .aedat2    events, IMU, APS frames, triggers 1/2/3   < 2^32 (1)   all written (2)
bin      .bin               events (x < 256, y < 256, y != 240)       < 2^23 (1)   all written
npy      .npy               events                                    int64        all written
npz      .npz               events                                    int64        nothing
h5       .h5, .hdf5         events (DSEC layout)                      int64        no guarantee
rosbag2  folder + --format, events (EVT 3.0 packets), frames, IMU,   int64        nothing: the
         or .mcap           triggers of dv type 1/2                                bag is made at
                                                                                   close
(1) the first time; steps between events below 2^31 (aedat2) / 2^22 us (bin). (2) not the side
records held for the events to pass them. AEDAT 2.0 is jAER's DAVIS layout (a DVS128: events
and type-2 triggers). "all written": flushed to the kernel at every write, fdatasync'ed every
0.25 s (stream_writer.py); aedat4: writer.py.

Geometry limits (one-line error at open): EVT and ROS 2 bags 2048x2048, DAT 16384x16384, AEDAT 2.0 only jAER's
chip sizes (240x180, 346x260, 640x480, 128x128). .bin and .npy files do not store the geometry
(.bin's events are checked one by one against its 8-bit fields); they are read back with the
source's width/height.

Times: `TimeBase` applies `--time`: keep (times as they are), zero (the first time written
becomes 0: every time is shifted by the same `shift_us`), or auto (the default: zero where the
first time is beyond what the format holds, `FORMATS[..].time_limit_us`, e.g. a DAVIS's
microseconds since 1970 going into EVT, DAT, AEDAT 2.0 or .bin; keep otherwise). The shift is
reported (`t_shift_us`); `convert --verify` checks OUT against the shifted events.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

from evstream.errors import EvstreamError
from evstream.types import Packet


@dataclass(frozen=True)
class WriterFormat:
    name: str                        # what --format takes
    title: str                       # in messages
    suffixes: tuple[str, ...]        # () for a folder (rosbag2)
    factory: Callable = field(repr=False)   # (path, *, width, height, camera, frames, imu,
    #                                          triggers, frame_size, **options) -> writer
    holds: str = "events"            # one line for --help and the summary
    stores_geometry: bool = True     # False: read it back with the source's width/height
    time_limit_us: int | None = None  # auto time: zero when the first time is not below this
    folder: bool = False             # OUT may be a folder of any name (with --format)
    declares_streams: bool = False   # the writer wants the side streams at open (frames/imu/...)


def _aedat4(path, **kw):
    from evstream.sources.writer import Aedat4Writer

    return Aedat4Writer(path, **kw)


def _raw(evt):
    def make(path, **kw):
        from evstream.sources.prophesee import RawWriter

        return RawWriter(path, evt=evt, **kw)
    return make


def _dat(path, **kw):
    from evstream.sources.prophesee import DatWriter

    return DatWriter(path, **kw)


def _aedat2(path, **kw):
    from evstream.sources.aedat2 import Aedat2Writer

    return Aedat2Writer(path, **kw)


def _bin(path, **kw):
    from evstream.sources.atis import AtisBinWriter

    return AtisBinWriter(path, **kw)


def _npy(path, **kw):
    from evstream.sources.arrays import NpyWriter

    return NpyWriter(path, **kw)


def _npz(path, **kw):
    from evstream.sources.arrays import NpzWriter

    return NpzWriter(path, **kw)


def _h5(path, **kw):
    from evstream.sources.arrays import H5Writer

    return H5Writer(path, **kw)


def _rosbag2(path, **kw):
    try:
        from evstream.sources.rosbag_writer import RosbagWriter
    except ModuleNotFoundError as e:
        if e.name != "evstream.sources.rosbag_writer":
            raise
        raise EvstreamError(f"{path}: ROS 2 bag output is not built in this checkout "
                            "(evstream.sources.rosbag_writer is missing)") from None
    return RosbagWriter(path, **kw)


EVT_LIMIT_US = 1 << 40
FORMATS: dict[str, WriterFormat] = {f.name: f for f in (
    WriterFormat("aedat4", "AEDAT 4.0", (".aedat4",), _aedat4,
                 "events, frames, IMU, triggers", declares_streams=True),
    WriterFormat("evt3", "Prophesee EVT 3.0", (".raw",), _raw("3.0"),
                 "events, triggers (edges)", time_limit_us=EVT_LIMIT_US),
    WriterFormat("evt2", "Prophesee EVT 2.0", (".raw",), _raw("2.0"),
                 "events, triggers (edges)", time_limit_us=EVT_LIMIT_US),
    WriterFormat("dat", "Prophesee DAT", (".dat",), _dat, "events", time_limit_us=1 << 32),
    WriterFormat("aedat2", "jAER AEDAT 2.0", (".aedat", ".aedat2"), _aedat2,
                 "events, IMU, APS frames, external triggers", time_limit_us=1 << 32,
                 declares_streams=True),
    WriterFormat("bin", "ATIS .bin (N-MNIST)", (".bin",), _bin, "events",
                 stores_geometry=False, time_limit_us=1 << 23),
    WriterFormat("npy", "numpy .npy", (".npy",), _npy, "events", stores_geometry=False),
    WriterFormat("npz", "numpy .npz", (".npz",), _npz, "events"),
    WriterFormat("h5", "HDF5, DSEC layout", (".h5", ".hdf5"), _h5, "events"),
    WriterFormat("rosbag2", "ROS 2 bag", (".mcap",), _rosbag2,
                 "events, frames, IMU, triggers (edges)", folder=True, declares_streams=True),
)}


def names() -> str:
    return ", ".join(FORMATS)


def resolve(out: str, fmt: str | None = None) -> WriterFormat:
    """The format OUT is written in (the rule of the module doc); one-line errors."""
    out = os.fspath(out)
    if fmt is not None:
        f = FORMATS.get(fmt.lower())
        if f is None:
            raise EvstreamError(f"--format {fmt}: unknown output format; one of {names()}")
        if not f.folder and not out.lower().endswith(f.suffixes):
            raise EvstreamError(f"{out}: --format {f.name} writes {' or '.join(f.suffixes)} "
                                f"files")
        return f
    low = out.lower()
    for f in FORMATS.values():
        if f.suffixes and low.endswith(f.suffixes):
            return f
    suffix = os.path.splitext(out)[1] or "(none)"
    known = " ".join(dict.fromkeys(s for f in FORMATS.values() for s in f.suffixes))
    raise EvstreamError(f"{out}: unknown output format (suffix {suffix}); give a name ending in "
                        f"{known}, or --format rosbag2 for a ROS 2 bag folder")


def check_output(out: str, fmt: WriterFormat, spec: str | None, force: bool,
                 flag: str = "--force") -> None:
    """OUT may be written: not the input, not an existing file or folder unless forced (a
    folder output only replaces a ROS 2 bag), not a folder where a file goes."""
    out = os.fspath(out)
    if spec and os.path.exists(spec) and os.path.exists(out) and os.path.samefile(spec, out):
        raise EvstreamError(f"{out}: is the input; write into another file")
    if os.path.isdir(out) and not fmt.folder:
        raise EvstreamError(f"{out}: is a folder")
    if os.path.lexists(out):
        if not force:
            raise EvstreamError(f"{out}: exists; give {flag} to replace it")
        if fmt.folder and os.path.isdir(out) and os.listdir(out) and \
                not os.path.exists(os.path.join(out, "metadata.yaml")):
            raise EvstreamError(f"{out}: is a folder that holds no ROS 2 bag (no metadata.yaml); "
                                "not replaced")


def open_writer(out: str, fmt: WriterFormat, *, width: int, height: int, camera: str = "evstream",
                frames: bool = False, imu: bool = False, triggers: bool = False,
                frame_size=None, **options):
    """A writer of `fmt` at OUT (an existing bag folder, allowed by check_output, is removed
    first: a bag writer makes its folder)."""
    out = os.fspath(out)
    if fmt.folder and os.path.isdir(out):
        shutil.rmtree(out)
    return fmt.factory(out, width=width, height=height, camera=camera, frames=frames, imu=imu,
                       triggers=triggers, frame_size=frame_size, **options)


def remove_output(writer, out: str, fmt: WriterFormat) -> None:
    """Drop a half-written OUT (convert after an error)."""
    abort = getattr(writer, "abort", None)
    if abort is not None:
        abort()
    else:
        close = getattr(writer, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - it is removed below anyway
                pass
    if os.path.isdir(out) and fmt.folder:
        shutil.rmtree(out, ignore_errors=True)
    elif os.path.lexists(out):
        os.unlink(out)


# -- time ------------------------------------------------------------------------------------------

TIME_MODES = ("auto", "keep", "zero")


def _t_min(pkt: Packet) -> int | None:
    ts = [int(pkt.events["t"][0])] if len(pkt.events) else []
    ts += [f.t_us for f in pkt.frames]
    ts += [int(a["t"].min()) for a in (pkt.imu, pkt.triggers) if len(a)]
    return min(ts) if ts else None


class TimeBase:
    """`--time keep|zero|auto` (see the module doc): apply(packet) -> the packet with
    `shift_us` subtracted from every time, decided at the first packet that holds anything.
    Side items that would come before 0 (only possible after the first packet) are dropped and
    counted in `dropped`."""

    def __init__(self, mode: str = "auto", limit_us: int | None = None):
        if mode not in TIME_MODES:
            raise EvstreamError(f"--time {mode}: one of {', '.join(TIME_MODES)}")
        self.mode, self.limit_us = mode, limit_us
        self.shift_us: int | None = None
        self.dropped = {"frames": 0, "imu": 0, "triggers": 0}

    def apply(self, pkt: Packet) -> Packet:
        if self.shift_us is None:
            t0 = _t_min(pkt)
            if t0 is None:
                return pkt
            if self.mode == "zero":
                self.shift_us = t0
            elif self.mode == "auto" and self.limit_us is not None and \
                    (t0 >= self.limit_us or t0 < 0):
                self.shift_us = t0
            else:
                self.shift_us = 0
        s = self.shift_us
        if not s:
            return pkt
        ev = pkt.events
        if len(ev):
            ev = ev.copy()
            ev["t"] -= s
        frames = [type(f)(f.t_us - s, f.image, f.exposure_us) for f in pkt.frames
                  if f.t_us >= s]
        self.dropped["frames"] += len(pkt.frames) - len(frames)
        side = {}
        for k in ("imu", "triggers"):
            a = getattr(pkt, k)
            if len(a):
                keep = a["t"] >= s
                self.dropped[k] += len(a) - int(keep.sum())
                a = a[keep].copy()
                a["t"] -= s
            side[k] = a
        return Packet(ev, frames, side["imu"], side["triggers"])


def written(writer, handed: dict[str, int], timebase) -> dict:
    """What `record` and `convert` both report of a finished writer: counts per stream, the
    drops (describe_drops), the times written and the shift applied to them."""
    return {**{k: writer.counts[k] for k in ("events", "frames", "imu", "triggers")},
            "dropped": describe_drops(writer, handed, timebase.dropped),
            "t_start_us": writer.t_first_us, "t_end_us": writer.t_last_us,
            "t_shift_us": timebase.shift_us or 0}


def describe_drops(writer, handed: dict[str, int], before: dict[str, int] | None = None) -> dict:
    """{stream: {"n": items given but not in the file, "why": one line}} for every stream with
    a loss: the writer's own reasons where it has them (StreamWriter), else (a writer that
    ignores streams it was not opened for, like Aedat4Writer) 'not in the recording's declared
    streams'. `before`: items dropped before the writer (TimeBase)."""
    reasons = getattr(writer, "drop_reasons", {})
    out = {}
    for k in ("frames", "imu", "triggers"):
        n = handed.get(k, 0) - writer.counts.get(k, 0)
        if n > 0:
            out[k] = {"n": n, "why": reasons.get(k, "not among the streams the output was "
                                                    "opened with")}
        if before and before.get(k):
            d = out.setdefault(k, {"n": 0, "why": ""})
            d["n"] += before[k]
            d["why"] = "; ".join(filter(None, (d["why"], "before the first time written")))
    return out

