"""The control channel between the launcher and a stage (stream/control.py), on real sockets."""

from __future__ import annotations

import gc
import time
import os

from evstream.stream.control import AFTER_DONE_NICE, LauncherLink, StageLink


def test_ready_reaches_the_launcher_and_freezes_the_setup_heap(tmp_path):
    url = f"ipc://{tmp_path}/control"
    launcher = LauncherLink(url)
    link = StageLink(url, "window")
    made_during_setup = [{"n": i} for i in range(1000)]
    assert gc.get_freeze_count() == 0
    try:
        link.ready(channels=5)
        # the setup's objects are out of the collector's view from now on
        assert gc.get_freeze_count() >= len(made_during_setup)
        got = launcher.recv(5.0)
        assert got is not None
        stage, msg = got
        assert stage == "window" and msg["kind"] == "ready" and msg["info"]["channels"] == 5
        times = msg["info"]["times"]          # the stage's start-up moments (startup_s)
        assert set(times) >= {"ready"} and times["ready"] <= time.monotonic()
    finally:
        gc.unfreeze()
        link.close()
        launcher.close()


def test_streaming_counters_and_a_single_done(tmp_path):
    """After `start`, telemetry carries the stage's CPU time and page faults since then; a
    stage that says `done` before tearing down is not counted done twice (stage_context says
    it again on the way out)."""
    url = f"ipc://{tmp_path}/control"
    launcher = LauncherLink(url)
    link = StageLink(url, "source")
    try:
        link.ready()
        assert launcher.recv(5.0)[1]["kind"] == "ready"
        assert launcher.send("source", "start", info={"width": 4})
        assert link.wait_start(5.0) == {"width": 4}
        touched = bytearray(64 << 20)          # 16k fresh pages: faults since start
        touched[::4096] = b"\1" * len(touched[::4096])
        link.telemetry({"events_out": 1}, final=True)
        link.done()
        link.done()
        stage, msg = launcher.recv(5.0)
        snap = msg["snapshot"]
        assert msg["kind"] == "telemetry" and msg["final"] and snap["events_out"] == 1
        assert snap["cpu_stream_s"] >= 0 and snap["faults_stream"] >= 4096
        assert launcher.recv(5.0)[1]["kind"] == "done"
        assert launcher.recv(0.3) is None
    finally:
        gc.unfreeze()
        link.close()
        launcher.close()


def test_a_stage_steps_aside_once_done(tmp_path):
    """After `done` the stage's thread drops its CPU priority (its teardown then waits for the
    stages still streaming); other threads, like zmq's I/O threads, keep theirs. Run in a
    thread of its own: Linux keeps the nice value per thread."""
    import threading

    url = f"ipc://{tmp_path}/control"
    launcher = LauncherLink(url)
    seen = {}

    def stage():
        link = StageLink(url, "source", nice_after_done=AFTER_DONE_NICE)
        try:
            seen["before"] = os.getpriority(os.PRIO_PROCESS, 0)
            link.send("ready")
            seen["after_ready"] = os.getpriority(os.PRIO_PROCESS, 0)
            link.done()
            seen["after_done"] = os.getpriority(os.PRIO_PROCESS, 0)
            link.done()
            seen["after_second_done"] = os.getpriority(os.PRIO_PROCESS, 0)
        finally:
            link.close()

    main_before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        t = threading.Thread(target=stage)
        t.start()
        t.join(10)
        assert seen["after_ready"] == seen["before"]
        assert seen["after_done"] == min(19, seen["before"] + AFTER_DONE_NICE)
        assert seen["after_second_done"] == seen["after_done"]      # once, not per call
        assert os.getpriority(os.PRIO_PROCESS, 0) == main_before
        kinds = [launcher.recv(5.0)[1]["kind"] for _ in range(2)]
        assert kinds == ["ready", "done"]
    finally:
        launcher.close()


def test_setup_runs_before_start_and_is_answered(tmp_path):
    """`setup` (the window slots, before `start`) runs the stage's on_setup and is answered
    with `set`; `start` then returns its own info."""
    import threading

    url = f"ipc://{tmp_path}/control"
    launcher = LauncherLink(url)
    link = StageLink(url, "window")
    got = {}
    try:
        link.ready()
        assert launcher.recv(5.0)[1]["kind"] == "ready"
        t = threading.Thread(target=lambda: got.update(
            start=link.wait_start(5.0, on_setup=lambda info: got.update(setup=info))))
        t.start()
        assert launcher.send("window", "setup", info={"window_slots": None, "width": 4})
        stage, msg = launcher.recv(5.0)
        assert (stage, msg["kind"]) == ("window", "set") and got["setup"]["width"] == 4
        assert "start" not in got
        assert launcher.send("window", "start", info={"width": 5})
        t.join(5)
        assert got["start"] == {"width": 5} and got["setup"]["width"] == 4     # set up once
        # no `setup` (a restarted worker): the set-up runs on `start`'s info
        late = StageLink(url, "worker")
        got.clear()
        t = threading.Thread(target=lambda: got.update(
            start=late.wait_start(5.0, on_setup=lambda info: got.update(setup=info))))
        t.start()
        late.send("ready")
        assert launcher.recv(5.0)[0] == "worker"
        assert launcher.send("worker", "start", info={"width": 6})
        t.join(5)
        assert got == {"setup": {"width": 6}, "start": {"width": 6}}
        late.close()
    finally:
        gc.unfreeze()
        link.close()
        launcher.close()
