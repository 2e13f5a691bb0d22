"""The window process: ring -> time/count windows -> representation -> zmq.

Latency accounting starts here. A window is complete at the wall time its closing events were
written into the ring (`RingReader.last_write_wall_ns`), or, for sparse scenes, when the deadline
fires; that instant travels in the message header as `ts.window_end` and every later stage
measures against it (CLOCK_MONOTONIC, shared by all processes on a host).

Backpressure: in lossless mode the PUSH socket blocks when the consumer's queue is full (bounded
end to end). In live mode sends never block: when the consumer is slow or gone the window is
dropped and counted, so the source never stalls.

Output: when the launcher made window slots (every stage on this host), each tensor is computed
straight into a shared-memory slot and only its header goes over zmq (stream/slots.py; a
lossless stage waits for a free slot, a live one reuses the oldest). Otherwise tensors come
from a small pool and are sent zero-copy; a buffer is reused only after zmq reports it sent
(MessageTracker). Either way the hot path allocates nothing per window.

Less work between a window's end and its send:
- The ring is read straight into the windower's buffer (`Windower.reserve` +
  `RingReader.read(out=)` + `Windower.push_reserved`): one copy of each event fewer.
- When the representation has an `accumulator` (the voxel grid) and the windows are time
  windows of a paced replay or a live source, the tensor of the window still open is built
  while it is open, after each read, from the events it has so far, guessing that its last
  event will be at its end - 1 us (see represent/voxel.py). At close only the last events are
  left to add; if the guess was wrong the tensor is recomputed from scratch, so what is sent is
  always exactly `rep.compute(window)`. Telemetry counts `repr_fast` (guess held) and
  `repr_recomputed`; `busy_spec_us` is the time spent building ahead. After repeated misses
  (sparse scenes) it only tries every 16th window. This work waits while the previous window
  is still being handed to zmq, so the I/O threads get the CPU first. A `--speed max` replay
  skips it: there the work would only be moved, not saved.
- The windower's buffers are allocated and touched before `ready`.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from evstream.config import PipelineConfig
from evstream.stream import sockets
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry


class _BufferPool:
    """zmq transport: tensors sent as zero-copy buffers, each reused once zmq reports it sent
    (MessageTracker), so the hot path allocates nothing per window."""

    def __init__(self, shape, size: int = 6):
        self.shape = shape
        self.free = [np.zeros(shape, np.float32) for _ in range(size)]
        self.busy: list[tuple[np.ndarray, zmq.MessageTracker]] = []
        self.allocated = 0
        self.in_flight = None           # the tracker of the last window sent

    def acquire(self, wait: bool = True) -> np.ndarray:
        still = []
        for buf, tracker in self.busy:
            if tracker.done:
                self.free.append(buf)
            else:
                still.append((buf, tracker))
        self.busy = still
        if self.free:
            return self.free.pop()
        self.allocated += 1
        return np.zeros(self.shape, np.float32)

    def give_back(self, buf: np.ndarray) -> None:
        self.free.append(buf)

    def send(self, sock, header: dict, buf: np.ndarray, flags: int) -> None:
        from evstream.stream import wire

        try:
            tracker = wire.send(sock, b"window", header, [buf], flags=flags, track=True)
        except zmq.Again:
            self.free.append(buf)
            raise
        self.busy.append((buf, tracker))
        self.in_flight = tracker

    def idle(self) -> bool:
        """Has zmq finished with the last window (its I/O threads get the CPU first)?"""
        return self.in_flight is None or self.in_flight.done


class _SlotOut:
    """Shared-memory transport (stream/slots.py): tensors are computed straight into window
    slots and only the header goes over zmq. A lossless acquire waits for the consumer, in
    slices, watching for a stop request (None then)."""

    def __init__(self, writer, shape, should_stop):
        self.writer = writer
        self.shape = shape
        self.should_stop = should_stop
        self.slot_of: dict[int, tuple[int, np.ndarray]] = {}

    def acquire(self, wait: bool = True) -> np.ndarray | None:
        while True:
            i = self.writer.acquire(timeout=0.05 if wait else 0.0)
            if i is not None:
                buf = self.writer.array(i, self.shape)
                self.slot_of[id(buf)] = (i, buf)
                return buf
            if not wait or self.should_stop():
                return None

    def give_back(self, buf: np.ndarray) -> None:
        i, _ = self.slot_of.pop(id(buf))
        self.writer.discard(i)

    def send(self, sock, header: dict, buf: np.ndarray, flags: int) -> None:
        from evstream.stream import wire

        i, _ = self.slot_of[id(buf)]
        ref = self.writer.publish(i)
        try:
            wire.send(sock, b"window", header, [buf], flags=flags, slot=ref)
        except zmq.Again:
            self.writer.discard(i)
            raise
        finally:
            self.slot_of.pop(id(buf), None)

    def idle(self) -> bool:
        return True


_MIN_ROOM = 1 << 16         # events: room offered to each ring read (more when it lags) ...
_MAX_ROOM = 1 << 19         # ... up to this (8 MiB); the rest comes with the next read
# the windower's buffer (and its spare) from the start: a 50 ms window at 12 M events/s (600k)
# plus a read fits without growing, so the first windows pay no allocation or page faults
_PREALLOC_EVENTS = 3 << 19  # 1.5 Mi events, 24 MiB each


class _Speculation:
    """When to build a window's tensor while it is open. A miss (the window's last event is
    not at its end - 1 us) costs a recompute at close, as without speculation, plus the wasted
    work; after MISSES_TO_PAUSE misses in a row, only every PROBE_EVERY-th window tries, until
    one hits again (sparse scenes stop paying for it; dense ones keep the fast path)."""

    MISSES_TO_PAUSE = 3
    PROBE_EVERY = 16

    def __init__(self):
        self.miss_streak = 0
        self.skipped = 0

    def should_try(self) -> bool:
        if self.miss_streak < self.MISSES_TO_PAUSE or self.skipped >= self.PROBE_EVERY - 1:
            self.skipped = 0
            return True
        self.skipped += 1
        return False

    def result(self, exact: bool) -> None:
        self.miss_streak = 0 if exact else self.miss_streak + 1


def _warm_up(rep, params, Windower, WindowSpec) -> None:
    """Load the Numba kernels (compiled and cached, or compiled now) before reporting ready, so
    the first real window does not pay for it in its latency."""
    from evstream.types import make_events

    ev = make_events([0, 10, 20], [0, 1, 2], [0, 1, 2], [1, 0, 1])
    view = ev.view()
    view.flags.writeable = False            # windows are read-only views: Numba types them apart
    for events in (ev, view):
        rep.compute(events, 4, 4, **params)
    if getattr(rep, "accumulator", None) is not None:
        acc = rep.accumulator(4, 4, **params)
        acc.begin(np.zeros((rep.channels(**params), 4, 4), np.float32), t_last_guess_us=20)
        acc.update(view[:2])
        acc.finish(view)
    w = Windower(WindowSpec(window_us=10))
    w.push(ev)
    w.open_window()
    w.finish()


def representation_params(wc) -> dict:
    """The WindowConfig fields a representation takes (the time surface also gets the window
    end as its reference time, per window)."""
    if wc.representation == "voxel":
        return {"num_bins": wc.num_bins, "normalize": wc.normalize}
    if wc.representation == "timesurface":
        return {"tau_us": wc.tau_us}
    return {}


def window_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    from evstream.represent import get_representation
    from evstream.stream import wire
    from evstream.stream.ring import EventRing
    from evstream.stream.window import WindowSpec, Windower

    with stage_context(endpoints, "window") as link:
        wc = cfg.window
        ring = EventRing.attach(cfg.source.ring_name)
        reader = ring.reader()
        # lossless: every queued window reaches the consumer before this process exits (the
        # launcher's stop/terminate bounds the wait); live: a gone consumer costs at most 1 s
        sock = sockets.open_endpoint(endpoints, "windows", "connect",
                                     hwm=16 if cfg.lossless else 2,
                                     linger=-1 if cfg.lossless else 1000)
        rep = get_representation(wc.representation)
        params = representation_params(wc)
        tel = StageTelemetry("window")
        windower = None
        slots = None
        try:
            _warm_up(rep, params, Windower, WindowSpec)
            spec = WindowSpec(mode=wc.mode, window_us=wc.window_us, stride_us=wc.stride_us,
                              count=wc.count, stride_count=wc.stride_count)
            # each window is used at once (reuse); its buffers allocated and touched before
            # `ready`, so the first windows pay no allocation or page faults
            windower = Windower(spec, reuse_buffers=True, capacity_events=_PREALLOC_EVENTS)
            link.ready(channels=rep.channels(**params))     # sizes the window slots
            slot_writer = None

            def setup(info):                                # before `start`: map the slots
                nonlocal slots, slot_writer
                from evstream.stream.slots import SlotWriter, WindowSlots
                if info.get("window_slots") and slots is None:
                    slots = WindowSlots.attach(info["window_slots"]["name"])
                    slot_writer = SlotWriter(slots, cfg.lossless)

            info = link.wait_start(on_setup=setup)
            width, height = info["width"], info["height"]
            channels = rep.channels(**params)
            if slot_writer is not None:
                pool = _SlotOut(slot_writer, (channels, height, width), link.should_stop)
            else:
                pool = _BufferPool((channels, height, width))
            speed = cfg.source.speed
            deadline_us = int(wc.deadline_ms * 1000)
            use_deadline = deadline_us > 0 and speed is not None and wc.mode == "time"
            last_t = None          # newest source time seen
            last_wall = 0          # wall time (monotonic ns) it arrived
            seq = 0
            # incremental representation of the open time window (see represent/voxel.py)
            make_acc = getattr(rep, "accumulator", None)
            # only where latency means something: paced replays and live sources (a --speed max
            # replay has no wall-clock window end; there it would only add work)
            acc = (make_acc(height, width, **params)
                   if make_acc is not None and wc.mode == "time"
                   and (speed is not None or info.get("live", True)) else None)
            spec_policy = _Speculation()
            spec_window = None     # (window index, its output buffer) while building one
            next_report = time.monotonic() + cfg.telemetry_interval_s / 2

            def emit(windows, end_wall_ns):
                nonlocal seq, spec_window
                for w in windows:
                    t_a = time.perf_counter_ns()
                    if spec_window is not None and spec_window[0] < w.index:
                        pool.give_back(spec_window[1])     # stale (not expected): give back
                        spec_window = None
                    if spec_window is not None and spec_window[0] == w.index:
                        buf, spec_window = spec_window[1], None   # built while it was open
                        _, exact = acc.finish(w.events)           # == rep.compute, always
                        spec_policy.result(exact)
                        tel.count("repr_fast" if exact else "repr_recomputed", 1)
                    else:
                        buf = pool.acquire()
                        if buf is None:                     # stop requested while waiting
                            return
                        t_got = time.perf_counter_ns()      # lossless slots: the consumer's pace
                        tel.count("wait_slot_us", (t_got - t_a) // 1000)
                        t_a = t_got
                        extra = ({"t_ref_us": int(w.t1_us)} if wc.representation == "timesurface"
                                 else {})
                        rep.compute(w.events, height, width, out=buf, **params, **extra)
                    t_b = time.perf_counter_ns()
                    tel.count("busy_repr_us", (t_b - t_a) // 1000)
                    header = {"kind": "window", "stream": cfg.stream_id, "seq": seq,
                              "t0_us": int(w.t0_us), "t1_us": int(w.t1_us),
                              "ts": {"window_end": int(end_wall_ns),
                                     "sent": time.monotonic_ns()},
                              "meta": {"events": int(len(w.events)),
                                       "representation": wc.representation}}
                    seq += 1
                    try:
                        pool.send(sock, header, buf, 0 if cfg.lossless else zmq.NOBLOCK)
                    except zmq.Again:               # (the pool took the buffer back)
                        tel.count("dropped_windows", 1)
                        tel.count("dropped_window_events", len(w.events))
                        continue
                    tel.count("busy_send_us", (time.perf_counter_ns() - t_b) // 1000)
                    tel.count("windows_out", 1)
                    tel.count("events_out", len(w.events))
                    tel.latency("window_ms", (time.monotonic_ns() - end_wall_ns) / 1e6)

            def speculate():
                """Off the latency path (after the ready windows went out): add the events of
                the window still open to its tensor, so its close has little left to do."""
                nonlocal spec_window
                ow = windower.open_window()
                if ow is None:
                    return
                if spec_window is None:
                    if not len(ow.events) or not spec_policy.should_try():
                        return
                    t_a = time.perf_counter_ns()
                    buf = pool.acquire(wait=False)
                    if buf is None:                         # no free slot now: at close then
                        return
                    spec_window = (ow.index, buf)
                    acc.begin(spec_window[1], t_last_guess_us=ow.t1_us - 1)
                else:
                    t_a = time.perf_counter_ns()
                acc.update(ow.events)
                tel.count("busy_spec_us", (time.perf_counter_ns() - t_a) // 1000)

            while True:
                t_a = time.perf_counter_ns()
                # read straight into the windower's buffer (one copy fewer than read + push)
                room = windower.reserve(min(max(reader.lag(), _MIN_ROOM), _MAX_ROOM))
                ev = reader.read(timeout=0.005, out=room)
                tel.count("wait_read_us", (time.perf_counter_ns() - t_a) // 1000)
                if ev is None:                                  # end of stream
                    emit(windower.finish(), time.monotonic_ns())
                    break
                now_ns = time.monotonic_ns()
                if len(ev):
                    tel.count("events_in", len(ev))
                    last_t, last_wall = int(ev["t"][-1]), reader.last_write_wall_ns
                    t_a = time.perf_counter_ns()
                    ready = windower.push_reserved(ev)
                    tel.count("busy_window_us", (time.perf_counter_ns() - t_a) // 1000)
                    if ready:
                        tel.latency("ring_ms", (now_ns - reader.last_write_wall_ns) / 1e6)
                    emit(ready, reader.last_write_wall_ns)
                    # leave the CPU to zmq's I/O threads while the last window is on its way
                    if acc is not None and pool.idle():
                        speculate()
                elif use_deadline and last_t is not None:
                    # no events: estimate source time from the wall clock and close windows
                    # that ended more than the deadline ago
                    est_t = last_t + int((now_ns - last_wall) / 1000 * speed)
                    emit(windower.advance(est_t - deadline_us), now_ns)
                if link.should_stop():
                    break
                if time.monotonic() >= next_report:
                    tel.gauge("ring_lost_events", reader.lost)
                    tel.gauge("ring_lag_events", reader.lag())      # queue depth of the ring
                    tel.gauge("buffered_events", windower.buffered_events)
                    # events that came after the deadline had closed their window (a source
                    # stalled for longer than deadline_ms): dropped from that window
                    tel.gauge("late_events", windower.late_events)
                    link.telemetry(tel.snapshot())
                    next_report = time.monotonic() + max(cfg.telemetry_interval_s / 2, 0.25)
            # tell the consumer the stream ended. Lossless: it follows every window, however
            # slow the consumer (waiting in slices, watching for stop). Live: up to 1 s; if it
            # is lost anyway, the launcher's `drain` ends the consumer.
            sock.setsockopt(zmq.SNDTIMEO, 100 if cfg.lossless else 1000)
            eos = {"kind": "control", "stream": cfg.stream_id, "seq": seq, "t0_us": 0,
                   "t1_us": 0, "meta": {"eos": True}}
            while True:
                try:
                    wire.send(sock, b"window", eos, [])
                    break
                except zmq.Again:
                    if not cfg.lossless or link.should_stop():
                        break
            link.done()             # the final telemetry and the unmapping are not part of it
        finally:
            tel.gauge("ring_lost_events", reader.lost)
            tel.count("dropped_events", reader.lost)
            if windower is not None:
                tel.gauge("late_events", windower.late_events)
            snap = tel.snapshot()
            snap["transport"] = "slots" if slots is not None else "zmq"
            link.telemetry(snap, final=True)
            reader.close()
            ring.close()
            sock.close()
            if slots is not None:
                slots.close()
