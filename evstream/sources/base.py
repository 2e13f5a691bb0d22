"""The EventSource contract.

A source is an iterable of `Packet`s (events + APS frames + IMU + triggers) with declared shape:

- `width`, `height`: the sensor resolution events are checked against. Where a file does not say,
  the reader takes it from an option or infers it from the data, and sets `resolution_note` to
  say which (the CLI prints it).
- `camera`: the camera name (e.g. "DAVIS346_00000104"), or a description of the file format.
- `live`: True for cameras and network streams (infinite, cannot be rewound); False for files.
- iterating the source (`for ev in src`) yields only event arrays in EVENT_DTYPE; `packets()`
  yields everything. Either may yield empty arrays: a quiet sensor is not an error.

Events leave a source sorted by time and inside the sensor. What happens to events that break
that is the `bad_events` policy, checked here in one place for every reader:
- "error": raise BadEventsError naming the source and where (default for files: a file with
  time going backwards is something the user must hear about, not something we quietly fix);
- "drop": drop them, count them in `stats`, log once (default for live sources, where stopping
  the stream would lose more than the bad events).
The check is vectorised and returns the input array untouched (no copy) when all is well.
A reader that can say where an event came from (byte offset, event index) implements
`locate(i)`; the BadEventsError message then starts "<name>: at <where>: ".
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, asdict
from typing import Iterator

import numba
import numpy as np

from evstream.errors import BadEventsError, SourceError
from evstream.types import EVENT_DTYPE, Packet

log = logging.getLogger(__name__)

BAD_EVENT_POLICIES = ("error", "drop")


@dataclass
class SourceStats:
    events: int = 0               # events delivered downstream
    packets: int = 0
    frames: int = 0
    imu: int = 0
    triggers: int = 0
    dropped_out_of_order: int = 0  # events older than the newest delivered event
    dropped_outside_sensor: int = 0
    filtered: int = 0             # events removed by noise filters (see sources.filters)
    lost: int = 0                 # events a transport reported lost before they reached us

    def as_dict(self) -> dict:
        return asdict(self)


@numba.njit(cache=True, nogil=True)
def _first_bad_kernel(t, x, y, last_t, width, height):
    bad_order = -1
    bad_xy = -1
    prev = last_t
    for i in range(t.shape[0]):
        if bad_order < 0 and t[i] < prev:
            bad_order = i
        prev = t[i]
        if bad_xy < 0 and (x[i] >= width or y[i] >= height):
            bad_xy = i
        if bad_order >= 0 and bad_xy >= 0:
            break
    return bad_order, bad_xy


def _first_bad(ev: np.ndarray, last_t: int, width: int, height: int) -> tuple[int, int]:
    """One pass over the events: index of the first event out of time order and of the first
    outside the sensor (-1 when none). Field views of the structured array, no copies."""
    return _first_bad_kernel(ev["t"], ev["x"], ev["y"], np.int64(last_t), int(width), int(height))


class EventSource(ABC):
    width: int
    height: int
    camera: str = "unknown"
    live: bool = False
    resolution_note: str = ""     # non-empty when the resolution was inferred or given by a flag
    name: str = ""                # what the user asked for (path or uri), for messages

    def __init__(self, bad_events: str | None = None, filters=None):
        if bad_events is None:
            bad_events = "drop" if self.live else "error"
        if bad_events not in BAD_EVENT_POLICIES:
            raise ValueError(f"bad_events must be one of {BAD_EVENT_POLICIES}, not {bad_events!r}")
        self.bad_events = bad_events
        # Optional noise filters (evstream.sources.filters.FilterChain). Readers built on
        # dv-processing apply them to dv EventStores via `dv_events()`, before conversion;
        # for other readers `packets()` applies them to the numpy events.
        self.filters = filters
        self._filters_in_reader = False
        self.stats = SourceStats()
        self._last_t = np.iinfo(np.int64).min
        self._warned = False

    # -- what readers implement -------------------------------------------------------------
    @abstractmethod
    def _read(self) -> Iterator[Packet]:
        """Yield raw packets in file/stream order. Events need not be checked here."""

    _f = None     # the open file of readers that hold one (see _open_file)

    def _open_file(self) -> None:
        """Open self.name for reading as self._f; a one-line SourceError if it cannot be."""
        try:
            self._f = open(self.name, "rb")
        except OSError as e:
            raise SourceError(f"{self.name}: cannot open ({e.strerror})") from None

    def warm_up(self) -> None:
        """First-time work before streaming (the pipeline's source stage calls this before it
        reports ready): a reader may let its decoder allocate or load its kernels here, so the
        stream does not pay for it. Leaves the source as it was: packets() still starts at
        the beginning. Default: nothing to do."""

    def close(self) -> None:
        """Release the underlying file/device/socket. Safe to call twice."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def locate(self, i: int) -> str:
        """Where event i of the packet being checked came from ("byte offset 1234", "event
        index 56"), for the BadEventsError message; "" when the reader cannot say. Called only
        while raising, from packets(), after `_read()` yielded that packet and before it is
        resumed, so a reader may keep what it needs from its latest packet."""
        return ""

    # -- what users call -------------------------------------------------------------------
    def packets(self, check: bool = True) -> Iterator[Packet]:
        """The packets, their events checked (time order, sensor bounds: see check_events).

        check=False (only where `can_defer_check`): events come as the reader made them, and
        the caller checks them itself while it copies them (the pipeline's source stage does,
        in the ring write: one pass over the memory instead of two). It passes `last_t` to its
        check, sets it to each good event array's newest time, and hands the rest of an array
        from the first event that fails to `check_rest`, which applies the policy.
        """
        self._last_t = np.iinfo(np.int64).min      # a new pass over the source
        if not check and not self.can_defer_check:
            raise ValueError(f"{type(self).__name__}: its events must be checked in packets()")
        for pkt in self._read():
            if check:
                pkt.events = self.check_events(pkt.events)
            if self.filters is not None and not self._filters_in_reader and len(pkt.events):
                n = len(pkt.events)
                pkt.events = self.filters.apply_events(pkt.events)
                self.stats.filtered += n - len(pkt.events)
            st = self.stats
            st.packets += 1
            st.events += len(pkt.events)
            st.frames += len(pkt.frames)
            st.imu += len(pkt.imu)
            st.triggers += len(pkt.triggers)
            yield pkt

    @property
    def can_defer_check(self) -> bool:
        """packets(check=False) is allowed: no numpy-side filter runs after the check, and the
        reader's error messages need no position of its own (`locate`)."""
        return self.filters is None and type(self).locate is EventSource.locate

    @property
    def last_t(self) -> int:
        """The newest event time delivered so far (int64 min before the first)."""
        return self._last_t

    @last_t.setter
    def last_t(self, t: int) -> None:
        self._last_t = int(t)

    def check_rest(self, ev: np.ndarray, done: int) -> np.ndarray:
        """For packets(check=False): ev[:done] passed the caller's own check and ev[done]
        failed it. Runs ev[done:] through check_events (raising or dropping per the policy)
        and returns what of it to deliver; the counts in `stats` are corrected."""
        if done:
            self._last_t = int(ev["t"][done - 1])
        rest = self.check_events(ev[done:])
        self.stats.events -= len(ev) - done - len(rest)
        return rest

    def __iter__(self) -> Iterator[np.ndarray]:
        for pkt in self.packets():
            yield pkt.events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def geometry(self) -> tuple[int, int]:
        return self.width, self.height

    def describe(self) -> dict:
        return {"source": self.name, "camera": self.camera, "width": self.width,
                "height": self.height, "live": self.live,
                "resolution_note": self.resolution_note}

    def dv_events(self, store) -> np.ndarray:
        """dv.EventStore -> EVENT_DTYPE array, applying the noise filters on the store first."""
        if self.filters is not None:
            self._filters_in_reader = True
            n = len(store)
            store = self.filters.apply_store(store)
            self.stats.filtered += n - len(store)
        if len(store) == 0:
            return np.zeros(0, EVENT_DTYPE)
        return store.numpy().view(EVENT_DTYPE)

    # -- the one place events are checked ----------------------------------------------------
    def check_events(self, ev: np.ndarray) -> np.ndarray:
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"{type(self).__name__} produced {ev.dtype}, not EVENT_DTYPE")
        n = len(ev)
        if n == 0:
            return ev
        bad_order, bad_xy = _first_bad(ev, self._last_t, self.width, self.height)
        if bad_order < 0 and bad_xy < 0:
            self._last_t = int(ev["t"][-1])
            return ev
        return self._fix(ev, bad_order, bad_xy)

    def _at(self, i: int) -> str:
        """The message's "<name>: " prefix, with "at <where>: " when the reader can say."""
        where = self.locate(i)
        return f"{self.name}: at {where}: " if where else f"{self.name}: "

    def _fix(self, ev: np.ndarray, bad_order: int, bad_xy: int) -> np.ndarray:
        """Apply the policy to a packet with bad events; bad_order / bad_xy are _first_bad's
        indices (-1: none), which are also where "error" reports them."""
        keep = np.ones(len(ev), dtype=bool)
        if bad_xy >= 0:
            outside = (ev["x"] >= self.width) | (ev["y"] >= self.height)
            if self.bad_events == "error":
                i = bad_xy
                raise BadEventsError(
                    f"{self._at(i)}event at t={int(ev['t'][i])} us has x={int(ev['x'][i])}, "
                    f"y={int(ev['y'][i])}, outside the {self.width}x{self.height} sensor "
                    f"({int(outside.sum())} such events in this packet; "
                    f"use --bad-events drop or set the resolution)")
            keep &= ~outside
            self.stats.dropped_outside_sensor += int(outside.sum())
        if bad_order >= 0:
            # an event is out of order when it is older than every event delivered before it
            # (the first such event is the first one older than its predecessor: bad_order)
            running = np.maximum.accumulate(np.concatenate(([self._last_t], ev["t"])))[:-1]
            late = ev["t"] < running
            if self.bad_events == "error":
                i = bad_order
                raise BadEventsError(
                    f"{self._at(i)}time goes backwards at event t={int(ev['t'][i])} us, after "
                    f"t={int(running[i])} us ({int(late.sum())} late events in this packet; "
                    f"use --bad-events drop to drop them)")
            self.stats.dropped_out_of_order += int((late & keep).sum())
            keep &= ~late
        if not self._warned:
            log.warning("%s: dropping events outside the sensor or out of time order "
                        "(counted in the summary)", self.name)
            self._warned = True
        out = ev[keep]
        if len(out):
            self._last_t = max(self._last_t, int(out["t"][-1]))
        return out


SIDE_STREAMS = ("frames", "imu", "triggers")    # what a Packet carries beside its events


def declared_side_streams(src) -> set[str] | None:
    """The side streams a source says it has, before any packet (what a recording of it
    declares): its `streams` where it lists them (.aedat4 files), all of them for a live source
    (a camera may send any), else None (only its packets will tell)."""
    streams = getattr(src, "streams", None)
    if streams is not None:
        return set(streams) & set(SIDE_STREAMS)
    if src.live:
        return set(SIDE_STREAMS)
    return None
