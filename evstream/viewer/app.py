"""The viewer: predictions (or plain windows) from zmq -> overlay frames -> window / MP4 / PNGs.

Two ways in, one `Viewer` underneath:

    stages/viewer.py                 the pipeline's consumer process (`viewer_stage`): binds
                                     PULL endpoints["predictions"] (the windows endpoint when
                                     there is no worker) and PULL endpoints["side"]
    run_viewer(url, viewer_cfg)      `evstream view tcp://HOST:PORT`: CONNECTs a SUB socket
                                     (topics b"prediction", b"window", b"control") to a worker
                                     that publishes its predictions: for remote viewing the
                                     worker's host binds its `publish` endpoint, e.g.
                                     --bind publish=tcp://0.0.0.0:5560 (with --curve-keys DIR on
                                     both sides, the stream is encrypted and authenticated)

Both make their sockets through stream/sockets.py (high-water marks, linger, CURVE, the
monitor that counts refused tcp peers).

Every wake-up (a poll of at most 20 ms) takes everything queued. Live mode draws only the newest
drawable message per stream and counts the rest as dropped (dropped_predictions /
dropped_windows): the display never works through a backlog. Lossless mode (cfg.lossless) draws
every message in order, so a video file gets exactly one frame per prediction. The stream ends
with the end-of-stream control message on the predictions socket, or when the launcher says
`drain` and nothing is queued; the video file is finalised on every exit path.

Drawn frames come from overlay.compose: events (over the newest APS frame of the side channel,
toggled with `b`) + segmentation colours or top-k labels + a side panel with the HUD. One frame
per drawn message goes to each output that is on: the window (unless paused), `video` (MP4, fps
= viewer.video_fps, else 1e6 / window stride in source time, else 1e6 / (t1_us - t0_us) of the
first message), `png_dir` (NNNNNN_seqSSSSSS.png) and a key-started recording.

Window keys: q / Esc quit (closing the window with its X button counts the same), space pause
(keeps consuming, freezes the display), a / A alpha -/+ 0.1, m overlay on/off, b APS background
on/off, s snapshot PNG and r start/stop an MP4 recording, both into viewer.snapshot_dir.
Quitting with on_close "stop" ends the viewer (telemetry `viewer_closed` 1: the launcher stops
the pipeline); with "continue" the window goes away and the viewer keeps consuming headless.

Telemetry (StageTelemetry "viewer"): counters predictions_in / windows_in (drawn),
dropped_predictions / dropped_windows (stale, live mode), events_in, frames_drawn, frames_in /
imu_in / triggers_in (side channel), video_frames, png_frames, snapshots, viewer_closed;
latency latency_ms = from ts.window_end (the window stage's CLOCK_MONOTONIC instant) to the frame
being shown/written -- meaningful only when both ends share a host; gauge fps; plus top-level
"wire" (receive stats), "model", "device", "trained" (from the newest prediction) and "video".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from evstream.config import ViewerConfig
from evstream.errors import EvstreamError
from evstream.outpaths import ensure_dir
from evstream.represent.preview import event_image
from evstream.stream import sockets, wire
from evstream.stream.telemetry import StageTelemetry
from evstream.viewer import overlay
from evstream.viewer.video import VideoOut, write_png

POLL_MS = 20
DRAWABLE = wire.DRAWABLE_KINDS
ALPHA_STEP = 0.1
LATENCY_REFRESH_S = 0.5         # how often the HUD's latency percentiles are recomputed
DEFAULT_FPS = 20.0
URL_RE = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})$")


# -- messages ------------------------------------------------------------------------------------

def render_inputs(msg) -> dict:
    """A received prediction / window message -> keyword arguments of overlay.compose.
    Raises ValueError when the arrays do not follow the message contract (a bad peer)."""
    h, a = msg.header, msg.arrays
    meta = h.get("meta") or {}
    kind = h["kind"]
    if kind == "window":
        if len(a) != 1 or a[0].ndim != 3:
            raise ValueError("a window message carries one (C, H, W) array")
        return {"event_img": event_image(str(meta.get("representation", "voxel")), a[0])}
    if kind != "prediction":
        raise ValueError(f"cannot draw a {kind!r} message")
    if len(a) != 3 or a[0].ndim != 2 or a[0].dtype != np.int8:
        raise ValueError("a prediction carries [event_img int8 (H, W), ..., ...]")
    classes = meta.get("classes") or []
    if not isinstance(classes, list):
        raise ValueError("meta.classes must be a list")
    classes = [str(c) for c in classes]
    task = meta.get("task") or ("segmentation" if a[1].ndim == 2 else "classification")
    if task == "segmentation":
        colors = meta.get("colors") or []
        try:
            palette = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
        except (TypeError, ValueError):
            raise ValueError("meta.colors must be a list of [r, g, b]") from None
        if palette.size and (palette.min() < 0 or palette.max() > 255):
            raise ValueError("meta.colors must be in 0..255")
        if a[1].shape != a[0].shape or a[1].dtype != np.uint8:
            raise ValueError(f"labels must be uint8 {a[0].shape}, got {a[1].dtype} {a[1].shape}")
        return {"event_img": a[0], "labels": a[1], "classes": classes,
                "colors": palette.tolist()}
    if task == "classification":
        ids, probs = a[1].reshape(-1), a[2].reshape(-1)
        if len(ids) != len(probs) or ids.dtype.kind not in "iu" or probs.dtype.kind != "f":
            raise ValueError("classification carries topk_ids (k,) ints and topk_probs (k,)")
        return {"event_img": a[0], "topk": (ids.astype(np.int64), probs.astype(np.float64)),
                "classes": classes}
    raise ValueError(f"unknown task {task!r}")


# -- the display ---------------------------------------------------------------------------------

def prepare_display() -> None:
    """Check that a window can open, before OpenCV's Qt backend aborts the process over it."""
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return
    display = os.environ.get("DISPLAY")
    if not display and not os.environ.get("WAYLAND_DISPLAY"):
        raise EvstreamError("no display (DISPLAY is not set): run headless with --no-window "
                            "(and --video OUT.mp4 to keep the frames)")
    if display:
        lib = ctypes.util.find_library("X11")
        if lib:
            x11 = ctypes.CDLL(lib)
            x11.XOpenDisplay.restype = ctypes.c_void_p
            x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
            x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
            dpy = x11.XOpenDisplay(display.encode())
            if not dpy:
                raise EvstreamError(f"cannot open display {display!r}: run headless with "
                                    f"--no-window (and --video OUT.mp4 to keep the frames)")
            x11.XCloseDisplay(dpy)
    # opencv-python 5.0.0.93 ships Qt 5.15 without fonts and points Qt at cv2/qt/fonts, so every
    # window prints "QFontDatabase: Cannot find font directory" warnings; the system fonts do.
    import cv2

    bundled = Path(cv2.__file__).parent / "qt" / "fonts"
    if "QT_QPA_FONTDIR" not in os.environ and not bundled.is_dir() \
            and Path("/usr/share/fonts").is_dir():
        os.environ["QT_QPA_FONTDIR"] = "/usr/share/fonts"


def _window_visible(title: str) -> float:
    """WND_PROP_VISIBLE of a window: 1 shown, < 1 closed or gone."""
    import cv2

    try:
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE)
    except cv2.error:
        # opencv-python 5.0.0.93 (Qt backend): once the window's close button closed the last
        # window, getWindowProperty raises "NULL guiReceiver" instead of returning -1
        return -1.0


class Viewer:
    """Drawing, window, outputs and statistics of one viewer (see the module comment)."""

    def __init__(self, vc: ViewerConfig, *, lossless: bool = False, fps_hint: float = 0.0,
                 source: str = "", stream: str | None = None, on_close: str | None = None):
        if vc.on_close not in ("stop", "continue"):
            raise EvstreamError(f"viewer on_close must be 'stop' or 'continue', not "
                                f"{vc.on_close!r}")
        if not vc.scale > 0:
            raise EvstreamError(f"viewer scale must be > 0, not {vc.scale}")
        if vc.video_fps < 0:
            raise EvstreamError(f"viewer video fps must be >= 0, not {vc.video_fps}")
        self.vc = vc
        self.lossless = lossless
        self.fps_hint = fps_hint
        self.source = source
        self.stream = stream
        self.on_close = on_close or vc.on_close
        self.tel = StageTelemetry("viewer")
        self.stats = wire.WireStats()
        self.alpha = float(np.clip(vc.alpha, 0.0, 1.0))
        self.show_overlay = True
        self.use_background = True
        self.paused = False
        self.display = bool(vc.window)          # a window is wanted now
        self.window_open = False
        self.closed = False                     # the user closed the window
        self.quit = False                       # leave the loop
        self.background: np.ndarray | None = None
        self.last: tuple[dict, dict] | None = None   # header, compose inputs of the newest drawn
        self.frame: np.ndarray | None = None
        self.info = {"model": "", "device": "", "trained": None, "task": ""}
        self.video: VideoOut | None = None
        self.recording: VideoOut | None = None
        self.png_dir = ensure_dir(vc.png_dir, "PNG") if vc.png_dir else None
        self.png_count = 0
        self._latency = {}
        self._latency_at = 0.0
        if vc.video:
            ensure_dir(Path(vc.video).parent, "video")
        if self.display:
            prepare_display()

    # -- input ------------------------------------------------------------------------------------

    def handle(self, msgs, stale=()) -> bool:
        """Count the stale messages, draw the others; True once the end-of-stream arrived."""
        for m in stale:
            self.tel.count("dropped_predictions" if m.kind == "prediction" else "dropped_windows")
        eos = False
        for m in msgs:
            if m.kind == "control":
                eos = eos or bool((m.header.get("meta") or {}).get("eos"))
                continue
            if m.kind not in DRAWABLE:
                self.stats.malformed += 1
                self.stats.last_error = f"unexpected {m.kind!r} message"
                continue
            if self.stream is not None and m.header.get("stream") != self.stream:
                self.tel.count("other_streams", 1)
                continue
            self.draw(m)
            if self.quit:
                break
        return eos

    def side_messages(self, sock) -> bool:
        """Everything queued on the side channel; keeps the newest APS frame. True at its
        end-of-stream message."""
        while True:
            m = wire.recv(sock, 0, self.stats)
            if m is None:
                return False
            kind = m.kind
            if kind == "control":
                if (m.header.get("meta") or {}).get("eos"):
                    return True
            elif kind == "frame" and m.arrays and m.arrays[0].dtype == np.uint8 \
                    and (m.arrays[0].ndim == 2 or (m.arrays[0].ndim == 3
                                                  and m.arrays[0].shape[2] == 3)):
                self.background = m.arrays[0]        # read-only view; keeps its frame alive
                self.tel.count("frames_in", 1)
            elif kind in ("imu", "trigger"):
                self.tel.count(f"{kind}_in" if kind == "imu" else "triggers_in",
                               len(m.arrays[0]) if m.arrays else 0)
            else:
                self.stats.malformed += 1

    # -- drawing ----------------------------------------------------------------------------------

    def draw(self, msg) -> None:
        try:
            inputs = render_inputs(msg)
        except ValueError as e:
            self.stats.malformed += 1
            self.stats.last_error = str(e)[:200]
            return
        h = msg.header
        meta = h.get("meta") or {}
        if msg.kind == "prediction":
            self.info.update({k: meta[k] for k in ("model", "device", "trained", "task")
                              if k in meta})
            self.tel.count("predictions_in", 1)
        else:
            self.tel.count("windows_in", 1)
        self.tel.count("events_in", int(meta.get("events", 0) or 0))
        self.last = (h, inputs)
        frame = self.render()
        self._output(frame, h)

    def render(self) -> np.ndarray:
        """The frame of the newest drawn message with the current settings."""
        h, inputs = self.last
        meta = h.get("meta") or {}
        now = time.monotonic()
        if now - self._latency_at >= LATENCY_REFRESH_S:
            self._latency = self.tel.latencies["latency_ms"].summary() \
                if "latency_ms" in self.tel.latencies else {}
            self._latency_at = now
        c = self.tel.counters
        window_us = int(h.get("t1_us", 0)) - int(h.get("t0_us", 0))
        status = overlay.hud_lines(
            source=self.source, events=int(meta.get("events", 0) or 0), window_us=window_us,
            model=str(self.info["model"] or ("none (events only)" if h["kind"] == "window"
                                            else "?")),
            trained=self.info["trained"] if h["kind"] == "prediction" else None,
            device=str(self.info["device"]), fps=self.tel.rate("frames_drawn"),
            latency_ms=self._latency,
            dropped=c.get("dropped_predictions", 0) + c.get("dropped_windows", 0),
            extra=[s for s, on in (("PAUSED", self.paused),
                                   ("REC", self.recording is not None)) if on])
        background = self.background if self.use_background else None
        self.frame = overlay.compose(alpha=self.alpha, background=background, status=status,
                                     scale=self.vc.scale, overlay=self.show_overlay, **inputs)
        return self.frame

    def _fps(self, header) -> float:
        if self.vc.video_fps:
            return self.vc.video_fps
        if self.fps_hint:
            return self.fps_hint
        dt = int(header.get("t1_us", 0)) - int(header.get("t0_us", 0))
        return 1e6 / dt if dt > 0 else DEFAULT_FPS

    def _output(self, frame: np.ndarray, header: dict) -> None:
        if self.vc.video:
            if self.video is None:
                self.video = VideoOut(self.vc.video, self._fps(header))
            self.video.write(frame)
            self.tel.count("video_frames", 1)
        if self.recording is not None and not self.paused:
            self.recording.write(frame)
        if self.display and not self.paused:
            self._show(frame)
        self.tel.count("frames_drawn", 1)
        end_ns = (header.get("ts") or {}).get("window_end")
        if end_ns:
            self.tel.latency("latency_ms", (time.monotonic_ns() - end_ns) / 1e6)
        if self.png_dir is not None:        # last: a PNG on disk means the frame is all done
            write_png(self.png_dir / f"{self.png_count:06d}_seq{int(header.get('seq', 0)):06d}"
                                     f".png", frame)
            self.png_count += 1
            self.tel.count("png_frames", 1)

    # -- the window -------------------------------------------------------------------------------

    def _show(self, frame: np.ndarray) -> None:
        import cv2

        if not self.window_open:
            cv2.namedWindow(self.vc.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            self.window_open = True
        cv2.imshow(self.vc.title, frame)
        self.pump()

    def pump(self) -> None:
        """Let the window process its events (repaint, keys, close button)."""
        if not self.window_open:
            return
        import cv2

        key = cv2.waitKey(1)
        if key != -1:
            self.key(key & 0xFF)
        if self.window_open and _window_visible(self.vc.title) < 1:
            self._window_closed()

    def key(self, k: int) -> None:
        ch = chr(k) if 32 <= k < 127 else ""
        if k == 27 or ch == "q":
            self._window_closed()
            return
        if ch == " ":
            self.paused = not self.paused
        elif ch in ("a", "A"):
            step = ALPHA_STEP if ch == "A" else -ALPHA_STEP
            self.alpha = round(float(np.clip(self.alpha + step, 0.0, 1.0)), 3)
        elif ch == "m":
            self.show_overlay = not self.show_overlay
        elif ch == "b":
            self.use_background = not self.use_background
        elif ch == "s":
            self._keep_going(self.snapshot, "snapshot")
            return
        elif ch == "r":
            self._keep_going(self.toggle_recording, "recording")
        else:
            return
        if self.last is not None and self.window_open:    # show the change, paused or not
            import cv2

            cv2.imshow(self.vc.title, self.render())

    def _keep_going(self, action, what: str) -> None:
        """A snapshot or recording the user asked for that cannot be written (no folder, no
        permission, disk full) is one line on stderr and a counter; the viewer goes on."""
        try:
            action()
        except EvstreamError as e:
            self.tel.count("snapshot_errors", 1)
            print(f"evstream: {what} not saved: {e}", file=sys.stderr, flush=True)

    def snapshot(self) -> Path | None:
        if self.frame is None:
            return None
        d = ensure_dir(self.vc.snapshot_dir, "snapshot")
        n = self.tel.counters.get("snapshots", 0)
        path = d / f"evstream-{time.strftime('%Y%m%d-%H%M%S')}-{n:03d}.png"
        write_png(path, self.frame)
        self.tel.count("snapshots", 1)
        return path

    def toggle_recording(self) -> None:
        if self.recording is not None:
            self.recording.close()
            self.recording = None
            return
        d = ensure_dir(self.vc.snapshot_dir, "snapshot")
        n = self.tel.counters.get("recordings", 0)
        header = self.last[0] if self.last else {}
        self.recording = VideoOut(d / f"evstream-{time.strftime('%Y%m%d-%H%M%S')}-{n:03d}.mp4",
                                  self._fps(header))
        self.tel.count("recordings", 1)

    def _window_closed(self) -> None:
        self._destroy_window()
        if not self.closed:
            self.closed = True
            self.tel.count("viewer_closed", 1)
        if self.on_close == "stop":
            self.quit = True
        else:
            self.display = False

    def _destroy_window(self) -> None:
        if self.window_open:
            import cv2

            self.window_open = False
            try:
                cv2.destroyWindow(self.vc.title)
                cv2.waitKey(1)
            except cv2.error:          # already gone (closed with its X button)
                pass

    # -- the end ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Finalise every output (idempotent; call on every exit path)."""
        for out in (self.video, self.recording):
            if out is not None:
                out.close()
        self.recording = None
        self._destroy_window()

    def snapshot_dict(self) -> dict:
        sockets.poll_monitors()         # peers refused at a bound tcp endpoint
        snap = self.tel.snapshot()
        snap["gauges"]["fps"] = round(self.tel.rate("frames_drawn"), 3)
        snap["wire"] = self.stats.as_dict()
        snap.update({k: self.info[k] for k in ("model", "device", "trained")})
        if self.closed:
            snap["viewer_closed"] = 1
        if self.video is not None:
            snap["video"] = self.video.info()
        return snap


def wake(viewer: Viewer, poller, sock, side, lossless: bool) -> tuple[bool, bool, bool]:
    """One wake-up (a poll of at most POLL_MS) of the viewer stage or `evstream view`:
    -> (predictions were queued, end of stream, side channel ended)."""
    ready = dict(poller.poll(POLL_MS))
    side_done = False
    if side is not None and side in ready:
        side_done = viewer.side_messages(side)
    if sock not in ready:
        viewer.pump()
        return False, False, side_done
    msgs, stale = wire.drain(sock, viewer.stats, lossless)
    eos = viewer.handle(msgs, stale)
    viewer.pump()
    return True, eos, side_done


# -- `evstream view` -----------------------------------------------------------------------------

def check_url(url: str) -> str:
    """tcp://HOST:PORT (port 1..65535, HOST known) or ipc://PATH, else a one-line
    EvstreamError."""
    m = URL_RE.match(url)
    if not (m and 0 < int(m.group(2)) < 65536) \
            and not (url.startswith("ipc://") and len(url) > len("ipc://")):
        raise EvstreamError(f"{url}: not an endpoint URL; expected tcp://HOST:PORT "
                            f"(e.g. tcp://192.168.1.20:5560) or ipc://PATH")
    return sockets.check_url("publish", url, "connect", label=url)


def run_viewer(url: str, viewer_cfg: ViewerConfig | None = None, *, stream: str | None = None,
               lossless: bool = False, status=None, status_every_s: float = 2.0,
               curve: dict | None = None) -> dict:
    """Connect a SUB socket to `url` (the worker's `publish` endpoint; a CURVE client with
    `curve` keys, see stream/curve.py) and show / record what arrives until the end-of-stream
    message, `q` in the window, or Ctrl-C. `status(line)` gets a one-line summary every
    status_every_s. Returns a summary dict (see `evstream view --json`)."""
    from evstream.stream.curve import stop_authenticators
    from evstream.stream.telemetry import format_line, merge_latency

    check_url(url)
    vc = viewer_cfg or ViewerConfig()
    viewer = Viewer(vc, lossless=lossless, source=url, stream=stream, on_close="stop")
    ctx = zmq.Context()             # private: destroyed on the way out, nothing left to linger
    eos = interrupted = False
    try:
        endpoints = {"publish": url, "curve": curve or {}}
        sock = sockets.open_endpoint(endpoints, "publish", "connect",
                                     hwm=1000 if lossless else 16, linger=0, ctx=ctx,
                                     subscribe=(b"prediction", b"window", b"control"))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_status = time.monotonic() + status_every_s if status and status_every_s else None
        while not viewer.quit:
            _, eos, _ = wake(viewer, poller, sock, None, lossless)
            if eos:
                break
            if next_status is not None and time.monotonic() >= next_status:
                status(format_line(viewer.tel.snapshot()))
                next_status = time.monotonic() + status_every_s
    except KeyboardInterrupt:
        interrupted = True
    finally:
        viewer.close()
        stop_authenticators()
        ctx.destroy(linger=0)
    snap = viewer.snapshot_dict()
    c = snap["counters"]
    return {
        "url": url,
        "predictions": c.get("predictions_in", 0),
        "windows": c.get("windows_in", 0),
        "frames_drawn": c.get("frames_drawn", 0),
        "dropped": c.get("dropped_predictions", 0) + c.get("dropped_windows", 0),
        "malformed_messages": snap["wire"]["malformed"],
        "latency_ms": merge_latency(snap, "latency_ms"),
        "model": snap["model"], "device": snap["device"], "trained": snap["trained"],
        "video": snap.get("video"),
        "eos": eos, "quit": viewer.quit, "interrupted": interrupted,
    }
