"""The sink process: the consumer of `replay --no-model --no-window` (windows) and of a headless
`--no-viewer` run (predictions from the worker). Receives messages, validates them,
measures latency from window end to delivery, and counts; frames, IMU and triggers arrive on the
`side` endpoint and are counted (after the end of the event stream the side queue is drained, so
a lossless run delivers every one).

Live mode keeps only the newest window per stream: each wake-up drains everything queued and
processes the newest message of each stream, counting the rest as dropped. Lossless mode
processes every window in order. Malformed messages are dropped and counted by `wire.recv`, and
so is a well-formed message that is no window or prediction (no array, no window end), and
refused tcp peers (stream/sockets.py); the sink keeps going.
Windows that come in shared-memory slots are taken as zero-copy views (`wire.drain(copy=False)`,
checked against the slot's generation when taken, released after counting): delivery is the
moment the sink holds an intact window, without a copy it would not use.
With `dump_windows` set, every processed window is kept and written to an .npz at the end
(for tests that compare the streamed windows with offline ones; small recordings only).
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from evstream.config import PipelineConfig
from evstream.stream import sockets
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry


def sink_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    from evstream.stream import wire

    with stage_context(endpoints, "sink") as link:
        stats = wire.WireStats()
        # predictions, or the windows themselves when there is no worker
        sock = sockets.open_endpoint(endpoints, sockets.consumer_endpoint(endpoints), "bind",
                                     hwm=16 if cfg.lossless else 4, linger=0, stats=stats)
        side = sockets.open_endpoint(endpoints, "side", "bind", hwm=256, linger=0, stats=stats)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(side, zmq.POLLIN)
        tel = StageTelemetry("sink")
        dumped: list[tuple[int, int, np.ndarray]] = []
        try:
            link.ready()
            link.wait_start()
            next_report = time.monotonic() + cfg.telemetry_interval_s / 2
            eos = side_done = False
            while not eos:
                ready = dict(poller.poll(20))
                if side in ready and not side_done:
                    side_done = _count_side(side, stats, tel, 0)
                    if side_done:
                        poller.unregister(side)
                if sock not in ready:
                    if link.should_stop():
                        break
                    if link.drain_done(False):  # upstream is done and nothing more comes
                        eos = True
                    continue
                link.drain_done(True)
                # windows in shared-memory slots are taken zero-copy: counting needs no copy
                msgs, stale = wire.drain(sock, stats, cfg.lossless, copy=False)
                if stale:
                    tel.count("dropped_windows", len(stale))
                    tel.count("dropped_window_events",
                              sum(int(m.header.get("meta", {}).get("events", 0)) for m in stale))
                for m in msgs:
                    h = m.header
                    if h.get("kind") == "control":
                        eos = eos or bool(h.get("meta", {}).get("eos"))
                        continue
                    if not _deliverable(m, stats):
                        continue
                    t_ns = time.monotonic_ns()
                    kept = np.array(m.arrays[0]) if cfg.dump_windows else None
                    if not wire.finish(m, stats):
                        continue        # its slot was reused meanwhile: dropped (overwritten)
                    if cfg.slow_consumer_ms:                # (tests) work on the window
                        time.sleep(cfg.slow_consumer_ms / 1000)
                    tel.latency("latency_ms", (t_ns - h["ts"]["window_end"]) / 1e6)
                    tel.count("windows_in", 1)
                    tel.count("events_in", int(h.get("meta", {}).get("events", 0)))
                    if cfg.dump_windows:
                        dumped.append((h["t0_us"], h["t1_us"], kept, t_ns))
                if link.should_stop():
                    break
                if time.monotonic() >= next_report:
                    link.telemetry(_snap(tel, stats))
                    next_report = time.monotonic() + max(cfg.telemetry_interval_s / 2, 0.25)
            if eos and not side_done:
                _count_side(side, stats, tel, 1000)   # what is still in flight beside the events
            if cfg.dump_windows:
                _dump(cfg.dump_windows, dumped)
            if eos:
                link.done()     # the stream is over here: the final telemetry is bookkeeping
        finally:
            link.telemetry(_snap(tel, stats), final=True)
            sock.close()
            side.close()


def _count_side(side, stats, tel, wait_ms: int) -> bool:
    """Receive every queued side message; with wait_ms, until the source's end-of-stream
    message arrives (or nothing came for that long: it may have been dropped). True once the
    end-of-stream message was received."""
    from evstream.stream import wire

    names = {"frame": "frames_in", "imu": "imu_in", "trigger": "triggers_in"}
    while True:
        m = wire.recv(side, wait_ms, stats)
        if m is None:
            return False
        if m.header.get("kind") == "control":
            if m.header.get("meta", {}).get("eos"):
                return True
            continue
        name = names.get(m.header.get("kind"))
        if name is None:
            stats.malformed += 1
            continue
        tel.count(name, 1 if name == "frames_in" else len(m.arrays[0]) if m.arrays else 0)


def _deliverable(m, stats) -> bool:
    """A window or prediction the sink can count: one array at least and the window's end time
    (a peer's message that passed the wire format but not this contract is malformed)."""
    from evstream.stream import wire

    h = m.header
    if h.get("kind") in ("window", "prediction") and m.arrays \
            and isinstance(h["ts"].get("window_end"), int):
        return True
    wire.release(m)
    stats.malformed += 1
    stats.last_error = f"not a window or prediction: kind {h.get('kind')!r:.40}, " \
                       f"{len(m.arrays)} arrays, ts {sorted(h['ts'])!r:.60}"
    return False


def _snap(tel, stats) -> dict:
    sockets.poll_monitors()
    snap = tel.snapshot()
    snap["wire"] = stats.as_dict()
    return snap


def _dump(path: str, dumped) -> None:
    if not dumped:
        np.savez(path, t0_us=np.zeros(0, np.int64), t1_us=np.zeros(0, np.int64),
                 windows=np.zeros((0,), np.float32), recv_ns=np.zeros(0, np.int64))
        return
    np.savez(path, t0_us=np.array([d[0] for d in dumped], np.int64),
             t1_us=np.array([d[1] for d in dumped], np.int64),
             windows=np.stack([d[2] for d in dumped]),
             recv_ns=np.array([d[3] for d in dumped], np.int64))
