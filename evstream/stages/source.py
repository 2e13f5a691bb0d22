"""The source process: open a source, pace it, and write its events into the shared-memory ring.

Frames, IMU samples and triggers do not go through the event ring: they travel beside it on the
`side` zmq endpoint (PUSH; the consumer binds), one message per frame and one per packet's IMU or
trigger array, timestamped in the header. Lossless mode blocks on a full queue like the ring
does; live mode drops and counts (`dropped_side`) instead of stalling the events.

The source is opened inside this process (a camera handle or socket cannot cross processes), so a
bad path or a missing camera is reported from here as a user error and the launcher exits 2.
It opens with the typed options the command built (`cfg.source.options`, sources/options.py),
paced where the pipeline asks for it (`speed`, `loop`, `start_s`, `end_s`).
In lossless mode the ring writer waits for the slowest reader, in slices, so that a stop request
is seen within a few milliseconds even while it waits.
"""

from __future__ import annotations

import time

import numpy as np

from evstream.config import PipelineConfig, SourceConfig
from evstream.stream import sockets
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry
from evstream.types import put_events


def open_configured_source(cfg: SourceConfig):
    """SourceConfig -> EventSource (paced for finite sources)."""
    from evstream.sources.options import open_configured
    from evstream.sources.pacing import paced

    def reopen():
        return open_configured(cfg.spec, cfg.options)

    src = reopen()
    if not src.live and (cfg.speed is not None or cfg.loop or cfg.start_s or cfg.end_s):
        src = paced(src, speed=cfg.speed if cfg.speed is not None else "max", loop=cfg.loop,
                    start_s=cfg.start_s, end_s=cfg.end_s, reopen=reopen)
    return src


def source_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    from evstream.stream import wire  # noqa: F401 - loaded now: it took 8 ms at the end of a replay
    from evstream.stream.ring import EventRing

    with stage_context(endpoints, "source") as link:
        src = open_configured_source(cfg.source)
        ring = EventRing.attach(cfg.source.ring_name)
        writer = ring.writer("lossless" if cfg.lossless else "live")
        side = sockets.open_endpoint(endpoints, "side", "connect", hwm=256, linger=1000)
        tel = StageTelemetry("source")
        rec = _recorder(src, cfg.source.record_path) if cfg.source.record_path else None
        finished = False
        try:
            src.warm_up()           # the reader's first-time costs, before `ready`
            link.ready(width=src.width, height=src.height, camera=src.camera, live=src.live,
                       resolution_note=src.resolution_note)
            link.wait_start()
            next_report = time.monotonic() + cfg.telemetry_interval_s / 2
            # check each packet's events while copying them into the ring (one pass, not two)
            fused = rec is None and src.can_defer_check

            def put(ev) -> None:
                n = (write_checked(writer, src, ev, link.should_stop) if fused
                     else _write(writer, ev, link.should_stop))
                tel.count("events_out", n)

            batch = _Batcher(put) if unpaced(src) else None
            for pkt in src.packets(check=not fused):
                if link.should_stop():
                    break
                ev = pkt.events
                if rec is not None:
                    rec.write(pkt)
                side_data = pkt.frames or len(pkt.imu) or len(pkt.triggers)
                if batch is not None:
                    batch.add(ev)
                    if side_data:
                        batch.flush()       # the side channel never runs ahead of the ring
                elif len(ev):
                    put(ev)
                if side_data:
                    _send_side(side, pkt, cfg, tel)
                now = time.monotonic()
                if now >= next_report:
                    if batch is not None:
                        batch.flush()
                    link.telemetry(_snapshot(tel, src))
                    next_report = now + max(cfg.telemetry_interval_s / 2, 0.25)
            if batch is not None:
                batch.flush()         # lossless writes give up by themselves on a stop
            finished = True
        finally:
            writer.close_stream()
            if rec is not None:
                rec.close()          # what was read so far is kept, also after Ctrl-C
            src.close()
            _side_eos(side, cfg)
            link.telemetry(_snapshot(tel, src), final=True)
            if finished:
                link.done()          # unmapping the ring is not part of the stream
            ring.close()
            side.close()


BATCH_EVENTS = 1 << 16      # a file's small packets are gathered up to this many events ...
SMALL_PACKET = 1 << 14      # ... when they hold fewer than this


def unpaced(src) -> bool:
    """A finite source read as fast as it goes (`--speed max`): nothing waits on its packet
    boundaries, so its small packets may reach the ring together."""
    return not src.live and getattr(src, "speed", None) is None


class _Batcher:
    """Consecutive small packets of an unpaced file -> one ring write.

    A recording from a DAVIS holds a few hundred to a few thousand events per packet; each
    ring write costs a few microseconds of Python and a futex wake whatever its size, which at
    1,000 events a packet cost more than dv's decode of the packet. Small packets are copied
    into one buffer (16 bytes an event, well under the write's own cost) and written when it
    holds BATCH_EVENTS, before side data goes out, at each telemetry report and at the end; a
    big packet is written as it is (after what is gathered). The ring checks the gathered
    events as one array, so the first bad event is found and handled exactly as before."""

    def __init__(self, put, capacity: int = BATCH_EVENTS, small: int = SMALL_PACKET):
        from evstream.types import EVENT_DTYPE

        self.put, self.small = put, small
        self.buf = np.empty(capacity, EVENT_DTYPE)
        self.n = 0

    def add(self, ev) -> None:
        m = len(ev)
        if not m:
            return
        if m >= self.small:
            self.flush()
            self.put(ev)
            return
        if self.n + m > len(self.buf):
            self.flush()
        self.n = put_events(self.buf, self.n, ev)

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self.put(self.buf[:n])


def _recorder(src, path: str):
    """`run --record OUT.aedat4`: everything the source reads, written as it streams (atomic:
    the file appears under its name when the stage closes it)."""
    from evstream.sources.base import SIDE_STREAMS, declared_side_streams
    from evstream.sources.writer import Aedat4Writer

    side = declared_side_streams(src)
    side = set(SIDE_STREAMS) if side is None else side
    return Aedat4Writer(path, width=src.width, height=src.height, camera=src.camera or "unknown",
                        frames="frames" in side, imu="imu" in side, triggers="triggers" in side,
                        frame_size=getattr(src, "frame_size", None))


def _send_side(sock, pkt, cfg, tel) -> None:
    import zmq

    from evstream.stream import wire

    flags = 0 if cfg.lossless else zmq.NOBLOCK
    items = [("frame", f.t_us, f.t_us, [f.image], {"exposure_us": int(f.exposure_us)})
             for f in pkt.frames]
    for kind, arr in (("imu", pkt.imu), ("trigger", pkt.triggers)):
        if len(arr):
            items.append((kind, int(arr["t"][0]), int(arr["t"][-1]), [arr], {}))
    for kind, t0, t1, arrays, meta in items:
        header = {"kind": kind, "stream": cfg.stream_id, "t0_us": int(t0), "t1_us": int(t1),
                  "meta": meta}
        n = len(arrays[0]) if kind != "frame" else 1
        try:
            wire.send(sock, kind.encode(), header, arrays, flags=flags)
            tel.count(f"{kind}s_out" if kind != "imu" else "imu_out", n)
        except zmq.Again:
            tel.count("dropped_side", n)


def _side_eos(sock, cfg) -> None:
    """End of the side stream, so the consumer knows when it has every frame (waits up to 1 s
    for a full queue, even in live mode)."""
    import zmq

    from evstream.stream import lifeline, wire

    if lifeline.orphaned():         # the launcher is gone: no one waits for it
        return
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    try:
        wire.send(sock, b"control", {"kind": "control", "stream": cfg.stream_id,
                                     "meta": {"eos": True}}, [])
    except zmq.Again:
        pass


def _write(writer, ev, should_stop) -> int:
    """-> events written (all of them unless a stop came while a lossless ring was full)."""
    done = 0
    while done < len(ev):
        # lossless writers block while the ring is full: wait in short slices to stay responsive
        done += writer.write(ev[done:], timeout=0.05)
        if done < len(ev) and should_stop():
            break
    return done


def write_checked(writer, src, ev, should_stop) -> int:
    """_write for unchecked events (src.packets(check=False)): the ring checks them as it
    copies them; from the first that fails, the source's policy decides (an error raises,
    "drop" drops, and what remains is written). Also what `bench pipeline` times."""
    done = 0
    while done < len(ev):
        n, bad = writer.write_checked(ev[done:], src.last_t, src.width, src.height,
                                      timeout=0.05)
        if n:
            done += n
            src.last_t = ev["t"][done - 1]
        if bad:
            return done + _write(writer, src.check_rest(ev, done), should_stop)
        if done < len(ev) and should_stop():
            break
    return done


def _snapshot(tel, src) -> dict:
    snap = tel.snapshot()
    snap["source"] = src.stats.as_dict()
    lag = getattr(src, "pacing_lag_us", None)
    if lag:
        snap["pacing_lag_us"] = lag
    for key in ("received_events", "received_packets", "dropped_packets"):   # network sources
        if hasattr(src, key):
            snap.setdefault("network", {})[key] = int(getattr(src, key))
    end_reason = getattr(src, "end_reason", "")
    if end_reason:
        snap["end_reason"] = end_reason
    return snap
