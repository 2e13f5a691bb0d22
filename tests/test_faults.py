"""Faults that docs/reliability.md lists and no other test file covered: each one made for real
(processes, sockets, file systems mounted small or read-only in a private mount namespace) and
checked for what a user sees. The dependency bugs are shown first (the library on its own
misbehaves), then evstream's answer to the same fault."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, random_events
from evstream.errors import EvstreamError, SourceError
from test_outpaths import (evstream_line, needs_mount, on_full_disk, one_line_error,
                           record_on_full_disk)
from test_record import dv_events

SRC = "synthetic:?seed=1&rate=1e5&duration=0.3"


def child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -c code args...` from the checkout root (so the checkout's evstream is used)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# -- dependency bugs ------------------------------------------------------------------------------

def test_numpy_concatenate_loses_the_padded_event_dtype():
    """numpy 2.x: np.concatenate of EVENT_DTYPE arrays returns a packed 13-byte dtype, which
    no longer views dv-processing's 16-byte records; types.concat_events keeps the layout."""
    from evstream.types import EVENT_DTYPE, concat_events

    a, b = random_events(5, seed=1), random_events(3, seed=2)
    raw = np.concatenate([a, b])
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert raw.dtype.itemsize == 13 and raw.dtype != EVENT_DTYPE
    got = concat_events([a, b, a[:0]])
    assert got.dtype == EVENT_DTYPE and got.dtype.itemsize == 16
    assert got.tolist() == a.tolist() + b.tolist()


ZERO_COPY_SENDER = """
import sys
import numpy as np
import zmq

url, how, control = sys.argv[1:4]

def send():
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.connect(url)
    for i in range(2):                      # 64 MiB the peer does not read
        s.send(np.full(32 << 20, i, np.uint8), copy=False)

if how == "plain":
    send()
    sys.exit(0)                             # the interpreter frees the buffers under zmq
from evstream.stream.stage import stage_context
with stage_context({"control": control}, "window"):
    send()
"""


def test_libzmq_aborts_when_zero_copy_buffers_are_freed_under_its_io_thread(tmp_path):
    """libzmq 4.3 (pyzmq 27): a process that exits while zmq's I/O thread still sends its
    zero-copy buffers aborts ("Bad address (src/tcp.cpp:227)", SIGABRT). A stage leaves
    through stage_context, which destroys the zmq context first: exit 0."""
    import zmq

    from evstream.stream.control import LauncherLink

    ctx = zmq.Context.instance()
    for how in ("plain", "stage"):
        control = f"ipc://{tmp_path}/control-{how}"
        launcher = LauncherLink(control)
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVBUF, 4096)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        try:
            r = child(ZERO_COPY_SENDER, f"tcp://127.0.0.1:{port}", how, control)
        finally:
            pull.close()
            launcher.close()
        if how == "plain":
            assert r.returncode == -6 and "Bad address" in r.stderr, (r.returncode, r.stderr)
        else:
            assert r.returncode == 0, r.stderr[-2000:]


VIDEO_ON_FULL_DISK = """
import errno, os, sys
import cv2, numpy as np
from evstream.errors import EvstreamError
from evstream.viewer.video import VideoOut, frames_in

full = sys.argv[1]
frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)

def fill():
    fd = os.open(os.path.join(full, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)

w = cv2.VideoWriter(os.path.join(full, "raw.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20.0,
                    (320, 240))
w.write(frame)
fill()
for _ in range(9):
    w.write(frame)                          # nothing raised, nothing returned
still_open = w.isOpened()                   # and the writer still says it is fine
w.release()
print("raw", still_open, frames_in(os.path.join(full, "raw.mp4")))
os.remove(os.path.join(full, "filler"))
os.remove(os.path.join(full, "raw.mp4"))

out = VideoOut(os.path.join(full, "ours.mp4"), 20.0)
out.write(frame)                             # the free-space check passes on frame 1
fill()
for _ in range(9):
    out.write(frame)
try:
    out.close()
    print("ours closed")
except EvstreamError as e:
    print("ours", e)
"""


@needs_mount
def test_opencv_drops_video_frames_silently_on_a_full_disk_and_video_out_says_so(tmp_path):
    """opencv-python 5.0: a VideoWriter whose disk fills writes nothing more and says nothing
    (write returns None, isOpened stays True, release raises nothing; the file holds fewer
    frames than were written). viewer/video.py's VideoOut reads the file back on close: fewer
    frames than written is a one-line error."""
    code = shlex.quote(textwrap.dedent(VIDEO_ON_FULL_DISK))
    r, _ = on_full_disk(tmp_path, f"{shlex.quote(sys.executable)} -c {code} $FULL", size="4m")
    lines = dict(ln.split(" ", 1) for ln in r.stdout.strip().splitlines())
    assert r.returncode == 0, r.stderr[-2000:]
    still_open, on_disk = lines["raw"].split()
    assert still_open == "True" and int(on_disk) < 10, r.stdout
    assert lines["ours"].endswith("of 10 frames on disk; disk full?)"), r.stdout
    assert "the video is incomplete" in lines["ours"] and "\n" not in lines["ours"]


# -- stages ---------------------------------------------------------------------------------------

CRASHING_STAGE = """
import sys
from evstream.stream.stage import stage_context
with stage_context({"control": sys.argv[1]}, "window"):
    {}["a bug"]
"""


def test_a_crashing_stage_reports_its_traceback_and_exits_1(tmp_path):
    """A bug in a stage (an exception that is not a user error): the stage sends its
    traceback to the launcher and exits 1; the launcher makes that the run's exit code 1 and
    prints the traceback under `evstream: stage 'window' failed:`."""
    from evstream.pipeline import PipelineResult, _handle, _State
    from evstream.stream.control import LauncherLink

    control = f"ipc://{tmp_path}/control"
    launcher = LauncherLink(control)
    try:
        r = child(CRASHING_STAGE, control)
        got = launcher.recv(10.0)
    finally:
        launcher.close()
    assert r.returncode == 1, r.stderr[-2000:]
    stage, msg = got
    assert (stage, msg["kind"], msg["user"]) == ("window", "error", False)
    assert "Traceback" in msg["traceback"] and "KeyError: 'a bug'" in msg["traceback"]
    result = PipelineResult()
    _handle(_State(), result, stage, msg)
    assert (result.exit_code, result.error_stage, result.user_error) == (1, "window", False)
    assert result.error == msg["traceback"]


def test_a_closed_terminal_ends_every_process_and_the_next_run_cleans_up():
    """Closing the terminal sends SIGHUP to the whole process group: the launcher, its stages
    and its resource tracker all die of it at once (no `finally` runs, the kernel releases
    what they held), so the two segments stay until the next run removes them, in one line.
    (SIGKILL of the launcher alone: tests/test_orphans.py.)"""
    import os
    import signal
    import time

    from test_orphans import Subreaper, children_of, segments

    cmd = [sys.executable, "-m", "evstream", "replay", "synthetic:?seed=3&rate=2e5&duration=2",
           "--loop", "--no-model", "--status-every", "0"]
    with Subreaper() as reaper:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not any(n.endswith("_w") for n in segments(p.pid)):   # streaming
                assert p.poll() is None, p.communicate()[1]
                assert time.monotonic() < deadline, "the pipeline never started"
                time.sleep(0.02)
            kids = list(children_of(p.pid))
            os.killpg(p.pid, signal.SIGHUP)
            gone = reaper.reap(kids, timeout_s=5)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == -signal.SIGHUP and len(kids) == 4       # 3 stages and the tracker
    assert sorted(gone) == sorted(kids) and max(t for t, _ in gone.values()) < 1.0, gone
    assert len(segments(p.pid)) == 2
    r = subprocess.run(cmd[:4] + [SRC, "--no-model", "--status-every", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (f"evstream: removed 2 shared-memory segments left by process {p.pid} "
            f"(no longer running)") in r.stderr.splitlines()
    assert segments(p.pid) == set()


# -- live sources: bad events are dropped and counted --------------------------------------------

BAD_EVENTS_SERVER = r"""
import os, socket, sys
from datetime import timedelta
import dv_processing as dv

res = (346, 260)
gen = dv.data.generate.uniformEventsWithinTimeRange
packets = [gen(0, timedelta(microseconds=1000), res, 100, 1),
           gen(2000, timedelta(microseconds=1000), res, 100, 2),
           gen(1000, timedelta(microseconds=1000), res, 100, 3),          # older than the last
           gen(3000, timedelta(microseconds=1000), (400, 300), 100, 4),   # partly off the sensor
           gen(5000, timedelta(microseconds=1000), res, 100, 5)]
ev = packets[3].numpy()
print("outside", int(((ev["x"] >= 346) | (ev["y"] >= 260)).sum()), flush=True)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
w = dv.io.NetworkWriter("127.0.0.1", port,
                        dv.io.Stream.EventStream(0, "events", "DVXplorer_test", res))
print("ready", f"tcp://127.0.0.1:{port}", flush=True)
sys.stdin.readline()                     # the client is connected
for p in packets:
    w.writeEvents(p)
while w.getQueuedPacketCount():
    pass
sys.stdin.readline()
os._exit(0)                              # dv 2.0.4's NetworkWriter destructor hangs
"""


def test_a_live_source_drops_and_counts_bad_events():
    """A live source (a dv-processing network stream) sends a packet older than the last one
    and events outside the sensor: they are dropped and counted (`dropped_out_of_order`,
    `dropped_outside_sensor`, in the run's summary), one warning is logged, the stream goes
    on. A file with the same events stops with a one-line error (test_aedat2, test_arrays,
    test_atis, test_prophesee)."""
    pytest.importorskip("dv_processing")
    from evstream.sources import open_source

    server = subprocess.Popen([sys.executable, "-c", BAD_EVENTS_SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        outside = int(server.stdout.readline().split()[1])
        uri = server.stdout.readline().split()[1]
        src = open_source(uri)
        assert src.live and src.bad_events == "drop"
        server.stdin.write("go\n")
        server.stdin.flush()
        got = []
        for pkt in src.packets():
            got.append(pkt.events)
            if len(pkt.events) and pkt.events["t"][-1] >= 5000:
                break
        stats = src.stats
        src.close()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
    ev = np.concatenate(got)
    assert 0 < outside < 100
    assert stats.dropped_out_of_order == 100 and stats.dropped_outside_sensor == outside
    assert len(ev) == 400 - outside and np.all(np.diff(ev["t"]) >= 0)
    assert ev["x"].max() < 346 and ev["y"].max() < 260


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_truncated_h5_and_npz_are_one_line(tmp_path, suffix):
    from evstream.sources import open_source
    from evstream.sources.arrays import write_h5, write_npz

    path = tmp_path / f"cut{suffix}"
    (write_h5 if suffix == ".h5" else write_npz)(str(path), random_events(20_000), 346, 260)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(SourceError, match="not a readable") as e:
        with open_source(path) as src:
            sum(len(ev) for ev in src)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# -- a full /dev/shm -------------------------------------------------------------------------------

@needs_mount
def test_no_room_in_dev_shm_for_window_slots_falls_back_to_zmq(tmp_path):
    """/dev/shm (a private 4 MiB tmpfs here) holds the 1 MiB event ring but not the window
    slots: the run goes on with the tensors inside the zmq messages and delivers every event.
    (No room for the ring itself: tests/test_pipeline.py::test_no_room_for_the_ring_...)"""
    line = ("mount -t tmpfs -o size=4m tmpfs /dev/shm && "
            + evstream_line("replay", SRC, "--no-model", "--ring-events", "65536", "--lossless",
                            "--speed", "max", "--json", "--status-every", "0"))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", line], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    s = json.loads(r.stdout)
    assert s["window_transport"] == "zmq"
    assert s["windows"] > 0 and s["events_out"] == s["events_in"] == 30_000


# -- output paths: a read-only folder, the root user's "no permission" -----------------------------

def on_read_only(tmp_path, code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run shell line `code` with tmp_path/ro a read-only (empty) file system: writes there
    fail with EROFS for every user, root included, where a chmod would not stop root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    line = f"mount -t tmpfs -o ro,size=64k tmpfs {shlex.quote(str(ro))} && {code}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", line], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={"PATH": "/usr/bin:/bin",
                                                          "HOME": str(tmp_path)})


MODEL = str(ROOT / "models" / "evdistill-r18q-seg")


@needs_mount
@pytest.mark.parametrize("args, words", [
    (["record", "{ro}/x.aedat4", SRC], ["x.aedat4", "Read-only file system"]),
    (["run", SRC, "--record", "{ro}/x.aedat4", "--no-model", "--no-viewer"], ["x.aedat4"]),
    (["export", MODEL, "--out", "{ro}/e"], ["cannot create the export folder", "not writable"]),
    (["synth", "seg", "{ro}/d", "--sequences", "1", "--seconds", "0.2"], ["not writable"]),
    (["train", "--preset", "tiny", "--data", MODEL, "--out", "{ro}/run", "--stage", "1"],
     ["cannot create the run folder", "not writable"]),
    (["replay", SRC, "--video", "{ro}/v.mp4", "--no-window", "--no-model"],
     ["video folder", "not writable"]),
    (["replay", SRC, "--png-dir", "{ro}/p", "--no-window", "--no-model"],
     ["PNG folder", "not writable"]),
], ids=["record", "run-record", "export", "synth", "train", "video", "png-dir"])
def test_read_only_output_is_one_line(tmp_path, args, words):
    ro = tmp_path / "ro"
    r = on_read_only(tmp_path, evstream_line(*[a.format(ro=ro) for a in args]))
    one_line_error(r, *words)


@needs_mount
def test_run_record_to_a_full_disk_keeps_what_it_recorded(tmp_path):
    """`run --record`, as `record` (tests/test_outpaths.py): the recorder stops before
    dv-processing would abort, one line, exit 2, and OUT is a file dv reads."""
    r, kept = record_on_full_disk(tmp_path, "run", "synthetic:?rate=5000000&duration=20",
                                  "--record", "OUT", "--no-model", "--no-viewer",
                                  "--status-every", "0")
    one_line_error(r, "disk full")
    n = len(dv_events(kept))
    assert n > 0


def test_snapshot_and_recording_keys_into_an_unusable_folder_are_one_line(tmp_path, capsys):
    """`evstream view --snapshot-dir` under a file: `s` and `r` print one line naming the folder
    and the viewer goes on (counted as snapshot_errors)."""
    from evstream.config import ViewerConfig
    from evstream.viewer.app import Viewer
    from test_viewer import message, seg_prediction

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    v = Viewer(ViewerConfig(window=False, snapshot_dir=str(blocker / "shots")))
    try:
        v.handle([message(*seg_prediction(0))])
        for key in "sr":
            v.key(ord(key))
        err = capsys.readouterr().err.splitlines()
        why = f"{blocker / 'shots'}: cannot create the snapshot folder ({blocker} is not a folder)"
        assert err == [f"evstream: snapshot not saved: {why}",
                       f"evstream: recording not saved: {why}"]
        assert v.tel.counters["snapshot_errors"] == 2 and v.recording is None
        v.handle([message(*seg_prediction(1))])                  # still drawing
    finally:
        v.close()


def test_a_lossless_replay_keeps_the_events_of_a_stalled_source(realdata):
    """The wall-clock deadline closes a window whose events have not come yet; a source that
    stalls longer than it (a paced replay on a loaded machine) would lose them. A 1 us deadline
    makes most packets late (live mode counted late events in 3 of 4 runs here), a lossless
    replay waits and keeps every event in its window."""
    from evstream.config import PipelineConfig, SourceConfig, WindowConfig
    from evstream.pipeline import run_pipeline

    rec = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    cfg = PipelineConfig(source=SourceConfig(spec=str(rec), speed=1.0),
                         window=WindowConfig(window_us=10_000, deadline_ms=0.001),
                         lossless=True, telemetry_interval_s=0)
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    s = res.summary
    assert s["late_events"] == 0 and s["events_out"] == s["events_in"] > 100_000
