"""The viewer process: the pipeline's consumer when there is somewhere to draw (a window, an
MP4, PNG frames). It binds the predictions endpoint (the windows endpoint when there is no
worker) and the side endpoint (APS frames drawn under the events, IMU and triggers counted),
and draws what arrives with viewer/app.py's `Viewer` (the same one `evstream view` uses): live
mode the newest message per stream, lossless mode every one. It ends on the end-of-stream
message, on `q` / closing the window (on_close "stop"), on `stop`, or on `drain` once nothing is
queued; the video file is finalised on every exit path.
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from evstream.config import PipelineConfig, ViewerConfig
from evstream.stream import sockets
from evstream.stream.stage import stage_context
from evstream.viewer.app import Viewer, wake


def viewer_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    with stage_context(endpoints, "viewer") as link:
        vc = cfg.viewer or ViewerConfig()
        sock = side = viewer = None
        try:
            viewer = Viewer(vc, lossless=cfg.lossless, fps_hint=_stride_fps(cfg))
            # predictions, or the windows themselves when there is no worker
            sock = sockets.open_endpoint(endpoints, sockets.consumer_endpoint(endpoints), "bind",
                                         hwm=16 if cfg.lossless else 4, linger=0,
                                         stats=viewer.stats)
            if endpoints.get("side"):
                side = sockets.open_endpoint(endpoints, "side", "bind", hwm=256, linger=0,
                                             stats=viewer.stats)
            link.ready()
            info = link.wait_start()
            viewer.source = " ".join(s for s in (str(info.get("camera") or ""),
                                                 Path(cfg.source.spec).name) if s)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if side is not None:
                poller.register(side, zmq.POLLIN)
            interval = max(cfg.telemetry_interval_s / 2, 0.25)
            next_report = time.monotonic() + interval
            while True:
                got, eos, side_done = wake(viewer, poller, sock, side, cfg.lossless)
                if side_done:
                    poller.unregister(side)
                if eos or viewer.quit or link.should_stop():
                    break
                if link.drain_done(bool(got)):      # upstream done and nothing more comes
                    break
                if time.monotonic() >= next_report:
                    link.telemetry(viewer.snapshot_dict())
                    next_report = time.monotonic() + interval
        finally:
            if viewer is not None:
                viewer.close()
                link.telemetry(viewer.snapshot_dict(), final=True)
            sockets.close(sock)
            sockets.close(side)


def _stride_fps(cfg: PipelineConfig) -> float:
    """The video's frame rate in source time: one frame per window stride (time windows)."""
    wc = cfg.window
    if wc.mode == "time":
        stride = wc.stride_us or wc.window_us
        return 1e6 / stride if stride > 0 else 0.0
    return 0.0
