r"""The launcher: binds endpoints, creates the ring, starts the stage processes, watches them,
and shuts everything down.

    source process --(shm event ring)--> window process --(zmq windows)--> consumer process
                                                      (tensors in shm window slots on one host)
          \________________ control channel (zmq ROUTER, evstream.stream.control) _________/

Lifecycle:
0. remove shared memory and ipc directories left by a launcher that was killed (their names carry
   its pid; stream/lifeline.py), saying so in one line per launcher;
1. create the ring (this process owns it and unlinks it on every exit path) and a private ipc
   directory for the endpoints; bind the control socket;
2. start the stages (`spawn`), with SIGINT ignored while they start so that Ctrl-C is handled
   here only; each runs `lifeline.stage_main`, which first ties it to this process (it gets
   SIGTERM, and exits within a second, if this process dies however it dies);
3. wait for every `ready` (a stage that fails first is reported instead), then create the
   window slots (shared memory sized from the sensor geometry and the window stage's channel
   count, when every stage runs here; owned and unlinked here like the ring) and send `start`
   with the sensor geometry the source announced (and the slots' name, to the window stage
   and the stage that takes its windows);
4. relay telemetry (a one-line status every `telemetry_interval_s` on stderr), until every stage
   reports `done`; a stage error or a stage that dies without a word stops the others;
5. on Ctrl-C / SIGTERM send `stop`; whatever has not exited a second later is terminated, then
   killed (one grace period, in `_finish`; `_reap` only terminates what is left). The ring
   is unlinked and the ipc directory removed in all cases.

`run_pipeline` returns a `PipelineResult` (summary dict + exit code); it raises nothing for stage
failures, so the CLI decides how to print them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from evstream.config import PipelineConfig
from evstream.errors import EvstreamError
from evstream.stream.control import LauncherLink
from evstream.stream.telemetry import format_line, merge_latency
from evstream.types import EVENT_DTYPE

STOP_GRACE_S = 1.0


@dataclass
class PipelineResult:
    exit_code: int = 0
    summary: dict = field(default_factory=dict)
    error: str = ""             # one line for user errors, a traceback for crashes
    error_stage: str = ""
    user_error: bool = False


class _Terminate(Exception):
    """SIGTERM, turned into an orderly stop."""


STAGE_ORDER = ("source", "window", "worker", "viewer", "sink")


# the process function of each stage, as (module, name): the stage process imports it itself,
# after tying itself to the launcher (lifeline.stage_main), and only when the pipeline has that
# stage (the worker pulls in torch, which a --no-model run never needs)
STAGE_FUNCTIONS = {
    "source": ("evstream.stages.source", "source_stage"),
    "window": ("evstream.stages.window", "window_stage"),
    "worker": ("evstream.stages.worker", "worker_stage"),
    "viewer": ("evstream.stages.viewer", "viewer_stage"),
    "sink": ("evstream.stages.sink", "sink_stage"),
}


def stage_names(cfg: PipelineConfig) -> list[str]:
    """The stages of this pipeline, upstream first, restricted to `cfg.stages` when set."""
    if cfg.consumer not in ("sink", "viewer"):
        raise ValueError(f"unknown consumer {cfg.consumer!r}")
    names = ["source", "window"] + (["worker"] if cfg.infer is not None else []) + [cfg.consumer]
    if cfg.stages:
        unknown = set(cfg.stages) - set(names)
        if unknown:
            raise ValueError(f"stages {sorted(unknown)} are not part of this pipeline "
                             f"(it has {', '.join(names)})")
        names = [n for n in names if n in cfg.stages]
    return names


def make_endpoints(cfg: PipelineConfig, tmpdir: str) -> dict:
    """ipc endpoints in a private directory, overridden by the user's --bind/--connect URLs.
    Without a worker the consumer takes windows directly: `predictions` is `windows`."""
    ep = {name: f"ipc://{tmpdir}/{name}" for name in ("control", "windows", "predictions", "side")}
    ep.update(cfg.endpoints)
    if cfg.infer is None:
        ep["predictions"] = ep["windows"]
    if cfg.curve:
        ep["curve"] = dict(cfg.curve)
    return ep


def run_pipeline(cfg: PipelineConfig, status=None, on_started=None) -> PipelineResult:
    """Run the pipeline to the end of the source (or Ctrl-C). `status(line)` gets periodic lines;
    `on_started({"pids": {stage: pid}, "endpoints": {...}})` is called once every stage process
    runs (tests use it to kill a stage or to talk to an endpoint)."""
    from evstream.stream import lifeline
    from evstream.stream.ring import EventRing

    t_enter = time.monotonic()
    status = status or (lambda line: print(line, file=sys.stderr, flush=True))
    for pid, names in lifeline.remove_stale():
        status(lifeline.stale_message(pid, names))
    names = stage_names(cfg)
    methods = {name: start_method(name) for name in names}      # decided before any start
    if "fork" in methods.values():
        _preload(cfg)
    tmpdir = tempfile.mkdtemp(prefix=f"evstream-{os.getpid()}-")
    try:
        ring = EventRing.create(cfg.source.ring_capacity_events)
    except OSError as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        mib = cfg.source.ring_capacity_events * EVENT_DTYPE.itemsize / 2**20
        raise EvstreamError(f"cannot make the {mib:.0f} MiB event ring in /dev/shm: "
                            f"{e.strerror or e} (free space there or lower --ring-events)"
                            ) from None
    cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, ring_name=ring.name))
    endpoints = make_endpoints(cfg, tmpdir)
    link = LauncherLink(endpoints["control"])
    procs: dict[str, mp.Process] = {}
    result = PipelineResult()
    state = _State()
    old_term = signal.signal(signal.SIGTERM, _raise_terminate)
    t_start = time.monotonic()
    state.marks["spawn"] = t_start
    try:
        for name in names:
            procs[name] = _start(mp.get_context(methods[name]), name, cfg, endpoints)
        t_start = time.monotonic()
        state.marks["spawned"] = t_start
        if on_started is not None:
            on_started({"pids": {name: p.pid for name, p in procs.items()},
                        "endpoints": dict(endpoints)})
        _supervise(cfg, link, procs, result, status, state,
                   restart=lambda name: _start(mp.get_context(start_method(name)), name, cfg,
                                               endpoints))
    except (KeyboardInterrupt, _Terminate):
        result.summary["interrupted"] = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        try:
            _finish(link, procs, state, result)
        except (KeyboardInterrupt, _Terminate):   # a second Ctrl-C: no more waiting
            pass
        _reap(procs)
        link.close()
        ring.close()
        ring.unlink()
        if state.slots is not None:
            state.slots.close()
            state.slots.unlink()
        shutil.rmtree(tmpdir, ignore_errors=True)
    now = time.monotonic()
    result.summary["startup_s"] = _startup(state, t_enter, now)
    result.summary["start_method"] = methods
    result.summary["wall_s"] = round(now - t_start, 3)
    # streaming time: from `start` to the end, without process start-up and kernel loading
    end = state.t_done if len(state.done) == len(procs) else now
    result.summary["stream_s"] = round(end - state.t_streaming, 3) if state.t_streaming else 0.0
    return result


START_METHODS = ("fork", "spawn")


# stages whose libraries keep thread pools of their own (torch's OpenMP and onnxruntime in the
# worker, OpenCV in the viewer): forked from a process where such a pool already runs, they
# could wait forever on a pool thread that the fork did not copy
POOLED_STAGES = ("worker", "viewer")


def start_method(stage: str = "source") -> str:
    """How a stage process starts: `fork` on Linux where `fork_is_safe(stage)` (it begins with
    what `_preload` loaded here), `spawn` otherwise; EVSTREAM_START_METHOD=spawn|fork chooses
    for every stage (fork from a process with other threads is then at the user's risk)."""
    m = os.environ.get("EVSTREAM_START_METHOD", "").strip().lower()
    if m:
        if m not in START_METHODS:
            raise EvstreamError(f"EVSTREAM_START_METHOD={m!r}: expected one of "
                                f"{', '.join(START_METHODS)}")
        return m
    if not sys.platform.startswith("linux"):
        return "spawn"
    return "fork" if fork_is_safe(stage) else "spawn"


def fork_is_safe(stage: str = "worker") -> bool:
    """fork copies one thread. Never once Numba's parallel layer runs (its workers hold the
    kernels' launch state). For a stage that uses a library with a thread pool of its own
    (POOLED_STAGES), only where this process runs no thread beyond numpy's OpenBLAS pool
    (which stops itself around a fork, pthread_atfork): after `evstream demo` generated its
    recording, OpenCV's pool runs, and a forked viewer waited forever on it. The source, window
    and sink stages use no such pool (Numba kernels here are single-threaded, numpy's BLAS is
    fork-aware)."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is not None and getattr(par, "_is_initialized", False):
        return False
    if stage not in POOLED_STAGES:
        return True
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    blas = 0
    if "numpy" in sys.modules:
        env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        try:
            blas = max(0, (int(env) if env else os.cpu_count() or 1) - 1)
        except ValueError:
            blas = max(0, (os.cpu_count() or 1) - 1)
    return threads <= 1 + blas


def _preload(cfg: PipelineConfig) -> None:
    """Before forking the stages: what each would otherwise load for itself, once. Numba's
    import and its first kernel load (its target registries: 0.3-0.5 s a process), the stage
    modules, zmq and dv-processing. Nothing here starts a thread or opens a file, so the
    forked stages start from a clean copy."""
    import numba  # noqa: F401
    import zmq  # noqa: F401

    from evstream.stages import source, window  # noqa: F401
    from evstream.stream import ring_kernel

    import numpy as np

    words = np.zeros((0, 2), np.int64)
    ring_kernel.copy_checked(words, words, 0, 1, 1)       # Numba's first load, for everyone
    if not cfg.stages or "source" in cfg.stages:
        try:
            import dv_processing  # noqa: F401
        except ImportError:
            pass


def _startup(state: _State, t_enter: float, t_end: float) -> dict:
    """Where the time around the stream went, in seconds: `setup` (the launcher before the
    first process: stale segments, the ring), `spawn` (starting the processes), per stage
    `boot` (process start to its code: the interpreter and multiprocessing's unpickling),
    `imports` (its module) and `setup` (opening the source, loading kernels and the model, up
    to `ready`), `handshake` (the last `ready` to `start`: window slots), and `teardown` (the
    last `done` to the end: final telemetry, processes exiting, ring and slots removed)."""
    m = state.marks
    out = {"setup": m.get("spawn", t_enter) - t_enter,
           "spawn": m.get("spawned", t_enter) - m.get("spawn", t_enter)}
    stages = {}
    for name, t in state.times.items():
        if {"main", "imported", "ready"} <= set(t):
            stages[name] = {"boot": t["main"] - m.get("spawn", t_enter),
                            "imports": t["imported"] - t["main"],
                            "setup": t["ready"] - t["imported"]}
    out["stages"] = stages
    if stages and state.t_streaming:
        last_ready = max(t["ready"] for t in state.times.values() if "ready" in t)
        out["handshake"] = state.t_streaming - last_ready
    if state.t_done:
        out["teardown"] = t_end - state.t_done
        # ... of which: the last final telemetry arriving, the processes exiting, the launcher
        # removing the ring, slots and ipc folder
        finals = max(m.get("finals", state.t_done), state.t_done)
        exited = max(m.get("exited", finals), finals)
        out["teardown_parts"] = {"final_telemetry": finals - state.t_done,
                                 "exit": exited - finals, "cleanup": t_end - exited}
    def rnd(v):
        return {k: rnd(x) for k, x in v.items()} if isinstance(v, dict) else round(v, 3)
    return rnd(out)


def _start(ctx, name, cfg, endpoints):
    from evstream.stream.lifeline import stage_main

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)   # inherited by the child
    try:
        p = ctx.Process(target=stage_main, name=f"evstream-{name}",
                        args=(os.getpid(), *STAGE_FUNCTIONS[name], cfg, endpoints))
        p.start()
    finally:
        signal.signal(signal.SIGINT, old_int)
    return p


def _raise_terminate(signum, frame):
    raise _Terminate


@dataclass
class _State:
    ready: dict = field(default_factory=dict)     # stage -> info it announced
    set_up: set = field(default_factory=set)      # stages that mapped the window slots
    done: set = field(default_factory=set)
    final: dict = field(default_factory=dict)     # stage -> final telemetry snapshot
    latest: dict = field(default_factory=dict)    # stage -> newest telemetry snapshot
    t_streaming: float = 0.0                      # when `start` went out (monotonic s)
    t_done: float = 0.0                           # when the last `done` arrived
    slots: object = None                          # the window slots made at start (owned here)
    restarts: dict = field(default_factory=dict)  # stage -> times restarted
    times: dict = field(default_factory=dict)     # stage -> {main, imported, ready} monotonic s
    marks: dict = field(default_factory=dict)     # the launcher's own moments, monotonic s


def _handle(state: _State, result: PipelineResult, stage: str, msg: dict) -> None:
    kind = msg.get("kind")
    if kind == "ready":
        info = dict(msg.get("info", {}))
        state.times[stage] = dict(info.pop("times", None) or {})
        state.ready[stage] = info
    elif kind == "set":
        state.set_up.add(stage)
    elif kind == "telemetry":
        state.latest[stage] = msg["snapshot"]
        if msg.get("final"):
            state.final[stage] = msg["snapshot"]
    elif kind == "done":
        state.done.add(stage)
        state.t_done = time.monotonic()
    elif kind == "error" and not result.exit_code:
        result.error_stage = stage
        result.user_error = bool(msg.get("user"))
        result.error = msg["message"] if result.user_error else msg.get("traceback", "")
        result.exit_code = 2 if result.user_error else 1


def _supervise(cfg, link, procs, result, status, state: _State, restart=None) -> None:
    """Start the stages once all are ready, relay telemetry, send `drain` down the chain as
    upstream stages finish, and notice stages that die (a worker is restarted when asked)."""
    started = setup_sent = False
    order = list(procs)                     # upstream first
    slot_stages, slot_info = set(), {}
    drained: set[str] = set()
    start_info = {}
    interval = cfg.telemetry_interval_s
    next_line = time.monotonic() + interval if interval else float("inf")
    while len(state.done) < len(procs) and not result.exit_code:
        got = link.recv(0.05)
        if got is not None:
            _handle(state, result, *got)
        if not setup_sent and len(state.ready) == len(procs):
            _report_bound(cfg, state, result, status)
            start_info = state.ready.get("source") or _remote_source_info(cfg)
            result.summary["source"] = start_info
            slots = _make_window_slots(cfg, state, start_info)
            # the slots go to the window stage and the one stage that takes its windows (the
            # worker, else the consumer): only that one may hold the slots' consumer lock;
            # both map them before `start` and say `set`
            slot_stages = set(order[1:3]) if slots else set()
            slot_info = dict(start_info, window_slots=slots)
            for name in slot_stages:
                link.send(name, "setup", info=slot_info)
            setup_sent = True
        if setup_sent and not started and slot_stages <= state.set_up:
            # the stream starts now, with the first `start` sent; downstream stages first, so
            # the source, once it runs, does not hold up the launcher's other sends
            state.t_streaming = time.monotonic()
            for name in reversed(order):
                link.send(name, "start", info=slot_info if name in slot_stages else start_info)
            started = True
        if started:
            # a stage whose upstream stages have all finished *and exited* (so every message
            # they queued has left them: lossless senders linger until delivered) finishes
            # what is queued, then ends; normally the end-of-stream message ends it first
            for i, name in enumerate(order):
                if i >= 2 and name not in drained and name not in state.done \
                        and all(u in state.done and procs[u].exitcode is not None
                                for u in order[:i]):
                    link.send(name, "drain")
                    drained.add(name)
            # the viewer window was closed (with --on-close stop): stop the rest
            last = order[-1]
            closed = state.final.get(last, {}).get("viewer_closed")
            if last in state.done and closed and not all(n in state.done for n in order[:-1]):
                result.summary["end_reason"] = "viewer window closed"
                break
        # a stage that died without a word (killed, segfault), or crashed while exiting
        for name, p in list(procs.items()):
            if p.exitcode is not None and p.exitcode != 0 and not result.exit_code:
                got = link.recv(0.1)            # its last words may still be in flight
                while got is not None and not result.exit_code:
                    _handle(state, result, *got)
                    got = link.recv(0) if not result.exit_code else None
                if result.exit_code and not (name == "worker" and cfg.restart_worker):
                    continue
                if name == "worker" and cfg.restart_worker and restart is not None:
                    result.exit_code, result.error, result.error_stage = 0, "", ""
                    state.restarts[name] = state.restarts.get(name, 0) + 1
                    status(f"evstream: stage 'worker' died (exit code {p.exitcode}); "
                           f"restarting it (restart {state.restarts[name]})")
                    state.ready.pop(name, None)
                    procs[name] = restart(name)
                    if not started:         # it joins the start-up handshake like the others
                        continue
                    _wait_ready(link, state, result, name, procs[name])
                    if not result.exit_code:
                        link.send(name, "start",
                                  info=slot_info if name in slot_stages else start_info)
                        if name in drained:
                            link.send(name, "drain")
                    continue
                if not result.exit_code:
                    result.error_stage = name
                    result.error = f"stage {name!r} died (exit code {p.exitcode})"
                    result.exit_code = 1
        if time.monotonic() >= next_line and state.latest:
            status(format_line(state.latest))
            next_line = time.monotonic() + interval


def _report_bound(cfg, state: _State, result: PipelineResult, status) -> None:
    """The endpoints the stages bound go into the summary; a tcp port the user left to the
    system (tcp://HOST:* or :0) is said on stderr, since a peer needs it."""
    bound = {k: v for info in state.ready.values() for k, v in info.get("bound", {}).items()}
    result.summary["endpoints"] = bound
    for name, url in bound.items():
        asked = cfg.endpoints.get(name, "")
        if asked.startswith("tcp://") and asked.rsplit(":", 1)[-1] in ("*", "0"):
            status(f"evstream: {name} endpoint bound at {url}")


def _wait_ready(link, state: _State, result, name: str, proc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in state.ready and not result.exit_code and time.monotonic() < deadline:
        got = link.recv(0.05)
        if got is not None:
            _handle(state, result, *got)
        if proc.exitcode is not None and name not in state.ready:
            result.error_stage, result.exit_code = name, result.exit_code or 1
            result.error = result.error or f"stage {name!r} died while restarting"
            return


def _make_window_slots(cfg, state: _State, start_info: dict) -> dict | None:
    """Shared-memory window slots (stream/slots.py) when the window stage and its consumer both
    run here on the launcher's private ipc endpoint: -> the segment's info for the window
    stage, or None (zmq carries the tensors: a split pipeline, --window-transport zmq, or no
    room in /dev/shm)."""
    if cfg.window_transport != "auto" or cfg.stages or "windows" in cfg.endpoints:
        return None
    channels = state.ready.get("window", {}).get("channels")
    width, height = start_info.get("width"), start_info.get("height")
    if not (channels and width and height):
        return None
    from evstream.stream.slots import WindowSlots, slot_count

    nbytes = int(channels) * int(width) * int(height) * 4
    try:
        state.slots = WindowSlots.create(slot_count(nbytes), nbytes)
    except OSError:
        return None
    return state.slots.info()


def _remote_source_info(cfg) -> dict:
    """Start info for a split pipeline with no local source: what the user said."""
    return {"camera": "remote", "width": cfg.window.width, "height": cfg.window.height}


def _finish(link, procs, state: _State, result: PipelineResult) -> None:
    """Stop what still runs, collect the final telemetry in flight, and summarise."""
    for name, p in procs.items():
        if p.is_alive() and name not in state.done:
            link.send(name, "stop")
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and (
            len(state.final) < len(procs) or any(p.is_alive() for p in procs.values())):
        if len(state.final) < len(procs):
            got = link.recv(0.02)
            if got is not None:
                _handle(state, result, *got)
            if len(state.final) == len(procs):
                state.marks["finals"] = time.monotonic()
        else:       # every word is in: look every 2 ms for the processes to end
            time.sleep(0.002)
    state.marks["exited"] = time.monotonic()
    result.summary["final"] = state.final
    result.summary.update(_summarise({**state.latest, **state.final},
                                     result.summary.get("source", {}), state.ready))
    if state.restarts:
        result.summary["restarts"] = dict(state.restarts)


def _reap(procs) -> None:
    """Terminate, then kill, whatever is still running after `_finish`'s grace period."""
    for p in procs.values():
        if p.pid is None:           # never started
            continue
        p.join(0)
        if p.is_alive():
            p.terminate()
            p.join(0.5)
        if p.is_alive():
            p.kill()
            p.join(0.5)


def _summarise(final: dict, source_info: dict, ready: dict | None = None) -> dict:
    src = final.get("source", {})
    win = final.get("window", {})
    worker = final.get("worker", {})
    consumer = final.get("viewer") or final.get("sink") or {}
    first = worker or consumer              # the stage the window process delivers to
    c = lambda snap, key: int(snap.get("counters", {}).get(key, 0))  # noqa: E731
    src_stats = src.get("source", {})
    # events lost before windowing: ring overrun (live), source-level drops (out of order,
    # outside the sensor, network queue overflow)
    dropped_events = (c(win, "dropped_events") + int(src_stats.get("dropped_out_of_order", 0))
                      + int(src_stats.get("dropped_outside_sensor", 0)) + int(src_stats.get("lost", 0)))
    stages = (win, worker, consumer)
    # windows whose shared-memory slot a live window stage reused before the consumer read them
    def wire_n(key: str) -> int:
        return sum(int(s.get("wire", {}).get(key, 0)) for s in (worker, consumer))

    # traffic a receiving stage dropped: the last reason (worker first, it is upstream)
    last_wire_error = next((s["wire"]["last_error"] for s in (worker, consumer)
                            if s.get("wire", {}).get("last_error")), "")

    out = {
        "events_in": c(src, "events_out"),
        "events_out": c(first, "events_in"),
        "windows": c(first, "windows_in"),
        "dropped_events": dropped_events,
        "dropped_windows": (sum(c(s, "dropped_windows") for s in stages)
                            + wire_n("overwritten")),
        # predictions the viewer skipped because a newer one had arrived (live mode)
        "dropped_predictions": c(consumer, "dropped_predictions") + c(worker, "dropped_predictions"),
        # events inside windows that were built but not delivered (live mode: newest wins)
        "dropped_window_events": sum(c(s, "dropped_window_events") for s in stages)
        + wire_n("overwritten_events"),
        # events that arrived after the wall-clock deadline had already closed their window
        # (a source stalled for longer than --deadline-ms): not in any window
        "late_events": int(win.get("gauges", {}).get("late_events", 0)),
        # the consumer's view: to delivery (sink) or to the drawn frame (viewer)
        "latency_ms": merge_latency(consumer, "latency_ms"),
        "window_latency_ms": merge_latency(win, "window_ms"),
        # how tensors reached the consumer: "slots" (shared memory) or "zmq" (in the messages)
        "window_transport": win.get("transport", ""),
        # what tcp peers sent that was not a message of ours (counted, dropped, and the
        # stream went on): messages that broke the wire format (of which oversized), and
        # connections refused at the handshake (not zmq, wrong socket type, CURVE refused)
        "malformed_messages": wire_n("malformed"),
        "oversized_messages": wire_n("oversized"),
        "rejected_peers": wire_n("rejected_peers"),
        "last_wire_error": last_wire_error,
        "frames": c(consumer, "frames_in"),
        "imu": c(consumer, "imu_in"),
        "triggers": c(consumer, "triggers_in"),
        "dropped_side": c(src, "dropped_side"),
        "camera": source_info.get("camera", ""),
        "width": source_info.get("width", 0),
        "height": source_info.get("height", 0),
        "stages": final,
    }
    if worker:
        info = (ready or {}).get("worker", {})
        out.update({
            "predictions": c(worker, "predictions_out"),
            "model": info.get("model", ""), "device": info.get("device", ""),
            "trained": info.get("trained"),
            "infer_ms": merge_latency(worker, "infer_ms"),
            "worker_latency_ms": merge_latency(worker, "worker_latency_ms"),
        })
    if final.get("viewer"):
        out["frames_drawn"] = c(consumer, "frames_drawn")
        out.setdefault("predictions", c(consumer, "predictions_in"))
    if src.get("end_reason"):
        out["end_reason"] = src["end_reason"]
    return out
