"""Replay pacing: play a finite source against the wall clock, at any speed, trimmed, looped.

`paced(source, speed=1.0, loop=False, start_s=None, end_s=None, clock=time.monotonic,
sleep=time.sleep, reopen=None)` returns an EventSource that yields the same packets as
`source`, released in time:

- speed: 1.0 = real time, 2.0 = twice as fast, 0.5 = half speed, "max" (or None) = no waiting.
- Pacing follows the recording's timestamps, not its packet boundaries: a file may hold one
  packet for seconds of events (the davis346 wheel crops hold ONE packet for 3.4 s), so packets
  are cut into slices of `slice_us` (1 ms) of source time, and each slice is released when the
  wall clock reaches its newest item (so nothing is released before it "happened"). Empty
  slices are skipped: a silent second in the file is a silent second of waiting. A slice is
  released as one packet, however many packets of the file it holds (a DAVIS file's packets
  of a few hundred events come a dozen to a millisecond at high rates).
- start_s / end_s: seconds relative to the first event of the stream; items with
  t < first + start are dropped, and reading stops at t >= first + end (the rest of the file is
  never read). Packets before the first event (e.g. IMU only) wait until it is known.
- loop: at the end, the source is closed and `reopen()` called for a fresh one; its timestamps
  are shifted by the span played (oldest to newest item played, plus 1 us) times
  the pass number, so time stays monotonic and the replay continuous. `loops` counts reopens.
- `pacing_lag_us` (a dict: n, mean, max, p50, p99 over the last 10,000 releases) says how late
  releases were against their due time; positive lag means the consumer or the machine could
  not keep up. When behind, slices go out at once (catching up), never dropped.
- stats: the wrapped source's counters (dropped, filtered, lost), summed over loops, plus the
  wrapper's own delivered counts. `end_reason` is forwarded from the wrapped source.

clock and sleep are injectable so tests can check the schedule exactly.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import numpy as np

from evstream.errors import EvstreamError
from evstream.sources.base import EventSource, SourceStats
from evstream.types import EVENT_DTYPE, Packet, put_events

SLICE_US = 1000
LAG_WINDOW = 10_000
_INNER_COUNTERS = ("dropped_out_of_order", "dropped_outside_sensor", "filtered", "lost")


def parse_speed(value) -> float | None:
    """1.0 | '2' | 'max' -> factor (None = as fast as possible); one-line error otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("max", "inf")):
        return None
    try:
        speed = float(value)
    except (TypeError, ValueError):
        raise EvstreamError(f"--speed {value!r}: expected a positive factor or 'max'") from None
    if not speed > 0 or speed == float("inf"):
        if speed == float("inf"):
            return None
        raise EvstreamError(f"--speed {value}: must be > 0 (or 'max')")
    return speed


def _shift_packet(pkt: Packet, offset_us: int) -> Packet:
    if offset_us == 0:
        return pkt
    ev = pkt.events.copy()
    ev["t"] += offset_us
    imu = pkt.imu.copy()
    imu["t"] += offset_us
    trig = pkt.triggers.copy()
    trig["t"] += offset_us
    frames = [dataclasses.replace(f, t_us=f.t_us + offset_us) for f in pkt.frames]
    return Packet(events=ev, frames=frames, imu=imu, triggers=trig)


def trim_packet(pkt: Packet, lo: int | None, hi: int | None) -> Packet:
    """Keep items with lo <= t < hi (None = unbounded)."""
    def keep(t):
        m = np.ones(len(t), dtype=bool)
        if lo is not None:
            m &= t >= lo
        if hi is not None:
            m &= t < hi
        return m

    ev = pkt.events
    if len(ev) and ((lo is not None and ev["t"][0] < lo) or (hi is not None and ev["t"][-1] >= hi)):
        t = ev["t"]
        a = 0 if lo is None else int(np.searchsorted(t, lo, "left"))
        b = len(t) if hi is None else int(np.searchsorted(t, hi, "left"))
        ev = ev[a:b]
    frames = [f for f in pkt.frames if (lo is None or f.t_us >= lo) and (hi is None or f.t_us < hi)]
    imu = pkt.imu[keep(pkt.imu["t"])] if len(pkt.imu) else pkt.imu
    trig = pkt.triggers[keep(pkt.triggers["t"])] if len(pkt.triggers) else pkt.triggers
    return Packet(events=ev, frames=frames, imu=imu, triggers=trig)


def _times(pkt: Packet) -> tuple[int, int] | None:
    """(min t, max t) over everything in the packet, or None when empty."""
    lo, hi = [], []
    if len(pkt.events):
        lo.append(int(pkt.events["t"][0]))
        hi.append(int(pkt.events["t"][-1]))
    if pkt.frames:
        ts = [f.t_us for f in pkt.frames]
        lo.append(min(ts))
        hi.append(max(ts))
    for arr in (pkt.imu, pkt.triggers):
        if len(arr):
            lo.append(int(arr["t"].min()))
            hi.append(int(arr["t"].max()))
    return (min(lo), max(hi)) if lo else None


def join_packets(parts: list[Packet]) -> Packet:
    """Consecutive packets -> one (events copied with types.put_events)."""
    evs = [p.events for p in parts if len(p.events)]
    if len(evs) == 1:
        ev = evs[0]
    else:
        ev = np.empty(sum(len(e) for e in evs), EVENT_DTYPE)
        at = 0
        for e in evs:
            at = put_events(ev, at, e)
    imu = [p.imu for p in parts if len(p.imu)]
    trig = [p.triggers for p in parts if len(p.triggers)]
    return Packet(events=ev, frames=[f for p in parts for f in p.frames],
                  imu=np.concatenate(imu, dtype=imu[0].dtype) if imu else parts[0].imu[:0],
                  triggers=(np.concatenate(trig, dtype=trig[0].dtype) if trig
                            else parts[0].triggers[:0]))


def slice_packet(pkt: Packet, base_us: int, slice_us: int = SLICE_US,
                 span: tuple[int, int] | None = None) -> Iterator[tuple[int, Packet]]:
    """Cut a packet into slices [base + k*slice_us, base + (k+1)*slice_us); yields
    (due time = newest item in the slice, slice packet). Event slices are views. `span`:
    the packet's _times when the caller has them."""
    span = span or _times(pkt)
    if span is None:
        return
    k0 = (span[0] - base_us) // slice_us
    k1 = (span[1] - base_us) // slice_us
    if k0 == k1:
        yield span[1], pkt
        return
    edges = base_us + np.arange(k0 + 1, k1 + 1, dtype=np.int64) * slice_us   # inner edges
    ev = pkt.events
    ev_cut = np.searchsorted(ev["t"], edges, "left") if len(ev) else None
    frame_k = [int((f.t_us - base_us) // slice_us) for f in pkt.frames]
    imu_k = (pkt.imu["t"] - base_us) // slice_us if len(pkt.imu) else None
    trig_k = (pkt.triggers["t"] - base_us) // slice_us if len(pkt.triggers) else None
    a = 0
    for i, k in enumerate(range(k0, k1 + 1)):
        b = int(ev_cut[i]) if ev_cut is not None and i < len(edges) else len(ev)
        part = Packet(events=ev[a:b])
        a = b
        if pkt.frames:
            part.frames = [f for f, fk in zip(pkt.frames, frame_k) if fk == k]
        if imu_k is not None:
            part.imu = pkt.imu[imu_k == k]
        if trig_k is not None:
            part.triggers = pkt.triggers[trig_k == k]
        due = _times(part)
        if due is not None:
            yield due[1], part


class PacedSource(EventSource):
    def __init__(self, source: EventSource, speed=1.0, loop: bool = False,
                 start_s: float | None = None, end_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 reopen: Callable[[], EventSource] | None = None, slice_us: int = SLICE_US):
        if source.live:
            raise EvstreamError(f"{source.name}: --speed/--loop/--start/--end are for "
                                f"recordings, not live sources")
        self.speed = parse_speed(speed)
        if start_s is not None and start_s < 0:
            raise EvstreamError(f"--start {start_s}: must be >= 0 seconds")
        if end_s is not None and end_s <= 0:
            raise EvstreamError(f"--end {end_s}: must be > 0 seconds")
        if start_s is not None and end_s is not None and end_s <= start_s:
            raise EvstreamError(f"--end {end_s} must be after --start {start_s}")
        if loop and reopen is None:
            raise ValueError("loop=True needs a reopen() factory for the next pass")
        if slice_us < 1:
            raise ValueError("slice_us must be >= 1")
        self._src = source
        self.loop = loop
        self.start_us = None if start_s is None else int(round(start_s * 1e6))
        self.end_us = None if end_s is None else int(round(end_s * 1e6))
        self.clock, self.sleep, self.reopen, self.slice_us = clock, sleep, reopen, slice_us
        self.name, self.camera = source.name, source.camera
        self.width, self.height = source.width, source.height
        self.resolution_note = source.resolution_note
        self.live = False
        self.loops = 0
        self.end_reason = ""
        self._lags = np.zeros(LAG_WINDOW, dtype=np.int64)
        self._lag_n = 0
        self._lag_sum = 0
        self._lag_max = 0
        self._closed_stats = SourceStats()
        # The wrapped source already checked time order and bounds and applied its filters;
        # "error" here would only fire on a bug in this module.
        super().__init__(bad_events="error", filters=None)

    # -- lag statistics ---------------------------------------------------------------------
    def _record_lag(self, lag_us: int) -> None:
        self._lags[self._lag_n % LAG_WINDOW] = lag_us
        self._lag_n += 1
        self._lag_sum += lag_us
        self._lag_max = max(self._lag_max, lag_us)

    @property
    def pacing_lag_us(self) -> dict:
        n = self._lag_n
        if n == 0:
            return {"n": 0, "mean": 0.0, "max": 0, "p50": 0, "p99": 0}
        recent = self._lags[:min(n, LAG_WINDOW)]
        return {"n": n, "mean": self._lag_sum / n, "max": int(self._lag_max),
                "p50": int(np.percentile(recent, 50)), "p99": int(np.percentile(recent, 99))}

    def describe(self) -> dict:
        d = self._src.describe() if self._src is not None else super().describe()
        d.update(speed=self.speed or "max", loop=self.loop, loops=self.loops)
        return d

    # -- reading ------------------------------------------------------------------------------
    def _sync_stats(self) -> None:
        inner = self._src.stats if self._src is not None else SourceStats()
        for name in _INNER_COUNTERS:
            setattr(self.stats, name, getattr(self._closed_stats, name) + getattr(inner, name))

    def _one_pass(self, first_us: int | None) -> Iterator[tuple[int, Packet]]:
        """Packets of the current source, trimmed, with (first event time) discovered;
        yields (first_us, packet). Returns when past the end or the source is exhausted."""
        pending: list[Packet] = []
        try:
            yield from self._trimmed(first_us, pending)
        finally:
            self._sync_stats()
        for p in pending:   # a stream without events: nothing to measure start/end against
            if not p.is_empty():
                yield first_us, p

    def _trimmed(self, first_us, pending):
        trim = self.start_us is not None or self.end_us is not None
        for i, pkt in enumerate(self._src.packets()):
            if not i & 63:              # (and at the end): a live view of the inner counters
                self._sync_stats()
            if first_us is None:
                if len(pkt.events) == 0:
                    pending.append(pkt)
                    continue
                first_us = int(pkt.events["t"][0])
                todo = pending + [pkt]
                pending.clear()          # (the caller's list: what is left is yielded there)
            else:
                todo = [pkt]
            if not trim:
                for p in todo:
                    if not p.is_empty():
                        yield first_us, p
                continue
            lo = None if self.start_us is None else first_us + self.start_us
            hi = None if self.end_us is None else first_us + self.end_us
            for p in todo:
                span = _times(p)
                if span is None:
                    continue
                if hi is not None and span[0] >= hi:
                    return
                p = trim_packet(p, lo, hi)
                if not p.is_empty():
                    yield first_us, p

    def _release(self, held: list[Packet], due_us: int, base: int) -> Packet:
        """Wait until the wall clock reaches due_us, then -> the held parts as one packet."""
        if self._wall0 is None:           # the oldest item played is "now"
            self._wall0 = self.clock()
            self._t_ref = base
        due_wall = self._wall0 + (due_us - self._t_ref) / 1e6 / self.speed
        now = self.clock()
        if due_wall > now:
            self.sleep(due_wall - now)
            now = self.clock()
        self._record_lag(max(0, int(round((now - due_wall) * 1e6))))
        return held[0] if len(held) == 1 else join_packets(held)

    def _read(self) -> Iterator[Packet]:
        first_us = None
        offset_us = 0
        self._wall0 = self._t_ref = None
        base = None
        while True:
            first_played = last_played = None      # unshifted times of this pass
            # the parts of one slice of source time, from however many packets, go out as one
            # packet: a camera's 1,000-event packets at 12 M ev/s are 12 a millisecond, and
            # each release costs the pipeline a ring write whatever its size
            held: list[Packet] = []
            held_k = held_due = 0
            for first, pkt in self._one_pass(first_us):
                first_us = first
                span = _times(pkt)
                if base is None:
                    base = span[0]
                first_played = span[0] if first_played is None else min(first_played, span[0])
                last_played = span[1] if last_played is None else max(last_played, span[1])
                if offset_us:
                    pkt = _shift_packet(pkt, offset_us)
                if self.speed is None:
                    yield pkt
                    continue
                if offset_us:
                    span = (span[0] + offset_us, span[1] + offset_us)
                for due_us, part in slice_packet(pkt, base, self.slice_us, span):
                    k = (due_us - base) // self.slice_us
                    if held and k != held_k:
                        yield self._release(held, held_due, base)
                        held = []
                    if not held:
                        held_k, held_due = k, due_us
                    held.append(part)
                    held_due = max(held_due, due_us)
            if held:
                yield self._release(held, held_due, base)
            self.end_reason = getattr(self._src, "end_reason", "") or self.end_reason
            if not self.loop or first_us is None or self._src is None:
                return
            # next pass: shift by the span played in this one
            if last_played is None:
                return      # nothing was played: looping would spin
            span_us = last_played - first_played + 1
            self._retire_source()
            self._src = self.reopen()
            self.loops += 1
            offset_us += span_us

    def _retire_source(self) -> None:
        inner = self._src.stats
        for name in _INNER_COUNTERS:
            setattr(self._closed_stats, name,
                    getattr(self._closed_stats, name) + getattr(inner, name))
        self._src.close()
        self._src = None

    def warm_up(self) -> None:
        if self._src is not None:
            self._src.warm_up()

    def close(self) -> None:
        if self._src is not None:
            self._src.close()


def paced(source: EventSource, speed=1.0, loop: bool = False, start_s: float | None = None,
          end_s: float | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep,
          reopen: Callable[[], EventSource] | None = None) -> EventSource:
    """Wrap a finite source for real-time / scaled / max-speed replay (see module docstring)."""
    return PacedSource(source, speed=speed, loop=loop, start_s=start_s, end_s=end_s,
                       clock=clock, sleep=sleep, reopen=reopen)
