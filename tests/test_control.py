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
