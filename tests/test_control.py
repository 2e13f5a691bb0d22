"""The control channel between the launcher and a stage (stream/control.py), on real sockets."""

from __future__ import annotations

import gc

from evstream.stream.control import LauncherLink, StageLink


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
        assert stage == "window" and msg["kind"] == "ready" and msg["info"] == {"channels": 5}
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
