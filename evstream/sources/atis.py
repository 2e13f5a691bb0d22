"""N-MNIST / N-Caltech101 ATIS `.bin` recordings (40-bit events): reader and writer.

Each event is 5 bytes: x, y, (p << 7 | t[22:16]), t[15:8], t[7:0]; p = 1 is ON; t is in us.
There is no header, so nothing says the sensor size: `width`/`height` options give it, else it
is inferred as max x/y + 1 over the whole file and `resolution_note` says so (N-MNIST is 34x34,
N-Caltech101 recordings are up to 240x180 and each is cropped to its object).

Time. The timestamp field has 23 bits (8.39 s). N-MNIST and N-Caltech101 samples last about
0.3 s (three 100 ms saccades), so in the datasets themselves it never overflows; for longer
files the field is unwrapped: a step back by more than 2^22 us is a wrap and adds 2^23 us.
Smaller steps back are passed on as they are, for the bad_events policy to judge (with the
byte offset in the error). The datasets' reference reader (Orchard's `read_dataset`) treats
records with y == 240 as "timestamp overflow" markers and adds 2^13 us to every later event;
that increment does not match the 23-bit field, and no such record exists in the files we
have, so here y == 240 records are skipped and counted (`overflow_markers`, logged once) and do
not move time: the wrap detection above is what keeps time monotonic.

A length that is not a multiple of 5 is read up to the last complete event; the cut is logged
and described in `truncated_note`. Packets hold at most `chunk_events` events.

`AtisBinWriter` streams packets into the same format (t modulo 2^23; `evstream convert` /
`record` through sources/writers.py) and `write_atis_bin(path, events)` writes one array
through it; this reader reads either back exactly when the first t is below 2^23 and no two
consecutive events are 2^22 us apart (the writers refuse anything else).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_reader
from evstream.sources.base import EventSource
from evstream.sources.stream_writer import NAMES, StreamWriter
from evstream.types import EVENT_DTYPE, Packet

log = logging.getLogger(__name__)

RECORD_BYTES = 5
T_BITS = 23
OVERFLOW_Y = 240


class AtisBinSource(EventSource):
    """An N-MNIST / N-Caltech101 `.bin` file (see the module essay)."""

    camera = "ATIS (N-MNIST / N-Caltech101 .bin)"

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 chunk_events: int = 1 << 20):
        self.name = os.fspath(path)
        self.live = False
        super().__init__(bad_events=bad_events, filters=filters)
        if int(chunk_events) < 1:
            raise SourceError(f"{self.name}: chunk_events must be at least 1")
        self.chunk_events = int(chunk_events)
        self.truncated_note = ""
        self.overflow_markers = 0
        self.wraps = 0
        self._open_file()
        size = os.fstat(self._f.fileno()).st_size
        self.n_records, self._tail = divmod(size, RECORD_BYTES)
        if self.n_records == 0:
            self._f.close()
            raise SourceError(f"{self.name}: no complete 5-byte ATIS event "
                              f"({size} bytes)" if size else f"{self.name}: file is empty")
        if width is None or height is None:
            mx, my = self._max_xy()
            w = int(width) if width is not None else mx + 1
            h = int(height) if height is not None else my + 1
            self.resolution_note = (
                f"inferred {w}x{h} from the data; N-MNIST is 34x34, N-Caltech101 up to 240x180 "
                f"— pass --width/--height")
            width, height = w, h
        self.width, self.height = int(width), int(height)

    def _chunks(self):
        """Yield (records uint8 (n, 5), index of the first record)."""
        self._f.seek(0)
        done = 0
        while done < self.n_records:
            n = min(self.chunk_events, self.n_records - done)
            raw = np.fromfile(self._f, dtype=np.uint8, count=n * RECORD_BYTES)
            if len(raw) != n * RECORD_BYTES:
                raise SourceError(f"{self.name}: file shrank while reading (byte offset "
                                  f"{done * RECORD_BYTES + len(raw)})")
            yield raw.reshape(n, RECORD_BYTES), done
            done += n

    def _max_xy(self) -> tuple[int, int]:
        mx = my = -1
        for rec, _ in self._chunks():
            td = rec[rec[:, 1] != OVERFLOW_Y]
            if len(td):
                mx, my = max(mx, int(td[:, 0].max())), max(my, int(td[:, 1].max()))
        if mx < 0:
            raise SourceError(f"{self.name}: no events (only y=240 overflow markers) to infer "
                              f"the resolution from; pass width/height")
        return mx, my

    def _read(self):
        prev_raw = None
        last_t = 0
        for rec, first in self._chunks():
            keep = rec[:, 1] != OVERFLOW_Y
            n_markers = len(keep) - int(keep.sum())
            if n_markers:              # markers do not take part in time: their field is unknown
                if not self.overflow_markers:
                    log.warning("%s: skipping records with y=240 (timestamp overflow markers in "
                                "the N-MNIST reference reader; counted)", self.name)
                self.overflow_markers += n_markers
                rec = rec[keep]
            raw_t = ((rec[:, 2].astype(np.int64) & 0x7F) << 16) | (
                rec[:, 3].astype(np.int64) << 8) | rec[:, 4]
            if not len(raw_t):
                continue
            if prev_raw is None:
                prev_raw = last_t = int(raw_t[0])
            d = np.diff(raw_t, prepend=prev_raw)
            wraps = d < -(1 << (T_BITS - 1))
            if wraps.any():
                self.wraps += int(wraps.sum())
                d[wraps] += 1 << T_BITS
            t = last_t + np.cumsum(d)
            prev_raw, last_t = int(raw_t[-1]), int(t[-1])
            ev = np.empty(len(t), EVENT_DTYPE)
            ev["t"] = t
            ev["x"] = rec[:, 0]
            ev["y"] = rec[:, 1]
            ev["p"] = rec[:, 2] >> 7
            self._where = (first, None if n_markers == 0 else keep)
            yield Packet(events=ev)
        if self._tail:
            off = self.n_records * RECORD_BYTES
            self.truncated_note = (f"{self._tail} trailing bytes at byte offset {off} are a "
                                   f"partial 5-byte event; ignored")
            log.warning("%s: recording is truncated: %s", self.name, self.truncated_note)

    def locate(self, i: int) -> str:
        """The byte offset of event i's record in the latest packet."""
        first, keep = self._where
        rec = first + (i if keep is None else int(np.flatnonzero(keep)[i]))
        return f"byte offset {rec * RECORD_BYTES}"

    def describe(self) -> dict:
        d = super().describe()
        d.update(format="ATIS 40-bit .bin", truncated_note=self.truncated_note,
                 overflow_markers=self.overflow_markers, wraps=self.wraps)
        return d


def open_atis_bin(path, *, width=None, height=None, bad_events=None, filters=None,
                  chunk_events: int = 1 << 20) -> AtisBinSource:
    return AtisBinSource(path, width=width, height=height, bad_events=bad_events,
                         filters=filters, chunk_events=chunk_events)


register_reader(".bin", open_atis_bin)


class AtisBinWriter(StreamWriter):
    """Stream 40-bit ATIS records into a .bin file (stream_writer.StreamWriter's interface):
    records at every write(), no header, so a killed writer leaves a file read up to its last
    whole record. What fits: x and y below 256 with y != 240 (the reference reader's overflow
    marker), a first time below 2^23 us and steps between events below 2^22 us (the reader
    unwraps the 23-bit field by them); anything else is a one-line error. The file does not
    store the sensor size (read it back with width/height). Frames, IMU and triggers: not in
    this format (dropped, counted)."""

    format_name = "ATIS .bin"
    suffixes = (".bin",)
    cannot = {k: f"ATIS .bin holds events only (no {NAMES[k]})"
              for k in ("frames", "imu", "triggers")}

    def __init__(self, path, *, width, height, **kw):
        super().__init__(path, width=width, height=height, **kw)
        self._f = self._create()

    def _check_more(self, ev) -> None:
        x, y, t = ev["x"], ev["y"], ev["t"]
        bad = np.flatnonzero((x > 255) | (y > 255))
        if len(bad):
            raise self._bad_event(ev, int(bad[0]), "does not fit ATIS .bin's 8-bit x and y")
        bad = np.flatnonzero(y == OVERFLOW_Y)
        if len(bad):
            raise self._bad_event(ev, int(bad[0]), "has y = 240, which ATIS .bin reserves "
                                  "(overflow marker)")
        if self.t_last_us is None and int(t[0]) >= 1 << T_BITS:
            raise self._bad_event(ev, 0, "is later than ATIS .bin's first time can be "
                                  "(2^23 us); start times at 0 (--time zero)")
        prev = t[0] if self.t_last_us is None else self.t_last_us
        gap = np.flatnonzero(np.diff(t, prepend=prev) >= 1 << (T_BITS - 1))
        if len(gap):
            raise self._bad_event(ev, int(gap[0]), "comes 2^22 us or more after the event "
                                  "before it: ATIS .bin's 23-bit time cannot hold the gap")

    def _write(self, events, frames, imu, triggers):
        if not len(events):
            return
        tm = events["t"].astype(np.int64) & ((1 << T_BITS) - 1)
        rec = np.empty((len(events), RECORD_BYTES), np.uint8)
        rec[:, 0] = events["x"]
        rec[:, 1] = events["y"]
        rec[:, 2] = ((events["p"] > 0).astype(np.int64) << 7) | (tm >> 16)
        rec[:, 3] = (tm >> 8) & 0xFF
        rec[:, 4] = tm & 0xFF
        self._f.write(rec.tobytes())
        self._sync()
        self.written["events"] += len(events)


def write_atis_bin(path, events: np.ndarray) -> int:
    """Write EVENT_DTYPE events as 40-bit ATIS records; returns the number written."""
    if events.dtype != EVENT_DTYPE:
        raise ValueError("events must be EVENT_DTYPE")
    t = events["t"].astype(np.int64)
    if len(events):
        if int(events["x"].max()) > 255 or int(events["y"].max()) > 255:
            raise ValueError("ATIS .bin coordinates are 8-bit (x, y <= 255)")
        if np.any(events["y"] == OVERFLOW_Y):
            raise ValueError("y = 240 is reserved (overflow marker) in ATIS .bin files")
        if t[0] < 0 or t[0] >= (1 << T_BITS):
            raise ValueError("the first timestamp must be in [0, 2^23) us")
        d = np.diff(t)
        if np.any(d < 0) or np.any(d >= (1 << (T_BITS - 1))):
            raise ValueError("timestamps must be sorted, with steps below 2^22 us")
    with AtisBinWriter(path, width=256, height=256) as w:
        w.write(Packet(events=events))
    return len(events)
