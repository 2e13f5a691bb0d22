"""`evstream replay/run` end to end with the inference worker and the viewer: real processes,
real sockets, a real recording, a real MP4; faults (worker killed, bad checkpoints)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import pytest

from evstream.config import InferConfig, PipelineConfig, SourceConfig, ViewerConfig, WindowConfig
from evstream.pipeline import run_pipeline

WHEEL = "aedat4/davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4"
SYNTH = "synthetic:?seed=5&rate=1e5&duration=0.5&width=64&height=48"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small segmentation checkpoint (tiny backbone) in the evstream model format."""
    import torch

    from evstream.nn.checkpoint import default_config, save_checkpoint
    from evstream.nn.registry import build_model

    torch.manual_seed(0)
    cfg = default_config(name="tiny-test", backbone="tiny", head_channels=16,
                         low_proj_channels=8)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, model.state_dict(), cfg)
    return str(path)


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "evstream", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_lossless_replay_of_a_real_recording_gives_one_prediction_and_frame_per_window(
        realdata, tmp_path, tiny_model):
    video = tmp_path / "out.mp4"
    r = cli("replay", str(realdata / WHEEL), "--model", tiny_model, "--lossless", "--speed", "max",
            "--no-window", "--video", str(video), "--json", "--window-ms", "100",
            "--status-every", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["windows"] > 5
    assert s["predictions"] == s["windows"] == s["frames_drawn"]
    assert s["dropped_windows"] == 0
    assert s["model"] == "tiny-test" and s["device"] == "cpu" and s["trained"] is False
    assert s["latency_ms"]["count"] == s["frames_drawn"]
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == s["frames_drawn"]


def test_worker_killed_mid_run_fails_the_pipeline_or_is_restarted(tiny_model):
    for restart in (False, True):
        cfg = PipelineConfig(
            source=SourceConfig(spec="synthetic:?seed=5&rate=1e5&duration=6&width=64&height=48",
                                speed=1.0),
            window=WindowConfig(window_us=50_000), lossless=False, telemetry_interval_s=0,
            infer=InferConfig(model=tiny_model, warmup=1), restart_worker=restart)
        killed = threading.Event()

        def on_started(info):
            def kill():
                time.sleep(2.5)
                os.kill(info["pids"]["worker"], signal.SIGKILL)
                killed.set()
            threading.Thread(target=kill, daemon=True).start()

        res = run_pipeline(cfg, on_started=on_started)
        assert killed.is_set()
        if restart:
            assert res.exit_code == 0, res.error
            assert res.summary["restarts"] == {"worker": 1}
            assert res.summary["predictions"] > 0
        else:
            assert res.exit_code == 1
            assert res.error_stage == "worker" and "died" in res.error


def test_missing_checkpoint_is_one_line(tmp_path):
    r = cli("replay", SYNTH, "--model", str(tmp_path / "nope.pt"), "--no-window")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "nope.pt" in r.stderr, r.stderr


def test_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage" * 100)
    r = cli("replay", SYNTH, "--model", str(bad), "--no-window")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.pt" in r.stderr, r.stderr


def test_checkpoint_for_another_representation_is_one_line(tiny_model):
    r = cli("replay", SYNTH, "--model", tiny_model, "--representation", "histogram")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "voxel" in line and "histogram" in line, r.stderr


def test_model_sets_the_pipeline_representation(tiny_model):
    """Without --representation/--bins the pipeline computes what the checkpoint was trained on."""
    from evstream.commands.pipeline_args import model_config_for

    cfg = model_config_for(tiny_model)
    assert cfg["representation"]["name"] == "voxel"
    r = cli("replay", SYNTH, "--model", tiny_model, "--no-viewer", "--speed", "max", "--lossless",
            "--json", "--status-every", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["predictions"] == s["windows"] > 0


def test_run_with_no_camera_names_what_it_looked_for():
    r = cli("run", "--camera", "davis346", "--no-window", timeout=60)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "davis346" in line.lower(), r.stderr
    assert "found" in line.lower()
