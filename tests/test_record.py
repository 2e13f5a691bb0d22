"""`evstream record`: file and synthetic sources into .aedat4 and back, limits, errors that leave
nothing behind, and SIGINT finalising a readable file (real processes, real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
from conftest import run_evstream as evstream
from evstream.sources import open_source
from evstream.types import EVENT_DTYPE
DAVIS = "davis346_aestream_davis.aedat4"


def everything(path, **options):
    with open_source(path, **options) as src:
        packets = list(src.packets())
        meta = (src.camera, src.width, src.height)
    ev = np.concatenate([p.events for p in packets], dtype=EVENT_DTYPE)
    frames = [f for p in packets for f in p.frames]
    imu = np.concatenate([p.imu for p in packets])
    trig = np.concatenate([p.triggers for p in packets])
    return meta, ev, frames, imu, trig


def test_record_aedat4_file_and_read_back(realdata, tmp_path, capsys):
    src = realdata / "aedat4" / DAVIS
    out = tmp_path / "rec.aedat4"
    code, stdout, err = run_cli(capsys, "record", out, src, "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert (s["events"], s["frames"], s["imu"], s["triggers"]) == (117_667, 3, 130, 15)
    assert (s["t_start_us"], s["t_end_us"]) == (1633953690975950, 1633953691105949)
    assert s["bytes"] == out.stat().st_size and s["interrupted"] is False
    a, b = everything(src), everything(out)
    assert a[0] == b[0] == ("DAVIS346_00000104", 346, 260)
    assert np.array_equal(a[1], b[1])
    assert [(f.t_us, f.exposure_us) for f in a[2]] == [(f.t_us, f.exposure_us) for f in b[2]]
    assert all(np.array_equal(f.image, g.image) for f, g in zip(a[2], b[2]))
    assert np.array_equal(a[3], b[3]) and np.array_equal(a[4], b[4])
    assert sorted(os.listdir(tmp_path)) == ["rec.aedat4"]


def test_record_numpy_source_and_limits(tmp_path, capsys):
    """A source that is not dv-based (synthetic, finite) goes through the numpy path."""
    spec = "synthetic:?duration=0.3&frame_rate=20&rate=500000&seed=4"
    out = tmp_path / "syn.aedat4"
    code, stdout, err = run_cli(capsys, "record", out, spec, "--json")
    assert code == 0, err
    meta, ev, frames, *_ = everything(spec)
    got_meta, got, got_frames, *_ = everything(out)
    assert got_meta[1:] == meta[1:] and np.array_equal(got, ev)
    assert [f.t_us for f in got_frames] == [f.t_us for f in frames]
    assert all(np.array_equal(f.image, g.image) for f, g in zip(frames, got_frames))
    assert json.loads(stdout)["events"] == len(ev)

    code, stdout, err = run_cli(capsys, "record", tmp_path / "n.aedat4", spec,
                                "--max-events", 12_345, "--json")
    assert code == 0 and json.loads(stdout)["events"] == 12_345
    assert np.array_equal(everything(tmp_path / "n.aedat4")[1], ev[:12_345])

    code, stdout, err = run_cli(capsys, "record", tmp_path / "d.aedat4", spec,
                                "--duration", 0.1, "--json")
    assert code == 0
    want = ev[ev["t"] < ev["t"][0] + 100_000]
    d_meta, d_ev, d_frames, *_ = everything(tmp_path / "d.aedat4")
    assert np.array_equal(d_ev, want) and all(f.t_us < ev["t"][0] + 100_000 for f in d_frames)


def test_record_other_formats(realdata, tmp_path, capsys):
    src = realdata / "prophesee" / "gen3_evt2_sample.raw"
    out = tmp_path / "evt2.aedat4"
    code, stdout, err = run_cli(capsys, "record", out, src, "--json")
    if code == 2 and "unknown recording format" in err:
        pytest.skip("no .raw reader in this checkout yet")
    assert code == 0, err
    assert np.array_equal(everything(out)[1], everything(src)[1])
    assert everything(out)[0][1:] == (640, 480)


def _damaged_copy(src, folder, packet):
    from evstream.sources.recording import read_layout

    lay = read_layout(str(src))
    data = bytearray(src.read_bytes())
    data[int(lay.offsets[packet]) + 12] ^= 0xFF       # inside the LZ4 frame header
    folder.mkdir()
    bad = folder / "damaged.aedat4"
    bad.write_bytes(bytes(data))
    return bad


def test_record_error_midway_keeps_what_was_recorded(realdata, tmp_path):
    """A file damaged after its first packets: exit 2, one line that says what OUT keeps (and
    that `evstream repair` exists); OUT is a finished file holding exactly those events. The
    old contract (an error leaves no OUT) went with the streaming writer: a recording keeps
    what it got, as it does after a crash."""
    src = realdata / "aedat4" / DAVIS
    bad = _damaged_copy(src, tmp_path / "in", 30)
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = evstream("record", outdir / "rec.aedat4", bad)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and "corrupt packet 30" in r.stderr
    assert "evstream repair" in r.stderr and "keeps what was recorded before" in r.stderr
    n = int(r.stderr.split("recorded before: ")[1].split(" events")[0].replace(",", ""))
    assert os.listdir(outdir) == ["rec.aedat4"]
    from evstream.sources.recording import read_layout

    assert read_layout(str(outdir / "rec.aedat4")).table_pos > 0      # finished
    got = everything(outdir / "rec.aedat4")[1]
    assert 0 < n == len(got) and np.array_equal(got, everything(src)[1][:n])


def test_record_error_before_any_event_leaves_no_file(realdata, tmp_path):
    src = realdata / "aedat4" / DAVIS
    bad = _damaged_copy(src, tmp_path / "in", 1)        # packet 1 is the first events packet
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = evstream("record", outdir / "rec.aedat4", bad)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "corrupt packet 1 " in r.stderr and "keeps" not in r.stderr.split("`")[0]
    assert os.listdir(outdir) == []


def test_record_refuses_bad_outputs(realdata, tmp_path, capsys):
    src = tmp_path / "copy.aedat4"
    src.write_bytes((realdata / "aedat4" / DAVIS).read_bytes())
    (tmp_path / "old.aedat4").write_bytes(b"old")
    for args, needle in (((src, src), "is the input"),
                         ((src, src, "--force"), "is the input"),
                         ((tmp_path / "out.txt", src), "unknown output format"),
                         ((tmp_path / "out.aedat4", tmp_path / "nope.aedat4"), "no such file"),
                         ((tmp_path / "out.aedat4",), "no source given"),
                         ((tmp_path / "old.aedat4", src), "exists; give --force"),
                         ((tmp_path / "no" / "out.aedat4", src), "does not exist"),
                         ((tmp_path / ("x" * 300 + ".aedat4"), src),
                          "cannot create (File name too long)")):
        code, _, err = run_cli(capsys, "record", *args)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert needle in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["copy.aedat4", "old.aedat4"]
    assert (tmp_path / "old.aedat4").read_bytes() == b"old"
    code, _, err = run_cli(capsys, "record", tmp_path / "old.aedat4", src, "--force")
    assert code == 0, err
    assert len(everything(tmp_path / "old.aedat4")[1]) == 117_667
    # run --record checks the same before it starts anything
    code, _, err = run_cli(capsys, "run", src, "--record", tmp_path / "old.aedat4",
                           "--no-model", "--no-viewer")
    assert code == 2 and "exists; give --force" in err, err


def test_record_sigint_finalises_a_readable_file(tmp_path):
    """A live, wall-clock-paced synthetic source: SIGINT once data is on disk -> exit 0."""
    out = tmp_path / "live.aedat4"
    proc = subprocess.Popen([sys.executable, "-m", "evstream", "record", str(out),
                             "synthetic:?rate=2000000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:   # handshake: OUT holds event packets
            if out.exists() and out.stat().st_size > 100_000:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "recording never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and summary["events"] > 0
    assert sorted(os.listdir(tmp_path)) == ["live.aedat4"]
    _, ev, *_ = everything(out)
    assert len(ev) == summary["events"] and np.all(np.diff(ev["t"]) >= 0)
    from evstream.sources.recording import read_layout

    assert read_layout(str(out)).table_pos > 0       # a clean stop finishes the file


# -- crash safety: a real SIGKILL -------------------------------------------------------------

LIVE = "synthetic:?rate=200000&seed=3"      # live: paced by the wall clock, deterministic


def dv_events(path):
    """The events dv-processing itself reads from path (unfinished files included)."""
    import dv_processing as dv

    rec = dv.io.MonoCameraRecording(str(path))
    parts = []
    while (s := rec.getNextEventBatch()) is not None:
        if len(s):
            parts.append(s.numpy().view(EVENT_DTYPE).copy())
    return np.concatenate(parts, dtype=EVENT_DTYPE) if parts else np.zeros(0, EVENT_DTYPE)


def expected_live_events(t_end_us):
    """LIVE's events up to t_end_us, generated again (the source is deterministic)."""
    from evstream.sources.synthetic import open_synthetic

    src = open_synthetic(LIVE)
    parts, k = [], 0
    while True:
        ev = src.packet(k).events
        parts.append(ev)
        k += 1
        if len(ev) and ev["t"][-1] >= t_end_us:
            break
    return np.concatenate(parts, dtype=EVENT_DTYPE)


def _seen_after(path, proc, t_us, timeout_s=60):
    """Wait until dv reads events up to t_us from the file being written; -> the last time
    stamp it read."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.communicate()
        if path.exists() and path.stat().st_size > 1000:
            ev = dv_events(path)
            if len(ev) and ev["t"][-1] >= t_us:
                return int(ev["t"][-1])
        assert time.monotonic() < deadline, "recording never got going"
        time.sleep(0.1)


def _check_killed_recording(out, t_seen):
    """OUT after a SIGKILL 2 s after dv read events up to t_seen from it: dv and `evstream
    info` read it; it holds LIVE's events exactly, up to at least t_seen + 1 s (the
    recorder puts events on disk within about a second)."""
    got = dv_events(out)
    want = expected_live_events(int(got["t"][-1]) + 1)
    assert np.array_equal(got, want[:len(got)])
    print(f"dv read up to {t_seen} us 2 s before the kill; the file ends at "
          f"{int(got['t'][-1])} us")
    assert int(got["t"][-1]) >= t_seen + 1_000_000, (t_seen, int(got["t"][-1]))
    r = evstream("info", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["events"] == len(got)
    return got


def test_record_killed_with_sigkill_leaves_a_readable_file(tmp_path):
    out = tmp_path / "live.aedat4"
    proc = subprocess.Popen([sys.executable, "-m", "evstream", "record", str(out), LIVE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        t_seen = _seen_after(out, proc, 500_000)
        time.sleep(2.0)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert os.listdir(tmp_path) == ["live.aedat4"]        # no hidden temp file left behind
    _check_killed_recording(out, t_seen)


def test_run_record_killed_with_sigkill_leaves_a_readable_file(tmp_path):
    """`run --record`: the launcher and its stages all killed at once (their process group)."""
    out = tmp_path / "run.aedat4"
    proc = subprocess.Popen([sys.executable, "-m", "evstream", "run", LIVE, "--record", str(out),
                             "--no-model", "--no-viewer", "--status-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        t_seen = _seen_after(out, proc, 500_000)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert os.listdir(tmp_path) == ["run.aedat4"]
    _check_killed_recording(out, t_seen)
