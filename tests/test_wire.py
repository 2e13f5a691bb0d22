"""The zmq wire format over real sockets (tcp loopback on random ports, and ipc): round trips of
every dtype the pipeline sends, zero-copy views, and malformed messages that are dropped and
counted while the receiver keeps working."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
from conftest import random_events

from evstream.stream import wire
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE

RECV_MS = 5000


@pytest.fixture(params=["tcp", "ipc"])
def pair(request, tmp_path):
    """(push, pull) connected over a real transport; the receiver binds, as in the pipeline."""
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.setsockopt(zmq.LINGER, 0)
    if request.param == "tcp":
        endpoint = wire.bind_random(pull, "tcp://127.0.0.1")
    else:
        endpoint = wire.ipc_endpoint(tmp_path / "wire.sock")
        pull.bind(endpoint)
    push.connect(endpoint)
    yield push, pull
    push.close()
    pull.close()


def imu_samples(n: int) -> np.ndarray:
    a = np.zeros(n, IMU_DTYPE)
    a["t"] = np.arange(n) * 1000
    a["accel"] = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
    a["gyro"] = -a["accel"]
    a["temperature"] = 36.5
    return a


ARRAYS = {
    "events": lambda: random_events(10_000),
    "voxel": lambda: np.random.default_rng(0).standard_normal((5, 260, 346)).astype(np.float32),
    "gray": lambda: np.random.default_rng(1).integers(0, 256, (260, 346), dtype=np.uint8),
    "rgb": lambda: np.random.default_rng(2).integers(0, 256, (260, 346, 3), dtype=np.uint8),
    "imu": lambda: imu_samples(17),
    "triggers": lambda: np.array([(5, 6), (9, 7)], TRIGGER_DTYPE),
    "int64": lambda: np.arange(7, dtype=np.int64),
    "bool": lambda: np.array([True, False, True]),
    "float64_scalar": lambda: np.array(3.5),
    "empty_events": lambda: np.zeros(0, EVENT_DTYPE),
    "empty_voxel": lambda: np.zeros((0, 260, 346), np.float32),
    "empty_image": lambda: np.zeros((260, 0), np.uint8),
}


@pytest.mark.parametrize("what", sorted(ARRAYS))
def test_round_trip(pair, what):
    push, pull = pair
    arr = ARRAYS[what]()
    header = {"kind": "window", "stream": "cam0", "seq": 41, "t0_us": 1_000, "t1_us": 51_000,
              "ts": {"window_end": 123, "sent": 456}, "meta": {"events": 10, "note": "é"}}
    stats = wire.WireStats()
    wire.send(push, b"window", header, [arr])
    msg = wire.recv(pull, RECV_MS, stats)
    assert msg is not None and msg.topic == b"window" and msg.kind == "window"
    for key, value in header.items():
        assert msg.header[key] == value
    assert msg.header["v"] == wire.WIRE_VERSION
    (got,) = msg.arrays
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.array_equal(got, arr)
    assert not got.flags.writeable
    assert stats.received == 1 and stats.malformed == 0 and stats.bytes == arr.nbytes


def test_several_and_no_buffers(pair):
    push, pull = pair
    ev, img = random_events(100), np.ones((4, 5), np.uint8)
    wire.send(push, "frame", {"kind": "frame"}, [ev, img, np.zeros(0, np.float32)])
    wire.send(push, "control", {"kind": "control", "meta": {"eos": True}})
    a = wire.recv(pull, RECV_MS)
    b = wire.recv(pull, RECV_MS)
    assert [x.shape for x in a.arrays] == [(100,), (4, 5), (0,)]
    assert np.array_equal(a.arrays[0], ev) and np.array_equal(a.arrays[1], img)
    assert b.arrays == [] and b.header["meta"] == {"eos": True} and b.header["stream"] == ""


def test_encode_is_zero_copy_and_decode_returns_views():
    vox = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    frames = wire.encode(b"w", {"kind": "window"}, [vox])
    assert np.shares_memory(frames[2], vox)
    received = bytearray(vox.tobytes())        # stands in for a received frame
    msg = wire.decode([b"w", frames[1], received])
    received[0:4] = np.float32(99).tobytes()
    assert msg.arrays[0][0, 0, 0] == 99        # a view over the frame, not a copy


def test_non_contiguous_and_numpy_scalars_in_header(pair):
    push, pull = pair
    big = np.arange(100, dtype=np.float32).reshape(10, 10)
    wire.send(push, b"w", {"kind": "window", "seq": np.int64(5), "ts": {"a": np.int64(7)},
                           "meta": {"n": np.int32(3), "x": np.float32(0.5)}}, [big[:, ::2]])
    msg = wire.recv(pull, RECV_MS)
    assert np.array_equal(msg.arrays[0], big[:, ::2])
    assert msg.header["seq"] == 5 and msg.header["ts"] == {"a": 7}
    assert msg.header["meta"] == {"n": 3, "x": 0.5}


@pytest.mark.parametrize("arr", [np.array([object()], dtype=object), np.zeros(3, ">f4"),
                                 np.zeros(3, [("a", "<i4"), ("b", "<f8")]),
                                 np.zeros(3, np.complex64), np.array(["x"])],
                         ids=["object", "big-endian", "structured", "complex", "str"])
def test_encode_refuses_unsafe_dtypes(arr):
    with pytest.raises(wire.WireError):
        wire.encode(b"w", {"kind": "window"}, [arr])


@pytest.mark.parametrize("header", [{}, {"kind": ""}, {"kind": "w", "seq": "1"},
                                    {"kind": "w", "ts": {"a": 1.5}}, {"kind": "w", "seq": True},
                                    {"kind": "w", "meta": {"x": float("nan")}},
                                    {"kind": "w", "meta": {"x": object()}}])
def test_encode_refuses_bad_headers(header):
    with pytest.raises(wire.WireError):
        wire.encode(b"w", header, [])


def _header(buffers, **over) -> bytes:
    h = {"v": 1, "kind": "window", "stream": "s", "seq": 0, "t0_us": 0, "t1_us": 0,
         "buffers": buffers, "ts": {}, "meta": {}}
    h.update(over)
    return json.dumps(h).encode()


F4 = [{"dtype": "<f4", "shape": [2, 2]}]
SLOT = {"name": "evstream_1_ab_w", "index": 0, "gen": 2}
GOOD16 = bytes(16)
GARBAGE = {
    "one random frame": [np.random.default_rng(0).bytes(100)],
    "random frames": [b"t", np.random.default_rng(1).bytes(50), b"x" * 16],
    "bad json": [b"t", b'{"v": 1, "kind": ', GOOD16],
    "not utf8": [b"t", b"\xff\xfe\x00{}", GOOD16],
    "json list": [b"t", b"[1, 2]", GOOD16],
    "json nan": [b"t", _header([], meta={}).replace(b'"meta": {}', b'"meta": {"x": NaN}'), ],
    "wrong version": [b"t", _header(F4, v=99), GOOD16],
    "no version": [b"t", json.dumps({"kind": "window", "buffers": F4}).encode(), GOOD16],
    "bool version": [b"t", _header(F4, v=True), GOOD16],
    "missing kind": [b"t", _header(F4, kind=None), GOOD16],
    "seq not int": [b"t", _header(F4, seq="3"), GOOD16],
    "ts not int": [b"t", _header(F4, ts={"sent": "x"}), GOOD16],
    "size mismatch short": [b"t", _header(F4), bytes(15)],
    "size mismatch long": [b"t", _header(F4), bytes(17)],
    "fewer frames than buffers": [b"t", _header(F4 * 2), GOOD16],
    "more frames than buffers": [b"t", _header(F4), GOOD16, GOOD16],
    "too many buffers": [b"t", _header([{"dtype": "|u1", "shape": [0]}] * 65)] + [b""] * 65,
    "oversize claim": [b"t", _header([{"dtype": "<f4", "shape": [1 << 20, 1 << 20]}]), GOOD16],
    "negative shape": [b"t", _header([{"dtype": "<f4", "shape": [-2, -2]}]), GOOD16],
    "float shape": [b"t", _header([{"dtype": "<f4", "shape": [2.0, 2]}]), GOOD16],
    "shape not list": [b"t", _header([{"dtype": "<f4", "shape": 4}]), GOOD16],
    "too many dims": [b"t", _header([{"dtype": "|u1", "shape": [1] * 9}]), b"x"],
    "unknown dtype": [b"t", _header([{"dtype": "<c8", "shape": [2]}]), GOOD16],
    "object dtype": [b"t", _header([{"dtype": "|O", "shape": [2]}]), GOOD16],
    "object dtype name": [b"t", _header([{"dtype": "object", "shape": [2]}]), GOOD16],
    "pickle-ish dtype": [b"t", _header([{"dtype": "V16", "shape": [1]}]), GOOD16],
    "big-endian": [b"t", _header([{"dtype": ">f4", "shape": [4]}]), GOOD16],
    "extra buffer key": [b"t", _header([{"dtype": "<f4", "shape": [4], "x": 1}]), GOOD16],
    "huge header": [b"t", _header([], meta={"pad": "x" * 70_000})],
    "long topic": [b"t" * 300, _header([])],
    "slot in version 1": [b"t", _header(F4, slot=SLOT)],
    "slot and a frame": [b"t", _header(F4, v=2, slot=SLOT), GOOD16],
    "slot of two buffers": [b"t", _header(F4 * 2, v=2, slot=SLOT)],
    "slot name not str": [b"t", _header(F4, v=2, slot=dict(SLOT, name=7))],
    "slot index not int": [b"t", _header(F4, v=2, slot=dict(SLOT, index="0"))],
    "slot extra key": [b"t", _header(F4, v=2, slot=dict(SLOT, x=1))],
    "slot not object": [b"t", _header(F4, v=2, slot=[1, 2])],
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_dropped_and_counted(pair, case):
    push, pull = pair
    stats = wire.WireStats()
    push.send_multipart(GARBAGE[case])
    wire.send(push, b"good", {"kind": "window", "seq": 1}, [np.ones((2, 2), np.float32)])
    msg = wire.recv(pull, RECV_MS, stats)       # skips the bad one within the same call
    assert msg is not None and msg.topic == b"good" and msg.header["seq"] == 1
    assert np.array_equal(msg.arrays[0], np.ones((2, 2), np.float32))
    assert (stats.received, stats.malformed) == (1, 1), stats.last_error
    assert stats.oversized == (case == "oversize claim")
    assert stats.last_error
    json.dumps(stats.as_dict())
    with pytest.raises(wire.WireError):
        wire.decode(GARBAGE[case])


def test_receiver_max_bytes(pair):
    push, pull = pair
    stats = wire.WireStats()
    wire.send(push, b"big", {"kind": "frame"}, [np.zeros(2000, np.uint8)])
    wire.send(push, b"small", {"kind": "frame"}, [np.zeros(100, np.uint8)])
    msg = wire.recv(pull, RECV_MS, stats, max_bytes=1000)
    assert msg.topic == b"small"
    assert (stats.malformed, stats.oversized, stats.received) == (1, 1, 1)


def test_recv_timeouts(pair):
    push, pull = pair
    stats = wire.WireStats()
    assert wire.recv(pull, 0, stats) is None
    assert wire.recv(pull, 30, stats) is None
    push.send_multipart([b"junk"])
    assert wire.recv(pull, 30, stats) is None   # the junk was consumed and counted
    assert stats.malformed == 1 and stats.received == 0


def test_send_tracker_and_noblock():
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        for s in (pull, push):
            s.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1)
        pull.setsockopt(zmq.RCVHWM, 1)
        push.connect(wire.bind_random(pull))
        buf = np.zeros(1 << 16, np.float32)
        tracker = wire.send(push, b"w", {"kind": "window"}, [buf], track=True)
        assert isinstance(tracker, zmq.MessageTracker)
        assert wire.recv(pull, RECV_MS) is not None
        tracker.wait(5)                         # zmq released the buffer: it may be reused
        assert tracker.done
        with pytest.raises(zmq.Again):          # nobody reads: the queues fill up
            for _ in range(10_000):
                wire.send(push, b"w", {"kind": "window"}, [buf], flags=zmq.NOBLOCK)
    finally:
        push.close()
        pull.close()


def test_bind_random_and_ipc_endpoint(tmp_path):
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    try:
        ea, eb = wire.bind_random(a), wire.bind_random(b, "tcp://127.0.0.1")
        assert ea.startswith("tcp://127.0.0.1:") and ea != eb
        assert int(ea.rsplit(":", 1)[1]) > 0
    finally:
        a.close()
        b.close()
    assert wire.ipc_endpoint(tmp_path / "x") == f"ipc://{tmp_path / 'x'}"
    with pytest.raises(ValueError, match="limit"):
        wire.ipc_endpoint(tmp_path / ("x" * 120))
    with pytest.raises(ValueError):
        wire.bind_random(a, "ipc:///tmp/x")
