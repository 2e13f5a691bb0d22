"""The viewer: overlay drawing (pure functions), the viewer stage in a real spawned process fed
over real zmq by a small fake launcher, `evstream view` against a PUB socket, and a real window
on a private Xvfb server whose screen (XGetImage) is compared with the headless render."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import zmq

from conftest import ROOT, run_cli
from evstream.config import PipelineConfig, SourceConfig, ViewerConfig, WindowConfig
from evstream.represent.preview import event_image
from evstream.stream import wire
from evstream.stream.control import LauncherLink
from evstream.viewer import overlay
from evstream.stages.viewer import viewer_stage
from evstream.viewer.app import Viewer
from evstream.viewer.video import read_video

H, W = 48, 64
CLASSES = ["flat", "background", "object", "vegetation", "human", "vehicle"]
COLORS = [[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [220, 20, 60], [0, 0, 142]]


def seg_prediction(seq: int, trained: bool = False, stream: str = "cam0"):
    """(header, arrays) of a segmentation prediction that differs with seq."""
    rng = np.random.default_rng(seq)
    ev = rng.choice(np.array([-1, 0, 0, 1], np.int8), (H, W))
    labels = rng.integers(0, len(CLASSES), (H, W)).astype(np.uint8)
    labels[:, : W // 4] = 255                                    # outside the crop
    conf = rng.integers(0, 256, (H, W)).astype(np.uint8)
    header = {"kind": "prediction", "stream": stream, "seq": seq, "t0_us": seq * 50_000,
              "t1_us": (seq + 1) * 50_000,
              "ts": {"window_end": time.monotonic_ns(), "pred_sent": time.monotonic_ns()},
              "meta": {"events": int(np.count_nonzero(ev)), "representation": "voxel",
                       "model": "tiny-test", "trained": trained, "device": "cpu",
                       "task": "segmentation", "classes": CLASSES, "colors": COLORS,
                       "batch": 1, "timing_ms": {"h2d": 0.0, "forward": 1.0, "d2h": 0.0}}}
    return header, [ev, labels, conf]


def expected_image(arrays, alpha=0.5, scale=2.0, background=None) -> np.ndarray:
    """The sensor-image part of the frame the viewer draws for a prediction."""
    frame = overlay.compose(arrays[0], labels=arrays[1], classes=CLASSES, colors=COLORS,
                            alpha=alpha, scale=scale, background=background)
    ih, iw = overlay.image_size(H, W, scale)
    return frame[:ih, :iw]


def eos_header(seq=0):
    return {"kind": "control", "stream": "cam0", "seq": seq, "meta": {"eos": True}}


def message(header, arrays=()):
    return wire.decode(wire.encode(b"prediction", header, arrays))


# -- overlay: pure drawing -----------------------------------------------------------------------

def test_events_image_colours_background_and_purity():
    ev = np.zeros((H, W), np.int8)
    ev[1, 2], ev[3, 4] = 1, -1
    before = ev.copy()
    img = overlay.events_image(ev)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert tuple(img[1, 2]) == overlay.ON_BGR and tuple(img[3, 4]) == overlay.OFF_BGR
    assert overlay.ON_BGR != overlay.OFF_BGR
    assert tuple(img[0, 0]) == overlay.BACKGROUND_BGR
    aps = np.arange(H * W, dtype=np.uint32).reshape(H, W).astype(np.uint8)
    grey = overlay.events_image(ev, background=aps)
    assert tuple(grey[0, 0]) == (aps[0, 0],) * 3 and tuple(grey[1, 2]) == overlay.ON_BGR
    bgr = np.dstack([aps, aps // 2, 255 - aps])
    col = overlay.events_image(ev, background=bgr)
    np.testing.assert_array_equal(col[10:20, 10:20], bgr[10:20, 10:20])
    assert tuple(col[3, 4]) == overlay.OFF_BGR
    np.testing.assert_array_equal(ev, before)
    assert bgr[1, 2].tolist() != list(overlay.ON_BGR)      # the background copy was painted


def test_segmentation_overlay_blends_where_labelled_and_never_where_255():
    base = overlay.events_image(seg_prediction(1)[1][0])
    labels = np.full((H, W), 255, np.uint8)
    labels[10:20, 10:30] = 2
    labels[30:40, :] = 5
    labels[0, 0] = 17                                        # no colour for that id: untouched
    keep_base, keep_labels = base.copy(), labels.copy()
    out = overlay.segmentation_overlay(base, labels, COLORS, alpha=0.5)
    untouched = labels == 255
    untouched[0, 0] = True
    np.testing.assert_array_equal(out[untouched], base[untouched])
    blue_green_red = np.array(COLORS[2][::-1], np.float32)
    want = np.rint(0.5 * base[10:20, 10:30].astype(np.float32) + 0.5 * blue_green_red)
    np.testing.assert_array_equal(out[10:20, 10:30], want.astype(np.uint8))
    np.testing.assert_array_equal(base, keep_base)
    np.testing.assert_array_equal(labels, keep_labels)
    # extremes: alpha 0 changes nothing, alpha 1 paints the exact class colour (RGB -> BGR)
    np.testing.assert_array_equal(overlay.segmentation_overlay(base, labels, COLORS, 0.0), base)
    full = overlay.segmentation_overlay(base, labels, COLORS, 1.0)
    assert (full[10:20, 10:30] == COLORS[2][::-1]).all()
    assert (full[30:40] == COLORS[5][::-1]).all()
    np.testing.assert_array_equal(full[untouched], base[untouched])


def _has_block(img, bgr, size) -> bool:
    """A size x size block of exactly `bgr` somewhere in img."""
    m = np.all(img == np.array(bgr, np.uint8), axis=2).astype(np.uint8)
    return bool(cv2.erode(m, np.ones((size, size), np.uint8)).any())


def test_legend_has_every_class_colour_as_a_swatch():
    panel = np.zeros((200, 200, 3), np.uint8)
    out = overlay.legend(panel, CLASSES, COLORS, origin=(5, 5))
    assert (panel == 0).all()
    for rgb in COLORS:
        assert _has_block(out, rgb[::-1], overlay.SWATCH), rgb
    assert not _has_block(out, (1, 2, 3), overlay.SWATCH)
    # names are drawn beside the swatches: text pixels right of the swatch column
    assert (out[5:5 + overlay.legend_height(6), 5 + overlay.SWATCH + 10:] > 100).any()


def test_hud_band_holds_the_text_and_leaves_the_events_alone():
    _, arrays = seg_prediction(2)
    lines = overlay.hud_lines(source="davis346 test.aedat4", events=1234, window_us=50_000,
                              model="tiny-test", trained=True, device="cpu", fps=19.9,
                              latency_ms={"count": 3, "p50": 4.0, "p99": 9.0}, dropped=2)
    kw = dict(labels=arrays[1], colors=COLORS, scale=2.0)           # no classes: no legend
    plain = overlay.compose(arrays[0], **kw)
    withhud = overlay.compose(arrays[0], status=lines, **kw)
    ih, iw = overlay.image_size(H, W, 2.0)
    assert plain.shape == (ih, iw + overlay.PANEL_W, 3)
    # the panel grows below the image to fit the text; sizes stay even (MPEG-4)
    assert withhud.shape[0] > ih and withhud.shape[0] % 2 == 0 and withhud.shape[1] % 2 == 0
    np.testing.assert_array_equal(withhud[:ih, :iw], plain[:ih, :iw])     # events untouched
    assert (withhud[ih:, :iw] == overlay.PANEL_BGR).all()
    assert (plain[:, iw:] == overlay.PANEL_BGR).all()
    band = overlay.PAD + len(lines) * overlay.LINE_H
    assert np.count_nonzero(np.any(withhud[:band, iw:] != overlay.PANEL_BGR, axis=2)) > 500
    assert (withhud[band + 2:, iw:] == overlay.PANEL_BGR).all()           # nothing else drawn
    assert all(s in " ".join(map(str, lines)) for s in ("1234", "50 ms", "19.9 FPS",
                                                        "p50 4.0 p99 9.0", "dropped 2", "cpu"))
    # the image area is exactly the upscaled (nearest) overlay
    seg = overlay.segmentation_overlay(overlay.events_image(arrays[0]), arrays[1], COLORS, 0.5)
    np.testing.assert_array_equal(plain[:ih, :iw], np.repeat(np.repeat(seg, 2, 0), 2, 1))


@pytest.mark.parametrize("trained", [False, True])
def test_untrained_badge_in_warning_colour(trained):
    _, arrays = seg_prediction(3)
    lines = overlay.hud_lines(model="tiny-test", trained=trained, device="cpu")
    frame = overlay.compose(arrays[0], labels=arrays[1], classes=CLASSES, colors=COLORS,
                            status=lines)
    ih, iw = overlay.image_size(H, W, 2.0)
    warn = np.count_nonzero(np.all(frame[:, iw:] == overlay.WARN_BGR, axis=2))
    assert (warn > 100) == (not trained)
    assert ("UNTRAINED" in str(lines)) == (not trained)


def test_topk_and_float_scale():
    ev = seg_prediction(4)[1][0]
    frame = overlay.compose(ev, topk=(np.array([2, 0, 5]), np.array([0.7, 0.2, 0.1])),
                            classes=CLASSES, scale=1.5)
    ih, iw = overlay.image_size(H, W, 1.5)
    assert (ih, iw) == (72, 96)
    assert set(map(tuple, frame[:ih, :iw].reshape(-1, 3))) <= {
        overlay.ON_BGR, overlay.OFF_BGR, overlay.BACKGROUND_BGR}      # nearest: no blending
    panel = frame[:, iw:]
    assert np.count_nonzero(np.any(panel != overlay.PANEL_BGR, axis=2)) > 200
    with pytest.raises(ValueError):
        overlay.segmentation_overlay(overlay.events_image(ev), np.zeros((2, 2), np.uint8), COLORS)


# -- the Viewer in this process (headless) -------------------------------------------------------

def test_viewer_windows_background_and_malformed(tmp_path):
    """Window messages draw events only; the newest APS frame of the side channel becomes the
    background; a malformed prediction is counted and skipped, never drawn."""
    v = Viewer(ViewerConfig(window=False, png_dir=str(tmp_path)), lossless=True)
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://viewer-side-test")
        push.connect("inproc://viewer-side-test")
        aps = np.random.default_rng(0).integers(0, 256, (H, W)).astype(np.uint8)
        wire.send(push, b"side", {"kind": "frame", "t0_us": 1, "t1_us": 1}, [aps])
        wire.send(push, b"side", {"kind": "imu"}, [np.zeros(3, np.float32)])
        while v.tel.counters.get("imu_in", 0) < 3:       # inproc delivers in order
            assert pull.poll(2000)
            assert v.side_messages(pull) is False
        assert v.tel.counters["frames_in"] == 1
        np.testing.assert_array_equal(v.background, aps)
        wire.send(push, b"side", eos_header())
        pull.poll(2000)
        assert v.side_messages(pull) is True
    finally:
        pull.close()
        push.close()
    rep = np.random.default_rng(1).normal(size=(5, H, W)).astype(np.float32)
    win = wire.decode(wire.encode(b"window", {"kind": "window", "seq": 7, "t0_us": 0,
                                             "t1_us": 50_000, "meta": {"events": 10,
                                                                       "representation": "voxel"}},
                                  [rep]))
    h, arrays = seg_prediction(5)
    bad = message(h, [arrays[0], arrays[1][:, :10].copy(), arrays[2]])
    assert v.handle([win, bad, message(eos_header())]) is True
    v.close()
    assert v.stats.malformed == 1 and "labels" in v.stats.last_error
    assert v.tel.counters["windows_in"] == 1 and "predictions_in" not in v.tel.counters
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["000000_seq000007.png"]
    got = cv2.imread(str(pngs[0]))
    want = overlay.compose(event_image("voxel", rep), background=aps)
    ih, iw = overlay.image_size(H, W, 2.0)
    np.testing.assert_array_equal(got[:ih, :iw], want[:ih, :iw])
    assert v.snapshot_dict()["model"] == ""


def test_viewer_keys_change_what_is_drawn(tmp_path):
    """The window keys, driven directly (headless): alpha, overlay, pause, recording, snapshot,
    quit. The Xvfb tests below press real keys in a real window."""
    v = Viewer(ViewerConfig(window=False, png_dir=str(tmp_path / "png"),
                            snapshot_dir=str(tmp_path / "shots"), alpha=0.5))
    ih, iw = overlay.image_size(H, W, 2.0)
    msgs = [message(*seg_prediction(seq)) for seq in range(4)]

    def last_image():
        return cv2.imread(str(sorted((tmp_path / "png").glob("*.png"))[-1]))[:ih, :iw]

    v.handle([msgs[0]])
    np.testing.assert_array_equal(last_image(), expected_image(msgs[0].arrays, alpha=0.5))
    v.key(ord("A"))
    v.key(ord("A"))
    assert v.alpha == 0.7
    v.key(ord("a"))
    assert v.alpha == 0.6
    v.key(ord("r"))                                   # start recording
    v.handle([msgs[1]])
    np.testing.assert_array_equal(last_image(), expected_image(msgs[1].arrays, alpha=0.6))
    v.key(ord("m"))                                   # overlay off: events only
    v.handle([msgs[2]])
    np.testing.assert_array_equal(
        last_image(), overlay.upscale(overlay.events_image(msgs[2].arrays[0]), 2.0))
    v.key(ord(" "))                                   # paused: consumed, not recorded
    v.handle([msgs[3]])
    assert v.paused and v.tel.counters["predictions_in"] == 4
    path = v.snapshot()
    v.key(ord("r"))                                   # stop recording
    recordings = list((tmp_path / "shots").glob("*.mp4"))
    assert len(recordings) == 1 and len(read_video(recordings[0])) == 2
    np.testing.assert_array_equal(cv2.imread(str(path)), v.frame)
    v.key(ord("q"))
    assert v.closed and v.quit and v.snapshot_dict()["viewer_closed"] == 1
    v.close()


# -- the stage in a spawned process, driven by a fake launcher -----------------------------------

class StageRun:
    """viewer_stage in a real `spawn`ed process with a LauncherLink on a private ipc dir."""

    def __init__(self, cfg: PipelineConfig):
        self.dir = tempfile.mkdtemp(prefix="evv-")
        self.endpoints = {name: f"ipc://{self.dir}/{name}" for name in
                          ("control", "windows", "predictions", "side")}
        self.link = LauncherLink(self.endpoints["control"])
        self.proc = mp.get_context("spawn").Process(target=viewer_stage,
                                                    args=(cfg, self.endpoints))
        self.push = zmq.Context.instance().socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.final = None
        self.done = False

    def __enter__(self):
        self.proc.start()
        msg = self.recv_until(lambda m: m["kind"] in ("ready", "error"), 60)
        assert msg["kind"] == "ready", msg
        self.push.connect(self.endpoints["predictions"])
        return self

    def recv_until(self, pred, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.link.recv(0.1)
            if got is None:
                assert self.proc.is_alive() or self.proc.exitcode == 0, self.proc.exitcode
                continue
            stage, msg = got
            assert stage == "viewer"
            if msg["kind"] == "telemetry" and msg.get("final"):
                self.final = msg["snapshot"]
            if msg["kind"] == "done":
                self.done = True
            if pred(msg):
                return msg
        raise AssertionError(f"no matching control message in {timeout_s} s")

    def start(self, **info):
        self.link.send("viewer", "start", info={"width": W, "height": H, "camera": "test",
                                                **info})

    def send(self, header, arrays=()):
        wire.send(self.push, b"prediction", header, arrays)

    def finish(self, timeout_s=30) -> dict:
        if not self.done:
            msg = self.recv_until(lambda m: m["kind"] in ("done", "error"), timeout_s)
            assert msg["kind"] == "done", msg
        self.proc.join(10)
        assert self.proc.exitcode == 0
        assert self.final is not None
        return self.final

    def __exit__(self, *exc):
        if self.proc.is_alive():
            self.link.send("viewer", "stop")
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.push.close()
        self.link.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def stage_config(lossless: bool, **viewer) -> PipelineConfig:
    return PipelineConfig(source=SourceConfig(spec="test.aedat4"), window=WindowConfig(),
                          lossless=lossless, consumer="viewer", viewer=ViewerConfig(**viewer),
                          telemetry_interval_s=0)


def test_stage_lossless_writes_one_video_frame_per_prediction(tmp_path):
    n = 12
    video, pngs = tmp_path / "out" / "run.mp4", tmp_path / "png"
    cfg = stage_config(True, window=False, video=str(video), png_dir=str(pngs))
    sent = []
    with StageRun(cfg) as run:
        run.start()
        for seq in range(n):
            header, arrays = seg_prediction(seq)
            run.send(header, arrays)
            sent.append(arrays)
        run.send(eos_header(n))
        snap = run.finish()
    c = snap["counters"]
    assert c["predictions_in"] == c["frames_drawn"] == c["video_frames"] == n
    assert c.get("dropped_predictions", 0) == 0 and snap["wire"]["malformed"] == 0
    assert (snap["model"], snap["device"], snap["trained"]) == ("tiny-test", "cpu", False)
    assert snap["latency"]["latency_ms"]["count"] == n
    assert snap["video"]["fourcc"] == "mp4v" and snap["video"]["fps"] == 20.0
    frames = read_video(video)
    assert len(frames) == n
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(20.0)
    cap.release()
    files = sorted(pngs.glob("*.png"))
    assert [int(p.stem.split("seq")[1]) for p in files] == list(range(n))
    ih, iw = overlay.image_size(H, W, 2.0)
    for arrays, path, decoded in zip(sent, files, frames):
        png = cv2.imread(str(path))
        np.testing.assert_array_equal(png[:ih, :iw], expected_image(arrays))
        assert decoded.shape == png.shape
        # MPEG-4 is lossy: the decoded frame is close to the PNG, not equal
        assert np.abs(decoded.astype(int) - png.astype(int)).mean() < 12
    # the HUD band says UNTRAINED (the amber badge)
    assert np.all(cv2.imread(str(files[-1]))[:, iw:] == overlay.WARN_BGR, axis=2).sum() > 100


def test_stage_live_draws_only_the_newest_of_a_burst(tmp_path):
    """A burst queued before the viewer wakes: it draws the newest, counts the rest as dropped;
    the launcher's `drain` (no end-of-stream message) ends it."""
    n = 10
    pngs = tmp_path / "png"
    cfg = stage_config(False, window=False, png_dir=str(pngs))
    with StageRun(cfg) as run:
        for seq in range(n):
            run.send(*seg_prediction(seq))
        run.start()
        deadline = time.monotonic() + 20
        while not any(p.name.endswith(f"seq{n - 1:06d}.png") for p in pngs.glob("*.png")):
            assert time.monotonic() < deadline, "the newest prediction was never drawn"
            time.sleep(0.02)
        run.link.send("viewer", "drain")
        snap = run.finish()
    c = snap["counters"]
    drawn = sorted(int(p.stem.split("seq")[1]) for p in pngs.glob("*.png"))
    assert drawn[-1] == n - 1
    assert len(drawn) == c["frames_drawn"] == c["predictions_in"]
    assert c["predictions_in"] + c["dropped_predictions"] == n
    assert len(drawn) <= n // 2, drawn      # a backlog was skipped, not worked through


# -- `evstream view` -----------------------------------------------------------------------------

def _view(url, *args):
    return subprocess.Popen([sys.executable, "-m", "evstream", "view", url, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _xpub():
    """A bound XPUB: it sees subscriptions, so the test knows when the viewer listens."""
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 1000)
    url = wire.bind_random(sock)
    return sock, url


def _wait_subscribed(sock, proc, topics=3, timeout_s=30):
    seen = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < topics:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the viewer never subscribed"
        if sock.poll(100):
            seen.add(sock.recv())
    assert seen == {b"\x01prediction", b"\x01window", b"\x01control"}


def test_view_cli_records_a_published_stream(tmp_path):
    n = 5
    sock, url = _xpub()
    video = tmp_path / "view.mp4"
    proc = _view(url, "--no-window", "--video", video, "--lossless", "--json", "--scale", 1)
    try:
        _wait_subscribed(sock, proc)
        for seq in range(n):
            header, arrays = seg_prediction(seq, trained=True)
            wire.send(sock, b"prediction", header, arrays)
        wire.send(sock, b"prediction", eos_header(n))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["frames_drawn"] == s["predictions"] == n and s["eos"] and not s["interrupted"]
    assert s["trained"] is True and s["model"] == "tiny-test"
    assert s["video"]["frames"] == n and s["video"]["path"] == str(video)
    frames = read_video(video)
    assert len(frames) == n
    assert frames[0].shape[1] == W + overlay.PANEL_W and frames[0].shape[1] % 2 == 0


def test_view_cli_ctrl_c_finalises_the_video(tmp_path):
    sock, url = _xpub()
    video, pngs = tmp_path / "view.mp4", tmp_path / "png"
    proc = _view(url, "--no-window", "--video", video, "--png-dir", pngs, "--json")
    try:
        _wait_subscribed(sock, proc)
        for seq in range(3):
            wire.send(sock, b"prediction", *seg_prediction(seq))
        deadline = time.monotonic() + 20
        while not list(pngs.glob("*seq000002.png")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert s["interrupted"] and not s["eos"]
    drawn = len(list(pngs.glob("*.png")))
    assert s["frames_drawn"] == drawn and len(read_video(video)) == drawn >= 1


@pytest.mark.parametrize("url", ["localhost:5560", "tcp://127.0.0.1", "tcp://host:70000",
                                 "http://host:80", "tcp://a b:1"])
def test_view_cli_malformed_url(capsys, url):
    code, out, err = run_cli(capsys, "view", url, "--no-window")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{url}: not an endpoint URL" in err
    assert "tcp://HOST:PORT" in err


def test_view_cli_without_a_display_says_so(capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    code, _, err = run_cli(capsys, "view", "tcp://127.0.0.1:5560")
    assert code == 2 and err.count("\n") == 1 and "no display" in err and "--no-window" in err
    if ctypes.util.find_library("X11"):
        monkeypatch.setenv("DISPLAY", ":987")           # nothing listens there
        code, _, err = run_cli(capsys, "view", "tcp://127.0.0.1:5560")
        assert code == 2 and "cannot open display ':987'" in err and err.count("\n") == 1


def test_view_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "view", "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "evstream view tcp://" in out and "--no-window" in out and "--bind publish=" in out
    assert "--bind predictions" not in out


# -- a real window on Xvfb -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def xvfb(tmp_path_factory):
    """A private Xvfb server: it picks a free display itself and reports it on a pipe
    (-displayfd) once it accepts clients. -noreset: no server reset each time its last client
    leaves (the viewer's display probe is one). The screen is read with XGetImage: Xvfb's
    -fbdir file was seen not to follow the framebuffer after the first client window (Xvfb
    21.1 here), so it is not used."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): no X server for the window "
                    "tests")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1024x768x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        got = b""
        deadline = time.monotonic() + 20
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                pytest.fail("Xvfb did not report its display within 20 s")
            chunk = os.read(r, 64)
            if not chunk:
                pytest.fail(f"Xvfb exited (code {proc.wait()}) before reporting its display")
            got += chunk
        yield SimpleNamespace(display=f":{int(got)}")
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


NUDGE_AFTER_S = 3.0


def find_on_screen(x11, title: str, want: np.ndarray, timeout_s: float = 20.0):
    """Poll the window `title` until `want` appears in it pixel for pixel; returns its (x, y)
    on the screen. Grabs start once the window is mapped (full-screen grabs while Qt maps a
    window make the Qt bug below far more likely) and cover the window only.

    Qt 5.15.19 inside opencv-python 5.0.0.93 sometimes misses the MapNotify of a new window
    when the machine is busy (seen in a third of the runs under two busy loops on 2 cores,
    with or without MIT-SHM, glib or not): it then never flushes the window, which stays black
    whatever is imshow'n (its later Expose events are ignored). A window manager's re-map
    revives it, so after NUDGE_AFTER_S without the frame the test unmaps and maps the window
    once, as a window manager would, and counts it in x11.nudges."""
    deadline = time.monotonic() + timeout_s
    viewable_at = None
    screen = rect = None
    while True:
        rect = x11.viewable(title)
        if rect is not None:
            viewable_at = viewable_at or time.monotonic()
            wx, wy, ww, wh = rect
            screen = x11.screenshot(wx, wy, ww, wh)
            if screen.shape[0] >= want.shape[0] and screen.shape[1] >= want.shape[1]:
                res = cv2.matchTemplate(screen, want, cv2.TM_SQDIFF)
                _, _, (x, y), _ = cv2.minMaxLoc(res)
                if np.array_equal(screen[y:y + want.shape[0], x:x + want.shape[1]], want):
                    return wx + x, wy + y
            if time.monotonic() - viewable_at > NUDGE_AFTER_S and not x11.nudged.get(title):
                x11.remap(title)
        if time.monotonic() > deadline:
            seen = "no window" if rect is None else \
                f"window at {rect}, mean pixel {screen.mean():.1f}"
            raise AssertionError(f"the frame never appeared on the X screen ({seen})")
        time.sleep(0.05)


class _XImage(ctypes.Structure):        # the head of Xlib's XImage
    _fields_ = [(n, ctypes.c_int) for n in ("width", "height", "xoffset", "format")] + \
        [("data", ctypes.POINTER(ctypes.c_ubyte))] + \
        [(n, ctypes.c_int) for n in ("byte_order", "bitmap_unit", "bitmap_bit_order",
                                     "bitmap_pad", "depth", "bytes_per_line", "bits_per_pixel")]


class _XWindowAttributes(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("x", "y", "width", "height", "border_width",
                                             "depth")] + \
        [("visual", ctypes.c_void_p), ("root", ctypes.c_ulong)] + \
        [(n, ctypes.c_int) for n in ("class_", "bit_gravity", "win_gravity", "backing_store")] + \
        [("backing_planes", ctypes.c_ulong), ("backing_pixel", ctypes.c_ulong),
         ("save_under", ctypes.c_int), ("colormap", ctypes.c_ulong),
         ("map_installed", ctypes.c_int), ("map_state", ctypes.c_int),
         ("all_event_masks", ctypes.c_long), ("your_event_mask", ctypes.c_long),
         ("do_not_propagate_mask", ctypes.c_long), ("override_redirect", ctypes.c_int),
         ("screen", ctypes.c_void_p)]


class X11:
    """Just enough Xlib (ctypes) to read the screen, press keys (XTest) and click a window's
    close button (WM_DELETE_WINDOW, what a window manager sends)."""

    def __init__(self, display: str):
        lib, tst = ctypes.util.find_library("X11"), ctypes.util.find_library("Xtst")
        if not lib or not tst:
            pytest.skip("libX11 / libXtst not found: cannot send keys to the window")
        V, UL = ctypes.c_void_p, ctypes.c_ulong
        self.x = x = ctypes.CDLL(lib)
        self.t = t = ctypes.CDLL(tst)
        x.XOpenDisplay.restype, x.XOpenDisplay.argtypes = V, [ctypes.c_char_p]
        x.XCloseDisplay.argtypes = [V]
        x.XDefaultRootWindow.restype, x.XDefaultRootWindow.argtypes = UL, [V]
        x.XStringToKeysym.restype, x.XStringToKeysym.argtypes = UL, [ctypes.c_char_p]
        x.XKeysymToKeycode.restype, x.XKeysymToKeycode.argtypes = ctypes.c_ubyte, [V, UL]
        x.XQueryTree.argtypes = [V, UL, ctypes.POINTER(UL), ctypes.POINTER(UL),
                                 ctypes.POINTER(ctypes.POINTER(UL)), ctypes.POINTER(ctypes.c_uint)]
        x.XFetchName.argtypes = [V, UL, ctypes.POINTER(ctypes.c_char_p)]
        x.XInternAtom.restype, x.XInternAtom.argtypes = UL, [V, ctypes.c_char_p, ctypes.c_int]
        x.XSendEvent.argtypes = [V, UL, ctypes.c_int, ctypes.c_long, V]
        x.XFlush.argtypes = [V]
        x.XGetImage.restype = ctypes.POINTER(_XImage)
        x.XGetImage.argtypes = [V, UL, ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                UL, ctypes.c_int]
        x.XFree.argtypes = [V]
        x.XGetWindowAttributes.argtypes = [V, UL, V]
        x.XUnmapWindow.argtypes = x.XMapWindow.argtypes = [V, UL]
        x.XDisplayWidth.argtypes = x.XDisplayHeight.argtypes = [V, ctypes.c_int]
        t.XTestFakeKeyEvent.argtypes = [V, ctypes.c_uint, ctypes.c_int, UL]
        t.XTestFakeMotionEvent.argtypes = [V, ctypes.c_int, ctypes.c_int, ctypes.c_int, UL]
        self.dpy = x.XOpenDisplay(display.encode())
        assert self.dpy, f"cannot open {display}"
        self.nudged: dict[str, bool] = {}

    def key(self, ch: str, x: int, y: int) -> None:
        """Pointer into the window (focus follows it without a window manager), press ch."""
        self.t.XTestFakeMotionEvent(self.dpy, 0, x, y, 0)
        code = self.x.XKeysymToKeycode(self.dpy, self.x.XStringToKeysym(ch.encode()))
        self.t.XTestFakeKeyEvent(self.dpy, code, 1, 0)
        self.t.XTestFakeKeyEvent(self.dpy, code, 0, 0)
        self.x.XFlush(self.dpy)

    def screenshot(self, x=0, y=0, w=None, h=None) -> np.ndarray:
        """A rectangle of the screen (default: all of it) as BGR (ZPixmap, 32 bits per pixel,
        B G R pad)."""
        w = w or self.x.XDisplayWidth(self.dpy, 0) - x
        h = h or self.x.XDisplayHeight(self.dpy, 0) - y
        ptr = self.x.XGetImage(self.dpy, self.x.XDefaultRootWindow(self.dpy), x, y, w, h,
                               0xFFFFFFFF, 2)
        assert ptr, "XGetImage failed"
        im = ptr.contents
        try:
            assert im.bits_per_pixel == 32 and im.byte_order == 0, "expected 32-bit LSB pixels"
            raw = np.ctypeslib.as_array(im.data, (im.height * im.bytes_per_line,))
            return raw.reshape(im.height, -1, 4)[:, :im.width, :3].copy()
        finally:
            self.x.XFree(ctypes.cast(im.data, ctypes.c_void_p))
            self.x.XFree(ctypes.cast(ptr, ctypes.c_void_p))

    def window(self, title: str) -> int | None:
        UL = ctypes.c_ulong
        root, parent, children, n = UL(), UL(), ctypes.POINTER(UL)(), ctypes.c_uint()
        self.x.XQueryTree(self.dpy, self.x.XDefaultRootWindow(self.dpy), ctypes.byref(root),
                          ctypes.byref(parent), ctypes.byref(children), ctypes.byref(n))
        for i in range(n.value):
            name = ctypes.c_char_p()
            if self.x.XFetchName(self.dpy, children[i], ctypes.byref(name)) \
                    and name.value == title.encode():
                return children[i]
        return None

    def viewable(self, title: str):
        """(x, y, width, height) of the top-level window `title` once it is mapped, else None."""
        win = self.window(title)
        if win is None:
            return None
        a = _XWindowAttributes()
        if not self.x.XGetWindowAttributes(self.dpy, win, ctypes.byref(a)) or a.map_state != 2:
            return None                                             # 2 = IsViewable
        return a.x, a.y, a.width, a.height

    def remap(self, title: str) -> None:
        """Unmap and map the window again (see find_on_screen)."""
        win = self.window(title)
        self.x.XUnmapWindow(self.dpy, win)
        self.x.XMapWindow(self.dpy, win)
        self.x.XFlush(self.dpy)
        self.nudged[title] = True

    def close_button(self, title: str) -> None:
        win = self.window(title)
        assert win is not None, f"no window {title!r}"

        class ClientMessage(ctypes.Structure):      # XClientMessageEvent inside a 24-long XEvent
            _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong),
                        ("send_event", ctypes.c_int), ("display", ctypes.c_void_p),
                        ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                        ("format", ctypes.c_int), ("data", ctypes.c_long * 5),
                        ("pad", ctypes.c_long * 12)]

        ev = ClientMessage(type=33, window=win, format=32,
                           message_type=self.x.XInternAtom(self.dpy, b"WM_PROTOCOLS", 0))
        ev.data[0] = self.x.XInternAtom(self.dpy, b"WM_DELETE_WINDOW", 0)
        self.x.XSendEvent(self.dpy, win, 0, 0, ctypes.byref(ev))
        self.x.XFlush(self.dpy)

    def close(self):
        self.x.XCloseDisplay(self.dpy)


def _on_display(monkeypatch, xvfb):
    monkeypatch.setenv("DISPLAY", xvfb.display)      # inherited by the spawned stage
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")


def test_window_shows_the_headless_frame_and_keys_work(xvfb, monkeypatch, tmp_path):
    """The stage in window mode on Xvfb: the screen shows, pixel for pixel, the frame written
    headless (PNG) and its image part equals an independent compose(); `s` saves a snapshot,
    `q` closes the window and (on_close stop) ends the viewer with viewer_closed 1."""
    _on_display(monkeypatch, xvfb)
    title = f"evstream-test-{os.getpid()}"
    pngs, shots, video = tmp_path / "png", tmp_path / "shots", tmp_path / "v.mp4"
    cfg = stage_config(True, window=True, png_dir=str(pngs), snapshot_dir=str(shots),
                       video=str(video), title=title, on_close="stop")
    x11 = X11(xvfb.display)
    try:
        with StageRun(cfg) as run:
            run.start()
            sent = [seg_prediction(seq) for seq in range(3)]
            for header, arrays in sent:
                run.send(header, arrays)
            want = expected_image(sent[-1][1])
            find_on_screen(x11, title, want)
            last_png = cv2.imread(str(sorted(pngs.glob("*.png"))[-1]))
            # the whole window (image + HUD panel) is the headless frame
            x, y = find_on_screen(x11, title, last_png)
            x11.key("s", x + 10, y + 10)
            deadline = time.monotonic() + 10
            while not list(shots.glob("*.png")):
                assert time.monotonic() < deadline, "no snapshot after pressing s"
                time.sleep(0.02)
            x11.key("q", x + 10, y + 10)
            snap = run.finish()
    finally:
        x11_window_left = x11.window(title)
        x11.close()
    snapshot = cv2.imread(str(next(shots.glob("*.png"))))
    np.testing.assert_array_equal(snapshot, last_png)
    c = snap["counters"]
    assert snap["viewer_closed"] == 1 and c["viewer_closed"] == 1
    assert c["frames_drawn"] == 3 and c["snapshots"] == 1
    assert len(read_video(video)) == 3            # finalised although the stream never ended
    assert x11_window_left is None


def test_window_close_button_then_continue_headless(xvfb, monkeypatch, tmp_path):
    """Closing the window with its X button (WM_DELETE_WINDOW) counts as q; with on_close
    "continue" the viewer keeps consuming headless and the video gets every prediction."""
    _on_display(monkeypatch, xvfb)
    title = f"evstream-close-{os.getpid()}"
    video = tmp_path / "v.mp4"
    cfg = stage_config(True, window=True, video=str(video), title=title, on_close="continue")
    x11 = X11(xvfb.display)
    try:
        with StageRun(cfg) as run:
            run.start()
            header, arrays = seg_prediction(0)
            run.send(header, arrays)
            find_on_screen(x11, title, expected_image(arrays))
            x11.close_button(title)
            run.recv_until(lambda m: m["kind"] == "telemetry"
                           and m["snapshot"].get("viewer_closed") == 1, 10)
            assert x11.screenshot().max() == 0          # nothing left on the screen
            for seq in range(1, 4):
                run.send(*seg_prediction(seq))
            run.send(eos_header(4))
            snap = run.finish()
    finally:
        x11.close()
    c = snap["counters"]
    assert snap["viewer_closed"] == 1 and c["frames_drawn"] == c["video_frames"] == 4
    assert len(read_video(video)) == 4


def test_opencv_qt_getwindowproperty_raises_after_close_button(xvfb, tmp_path):
    """Demonstrates the opencv-python 5.0.0.93 (Qt) behaviour app._window_visible works around:
    after the close button closed the last window, getWindowProperty raises instead of
    returning -1."""
    script = f"""
import sys, time, cv2, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_viewer import X11
cv2.namedWindow("demo", cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
cv2.imshow("demo", np.zeros((20, 20, 3), np.uint8))
cv2.waitKey(1)
x = X11({xvfb.display!r})
x.close_button("demo")
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    cv2.waitKey(5)
    try:
        v = cv2.getWindowProperty("demo", cv2.WND_PROP_VISIBLE)
    except cv2.error as e:
        print("raised", "guiReceiver" in str(e)); break
    if v < 1:
        print("returned", v); break
"""
    env = dict(os.environ, DISPLAY=xvfb.display, QT_QPA_PLATFORM="xcb",
               QT_QPA_FONTDIR="/usr/share/fonts")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if cv2.__version__ == "5.0.0":
        assert r.stdout.split() == ["raised", "True"], r.stdout + r.stderr
    else:       # another OpenCV: either answer is handled
        assert r.stdout.split()[0] in ("raised", "returned")


def test_closing_the_window_stops_the_whole_pipeline(xvfb, monkeypatch):
    """A real pipeline (source, window, viewer processes) with the window on Xvfb: `q` in the
    window ends the run at once with exit 0 and says why, though the source had a minute left."""
    import threading

    from evstream.pipeline import run_pipeline

    _on_display(monkeypatch, xvfb)
    title = f"evstream-pipeline-{os.getpid()}"
    cfg = PipelineConfig(
        source=SourceConfig(spec="synthetic:?seed=1&rate=1e5&duration=60&width=64&height=48",
                            speed=1.0),
        window=WindowConfig(), telemetry_interval_s=0, consumer="viewer",
        viewer=ViewerConfig(window=True, title=title, on_close="stop"))
    x11 = X11(xvfb.display)
    pressed, ended = threading.Event(), threading.Event()

    def on_started(info):
        def press():        # press q in the window until the run ends (a key sent while Qt is
            while not ended.is_set():           # still mapping the window may be lost)
                geo = x11.viewable(title)
                if geo:
                    x11.key("q", geo[0] + 10, geo[1] + 10)
                    pressed.set()
                ended.wait(0.5)
        threading.Thread(target=press, daemon=True).start()

    t0 = time.monotonic()
    try:
        res = run_pipeline(cfg, on_started=on_started)
    finally:
        ended.set()
        time.sleep(0.6)
        x11.close()
    assert pressed.is_set()
    assert res.exit_code == 0, res.error
    assert res.summary["end_reason"] == "viewer window closed"
    assert time.monotonic() - t0 < 45
