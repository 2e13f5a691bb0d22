"""The `evstream` command itself: help for every subcommand, not-built commands, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from evstream.cli import COMMANDS, _load


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "evstream", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_top_level_help_lists_every_subcommand():
    r = cli("--help")
    assert r.returncode == 0
    for name in ("run", "replay", "record", "info", "train", "eval", "export", "synth", "bench"):
        assert name in r.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_with_examples(name):
    r = cli(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout and f"evstream {name}" in r.stdout
    if _load(name) is None:
        assert "NOT BUILT YET" in r.stdout


def test_every_subcommand_is_built():
    assert [n for n in COMMANDS if _load(n) is None] == []


def test_bad_flag_value_is_one_line_exit_2():
    r = cli("replay", "x.aedat4", "--no-model", "--speed", "fast")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_no_camera_names_what_it_looked_for_and_found():
    r = cli("run", "--camera", "davis346", "--no-model")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "DAVIS346" in lines[0] and "devices found" in lines[0]


def test_demo_writes_the_builtin_recording_and_summarises(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY")}            # headless, as in CI
    env["XDG_CACHE_HOME"] = str(tmp_path)
    video = tmp_path / "demo.mp4"
    r = cli("demo", "--speed", "max", "--lossless", "--json", "--video", str(video), env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    rec = tmp_path / "evstream" / "demo-v2" / "seq_0000" / "events.aedat4"
    from evstream.sources import open_source

    with open_source(str(rec)) as src:
        n = sum(len(p.events) for p in src.packets())
    assert n > 100_000
    assert s["events_in"] == s["events_out"] == n
    assert s["dropped_events"] == 0 and s["windows"] == 50          # 2.5 s in 50 ms windows
    assert s["predictions"] == s["frames_drawn"] == 50
    assert s["model"] == "evdistill-r18q-seg" and s["trained"] is True
    assert s["frames"] > 0                                           # APS frames beside events
    assert video.stat().st_size > 0


@pytest.mark.parametrize("command", [["run", "--no-model"], ["record", "OUT.aedat4"]])
def test_unknown_camera_model_is_one_line_exit_2(command, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    r = cli(*args, "--camera", "foo")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"evstream {command[0]}: error: camera:foo: unknown camera model 'foo' "
        "(known: davis346, davis240, dvxplorer, dvxplorer-lite, dvs128, any)"]
    assert not list(tmp_path.iterdir())   # record left nothing behind


def test_bench_runs_a_benchmark_that_spawns_processes():
    """`evstream bench pipeline` starts a ring writer with multiprocessing's spawn: the child must
    be able to import the benchmark module by name (it could not when the module was loaded from
    its file path)."""
    r = subprocess.run([sys.executable, "-m", "evstream", "bench", "pipeline", "--events", "20000",
                        "--repeat", "1", "--live-rates", "2e5", "--live-seconds", "0.3",
                        "--ring-seconds", "0.3", "--packet-events", "real"],
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Ring alone" in r.stdout and "0.2 M ev/s" in r.stdout
    # the real recordings' packets, and the whole command as a user runs it
    rows = [line for line in r.stdout.splitlines() if line.startswith("| real packets")]
    assert len(rows) == 2, r.stdout
    whole = rows[1].split("|")
    wall, stream = float(whole[4]), float(whole[5])
    assert wall > stream > 0
