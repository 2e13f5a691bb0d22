"""The streaming pipeline end to end: real processes, real shared memory, real zmq sockets."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from evstream.config import PipelineConfig, SourceConfig, WindowConfig
from evstream.pipeline import run_pipeline
from evstream.represent import voxel_grid
from evstream.sources import open_source
from evstream.sources.options import SourceOptions
from evstream.types import concat_events
from evstream.stream.window import WindowSpec, windows_offline

DAVIS = "aedat4/davis346_aestream_davis.aedat4"
WHEEL = "aedat4/davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4"


def shm_names(pid: int | None = None) -> set[str]:
    """evstream's segments in /dev/shm created by process `pid` (this one by default): ring
    names start with evstream_<creator pid>_, so tests running beside us do not interfere."""
    prefix = f"evstream_{pid or os.getpid()}_"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cli(*args, timeout=120):
    p = subprocess.Popen([sys.executable, "-m", "evstream", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=timeout)
    assert shm_names(p.pid) == set(), "shared memory left behind"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def config(spec, tmp_path=None, lossless=True, speed=None, **window) -> PipelineConfig:
    return PipelineConfig(source=SourceConfig(spec=spec, speed=speed,
                                              ring_capacity_events=window.pop("ring", 1 << 20)),
                          window=WindowConfig(**window), lossless=lossless,
                          telemetry_interval_s=0,
                          dump_windows=str(tmp_path / "w.npz") if tmp_path else "")


@pytest.mark.parametrize("name, transport", [(DAVIS, "auto"), (WHEEL, "auto"), (WHEEL, "zmq")])
def test_lossless_windows_equal_offline(realdata, tmp_path, name, transport):
    """Every window of a lossless replay equals the one computed offline from the same file,
    whether the tensors travel in shared-memory slots or inside the zmq messages."""
    from dataclasses import replace

    path = str(realdata / name)
    before = shm_names()
    res = run_pipeline(replace(config(path, tmp_path, window_us=20_000),
                               window_transport=transport))
    assert res.exit_code == 0, res.error
    assert res.summary["window_transport"] == ("slots" if transport == "auto" else "zmq")
    with open_source(path) as src:
        events = concat_events(list(src))
        w, h = src.width, src.height
    offline = windows_offline(events, WindowSpec(window_us=20_000))
    with np.load(tmp_path / "w.npz") as f:     # each f[key] decompresses that array again
        got = dict(f)
    assert len(got["t0_us"]) == len(offline) == res.summary["windows"]
    for i, win in enumerate(offline):
        assert got["t0_us"][i] == win.t0_us and got["t1_us"][i] == win.t1_us
        np.testing.assert_array_equal(got["windows"][i], voxel_grid(win.events, 5, h, w))
    s = res.summary
    assert s["events_in"] == len(events)
    assert s["events_out"] == sum(len(x.events) for x in offline) == len(events)
    assert s["dropped_events"] == 0 and s["dropped_windows"] == 0
    if name == DAVIS:   # frames, IMU and triggers travel beside the events, all delivered
        assert (s["frames"], s["imu"], s["triggers"]) == (3, 130, 15)
    assert shm_names() == before


def _dat_with_bad_events(path, n=120_000) -> None:
    """A DAT file whose header says 300x260 while some events lie at x >= 300, and with two
    runs of events stamped 5 ms earlier than their predecessors (out of time order)."""
    from evstream.sources.prophesee import write_dat
    from evstream.types import make_events

    rng = np.random.default_rng(7)
    t = np.sort(rng.integers(0, 400_000, n))
    x = rng.integers(0, 300, n)
    x[rng.choice(n, 40, replace=False)] = rng.integers(300, 346, 40)
    write_dat(path, make_events(t, x, rng.integers(0, 260, n), rng.integers(0, 2, n)), 346, 260)
    raw = bytearray(Path(path).read_bytes())
    head = raw.index(b"% Width 346")
    raw[head:head + 11] = b"% Width 300"
    first = raw.index(b"% Height 260\n") + len(b"% Height 260\n") + 2
    rec = np.frombuffer(raw, "<u4", offset=first).reshape(-1, 2).copy()
    for start in (30_000, 90_000):
        rec[start:start + 25, 0] -= 5000
    raw[first:] = rec.tobytes()
    Path(path).write_bytes(bytes(raw))


def test_bad_events_are_checked_in_the_ring_write(tmp_path):
    """The source stage checks events while it copies them into the ring (one pass): the same
    events reach the windows, with the same counts and the same one-line error, as when the
    source checks them itself."""
    from dataclasses import replace

    path = str(tmp_path / "bad.dat")
    _dat_with_bad_events(path)
    with pytest.raises(Exception) as plain_error:
        list(open_source(path))
    with open_source(path, bad_events="drop") as src:
        events = concat_events(list(src))
        expected = src.stats
        w, h = src.width, src.height
    assert expected.dropped_outside_sensor > 0 and expected.dropped_out_of_order > 0

    cfg = config(path, tmp_path, window_us=20_000, ring=1 << 15)
    drop = SourceOptions(bad_events="drop")
    res = run_pipeline(replace(cfg, source=replace(cfg.source, options=drop)))
    assert res.exit_code == 0, res.error
    got_stats = res.summary["stages"]["source"]["source"]
    assert got_stats["dropped_outside_sensor"] == expected.dropped_outside_sensor
    assert got_stats["dropped_out_of_order"] == expected.dropped_out_of_order
    assert got_stats["events"] == len(events) == res.summary["events_in"]
    offline = windows_offline(events, WindowSpec(window_us=20_000))
    with np.load(tmp_path / "w.npz") as f:     # each f[key] decompresses that array again
        got = dict(f)
    assert len(got["t0_us"]) == len(offline)
    for i, win in enumerate(offline):
        np.testing.assert_array_equal(got["windows"][i], voxel_grid(win.events, 5, h, w))

    res = run_pipeline(config(path, tmp_path, window_us=20_000))     # default: an error
    assert res.exit_code == 2 and res.user_error and res.error_stage == "source"
    assert res.error == str(plain_error.value)


def test_paced_replay_builds_voxels_incrementally_and_exactly(realdata, tmp_path):
    """A real-time replay builds each window's voxel grid while the window is open (the window
    stage's fast path, counted in its telemetry) and still delivers exactly the offline grids;
    windows whose last event is not at their end - 1 us are recomputed at close."""
    path = str(realdata / DAVIS)
    res = run_pipeline(config(path, tmp_path, speed=1.0, window_us=10_000))
    assert res.exit_code == 0, res.error
    with open_source(path) as src:
        events = concat_events(list(src))
        w, h = src.width, src.height
    offline = windows_offline(events, WindowSpec(window_us=10_000))
    with np.load(tmp_path / "w.npz") as f:     # each f[key] decompresses that array again
        got = dict(f)
    assert len(got["t0_us"]) == len(offline) == 13
    for i, win in enumerate(offline):
        assert got["t1_us"][i] == win.t1_us
        exact = voxel_grid(win.events, 5, h, w)
        assert np.array_equal(got["windows"][i].view(np.uint32), exact.view(np.uint32))
    counters = res.summary["stages"]["window"]["counters"]
    # only windows with an event at t1 - 1 can take the fast path (10 of these 13); each is
    # built ahead unless the stage was still sending the previous window for the whole 10 ms
    hits = sum(1 for win in offline if len(win.events) and win.events["t"][-1] == win.t1_us - 1)
    assert hits == 10
    assert 3 <= counters.get("repr_fast", 0) <= hits


def test_replay_json_summary_cli(realdata):
    r = cli("replay", str(realdata / DAVIS), "--no-model", "--speed", "max", "--lossless", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for key in ("events_in", "events_out", "windows", "dropped_events", "dropped_windows",
                "wall_s", "latency_ms"):
        assert key in s
    assert s["events_in"] == 117_667 and s["events_out"] == 117_667
    assert s["windows"] == 3            # 0.130 s of events in 50 ms windows
    assert set(s["latency_ms"]) >= {"p50", "p99", "max"}
    assert 0 <= s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]


def test_live_slow_consumer_drops_but_source_keeps_pace(tmp_path):
    """Live mode: a consumer slower than the window rate loses windows (counted), and the source
    finishes on time instead of waiting for it."""
    spec = "synthetic:?seed=3&rate=1e6&duration=1.0"
    cfg = config(spec, lossless=False, speed=1.0, window_us=10_000)
    from dataclasses import replace

    cfg = replace(cfg, slow_consumer_ms=60.0)
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    s = res.summary
    assert s["events_in"] == 1_000_000
    # 100 windows of 10 ms; a consumer taking 60 ms each cannot keep up: windows are dropped
    assert s["dropped_windows"] > 0 and s["windows"] < 100
    assert s["windows"] + s["dropped_windows"] <= 100
    # had the source waited for the consumer, streaming would take >= 100 x 60 ms = 6 s
    assert s["stream_s"] < 4.0


def test_ring_overflow_lossless_waits_and_delivers_everything(tmp_path):
    """A ring far smaller than the stream: the lossless writer waits, nothing is lost."""
    spec = "synthetic:?seed=5&rate=4e6&duration=0.5"
    res = run_pipeline(config(spec, window_us=50_000, ring=1 << 14))
    assert res.exit_code == 0, res.error
    s = res.summary
    assert s["events_in"] == s["events_out"] == 2_000_000
    assert s["dropped_events"] == 0


@pytest.mark.parametrize("stage", ["source", "window", "sink"])
def test_killed_stage_fails_the_pipeline(stage):
    """SIGKILL any stage mid-run: the pipeline stops the rest, exits non-zero, leaks nothing."""
    before = shm_names()
    spec = "synthetic:?seed=1&rate=1e6&duration=30"
    pids = {}

    def started(info):
        pids.update(info["pids"])
        threading.Timer(1.0, os.kill, (pids[stage], signal.SIGKILL)).start()

    t0 = time.monotonic()
    res = run_pipeline(config(spec, lossless=False, speed=1.0), on_started=started)
    assert res.exit_code != 0
    assert res.error_stage == stage and "died" in res.error
    assert time.monotonic() - t0 < 10
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid) is False
    assert shm_names() == before


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_bad_source_is_a_one_line_user_error(tmp_path):
    r = cli("replay", str(tmp_path / "missing.aedat4"), "--no-model")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "missing.aedat4" in r.stderr


def test_no_room_for_the_ring_is_a_one_line_user_error():
    """A ring larger than /dev/shm fails when the launcher makes it (the pages are reserved
    there), as one line, before any stage starts, and leaves nothing behind."""
    before = shm_names()
    free_events = shutil.disk_usage("/dev/shm").free // 16
    r = cli("replay", "synthetic:?seed=1&rate=1e5&duration=0.2", "--no-model",
            "--ring-events", str(2 * free_events + (1 << 20)))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "event ring" in r.stderr and "--ring-events" in r.stderr
    assert shm_names() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_everything_within_a_second(sig):
    p = subprocess.Popen([sys.executable, "-m", "evstream", "replay",
                          "synthetic:?seed=2&rate=5e5&duration=60", "--no-model",
                          "--status-every", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until the three stage processes are up (spawn: a resource tracker may be a child too)
    deadline = time.monotonic() + 30
    while len(children_of(p.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)   # let it stream for a moment
    kids = children_of(p.pid)
    t0 = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=10)
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    # measured 0.24 s once streaming (0.37-0.45 s beside a CPU hog); a stage still compiling its
    # Numba kernels on a fresh checkout answers `stop` late and is terminated after the 1 s grace
    assert took < 2.0
    assert "Traceback" not in err
    # the stages are gone; multiprocessing's resource tracker (also a child) leaves on its own
    # when it sees the launcher's pipe close, a few milliseconds later
    deadline = time.monotonic() + 3
    alive = kids
    while alive and time.monotonic() < deadline:
        alive = [k for k in alive if Path(f"/proc/{k}").exists() and not _is_zombie(k)]
        time.sleep(0.02)
    assert not alive, [Path(f"/proc/{k}/cmdline").read_bytes()[:120] for k in alive]
    assert shm_names(p.pid) == set()


def test_garbage_on_the_window_socket_is_dropped_and_counted(realdata, tmp_path):
    """Malformed messages sent to the consumer's endpoint are counted; every real window still
    arrives and the pipeline ends normally."""
    import zmq

    path = str(realdata / WHEEL)
    sent = threading.Event()

    def started(info):
        def spam():
            ipc = info["endpoints"]["windows"][len("ipc://"):]
            deadline = time.monotonic() + 60      # the consumer has bound its endpoint
            while not os.path.exists(ipc) and time.monotonic() < deadline:
                time.sleep(0.01)
            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 5000)
            sock.connect(info["endpoints"]["windows"])
            garbage = [[b"window"], [b"window", b"{not json"], [b"window", b'{"v": 99}'],
                       [b"window", b'{"v":1,"kind":"window","buffers":[{"dtype":"<f4","shape":[5]}]}',
                        b"\x00" * 7],
                       [b"x" * 10, b"\xff\xfe", b"junk"]]
            for frames in garbage:
                sock.send_multipart(frames)
            sock.close()
            sent.set()
        threading.Thread(target=spam, daemon=True).start()

    res = run_pipeline(config(path, tmp_path, window_us=20_000), on_started=started)
    assert sent.wait(5)
    assert res.exit_code == 0, res.error
    with open_source(path) as src:
        n = sum(len(e) for e in src)
    assert res.summary["events_out"] == n
    assert res.summary["malformed_messages"] == 5


def test_sparse_scene_windows_close_on_the_deadline(tmp_path, events_factory):
    """Two bursts 2 s apart, replayed in real time: the windows of the first burst and the empty
    ones after it are delivered as time passes (deadline), not when the second burst arrives."""
    from evstream.sources.arrays import write_npz
    ev = concat_events([events_factory(2000, duration_us=20_000, seed=1),
                        events_factory(2000, t0=2_000_000, duration_us=20_000, seed=2)])
    path = tmp_path / "sparse.npz"
    write_npz(str(path), ev, 346, 260)
    cfg = config(str(path), tmp_path, lossless=False, speed=1.0, window_us=50_000,
                 deadline_ms=10.0)
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    with np.load(tmp_path / "w.npz") as f:     # each f[key] decompresses that array again
        got = dict(f)
    t0, recv = got["t0_us"], got["recv_ns"]
    assert len(t0) == 41 and res.summary["dropped_windows"] == 0   # 40 in the gap, 1 at the end
    first_burst = recv[0]
    second_burst = recv[t0 >= 2_000_000][0]
    assert (second_burst - first_burst) / 1e9 > 1.7      # delivered long before the next events
    # empty windows in the gap went out one by one as time passed, about 50 ms apart
    gaps = np.diff(recv[(t0 > 0) & (t0 < 1_900_000)]) / 1e6
    assert np.median(gaps) == pytest.approx(50, abs=15)
    assert res.summary["events_out"] == 4000


def test_live_replay_at_max_speed_with_slow_consumer_ends(realdata):
    """Live mode floods a slow consumer: windows are dropped (counted) and the end-of-stream
    message may be dropped too; the pipeline still ends (the launcher drains the consumer)."""
    from dataclasses import replace

    cfg = replace(config(str(realdata / WHEEL), lossless=False, speed=None, window_us=5_000),
                  slow_consumer_ms=20.0)
    t0 = time.monotonic()
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    s = res.summary
    assert s["dropped_windows"] > 0 and s["windows"] >= 1
    assert s["events_in"] == 46_402 and s["dropped_events"] == 0
    assert time.monotonic() - t0 < 30


def test_quiet_replay_prints_no_status_lines():
    """Status lines while streaming come every --status-every; --quiet has none (the summary
    at the end still prints)."""
    spec = "synthetic:?seed=3&rate=2e5&duration=0.6"
    loud = cli("replay", spec, "--no-model", "--status-every", "0.1")
    quiet = cli("replay", spec, "--no-model", "--status-every", "0.1", "--quiet")
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert len(loud.stderr.strip().splitlines()) >= 2
    assert quiet.stderr.strip() == ""
    assert "latency" in quiet.stdout and "events" in quiet.stdout


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_both_start_methods_stream_everything(method, monkeypatch):
    """Stages are forked from the launcher on Linux (after it loaded what they all need once)
    and spawned elsewhere; EVSTREAM_START_METHOD picks either, with the same stream."""
    monkeypatch.setenv("EVSTREAM_START_METHOD", method)
    r = cli("replay", "synthetic:?seed=4&rate=2e5&duration=0.5", "--no-model", "--speed", "max",
            "--lossless", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["events_in"] == s["events_out"] > 0 and s["dropped_events"] == 0
    assert set(s["startup_s"]["stages"]) == {"source", "window", "sink"}


def test_an_unknown_start_method_is_one_line(monkeypatch):
    monkeypatch.setenv("EVSTREAM_START_METHOD", "teleport")
    r = cli("replay", "synthetic:?seed=4&rate=2e5&duration=0.2", "--no-model")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "EVSTREAM_START_METHOD" in r.stderr


def test_fork_only_from_a_process_without_other_thread_pools():
    """`evstream demo` generates its recording (OpenCV's pool starts) and then replays it in the
    same process: its viewer (and a worker) are spawned, not forked from a pool they would wait
    on; the source, window and sink use no such pool and are still forked."""
    code = ("import sys\n"
            "from evstream.pipeline import fork_is_safe\n"
            "import numpy\n"
            "a = fork_is_safe('viewer')\n"
            "import cv2\n"
            "img = numpy.zeros((2000, 2000), numpy.float32)\n"
            "for _ in range(3):\n"
            "    cv2.GaussianBlur(img, (31, 31), 5)            # OpenCV's pool starts\n"
            "print(sys.platform.startswith('linux') and a, fork_is_safe('viewer'),\n"
            "      fork_is_safe('worker'), fork_is_safe('source'), fork_is_safe('window'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "False", "False", "True", "True"], r.stderr
