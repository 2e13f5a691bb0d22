"""Malformed traffic on every endpoint a stage binds: garbage, oversized frames, a wrong schema
version, a truncated multipart message, bytes that are not zmq at all. Each receiving stage
counts it (summary `malformed_messages`, `oversized_messages`, `rejected_peers`), and the stream
goes on to its end with every window delivered. The worker, the sink and the `publish`
endpoint get theirs in tests/test_endpoints.py (the `evstream view` example); the wire format
itself is tests/test_wire.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from evstream.config import PipelineConfig, SourceConfig, ViewerConfig, WindowConfig
from evstream.pipeline import run_pipeline
from evstream.stream import wire
from traffic import MESSAGES, OVERSIZED, Junk, free_port


def test_viewer_stage_counts_junk_on_its_tcp_endpoints_and_draws_every_window(tmp_path):
    """`replay --no-model --png-dir` with the windows and side endpoints on tcp: the viewer
    stage binds both; junk on each is counted and every window is still drawn."""
    urls = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("windows", "side")}
    junk = [Junk(url).start() for url in urls.values()]
    png = tmp_path / "png"
    cfg = PipelineConfig(source=SourceConfig(spec="synthetic:?seed=5&rate=1e5&duration=0.5",
                                             speed=1.0),
                         window=WindowConfig(width=346, height=260), lossless=True,
                         consumer="viewer", viewer=ViewerConfig(window=False, png_dir=str(png)),
                         endpoints=urls, telemetry_interval_s=0)
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    assert all(j.done.is_set() and j.refused for j in junk)
    s = res.summary
    assert s["malformed_messages"] == 2 * len(MESSAGES), s["stages"]["viewer"]["wire"]
    assert s["oversized_messages"] == 2 * OVERSIZED
    assert s["rejected_peers"] == 2
    assert s["windows"] > 0 and s["frames_drawn"] == s["windows"] == len(list(png.glob("*.png")))
    assert s["events_out"] == s["events_in"]
    assert s["window_transport"] == "zmq"


def test_view_counts_junk_from_the_publisher_and_draws_the_rest(tmp_path):
    """`evstream view` (run_viewer) subscribed to a publisher that sends junk between good
    predictions: the junk is counted, every good one drawn."""
    from evstream.viewer.app import run_viewer
    from test_viewer import eos_header, seg_prediction

    xpub = zmq.Context.instance().socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 1000)
    url = wire.bind_random(xpub)
    png = tmp_path / "png"
    result = {}
    t = threading.Thread(target=lambda: result.update(run_viewer(
        url, ViewerConfig(window=False, png_dir=str(png)), lossless=True)))
    t.start()
    try:
        deadline = time.monotonic() + 30
        seen = set()
        while len(seen) < 3:                    # prediction, window, control
            assert time.monotonic() < deadline, seen
            if xpub.poll(100):
                seen.add(xpub.recv())
        n = 4
        for seq in range(n):
            for frames in MESSAGES.values():
                xpub.send_multipart([b"prediction"] + frames[1:])
            wire.send(xpub, b"prediction", *seg_prediction(seq))
        wire.send(xpub, b"prediction", eos_header(n))
        t.join(30)
    finally:
        assert not t.is_alive()
        xpub.close()
    assert result["eos"] and result["frames_drawn"] == result["predictions"] == n
    assert result["malformed_messages"] == n * len(MESSAGES)
    assert len(list(png.glob("*.png"))) == n
    assert np.all([p.stat().st_size > 0 for p in png.glob("*.png")])


def test_the_text_summary_says_what_was_dropped():
    from evstream.commands.pipeline_args import format_summary

    s = {"events_in": 10, "events_out": 10, "stream_s": 1.0, "wall_s": 2.0, "windows": 2,
         "dropped_windows": 0, "dropped_events": 0, "malformed_messages": 7,
         "oversized_messages": 2, "rejected_peers": 3,
         "last_wire_error": "side: refused a tcp peer (closed before a zmq handshake)"}
    line = next(ln for ln in format_summary(s).splitlines() if ln.startswith("traffic"))
    assert line == ("traffic     7 malformed messages dropped (2 oversized), 3 connections "
                    "refused; last: side: refused a tcp peer (closed before a zmq handshake)")
    quiet = dict(s, malformed_messages=0, rejected_peers=0)
    assert "traffic" not in format_summary(quiet)
