"""The control channel between the launcher and its stages.

The launcher binds one ROUTER socket; every stage connects a DEALER whose identity is the stage
name. Messages are single JSON frames `{"kind": ..., ...}`:

    stage -> launcher   ready {info}      the stage has opened its resources (ring, sockets, file)
                        set {}             the stage has taken what `setup` offered
                        telemetry {snap}   periodic and final counters (final=True at the end)
                        done {}            the stage finished its work normally
                        error {message, traceback, user}   the stage failed
    launcher -> stage   setup {info}       (before start, to the window stage and the consumer of
                                           its windows when they share window slots) map the
                                           slots now, then answer `set`
                        start {info}       every stage is ready (and set): go (info carries the
                                           sensor size)
                        stop {}            finish now (Ctrl-C, another stage failed)
                        drain {}           every upstream stage is done: finish what is queued,
                                           then end (the end-of-stream message on the data
                                           socket may have been dropped in live mode)

Start-up is a handshake, never a sleep: stages report `ready`, the launcher answers `start` only
when all have (and, with window slots, once the stages that share them have mapped them: that
took the window stage and the sink 0.5-5 ms after `start`, inside the stream, before the
source's first packet). `start` goes to the stages downstream first, the source last; the
streaming time starts as the first one is sent. Because the channel is zmq, a stage may live
on another host.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import time
import traceback

import zmq

from evstream.stream import lifeline, sockets


class StopRequested(Exception):
    """Raised inside a stage when the launcher asked it to stop while it was waiting."""


class StageLink:
    """The stage's end of the control channel."""

    def __init__(self, control_url: str, stage: str, ctx: zmq.Context | None = None,
                 nice_after_done: int = 0):
        self.stage = stage
        self.nice_after_done = nice_after_done      # see step_aside (stage processes: 10)
        self.ctx = ctx or zmq.Context.instance()
        self.sock = sockets.open_endpoint({"control": control_url}, "control", "connect",
                                          linger=2000, ctx=self.ctx, identity=stage.encode())
        self.stopping = False
        self.draining = False
        self._done_sent = False

    def send(self, kind: str, **payload) -> None:
        if lifeline.orphaned():         # the launcher is gone: nobody to tell
            return
        self.sock.send(json.dumps({"kind": kind, **payload}).encode())

    def ready(self, **info) -> None:
        # What the stage built while setting up (modules, compiled kernels, buffers) lives as
        # long as the process: gc.freeze moves it out of the cyclic collector's view, so the
        # collections that streaming's allocations trigger only walk what was made since.
        # Without it a full collection walked the whole heap: 8-12 ms in the sink just after
        # `start` (inside the stream), 40-90 ms in the source and window stage as they ended
        # (measured with gc.callbacks).
        gc.freeze()
        bound = sockets.bound_endpoints()
        if bound:
            info = dict(info, bound=bound)
        # when the process got here (CLOCK_MONOTONIC is one clock for every process of a
        # host): the launcher's summary splits the start-up by stage (`startup_s`)
        info["times"] = dict(lifeline.START_TIMES, ready=time.monotonic())
        self.send("ready", info=info)

    def wait_start(self, timeout_s: float = 60.0, on_setup=None) -> dict:
        """Wait for `start` -> its info. A `setup` before it runs `on_setup(info)` (default: a
        consumer maps the window slots the info names) and answers `set`; without one (a
        restarted worker) the set-up runs on `start`'s info instead."""
        deadline = time.monotonic() + timeout_s
        set_up = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stage {self.stage}: no start from the launcher in {timeout_s} s")
            if self.sock.poll(int(left * 1000)):
                msg = json.loads(self.sock.recv())
                if msg["kind"] == "setup":
                    (on_setup or _prepare_consumer)(msg.get("info", {}))
                    set_up = True
                    self.send("set")
                    continue
                if msg["kind"] == "start":
                    info = msg.get("info", {})
                    if not set_up:
                        (on_setup or _prepare_consumer)(info)
                    self._cpu_at_start = time.process_time()
                    self._faults_at_start = _minor_faults()
                    return info
                if msg["kind"] == "stop":
                    self.stopping = True
                    raise StopRequested

    def should_stop(self) -> bool:
        """Non-blocking: has the launcher asked us to stop (or died)?"""
        if lifeline.orphaned():
            self.stopping = True
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
            if self.nice_after_done:
                step_aside(self.nice_after_done)

    def error(self, exc: BaseException, user: bool) -> None:
        self.send("error", message=str(exc), user=user,
                  traceback="".join(traceback.format_exception(exc)))

    def close(self) -> None:
        self.sock.close()


def _prepare_consumer(info: dict) -> None:
    """The windows' consumer maps the slots before `start`, not on its first window."""
    if info.get("window_slots"):
        from evstream.stream.slots import prepare_consumer
        prepare_consumer(info["window_slots"]["name"])


AFTER_DONE_NICE = 10


def step_aside(by: int = AFTER_DONE_NICE) -> None:
    """Lower the calling thread's CPU priority by `by` nice levels. A stage does this once it
    has sent `done`: what is left (closing, unmapping, interpreter exit: tens of ms of CPU) then
    waits for the stages still streaming instead of taking a core from them. Measured on the
    2-core machine: the source's exit ran while the window stage and the consumer finished the
    last windows, and the end of a 10 M-event replay came 4-26 ms after the source's last
    packet; with the source's exit held back, 3-12 ms. Linux keeps the nice value per thread,
    so I/O threads still delivering queued messages keep theirs. Lowering needs no privilege;
    where it fails nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + by))
    except (OSError, AttributeError):
        pass


def _minor_faults() -> int:
    """This process's minor page faults so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class LauncherLink:
    """The launcher's end: one ROUTER bound to `url`."""

    def __init__(self, url: str, ctx: zmq.Context | None = None):
        # its own context, ended at close: a process that runs pipelines one after another
        # (a benchmark, a notebook) keeps no zmq threads between them, so its next launch may
        # fork its stages (pipeline.fork_is_safe)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = sockets.open_endpoint({"control": url}, "control", "bind", linger=0,
                                          ctx=self.ctx)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
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
        if self._own_ctx:
            self.ctx.term()
