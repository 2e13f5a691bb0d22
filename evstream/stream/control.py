"""The control channel between the launcher and its stages.

The launcher binds one ROUTER socket; every stage connects a DEALER whose identity is the stage
name. Messages are single JSON frames `{"kind": ..., ...}`:

    stage -> launcher   ready {info}      the stage has opened its resources (ring, sockets, file)
                        telemetry {snap}   periodic and final counters (final=True at the end)
                        done {}            the stage finished its work normally
                        error {message, traceback, user}   the stage failed
    launcher -> stage   start {info}       every stage is ready: go (info carries the sensor size)
                        stop {}            finish now (Ctrl-C, another stage failed)
                        drain {}           every upstream stage is done: finish what is queued,
                                           then end (the end-of-stream message on the data
                                           socket may have been dropped in live mode)

Start-up is a handshake, never a sleep: stages report `ready`, the launcher answers `start` only
when all have. Because the channel is zmq, a stage may live on another host.
"""

from __future__ import annotations

import gc
import json
import resource
import time
import traceback

import zmq


class StopRequested(Exception):
    """Raised inside a stage when the launcher asked it to stop while it was waiting."""


class StageLink:
    """The stage's end of the control channel."""

    def __init__(self, control_url: str, stage: str, ctx: zmq.Context | None = None):
        self.stage = stage
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, stage.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(control_url)
        self.stopping = False
        self.draining = False
        self._done_sent = False

    def send(self, kind: str, **payload) -> None:
        self.sock.send(json.dumps({"kind": kind, **payload}).encode())

    def ready(self, **info) -> None:
        # What the stage built while setting up (modules, compiled kernels, buffers) lives as
        # long as the process: gc.freeze moves it out of the cyclic collector's view, so the
        # collections that streaming's allocations trigger only walk what was made since.
        # Without it a full collection walked the whole heap: 8-12 ms in the sink just after
        # `start` (inside the stream), 40-90 ms in the source and window stage as they ended
        # (measured with gc.callbacks).
        gc.freeze()
        self.send("ready", info=info)

    def wait_start(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stage {self.stage}: no start from the launcher in {timeout_s} s")
            if self.sock.poll(int(left * 1000)):
                msg = json.loads(self.sock.recv())
                if msg["kind"] == "start":
                    self._cpu_at_start = time.process_time()
                    self._faults_at_start = _minor_faults()
                    info = msg.get("info", {})
                    if info.get("window_slots") and self.stage != "window":
                        # the windows' consumer maps the slots now, not on its first window
                        from evstream.stream.slots import prepare_consumer
                        prepare_consumer(info["window_slots"]["name"])
                    return info
                if msg["kind"] == "stop":
                    self.stopping = True
                    raise StopRequested

    def should_stop(self) -> bool:
        """Non-blocking: has the launcher asked us to stop?"""
        while not self.stopping and self.sock.poll(0):
            kind = json.loads(self.sock.recv())["kind"]
            if kind == "stop":
                self.stopping = True
            elif kind == "drain":
                self.draining = True
        return self.stopping

    def drain_done(self, received: bool, quiet_s: float = 0.2) -> bool:
        """After `drain` (upstream finished and exited): True once nothing has arrived for
        `quiet_s`, so a message still crossing a socket buffer is not left behind."""
        if not self.draining or received:
            self._quiet_since = None
            return False
        now = time.monotonic()
        if getattr(self, "_quiet_since", None) is None:
            self._quiet_since = now
        return now - self._quiet_since >= quiet_s

    def telemetry(self, snapshot: dict, final: bool = False) -> None:
        """Send a snapshot; it gains `cpu_stream_s`, this process's CPU time (all threads)
        since `start`, i.e. without imports, set-up and kernel loading, and `faults_stream`,
        its page faults since then (each costs ~2 us here: memory a stage keeps touching
        fresh shows up in it)."""
        t0 = getattr(self, "_cpu_at_start", None)
        if t0 is not None and "cpu_stream_s" not in snapshot:
            snapshot = dict(snapshot, cpu_stream_s=round(time.process_time() - t0, 6),
                            faults_stream=_minor_faults() - self._faults_at_start)
        self.send("telemetry", snapshot=snapshot, final=final)

    def done(self) -> None:
        """The stage's work is over (sent once: a stage may say so before it tears down its
        shared memory and sockets, which then runs outside the launcher's streaming time)."""
        if not self._done_sent:
            self._done_sent = True
            self.send("done")

    def error(self, exc: BaseException, user: bool) -> None:
        self.send("error", message=str(exc), user=user,
                  traceback="".join(traceback.format_exception(exc)))

    def close(self) -> None:
        self.sock.close()


def _minor_faults() -> int:
    """This process's minor page faults so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class LauncherLink:
    """The launcher's end: one ROUTER bound to `url`."""

    def __init__(self, url: str, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(url)
        self.url = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_s: float) -> tuple[str, dict] | None:
        if not self.sock.poll(max(0, int(timeout_s * 1000))):
            return None
        ident, raw = self.sock.recv_multipart()
        try:
            return ident.decode(), json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return ident.decode(errors="replace"), {"kind": "garbage"}

    def send(self, stage: str, kind: str, **payload) -> bool:
        try:
            self.sock.send_multipart([stage.encode(), json.dumps({"kind": kind, **payload}).encode()],
                                     flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # the stage is gone (ROUTER_MANDATORY) or its queue is full
            return False

    def close(self) -> None:
        self.sock.close()
