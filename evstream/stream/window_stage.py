"""The window process: ring -> time/count windows -> representation -> zmq.

Latency accounting starts here. A window is complete at the wall time its closing events were
written into the ring (`RingReader.last_write_wall_ns`), or, for sparse scenes, when the deadline
fires; that instant travels in the message header as `ts.window_end` and every later stage
measures against it (CLOCK_MONOTONIC, shared by all processes on a host).

Backpressure: in lossless mode the PUSH socket blocks when the consumer's queue is full (bounded
end to end). In live mode sends never block: when the consumer is slow or gone the window is
dropped and counted, so the source never stalls.

Output buffers come from a small pool and are sent zero-copy; a buffer is reused only after zmq
reports it sent (MessageTracker), so the hot path allocates nothing per window.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from evstream.config import PipelineConfig
from evstream.stream.curve import secure
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry


class _BufferPool:
    def __init__(self, shape, size: int = 6):
        self.shape = shape
        self.free = [np.zeros(shape, np.float32) for _ in range(size)]
        self.busy: list[tuple[np.ndarray, zmq.MessageTracker]] = []
        self.allocated = 0

    def get(self) -> np.ndarray:
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

    def sent(self, buf: np.ndarray, tracker) -> None:
        if tracker is None:
            self.free.append(buf)
        else:
            self.busy.append((buf, tracker))


def _warm_up(rep, params, Windower, WindowSpec) -> None:
    """Load the Numba kernels (compiled and cached, or compiled now) before reporting ready, so
    the first real window does not pay for it in its latency."""
    from evstream.types import make_events

    ev = make_events([0, 10, 20], [0, 1, 2], [0, 1, 2], [1, 0, 1])
    rep.compute(ev, 4, 4, **params)
    w = Windower(WindowSpec(window_us=10))
    w.push(ev)
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
        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 16 if cfg.lossless else 2)
        # lossless: every queued window reaches the consumer before this process exits (the
        # launcher's stop/terminate bounds the wait); live: a gone consumer costs at most 1 s
        sock.setsockopt(zmq.LINGER, -1 if cfg.lossless else 1000)
        secure(sock, endpoints["windows"], "connect", endpoints.get("curve"))
        sock.connect(endpoints["windows"])
        rep = get_representation(wc.representation)
        params = representation_params(wc)
        tel = StageTelemetry("window")
        try:
            _warm_up(rep, params, Windower, WindowSpec)
            link.ready()
            info = link.wait_start()
            width, height = info["width"], info["height"]
            channels = rep.channels(**params)
            pool = _BufferPool((channels, height, width))
            spec = WindowSpec(mode=wc.mode, window_us=wc.window_us, stride_us=wc.stride_us,
                              count=wc.count, stride_count=wc.stride_count)
            windower = Windower(spec, reuse_buffers=True)   # each window is used at once
            speed = cfg.source.speed
            deadline_us = int(wc.deadline_ms * 1000)
            use_deadline = deadline_us > 0 and speed is not None and wc.mode == "time"
            last_t = None          # newest source time seen
            last_wall = 0          # wall time (monotonic ns) it arrived
            seq = 0
            next_report = time.monotonic() + cfg.telemetry_interval_s / 2

            def emit(windows, end_wall_ns):
                nonlocal seq
                for w in windows:
                    t_a = time.perf_counter_ns()
                    buf = pool.get()
                    extra = {"t_ref_us": int(w.t1_us)} if wc.representation == "timesurface" else {}
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
                        tracker = wire.send(sock, b"window", header, [buf],
                                            flags=0 if cfg.lossless else zmq.NOBLOCK, track=True)
                    except zmq.Again:
                        pool.sent(buf, None)
                        tel.count("dropped_windows", 1)
                        tel.count("dropped_window_events", len(w.events))
                        continue
                    pool.sent(buf, tracker)
                    tel.count("busy_send_us", (time.perf_counter_ns() - t_b) // 1000)
                    tel.count("windows_out", 1)
                    tel.count("events_out", len(w.events))
                    tel.latency("window_ms", (time.monotonic_ns() - end_wall_ns) / 1e6)

            while True:
                t_a = time.perf_counter_ns()
                ev = reader.read(timeout=0.005)
                tel.count("wait_read_us", (time.perf_counter_ns() - t_a) // 1000)
                if ev is None:                                  # end of stream
                    emit(windower.finish(), time.monotonic_ns())
                    break
                now_ns = time.monotonic_ns()
                if len(ev):
                    tel.count("events_in", len(ev))
                    last_t, last_wall = int(ev["t"][-1]), reader.last_write_wall_ns
                    t_a = time.perf_counter_ns()
                    ready = windower.push(ev)
                    tel.count("busy_window_us", (time.perf_counter_ns() - t_a) // 1000)
                    if ready:
                        tel.latency("ring_ms", (now_ns - reader.last_write_wall_ns) / 1e6)
                    emit(ready, reader.last_write_wall_ns)
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
        finally:
            tel.gauge("ring_lost_events", reader.lost)
            tel.count("dropped_events", reader.lost)
            snap = tel.snapshot()
            link.telemetry(snap, final=True)
            reader.close()
            ring.close()
            sock.close()
