"""Network source against real dv-processing NetworkWriter servers in separate processes."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

dv = pytest.importorskip("dv_processing")

from evstream.errors import SourceError  # noqa: E402
from evstream.sources import open_source  # noqa: E402
from evstream.types import EVENT_DTYPE, concat_events  # noqa: E402

DAVIS_FILE = "davis346_aestream_davis.aedat4"

# A dv-processing server: `python -c SERVER ADDRESS KIND MODE [ARG]`.
# ADDRESS: "tcp" (picks a free port) or a unix socket path. KIND: events|frames|imu|triggers.
# MODE: "file PATH" sends that recording's KIND packets once; "burst N" sends N small event
# packets at once, "paced N" at 5000 packets/s; "forever" streams event packets until killed.
# It prints "ready <address>" once bound, waits for "go" on stdin (sent once the client under
# test is connected: a client connecting later would miss what was sent before), sends, prints
# "sent <packets>", then waits for another line on stdin and leaves with os._exit: dv 2.0.4's
# NetworkWriter destructor hangs while a client is connected (see
# test_dv_writer_destructor_hangs_with_client).
SERVER = r"""
import os, socket, sys, time
from datetime import timedelta
import dv_processing as dv
address, kind, mode = sys.argv[1], sys.argv[2], sys.argv[3]
arg = sys.argv[4] if len(sys.argv) > 4 else None
packets, res, camera = [], (346, 260), "DAVIS346_00000104"
if mode == "file":
    rec = dv.io.MonoCameraRecording(arg)
    res = rec.getEventResolution()
    get = {"events": rec.getNextEventBatch, "frames": rec.getNextFrame,
           "imu": rec.getNextImuBatch, "triggers": rec.getNextTriggerBatch}[kind]
    while (p := get()) is not None:
        packets.append(p)
elif mode in ("burst", "paced"):
    packets = [dv.data.generate.uniformEventsWithinTimeRange(
        1000 * k, timedelta(microseconds=1000), res, 10, k) for k in range(int(arg))]
stream = {"events": lambda: dv.io.Stream.EventStream(0, "events", camera, res),
          "frames": lambda: dv.io.Stream.FrameStream(0, "frames", camera, res),
          "imu": lambda: dv.io.Stream.IMUStream(0, "imu", camera),
          "triggers": lambda: dv.io.Stream.TriggerStream(0, "triggers", camera)}[kind]()
write = {"events": "writeEvents", "frames": "writeFrame", "imu": "writeImu",
         "triggers": "writeTriggers"}[kind]
for attempt in range(50):
    try:
        if address == "tcp":
            s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
            w = dv.io.NetworkWriter("127.0.0.1", port, stream)
            where = f"tcp://127.0.0.1:{port}"
        else:
            w = dv.io.NetworkWriter(dv.Path(address), stream)
            where = f"unix://{address}"
        break
    except RuntimeError:
        if address != "tcp":
            raise
print("ready", where, flush=True)
sys.stdin.readline()                   # "go": the test's client is connected
assert w.getClientCount() == 1
if mode == "forever":
    k = 0
    while True:
        w.writeEvents(dv.data.generate.uniformEventsWithinTimeRange(
            1000 * k, timedelta(microseconds=1000), res, 100, k))
        k += 1
        if k == 20:
            print("streaming", flush=True)
        time.sleep(0.001)
t0 = time.monotonic()
for k, p in enumerate(packets):
    if mode == "paced":                # 5000 packets/s, a camera with a 200 us time interval
        while time.monotonic() < t0 + k / 5000:
            pass
    getattr(w, write)(p)
if mode in ("burst", "paced"):
    # report once the writer's queue stops moving: either all sent, or the client stopped
    # taking data (dv's reader buffer is full) and the rest is stuck here
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 0.3:
        q = w.getQueuedPacketCount()
        if q != last:
            last, since = q, time.monotonic()
        time.sleep(0.005)
    print("sent", len(packets), "stuck", last, flush=True)
else:
    while w.getQueuedPacketCount():
        time.sleep(0.001)
    print("sent", len(packets), flush=True)
sys.stdin.readline()
os._exit(0)
"""


class Server:
    def __init__(self, address: str, kind: str, mode: str, arg=None):
        cmd = [sys.executable, "-c", SERVER, address, kind, mode] + ([str(arg)] if arg else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self._line()
        assert line.startswith("ready "), line
        self.uri = line.split()[1]

    def _line(self, timeout=20.0) -> str:
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))
        t.start()
        t.join(timeout)
        if not box:
            raise TimeoutError("server said nothing")
        return box[0].strip()

    def go(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_sent(self) -> int:
        line = self._line()
        assert line.startswith("sent "), line
        self.stuck = int(line.split()[3]) if "stuck" in line else 0
        return int(line.split()[1])

    def wait_line(self) -> str:
        return self._line()

    def leave(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
        self.proc.wait(10)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def servers():
    started = []

    def start(*args):
        s = Server(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill()


def recording_events(path):
    rec = dv.io.MonoCameraRecording(str(path))
    out = []
    while (s := rec.getNextEventBatch()) is not None:
        out.append(s.numpy().view(EVENT_DTYPE))
    return concat_events(out)


def collect(src, n_events=None, n_packets=None, timeout=20.0):
    """Read packets until the counts are reached or the source ends; after `timeout` the
    source is closed (which ends its iteration) and the test fails."""
    pkts = []

    def run():
        for pkt in src.packets():
            pkts.append(pkt)
            if n_events is not None and sum(len(p.events) for p in pkts) >= n_events:
                break
            if n_packets is not None and len(pkts) >= n_packets:
                break

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    if t.is_alive():
        src.close()
        t.join(5)
        pytest.fail(f"timed out with {len(pkts)} packets")
    return pkts


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_every_event_arrives_in_order(realdata, servers, tmp_path, transport):
    path = realdata / "aedat4" / DAVIS_FILE
    address = "tcp" if transport == "tcp" else str(tmp_path / "dv.sock")
    server = servers(address, "events", "file", path)
    src = open_source(server.uri)
    assert src.live and (src.width, src.height) == (346, 260)
    assert src.camera == "DAVIS346_00000104" and src.stream_kind == "Event"
    server.go()
    assert server.wait_sent() == 13                 # the file's 40 packets hold 13 of events
    pkts = collect(src, n_events=117_667)
    got = concat_events([p.events for p in pkts])
    assert np.array_equal(got, recording_events(path))          # every event, in order
    assert src.received_events == 117_667 and src.received_packets == 13
    assert src.stats.events == 117_667 and src.stats.lost == 0 and src.dropped_packets == 0
    server.leave()                                              # server goes away: clean end
    assert collect(src) == []
    assert src.end_reason == f"{server.uri}: the server closed the connection"
    src.close()


def test_filters_set_after_opening_apply_to_every_packet(realdata, servers):
    from evstream.sources.filters import FilterChain

    server = servers("tcp", "events", "file", realdata / "aedat4" / DAVIS_FILE)
    src = open_source(server.uri)
    server.go()
    assert server.wait_sent() == 13
    deadline = time.monotonic() + 10
    while src.received_packets < 13:        # all of it is in our queue already ...
        assert time.monotonic() < deadline
        time.sleep(0.002)
    src.filters = FilterChain(src.width, src.height, ba_filter_us=2000)
    n = sum(len(p.events) for p in collect(src, n_packets=13))
    assert n == 69_887                      # ... and still filtered: same as on the file
    assert src.stats.filtered == 117_667 - 69_887
    server.leave()
    src.close()


@pytest.mark.parametrize("kind, count, field", [("frames", 3, "frames"), ("imu", 130, "imu"),
                                                ("triggers", 15, "triggers")])
def test_other_stream_types(realdata, servers, kind, count, field):
    server = servers("tcp", kind, "file", realdata / "aedat4" / DAVIS_FILE)
    src = open_source(server.uri)
    server.go()
    n_packets = server.wait_sent()
    pkts = collect(src, n_packets=n_packets)
    items = [x for p in pkts for x in (p.frames if field == "frames" else getattr(p, field))]
    assert len(items) == count                                  # MANIFEST counts
    if kind == "frames":
        assert (src.width, src.height) == (346, 260)
        assert items[0].image.shape == (260, 346) and items[0].exposure_us == 4773
    else:
        assert (src.width, src.height) == (0, 0) and src.resolution_note
    if kind == "triggers":
        assert set(int(t["type"]) for t in items) <= {6, 7, 8, 9}
    server.leave()
    src.close()


def test_server_killed_mid_stream_ends_cleanly(servers, caplog):
    server = servers("tcp", "events", "forever")
    src = open_source(server.uri)
    server.go()
    assert server.wait_line() == "streaming"
    it = src.packets()
    first = [next(it) for _ in range(5)]
    assert all(len(p.events) == 100 for p in first)
    server.kill()
    with caplog.at_level(logging.WARNING, logger="evstream.sources.network"):
        rest = list(it)                     # ends by itself: no hang, no traceback
    assert src.end_reason == f"{server.uri}: the server closed the connection"
    assert caplog.records[-1].getMessage() == src.end_reason
    assert src.received_packets == 5 + len(rest)
    src.close()


def test_refused_connection(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))               # reserved, never listening: connections are refused
    port = s.getsockname()[1]
    try:
        with pytest.raises(SourceError) as e:
            open_source(f"tcp://127.0.0.1:{port}")
        assert str(e.value) == f"tcp://127.0.0.1:{port}: cannot connect (Connection refused)"
    finally:
        s.close()
    with pytest.raises(SourceError, match=r"^unix://.*none\.sock: No such file or directory$"):
        open_source(f"unix://{tmp_path}/none.sock")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SourceError, match="plain is not a socket"):
        open_source(f"unix://{tmp_path}/plain")


@pytest.mark.parametrize("uri, message", [
    ("tcp://no-such-host.invalid:7777", "unknown host 'no-such-host.invalid'"),
    ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
    ("tcp://127.0.0.1:99999", "bad port"),
    ("tcp://127.0.0.1:7777?color=1", "unknown option 'color'"),
    ("unix://", "no socket path"),
])
def test_bad_addresses(uri, message):
    with pytest.raises(SourceError, match=message) as e:
        open_source(uri)
    assert str(e.value).startswith(uri) and "\n" not in str(e.value)


def test_silent_server_times_out():
    """A server that accepts but never sends a dv header: dv would block forever, holding the
    GIL (dv-processing 2.0.4); our probe gives up after connect_timeout_s."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    try:
        t = time.monotonic()
        with pytest.raises(SourceError, match="no dv stream header arrived within 0.3 s"):
            open_source(f"tcp://localhost:{port}?connect_timeout_s=0.3")
        assert time.monotonic() - t < 3
    finally:
        lsock.close()


def test_our_queue_drops_oldest_and_counts(servers):
    server = servers("tcp", "events", "burst", 40)
    src = open_source(server.uri, queue_packets=5)
    server.go()
    assert server.wait_sent() == 40
    deadline = time.monotonic() + 10
    while src.received_packets < 40:        # the drain thread takes all 40 from dv ...
        assert time.monotonic() < deadline
        time.sleep(0.002)
    pkts = collect(src, n_packets=5)        # ... but only the newest 5 fit our queue
    assert [int(p.events["t"][0]) // 1000 for p in pkts] == [35, 36, 37, 38, 39]
    assert src.dropped_packets == 35 and src.stats.lost == 35 * 10
    assert src.received_events == 400 and src.stats.events == 50
    server.leave()
    src.close()


def test_dv_reader_drops_undrained_packets_and_we_do_not(servers):
    """dv-processing 2.0.4: NetworkReader buffers 1000 packets and silently drops the newest
    beyond that when nobody reads. Our drain thread reads them as they come."""
    assert dv.__version__ == "2.0.4", "re-check this behaviour on a new dv-processing"
    server = servers("tcp", "events", "paced", 1100)
    reader = dv.io.NetworkReader("127.0.0.1", int(server.uri.rsplit(":", 1)[1]))
    server.go()
    assert server.wait_sent() == 1100          # 0.22 s of packets, none read meanwhile
    firsts = []
    deadline = time.monotonic() + 0.5          # a negative result needs a wait: 0.5 s of silence
    while time.monotonic() < deadline:
        store = reader.getNextEventBatch()
        if store is not None:
            firsts.append(store.getLowestTime() // 1000)
            deadline = time.monotonic() + 0.5
    assert firsts == list(range(1000))         # packets 1000..1099 are gone, without a word
    server.leave()
    del reader

    server = servers("tcp", "events", "paced", 1100)
    src = open_source(server.uri, queue_packets=2000)
    server.go()
    assert server.wait_sent() == 1100          # again nobody consumed meanwhile ...
    pkts = collect(src, n_packets=1100)        # ... but the drain thread took every packet
    assert [int(p.events["t"][0]) // 1000 for p in pkts] == list(range(1100))
    assert src.received_packets == 1100 and src.stats.lost == 0
    server.leave()
    src.close()


def test_dv_reader_forgets_buffered_data_when_the_server_leaves(realdata, servers):
    """dv-processing 2.0.4: once the connection is gone, packets that had already arrived in
    the reader's buffer are not returned any more. (Our drain thread empties that buffer as
    packets arrive, see test_every_event_arrives_in_order.)"""
    server = servers("tcp", "events", "file", realdata / "aedat4" / DAVIS_FILE)
    reader = dv.io.NetworkReader("127.0.0.1", int(server.uri.rsplit(":", 1)[1]))
    server.go()
    assert server.wait_sent() == 13        # all 13 packets left the server ...
    server.leave()
    deadline = time.monotonic() + 10
    while reader.isRunning():
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert reader.getNextEventBatch() is None   # ... and none of them can be read


def test_dv_writer_destructor_hangs_with_client():
    """dv-processing 2.0.4: destroying a NetworkWriter while a client is connected never
    returns. Servers (ours in these tests) must leave with os._exit or drop clients first."""
    code = ("import dv_processing as dv, socket, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
            "w = dv.io.NetworkWriter('127.0.0.1', port, "
            "dv.io.Stream.EventStream(0, 'events', 'X', (8, 8)))\n"
            "r = dv.io.NetworkReader('127.0.0.1', port)\n"
            "while w.getClientCount() == 0: time.sleep(0.001)\n"
            "del w\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(2)
    finally:
        proc.kill()
        proc.wait()
