"""`StreamWriter`: what the streaming writers of every output format share.

The interface is writer.Aedat4Writer's, so `evstream record` and `evstream convert` take any
writer of the registry in sources/writers.py:

    with RawWriter("out.raw", width=640, height=480) as w:
        for pkt in source.packets():
            w.write(pkt)

- `counts` {events, frames, imu, triggers}: what the file holds (or will hold once closed);
  `written`: the part of it already handed to the operating system; `dropped`: what write() was
  given but the format cannot hold, with one line per stream in `drop_reasons` (a format's
  missing stream, a trigger type it has no word for, a side item that came after later events
  in a format that is one time-ordered stream). Nothing is dropped without being counted.
- `t_first_us` / `t_last_us`: the first and last event time written; `bytes`: the file's size
  once closed; `peak_buffered`: the most events the writer held in memory at once (the packet
  in hand plus anything it buffers), which is what bounds its memory.
- Events must come sorted, with t >= 0, each packet starting at or after the previous one's last
  event, inside width x height. An event the format cannot hold (a coordinate beyond its fields,
  a time beyond its clock) is an EvstreamError naming the file and the event, never clamped.
- close() finishes the file (a trailer, a header rewrite, a zip) and fsyncs it; an exception
  inside a `with` still closes it, keeping what was written (as a recording should); abort()
  removes it. Plain append-only files are flushed to the kernel at every write() and
  fdatasync'ed at most every SYNC_S, so a killed process leaves everything handed to write()
  and a power cut about SYNC_S less; each subclass says what it guarantees beyond that.
"""

from __future__ import annotations

import os
import time

import numpy as np

from evstream.errors import EvstreamError
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE, Packet

SYNC_S = 0.25
STREAMS = ("events", "frames", "imu", "triggers")
NAMES = {"events": "events", "frames": "frames", "imu": "IMU samples", "triggers": "triggers"}



def check_output_file(path: str, width: int, height: int) -> str:
    """The checks every recording writer makes before creating `path` (one line each): a
    resolution, an existing folder, not a directory. -> the folder."""
    if int(width) <= 0 or int(height) <= 0:
        raise EvstreamError(f"{path}: bad resolution {width}x{height}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EvstreamError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise EvstreamError(f"{path}: is a directory")
    return folder

class StreamWriter:
    format_name = "?"                      # in messages: "EVT 3.0", "DAT", ...
    suffixes: tuple[str, ...] = ()         # the names this format is written under
    carries: tuple[str, ...] = ("events",)
    cannot: dict[str, str] = {}            # stream -> why the format cannot hold it
    max_t_us: int | None = None            # the largest event time the writer stores
    max_t_why = ""

    def __init__(self, path, *, width: int, height: int, camera: str = "evstream",
                 frames: bool = False, imu: bool = False, triggers: bool = False,
                 frame_size: tuple[int, int] | None = None):
        self.path = os.fspath(path)
        if self.suffixes and not self.path.lower().endswith(self.suffixes):
            raise EvstreamError(f"{self.path}: a {self.format_name} file must end in "
                                f"{' or '.join(self.suffixes)}")
        check_output_file(self.path, width, height)
        self.width, self.height, self.camera = int(width), int(height), camera
        self.frame_size = tuple(frame_size) if frame_size else (self.width, self.height)
        self.has = {"frames": frames, "imu": imu, "triggers": triggers}
        self.counts = dict.fromkeys(STREAMS, 0)
        self.written = dict.fromkeys(STREAMS, 0)
        self.dropped = dict.fromkeys(STREAMS, 0)
        self.drop_reasons: dict[str, str] = {}
        self.t_first_us: int | None = None
        self.t_last_us: int | None = None
        self.bytes = 0
        self.peak_buffered = 0
        self._f = None
        self._closed = False
        self._last_sync = time.monotonic()

    # -- for subclasses ----------------------------------------------------------------------
    def _create(self, path: str | None = None, mode: str = "wb"):
        """Open (create or truncate) the output; an OSError is one line naming the file."""
        try:
            return open(path or self.path, mode)
        except OSError as e:
            raise EvstreamError(f"{self.path}: cannot create ({e.strerror})") from None

    def _fits(self, max_x: int, max_y: int, what: str) -> None:
        """Refuse a sensor larger than the format's coordinate fields (x < max_x, y < max_y)."""
        if self.width > max_x or self.height > max_y:
            raise EvstreamError(f"{self.path}: a {self.width}x{self.height} sensor does not fit "
                                f"{self.format_name} ({what}: at most {max_x}x{max_y})")

    def _drop(self, stream: str, n: int, reason: str) -> None:
        if n:
            self.dropped[stream] += int(n)
            self.drop_reasons.setdefault(stream, reason)

    def _buffered(self, n: int) -> None:
        if n > self.peak_buffered:
            self.peak_buffered = int(n)

    def _sync(self, force: bool = False) -> None:
        """Push Python's buffer to the kernel; fdatasync at most every SYNC_S (or now)."""
        self._f.flush()
        now = time.monotonic()
        if force or now - self._last_sync >= SYNC_S:
            self._last_sync = now
            try:
                os.fdatasync(self._f.fileno())
            except OSError:
                pass           # a file system without fdatasync: the data is in the kernel

    def _bad_event(self, ev: np.ndarray, i: int, what: str) -> EvstreamError:
        e = ev[i]
        return EvstreamError(f"{self.path}: event {self.counts['events'] + i} (t={int(e['t'])} "
                             f"us, x={int(e['x'])}, y={int(e['y'])}) {what}")

    def _check_events(self, ev: np.ndarray) -> None:
        """The contract of the module doc, plus the subclass's own limits (_check_more)."""
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"write needs EVENT_DTYPE events, not {ev.dtype}")
        t = ev["t"]
        if self.t_last_us is not None and int(t[0]) < self.t_last_us:
            raise self._bad_event(ev, 0, f"comes before t={self.t_last_us} us, the last event "
                                  f"written; {self.format_name} is written in time order")
        back = np.flatnonzero(t[1:] < t[:-1])
        if len(back):
            raise self._bad_event(ev, int(back[0]) + 1, "is out of time order")
        if int(t[0]) < 0:
            raise self._bad_event(ev, 0, "has a negative time")
        if self.max_t_us is not None and int(t[-1]) > self.max_t_us:
            i = int(np.argmax(t > self.max_t_us))
            raise self._bad_event(ev, i, f"is later than {self.format_name} can hold "
                                  f"({self.max_t_why}); start times at 0 (--time zero)")
        out = np.flatnonzero((ev["x"] >= self.width) | (ev["y"] >= self.height))
        if len(out):
            raise self._bad_event(ev, int(out[0]), f"is outside the {self.width}x{self.height} "
                                  f"sensor")
        self._check_more(ev)

    def _check_more(self, ev: np.ndarray) -> None:
        """A subclass's own limits on sorted, in-sensor events (raise _bad_event)."""

    def _write(self, events: np.ndarray, frames: list, imu: np.ndarray,
               triggers: np.ndarray) -> None:
        """Write checked events and the side items of the streams this format carries."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Write whatever is held back and the format's trailer (close())."""

    def _cleanup(self) -> None:
        """Remove temporary files (abort(), and after close())."""

    # -- the interface -------------------------------------------------------------------------
    def write(self, packet: Packet) -> None:
        if self._closed:
            raise EvstreamError(f"{self.path}: writer is closed")
        ev = packet.events
        if len(ev):
            self._check_events(ev)
        side = {"frames": packet.frames, "imu": packet.imu, "triggers": packet.triggers}
        for k, v in side.items():
            if len(v) and k not in self.carries:
                self._drop(k, len(v), self.cannot.get(k, f"{self.format_name} has no {k}"))
                side[k] = [] if k == "frames" else v[:0]
        self._buffered(len(ev))
        self._write(ev, side["frames"], side["imu"] if len(side["imu"]) else
                    np.zeros(0, IMU_DTYPE), side["triggers"] if len(side["triggers"]) else
                    np.zeros(0, TRIGGER_DTYPE))
        if len(ev):
            self.counts["events"] += len(ev)
            if self.t_first_us is None:
                self.t_first_us = int(ev["t"][0])
            self.t_last_us = int(ev["t"][-1])

    def close(self) -> None:
        """Finish the file and fsync it (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
            if self._f is not None:
                self._sync(force=True)
        finally:
            if self._f is not None:
                self._f.close()
                self._f = None
            self._cleanup()
        self.bytes = _size(self.path)

    def abort(self) -> None:
        """Remove what was written."""
        self._closed = True
        if self._f is not None:
            self._f.close()
            self._f = None
        self._cleanup()
        try:
            os.unlink(self.path)
        except (FileNotFoundError, IsADirectoryError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Held:
    """Side records held back until the events pass them, for formats that are ONE
    time-ordered stream of records (EVT words, AEDAT 2.0 records): add(t, data) records of any
    stream (kept sorted by t, stable), take(watermark) -> (t, data) of those with
    t <= watermark (None: all), oldest first."""

    def __init__(self, data_dtype):
        self.t = np.zeros(0, np.int64)
        self.data = np.zeros(0, data_dtype)

    def __len__(self) -> int:
        return len(self.t)

    def add(self, t: np.ndarray, data: np.ndarray) -> None:
        if not len(t):
            return
        t = np.asarray(t, np.int64)
        unsorted = len(t) > 1 and bool(np.any(t[1:] < t[:-1]))
        if unsorted or (len(self.t) and int(t[0]) < int(self.t[-1])):
            t, data = np.concatenate((self.t, t)), np.concatenate((self.data, data))
            order = np.argsort(t, kind="stable")
            self.t, self.data = t[order], data[order]
        else:
            self.t, self.data = np.concatenate((self.t, t)), np.concatenate((self.data, data))

    def take(self, watermark: int | None):
        k = len(self.t) if watermark is None else int(np.searchsorted(self.t, watermark, "right"))
        out = self.t[:k], self.data[:k]
        self.t, self.data = self.t[k:], self.data[k:]
        return out
