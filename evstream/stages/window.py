"""The window process: ring -> time/count windows -> representation -> zmq.

Latency accounting starts here. A window is complete at the wall time its closing events were
written into the ring (`RingReader.last_write_wall_ns`), or, for sparse scenes, when the deadline
fires; that instant travels in the message header as `ts.window_end` and every later stage
measures against it (CLOCK_MONOTONIC, shared by all processes on a host).

Backpressure: in lossless mode the PUSH socket blocks when the consumer's queue is full (bounded
end to end). In live mode sends never block: when the consumer is slow or gone the window is
dropped and counted, so the source never stalls.

Output (stream/window_out.py): when the launcher made window slots (every stage on this host),
each tensor is computed straight into a shared-memory slot and only its header goes over zmq
(stream/slots.py; a lossless stage waits for a free slot, a live one reuses the oldest).
Otherwise tensors come from a small pool and are sent zero-copy; a buffer is reused only after
zmq reports it sent (MessageTracker). Either way the hot path allocates nothing per window.

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

The process in its parts (`_WindowStage`; `window_stage` calls them in this order):

    prepare()          kernels loaded, the windower's buffers made, `ready` (with the channels)
    map_slots(info)    the launcher's `setup`: map the window slots it made
    begin(info)        `start`: the sensor size, the output (slots or buffer pool), the fast path
    run()              the ring read into the windower (`take`), windows closed by the deadline
                       (`close_overdue`), each window's tensor (`tensor`: `_FastPath` or computed)
                       sent (`send`), periodic telemetry (`report`), until the end of the stream
    end_of_stream()    the end-of-stream message after the last window
    close()            final telemetry; ring, socket and slots released
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from evstream.config import PipelineConfig
from evstream.stream import sockets
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry
from evstream.stream.window_out import BufferPool, SlotOut

_MIN_ROOM = 1 << 16         # events: room offered to each ring read (more when it lags) ...
_MAX_ROOM = 1 << 19         # ... up to this (8 MiB); the rest comes with the next read
# the windower's buffer (and its spare) from the start: a 50 ms window at 12 M events/s (600k)
# plus a read fits without growing, so the first windows pay no allocation or page faults
_PREALLOC_EVENTS = 3 << 19  # 1.5 Mi events, 24 MiB each


def window_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    with stage_context(endpoints, "window") as link:
        stage = _WindowStage(cfg, endpoints, link)
        try:
            stage.prepare()
            stage.begin(link.wait_start(on_setup=stage.map_slots))
            stage.run()
            stage.end_of_stream()
            link.done()             # the final telemetry and the unmapping are not part of it
        finally:
            stage.close()


class _WindowStage:
    """One window process's state and its parts (see the module comment)."""

    def __init__(self, cfg: PipelineConfig, endpoints: dict, link):
        from evstream.represent import get_representation, representation_params
        from evstream.stream.ring import EventRing

        self.cfg, self.wc, self.link = cfg, cfg.window, link
        self.lossless = cfg.lossless
        self.ring = EventRing.attach(cfg.source.ring_name)
        self.reader = self.ring.reader()
        # lossless: every queued window reaches the consumer before this process exits (the
        # launcher's stop/terminate bounds the wait); live: a gone consumer costs at most 1 s
        self.sock = sockets.open_endpoint(endpoints, "windows", "connect",
                                          hwm=16 if cfg.lossless else 2,
                                          linger=-1 if cfg.lossless else 1000)
        self.rep = get_representation(self.wc.representation)
        self.params = representation_params(self.wc)
        self.tel = StageTelemetry("window")
        self.windower = None
        self.slots = None           # the launcher's window slots, mapped at `setup`
        self.slot_writer = None
        self.out = None             # SlotOut | BufferPool, from `start`
        self.fast = None            # _FastPath, where the open window is built ahead
        self.width = self.height = 0
        self.deadline_us = 0
        self.use_deadline = False
        self.last_t = None          # newest source time seen
        self.last_wall = 0          # wall time (monotonic ns) it arrived
        self.seq = 0
        self.next_report = 0.0

    # -- start-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        from evstream.stream.window import WindowSpec, Windower

        wc = self.wc
        _warm_up(self.rep, self.params, Windower, WindowSpec)
        spec = WindowSpec(mode=wc.mode, window_us=wc.window_us, stride_us=wc.stride_us,
                          count=wc.count, stride_count=wc.stride_count)
        # each window is used at once (reuse); its buffers allocated and touched before
        # `ready`, so the first windows pay no allocation or page faults
        self.windower = Windower(spec, reuse_buffers=True, capacity_events=_PREALLOC_EVENTS)
        self.link.ready(channels=self.rep.channels(**self.params))     # sizes the window slots

    def map_slots(self, info: dict) -> None:
        """The launcher's `setup`, before `start`: map the window slots it made."""
        from evstream.stream.slots import SlotWriter, WindowSlots

        if info.get("window_slots") and self.slots is None:
            self.slots = WindowSlots.attach(info["window_slots"]["name"])
            self.slot_writer = SlotWriter(self.slots, self.lossless)

    def begin(self, info: dict) -> None:
        """`start`: the sensor size, the output, the deadline and the fast path."""
        wc = self.wc
        self.width, self.height = info["width"], info["height"]
        shape = (self.rep.channels(**self.params), self.height, self.width)
        if self.slot_writer is not None:
            self.out = SlotOut(self.slot_writer, shape, self.link.should_stop)
        else:
            self.out = BufferPool(shape)
        speed = self.cfg.source.speed
        self.deadline_us = int(wc.deadline_ms * 1000)
        # the deadline closes a window by the wall clock, so events of a source that stalls
        # longer (a paced replay on a loaded machine) would miss it: a lossless replay waits
        # for its events instead (a live source, or one on another host, keeps the deadline)
        live = bool(info.get("live", True))
        self.use_deadline = (self.deadline_us > 0 and speed is not None and wc.mode == "time"
                             and (live or not self.lossless))
        # incremental representation of the open time window (see represent/voxel.py), only
        # where latency means something: paced replays and live sources (a --speed max replay
        # has no wall-clock window end; there it would only add work)
        make_acc = getattr(self.rep, "accumulator", None)
        if make_acc is not None and wc.mode == "time" \
                and (speed is not None or info.get("live", True)):
            self.fast = _FastPath(make_acc(self.height, self.width, **self.params), self.out,
                                  self.tel)
        self.next_report = time.monotonic() + self.cfg.telemetry_interval_s / 2

    # -- the stream -------------------------------------------------------------------------------

    def run(self) -> None:
        """Read the ring into the windower and send every window that closes, until the ring's
        end of stream (the last windows sent) or a stop."""
        reader, windower, tel = self.reader, self.windower, self.tel
        while True:
            t_a = time.perf_counter_ns()
            # read straight into the windower's buffer (one copy fewer than read + push)
            room = windower.reserve(min(max(reader.lag(), _MIN_ROOM), _MAX_ROOM))
            ev = reader.read(timeout=0.005, out=room)
            tel.count("wait_read_us", (time.perf_counter_ns() - t_a) // 1000)
            if ev is None:                                  # end of stream
                self.emit(windower.finish(), time.monotonic_ns())
                return
            now_ns = time.monotonic_ns()
            if len(ev):
                self.take(ev, now_ns)
            elif self.use_deadline and self.last_t is not None:
                self.close_overdue(now_ns)
            if self.link.should_stop():
                return
            if time.monotonic() >= self.next_report:
                self.report()

    def take(self, ev: np.ndarray, now_ns: int) -> None:
        """Events just read into the windower's buffer: send the windows they close, then
        build the open window ahead."""
        tel, reader = self.tel, self.reader
        tel.count("events_in", len(ev))
        self.last_t, self.last_wall = int(ev["t"][-1]), reader.last_write_wall_ns
        t_a = time.perf_counter_ns()
        ready = self.windower.push_reserved(ev)
        tel.count("busy_window_us", (time.perf_counter_ns() - t_a) // 1000)
        if ready:
            tel.latency("ring_ms", (now_ns - reader.last_write_wall_ns) / 1e6)
        self.emit(ready, reader.last_write_wall_ns)
        # leave the CPU to zmq's I/O threads while the last window is on its way
        if self.fast is not None and self.out.idle():
            self.fast.build(self.windower.open_window())

    def close_overdue(self, now_ns: int) -> None:
        """No events: estimate source time from the wall clock and close windows that ended
        more than the deadline ago (sparse scenes)."""
        est_t = self.last_t + int((now_ns - self.last_wall) / 1000 * self.cfg.source.speed)
        self.emit(self.windower.advance(est_t - self.deadline_us), now_ns)

    def emit(self, windows, end_wall_ns: int) -> None:
        for w in windows:
            buf = self.tensor(w)
            if buf is None:                     # stop requested while waiting for a slot
                return
            self.send(w, buf, end_wall_ns)

    def tensor(self, w) -> np.ndarray | None:
        """w's tensor: the one built while it was open where there is one, else computed now
        into a buffer from the output (None: a stop came while waiting for it)."""
        tel = self.tel
        t_a = time.perf_counter_ns()
        buf = self.fast.take(w) if self.fast is not None else None
        if buf is None:
            buf = self.out.acquire()
            if buf is None:
                return None
            t_got = time.perf_counter_ns()      # lossless slots: the consumer's pace
            tel.count("wait_slot_us", (t_got - t_a) // 1000)
            t_a = t_got
            extra = {"t_ref_us": int(w.t1_us)} if self.wc.representation == "timesurface" else {}
            self.rep.compute(w.events, self.height, self.width, out=buf, **self.params, **extra)
        tel.count("busy_repr_us", (time.perf_counter_ns() - t_a) // 1000)
        return buf

    def send(self, w, buf: np.ndarray, end_wall_ns: int) -> None:
        """The window's header over zmq, its tensor in a slot or as a zero-copy buffer; live:
        never blocks (a full queue drops the window, counted)."""
        tel = self.tel
        t_b = time.perf_counter_ns()
        header = {"kind": "window", "stream": self.cfg.stream_id, "seq": self.seq,
                  "t0_us": int(w.t0_us), "t1_us": int(w.t1_us),
                  "ts": {"window_end": int(end_wall_ns), "sent": time.monotonic_ns()},
                  "meta": {"events": int(len(w.events)),
                           "representation": self.wc.representation}}
        self.seq += 1
        try:
            self.out.send(self.sock, header, buf, 0 if self.lossless else zmq.NOBLOCK)
        except zmq.Again:                       # (the output took the buffer back)
            tel.count("dropped_windows", 1)
            tel.count("dropped_window_events", len(w.events))
            return
        tel.count("busy_send_us", (time.perf_counter_ns() - t_b) // 1000)
        tel.count("windows_out", 1)
        tel.count("events_out", len(w.events))
        tel.latency("window_ms", (time.monotonic_ns() - end_wall_ns) / 1e6)

    def report(self) -> None:
        tel = self.tel
        tel.gauge("ring_lost_events", self.reader.lost)
        tel.gauge("ring_lag_events", self.reader.lag())         # queue depth of the ring
        tel.gauge("buffered_events", self.windower.buffered_events)
        # events that came after the deadline had closed their window (a source stalled for
        # longer than deadline_ms): dropped from that window
        tel.gauge("late_events", self.windower.late_events)
        self.link.telemetry(tel.snapshot())
        self.next_report = time.monotonic() + max(self.cfg.telemetry_interval_s / 2, 0.25)

    # -- the end ----------------------------------------------------------------------------------

    def end_of_stream(self) -> None:
        """Tell the consumer the stream ended. Lossless: it follows every window, however slow
        the consumer (waiting in slices, watching for stop). Live: up to 1 s; if it is lost
        anyway, the launcher's `drain` ends the consumer."""
        from evstream.stream import wire

        self.sock.setsockopt(zmq.SNDTIMEO, 100 if self.lossless else 1000)
        eos = {"kind": "control", "stream": self.cfg.stream_id, "seq": self.seq, "t0_us": 0,
               "t1_us": 0, "meta": {"eos": True}}
        while True:
            try:
                wire.send(self.sock, b"window", eos, [])
                break
            except zmq.Again:
                if not self.lossless or self.link.should_stop():
                    break

    def close(self) -> None:
        tel = self.tel
        tel.gauge("ring_lost_events", self.reader.lost)
        tel.count("dropped_events", self.reader.lost)
        if self.windower is not None:
            tel.gauge("late_events", self.windower.late_events)
        snap = tel.snapshot()
        snap["transport"] = "slots" if self.slots is not None else "zmq"
        self.link.telemetry(snap, final=True)
        self.reader.close()
        self.ring.close()
        self.sock.close()
        if self.slots is not None:
            self.slots.close()


class _FastPath:
    """The open time window's tensor, built while the window is open (the representation's
    `accumulator`), so that its close has little left to do; what it hands over always equals
    `rep.compute(window)`. `_Speculation` decides which windows try."""

    def __init__(self, acc, out, tel):
        self.acc, self.out, self.tel = acc, out, tel
        self.policy = _Speculation()
        self.building = None        # (window index, its output buffer) while building one

    def build(self, ow) -> None:
        """Off the latency path (after the ready windows went out): add the events of the
        window still open (`ow`) to its tensor."""
        if ow is None:
            return
        if self.building is None:
            if not len(ow.events) or not self.policy.should_try():
                return
            t_a = time.perf_counter_ns()
            buf = self.out.acquire(wait=False)
            if buf is None:                     # no free slot now: at close then
                return
            self.building = (ow.index, buf)
            self.acc.begin(buf, t_last_guess_us=ow.t1_us - 1)
        else:
            t_a = time.perf_counter_ns()
        self.acc.update(ow.events)
        self.tel.count("busy_spec_us", (time.perf_counter_ns() - t_a) // 1000)

    def take(self, w) -> np.ndarray | None:
        """w's tensor when it was built while open (finished now), else None."""
        if self.building is not None and self.building[0] < w.index:
            self.out.give_back(self.building[1])   # stale (not expected): give back
            self.building = None
        if self.building is None or self.building[0] != w.index:
            return None
        buf, self.building = self.building[1], None
        _, exact = self.acc.finish(w.events)        # == rep.compute, always
        self.policy.result(exact)
        self.tel.count("repr_fast" if exact else "repr_recomputed", 1)
        return buf


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
