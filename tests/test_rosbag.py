"""ROS bags: the reader (sources/rosbag.py), the payload codecs (sources/ros_codecs.py) and the
ROS 2 bag writer (sources/rosbag_writer.py).

Real bags (../shared/realdata/rosbags, MANIFEST.md "rosbags/") are checked against the upstream
projects' own expected values. The message types and encodings with no real bag here are
written with rosbags' own writers (ROS 1, ROS 2 sqlite3 and mcap, ros2msg and ros2idl schemas)
from payloads made by the encoders, and hand-checked against words decoded by hand from the
format description (ros-event-camera/event_camera_codecs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import random_events, run_cli
from evstream.errors import EvstreamError, SourceError
from evstream.sources import open_source, ros_codecs
from evstream.sources.rosbag import event_typestore, strip_idl_directives
from evstream.sources.rosbag_writer import RosbagWriter
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet, concat_events

PACKET = "event_camera_msgs/msg/EventPacket"


def read_all(spec, **options):
    src = open_source(spec, **options)
    try:
        pkts = list(src.packets())
    finally:
        src.close()
    ev = concat_events([p.events for p in pkts])
    tr = np.concatenate([p.triggers for p in pkts]) if pkts else np.zeros(0, TRIGGER_DTYPE)
    frames = [f for p in pkts for f in p.frames]
    imu = np.concatenate([p.imu for p in pkts]) if pkts else np.zeros(0, IMU_DTYPE)
    return src, ev, tr, frames, imu, pkts


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def codec_ns(bag: Path):
    """Every event of a ROS 2 EventPacket bag through the codec layer: times in ns, as the
    upstream checksums are given (before evstream's microseconds)."""
    from rosbags.rosbag2 import Reader

    ts = event_typestore()
    decoders, ev, tr = {}, [], []
    with Reader(bag) as r:
        for c, _, raw in r.messages():
            m = ts.deserialize_cdr(raw, c.msgtype)
            dec = decoders.setdefault(m.encoding, ros_codecs.make_decoder(m.encoding))
            for e, t in dec.decode(np.asarray(m.events), int(m.time_base), 1 << 17):
                ev.append(e.copy())
                tr.append(t.copy())
    return concat_events(ev), np.concatenate(tr)


# -- real bags ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ros1_bag(realdata):
    """The real ROS 1 evt3 bag, read once: (path, read_all(path))."""
    bag = realdata / "rosbags" / "evt3_640x480_test_events_1.bag"
    return bag, read_all(bag)


def test_ros1_evt3_bag_real(ros1_bag):
    bag, (src, ev, tr, frames, imu, pkts) = ros1_bag
    assert (src.width, src.height, src.encoding, src.topic) == (640, 480, "evt3",
                                                                "/event_camera/events")
    assert int((ev["p"] == 0).sum()) == 218_291 and int((ev["p"] == 1).sum()) == 125_183
    # MANIFEST.md says 2,078 rising and 2,078 falling; the bag holds 4,157 EXT_TRIGGER words
    # (counted below from the raw words): 2,079 with edge 1 and 2,078 with edge 0. Upstream's
    # test (event_camera_py tests/test_1.py) checks one of the two counts twice. Its sum of all
    # event and trigger times, 2,885,601,049,874 us, holds with the 4,157.
    assert int((tr["type"] == 1).sum()) == 2_079 and int((tr["type"] == 2).sum()) == 2_078
    assert int(ev["t"].sum()) + int(tr["t"].sum()) == 2_885_601_049_874
    words = _ros1_words(bag)
    kind = words >> 12
    trig = words[kind == 0xA]
    assert (len(trig), int((trig & 1).sum())) == (4_157, 2_079)
    # first sensor time (upstream's find_first_sensor_time): the first TIME_HIGH, then TIME_LOW
    high = int(np.flatnonzero(kind == 0x8)[0])
    low = int(np.flatnonzero(kind == 0x6)[np.flatnonzero(kind == 0x6) > high][0])
    assert ((int(words[high]) & 0xFFF) << 12 | (int(words[low]) & 0xFFF)) == 7_139_840
    assert int(ev["t"][0]) == 7_139_845        # the first event, a few us after it
    assert bool(np.all(np.diff(ev["t"]) >= 0)) and not frames and not len(imu)
    assert len(pkts) == 517 and src.describe()["storage"] == "rosbag1"


def _ros1_words(bag: Path) -> np.ndarray:
    from rosbags.rosbag1 import Reader

    from evstream.sources.rosbag import types_from_definition
    from rosbags.typesys import Stores, get_typestore

    with Reader(bag) as r:
        c = r.connections[0]
        ts = get_typestore(Stores.EMPTY)
        ts.register(types_from_definition(c.msgdef, c.msgtype))
        return np.concatenate([ts.deserialize_ros1(raw, c.msgtype).events.view("<u2")
                               for _, _, raw in r.messages()])


def test_ros2_sqlite3_evt3_trigger_bag_real(realdata):
    bag = realdata / "rosbags" / "evt3_trigger_1280x720"
    ev_ns, tr_ns = codec_ns(bag)
    assert int(ev_ns["t"].sum()) == 1_222_326_831_810_000
    assert (int(ev_ns["x"].sum(dtype=np.int64)), int(ev_ns["y"].sum(dtype=np.int64)),
            int(ev_ns["p"].sum(dtype=np.int64))) == (42_078_718, 31_656_267, 41_439)
    assert int(tr_ns["t"].sum()) == 29_096_982_000
    assert int((tr_ns["type"] == 1).sum()) == 1          # sum of edge values: one rising edge
    src, ev, tr, *_ = read_all(bag)      # the source: the same, in microseconds
    assert (src.width, src.height, src.describe()["storage"]) == (1280, 720, "sqlite3")
    assert np.array_equal(ev["t"], ev_ns["t"] // 1000) and np.array_equal(ev["x"], ev_ns["x"])
    assert np.array_equal(tr["t"] * 1000, tr_ns["t"]) and list(src.streams) == ["events",
                                                                                  "triggers"]
    db3 = read_all(bag / "test_data_evt3_trigger_0.db3")[1]      # the storage file alone
    assert np.array_equal(db3, ev)


def test_libcaer_bag_across_a_device_rollover_real(realdata):
    bag = realdata / "rosbags" / "libcaer_rollover_640x480"
    ev_ns, _ = codec_ns(bag)
    assert int(ev_ns["t"].view(np.uint64).sum(dtype=np.uint64)) == 15_762_826_572_202_229_126
    assert (int(ev_ns["x"].sum(dtype=np.int64)), int(ev_ns["y"].sum(dtype=np.int64)),
            int(ev_ns["p"].sum(dtype=np.int64))) == (111_651_612, 82_801_007, 181_908)
    src, ev, _, _, _, pkts = read_all(bag)
    first = pkts[0].events
    assert (int(first["t"][0]), int(first["t"][-1])) == (1702309120762236, 1702309120772213)
    assert (int((first["p"] == 0).sum()), int((first["p"] == 1).sum())) == (741, 872)
    assert np.array_equal(ev["t"], ev_ns["t"] // 1000)
    # the device's 31-bit microsecond counter rolls over between messages 100 and 101: the
    # raw timestamps fall from 2147483644 to 5, the times stay monotonic
    ts100, ts101 = _libcaer_ts(bag, 99), _libcaer_ts(bag, 100)
    assert ts100[-1] == 2_147_483_644 and ts101[0] == 5
    assert bool(np.all(np.diff(ev["t"]) >= 0)) and (src.width, src.height) == (640, 480)
    gap = int(pkts[100].events["t"][0]) - int(pkts[99].events["t"][-1])
    assert 0 <= gap < 1000


def _libcaer_ts(bag: Path, k: int) -> np.ndarray:
    from rosbags.rosbag2 import Reader

    ts = event_typestore()
    with Reader(bag) as r:
        for i, (c, _, raw) in enumerate(r.messages()):
            if i == k:
                rec = ts.deserialize_cdr(raw, c.msgtype).events.view(
                    np.dtype([("data", "<u4"), ("ts", "<i4")]))
                return rec["ts"].astype(np.int64)


def test_info_json_on_a_real_bag_has_the_keys_of_any_recording(realdata, capsys):
    code, out, err = run_cli(capsys, "info", realdata / "rosbags" / "evt3_trigger_1280x720",
                             "--json")
    assert code == 0, err
    d = json.loads(out)
    code, out, err = run_cli(capsys, "info", realdata / "prophesee" /
                             "gen41_evt3_pedestrians.raw", "--json")
    assert code == 0, err
    assert set(d) == set(json.loads(out))
    assert (d["events"], d["triggers"], d["width"], d["height"]) == (82_469, 2, 1280, 720)
    assert d["t_start_us"] == 14_224_870 and d["reader"] == "RosbagSource"
    assert d["details"]["topic"] == "/event_camera/events" and d["details"]["encoding"] == "evt3"
    folder = realdata / "rosbags" / "evt3_trigger_1280x720"          # a bag folder's size
    assert d["bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# -- codecs, hand-checked -----------------------------------------------------------------------

def test_libcaer_cmp_words_decoded_by_hand():
    tb = 1_000_000_000_000
    words = np.array([
        0x2000 | 5,                  # ADDR_X 5
        0x3000 | 1 << 11 | 7,        # ADDR_Y 7, ON: event (5, 7) at offset 0
        0x1000 | 3,                  # TIME_LOW 3
        0x4000 | 16,                 # VECT_BASE_Y 16, OFF
        0x5000 | 0b10000101,         # VECT_8: y = 16, 18, 23 at offset 3 us
        0x0000 | 1,                  # TIME_HIGH 1: offset 4096 + 3
        0x2000 | 300,                # ADDR_X 300
        0x5000 | 0b1,                # VECT_8: base is now 24: y = 24
    ], "<u2").view(np.uint8)
    dec = ros_codecs.make_decoder("libcaer_cmp")
    (ev, tr), = list(dec.decode(words, tb, 1000))
    want = [(tb, 5, 7, 1), (tb + 3000, 5, 16, 0), (tb + 3000, 5, 18, 0), (tb + 3000, 5, 23, 0),
            (tb + 4_099_000, 300, 24, 0)]
    assert [tuple(int(v) for v in e) for e in ev[["t", "x", "y", "p"]]] == want
    assert not len(tr)
    # the next message starts its time at 0 again; x and polarity carry on
    (ev, _), = list(dec.decode(np.array([0x5000 | 0b10], "<u2").view(np.uint8), tb + 10, 100))
    assert [tuple(int(v) for v in e) for e in ev[["t", "x", "y", "p"]]] == [(tb + 10, 300, 33, 0)]
    with pytest.raises(ros_codecs.PayloadError) as e:
        list(dec.decode(np.array([0x2000, 0x6001], "<u2").view(np.uint8), 0, 100))
    assert e.value.offset == 2 and "undefined libcaer_cmp code 6" in str(e.value)


def test_libcaer_and_mono_bytes_by_hand():
    # libcaer: data = x << 17 | y << 2 | polarity << 1 | valid; int32 microsecond timestamp
    payload = np.frombuffer(bytes.fromhex("cb00c800" "d2040000"), np.uint8)   # x 100, y 50, ON
    (ev, _), = list(ros_codecs.make_decoder("libcaer").decode(payload, 7_000, 10))
    assert tuple(int(v) for v in ev[0]) == (7_000 + 1_234_000, 100, 50, 1)
    # mono: t offset (ns) in bits 0-31, x 32-47, y 48-62, polarity 63
    payload = np.frombuffer(bytes.fromhex("dc050000" "4001f080"), np.uint8)
    (ev, _), = list(ros_codecs.make_decoder("mono").decode(payload, 10_000, 10))
    assert tuple(int(v) for v in ev[0]) == (11_500, 320, 240, 1)
    assert bytes(ros_codecs.encode_mono([11_500], [320], [240], [1], 10_000)) == payload.tobytes()
    tb, enc = ros_codecs.encode_libcaer([1_234], [100], [50], [1], host_base_ns=7_000)
    assert (tb, enc.tobytes()) == (7_000, bytes.fromhex("cb00c800d2040000"))


def test_libcaer_cmp_round_trip_and_chunking():
    ev = random_events(3_000, 640, 480, t0=5_000_000, duration_us=20_000, seed=3)
    # plus columns as a moving edge gives: same time and x, runs of y (VECT_8 words)
    col = np.zeros(2_000, EVENT_DTYPE)
    col["t"] = 5_000_000 + np.repeat(np.arange(200) * 100, 10)
    col["x"] = np.repeat(np.arange(200) + 100, 10)
    col["y"] = np.tile(np.arange(40, 50), 200)
    col["p"] = 1
    ev = np.sort(concat_events([ev, col]), order=["t", "x", "p", "y"])    # as libcaer sorts
    tb, payload = ros_codecs.encode_libcaer_cmp(ev["t"], ev["x"], ev["y"], ev["p"], 17)
    assert tb == int(ev["t"][0]) * 1000 + 17
    codes = payload.view("<u2") >> 12
    assert int((codes == 5).sum()) >= 200 and int((codes == 3).sum()) >= 2_500
    dec = ros_codecs.make_decoder("libcaer_cmp")
    chunks = list(dec.decode(payload, tb, 700))
    assert len(chunks) > 5 and max(len(c[0]) for c in chunks) <= 700 + 8
    got = concat_events([c[0] for c in chunks])
    assert np.array_equal(got["t"], ev["t"] * 1000 + 17)
    for f in ("x", "y", "p"):
        assert np.array_equal(got[f], ev[f])


def test_libcaer_rollover_inside_a_message_stays_monotonic():
    t = np.array([(1 << 31) - 20, (1 << 31) - 1, (1 << 31) + 3, (1 << 31) + 50], np.int64)
    tb, payload = ros_codecs.encode_libcaer(t, [1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 0, 1], 99)
    assert int(payload.view("<i4")[5]) == 3                 # the counter wrapped in the message
    for step in (2, 3, 4):       # a chunk boundary anywhere: the rollover is still seen
        got = concat_events([e for e, _ in
                             ros_codecs.make_decoder("libcaer").decode(payload, tb, step)])
        assert np.array_equal(got["t"], t * 1000 + 99), step


def test_image_encodings():
    from evstream.sources.rosbag import image_array

    ts = event_typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    hdr = _header(ts, 0, "c", False)
    px = np.array([[0x1234, 0xABCD, 0x00FF]], np.uint16)
    for be in (0, 1):
        data = px.astype(">u2" if be else "<u2").view(np.uint8).reshape(-1)
        img = image_array(Image(header=hdr, height=1, width=3, encoding="mono16",
                                is_bigendian=be, step=6, data=data))
        assert img.tolist() == [[0x12, 0xAB, 0x00]]
    rgba = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], np.uint8)
    img = image_array(Image(header=hdr, height=1, width=2, encoding="rgba8", is_bigendian=0,
                            step=10, data=np.pad(rgba.reshape(-1), (0, 2))))     # padded rows
    assert img.tolist() == [[[3, 2, 1], [7, 6, 5]]]                                  # BGR
    assert image_array(Image(header=hdr, height=1, width=2, encoding="bayer_rggb8",
                             is_bigendian=0, step=2, data=np.zeros(2, np.uint8))) is None


def test_event_array_layouts_match_rosbags_deserializer():
    """parse_event_array reads numpy views of the bytes; rosbags' own (slow) deserializer must
    see the same events, in ROS 1 and in CDR (both byte orders are CDR; little-endian here)."""
    for ros1 in (True, False):
        ts = event_typestore(ros1)
        msg = _dvs_array(ts, "dvs_msgs", random_events(7, 346, 260, t0=1_600_000_000_123_456,
                                                       seed=1), 346, 260, "cam", ros1)
        raw = (ts.serialize_ros1 if ros1 else ts.serialize_cdr)(msg, "dvs_msgs/msg/EventArray")
        w, h, frame_id, ev = ros_codecs.parse_event_array(bytes(raw), ros1)
        back = (ts.deserialize_ros1 if ros1 else ts.deserialize_cdr)(raw,
                                                                      "dvs_msgs/msg/EventArray")
        assert (w, h, frame_id) == (346, 260, "cam")
        assert [(int(e["x"]), int(e["y"]), int(e["t"]), int(e["p"])) for e in ev] == [
            (e.x, e.y, e.ts.sec * 1_000_000_000 + e.ts.nanosec, int(e.polarity))
            for e in back.events]
        with pytest.raises(ros_codecs.LayoutError):
            ros_codecs.parse_event_array(bytes(raw)[:-3], ros1)


# -- bags written with rosbags -----------------------------------------------------------------

def _header(ts, t_ns, frame_id, ros1):
    t = ts.types
    stamp = t["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
    if ros1:
        return t["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=frame_id)
    return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _dvs_array(ts, pkg, ev, w, h, frame_id, ros1, t_ns=None):
    t = ts.types
    Time, Event = t["builtin_interfaces/msg/Time"], t[f"{pkg}/msg/Event"]
    ns = ev["t"].astype(np.int64) * 1000
    events = [Event(x=int(e["x"]), y=int(e["y"]),
                    ts=Time(sec=int(n // 10**9), nanosec=int(n % 10**9)), polarity=bool(e["p"]))
              for e, n in zip(ev, ns)]
    stamp = int(ns[0]) if t_ns is None else t_ns
    return t[f"{pkg}/msg/EventArray"](header=_header(ts, stamp, frame_id, ros1), height=h,
                                      width=w, events=events)


def _packet(ts, payload, encoding, time_base, w, h, seq, t_ns, ros1=False, typ=PACKET):
    return ts.types[typ](header=_header(ts, t_ns, "cam0", ros1), height=h, width=w, seq=seq,
                         time_base=time_base, encoding=encoding, is_bigendian=False,
                         events=np.asarray(payload, np.uint8))


def _image(ts, frame: Frame, ros1=False):
    img = frame.image
    enc, step = ("mono8", img.shape[1]) if img.ndim == 2 else ("rgb8", 3 * img.shape[1])
    data = img if img.ndim == 2 else img[..., ::-1]
    return ts.types["sensor_msgs/msg/Image"](
        header=_header(ts, frame.t_us * 1000, "cam0", ros1), height=img.shape[0],
        width=img.shape[1], encoding=enc, is_bigendian=0, step=step,
        data=np.ascontiguousarray(data).reshape(-1))


def _imu(ts, t_us, accel_g, gyro_dps, ros1=False):
    t = ts.types
    V, Q = t["geometry_msgs/msg/Vector3"], t["geometry_msgs/msg/Quaternion"]
    a = [v * 9.81 for v in accel_g]
    g = [math.radians(v) for v in gyro_dps]
    return t["sensor_msgs/msg/Imu"](
        header=_header(ts, t_us * 1000, "cam0", ros1), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0),
        orientation_covariance=np.zeros(9), angular_velocity=V(x=g[0], y=g[1], z=g[2]),
        angular_velocity_covariance=np.zeros(9), linear_acceleration=V(x=a[0], y=a[1], z=a[2]),
        linear_acceleration_covariance=np.zeros(9))


def write_bag(path: Path, messages, *, ros1=False, storage="sqlite3", msgdefs=None):
    """messages: (topic, type, log time ns, message object). msgdefs: type -> (text, hash) to
    store instead of the typestore's (an IDL schema)."""
    ts = event_typestore(ros1)
    if ros1:
        from rosbags.rosbag1 import Writer

        w = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap"
                   else StoragePlugin.SQLITE3)
    conns = {}
    with w:
        for topic, typ, _, _ in messages:
            if topic not in conns:
                if msgdefs and typ in msgdefs:
                    text, digest = msgdefs[typ]
                    conns[topic] = w.add_connection(topic, typ, msgdef=text, rihs01=digest)
                else:
                    conns[topic] = w.add_connection(topic, typ, typestore=ts)
        for topic, typ, t_ns, msg in messages:
            raw = ts.serialize_ros1(msg, typ) if ros1 else ts.serialize_cdr(msg, typ)
            w.write(conns[topic], t_ns, raw)
    return path


def _split(ev, n):
    return [ev[a:a + n] for a in range(0, len(ev), n)]


@pytest.mark.parametrize("pkg,ros1,storage", [("dvs_msgs", True, None),
                                              ("dvs_msgs", False, "sqlite3"),
                                              ("prophesee_event_msgs", False, "mcap"),
                                              ("prophesee_event_msgs", True, None)])
def test_event_array_bags_with_frames_and_imu(tmp_path, pkg, ros1, storage):
    ts = event_typestore(ros1)
    ev = random_events(3_000, 240, 180, t0=1_500_000_000_000_000, duration_us=30_000, seed=7)
    rng = np.random.default_rng(0)
    frames = [Frame(int(ev["t"][0]) + 10_000 * k,
                    rng.integers(0, 256, (180, 240) if k % 2 else (180, 240, 3), dtype=np.uint8))
              for k in range(3)]
    msgs = []
    for chunk in _split(ev, 700):
        msgs.append(("/dvs/events", f"{pkg}/msg/EventArray", int(chunk["t"][-1]) * 1000,
                     _dvs_array(ts, pkg, chunk, 240, 180, "dvs", ros1)))
    for f in frames:
        msgs.append(("/dvs/image_raw", "sensor_msgs/msg/Image", f.t_us * 1000, _image(ts, f, ros1)))
    imu_t = int(ev["t"][0]) + np.arange(0, 30_000, 1_000)
    for k, t in enumerate(imu_t):
        msgs.append(("/dvs/imu", "sensor_msgs/msg/Imu", int(t) * 1000,
                     _imu(ts, int(t), (0.01 * k, -1.0, 0.25), (1.5, -2.0 * k, 30.0), ros1)))
    msgs.sort(key=lambda m: m[2])
    bag = write_bag(tmp_path / ("b.bag" if ros1 else "b"), msgs, ros1=ros1,
                    storage=storage or "sqlite3")
    src, got, tr, fr, imu, pkts = read_all(bag)
    assert np.array_equal(got, ev) and not len(tr)
    assert (src.width, src.height, src.camera, src.streams) == (240, 180, "dvs",
                                                                ["events", "frames", "imu"])
    assert src.frame_size == (240, 180) and src.msgtype == f"{pkg}/msg/EventArray"
    assert [f.t_us for f in fr] == [f.t_us for f in frames]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(fr, frames))   # rgb8 -> BGR
    assert np.array_equal(imu["t"], imu_t)
    assert np.allclose(imu["accel"][:, 1], -1.0) and np.allclose(imu["gyro"][:, 2], 30.0)
    assert np.allclose(imu["accel"][:, 0], 0.01 * np.arange(30), atol=1e-6)
    assert bool(np.all(np.isnan(imu["temperature"])))


def _idl_schema(ts) -> tuple[str, str]:
    """EventPacket as the ros2idl schema rosidl generates (with its #include lines)."""
    sep = "=" * 80 + "\n"
    packet = """// generated from rosidl_adapter/resource/msg.idl.em
#include "std_msgs/msg/Header.idl"

module event_camera_msgs {
  module msg {
    @verbatim (language="comment", text=
      "This message contains a packet of camera events")
    struct EventPacket {
      std_msgs::msg::Header header;
      uint32 height;
      uint32 width;
      uint64 seq;
      uint64 time_base;
      string encoding;
      boolean is_bigendian;
      sequence<uint8> events;
    };
  };
};
"""
    header = """#include "builtin_interfaces/msg/Time.idl"

module std_msgs {
  module msg {
    struct Header {
      builtin_interfaces::msg::Time stamp;
      string frame_id;
    };
  };
};
"""
    time = """module builtin_interfaces {
  module msg {
    struct Time {
      int32 sec;
      uint32 nanosec;
    };
  };
};
"""
    text = (f"{sep}IDL: event_camera_msgs/msg/EventPacket\n{packet}\n"
            f"{sep}IDL: std_msgs/msg/Header\n{header}\n"
            f"{sep}IDL: builtin_interfaces/msg/Time\n{time}")
    return text, ts.hash_rihs01(PACKET)


def test_rosbags_idl_parser_fails_on_include_lines():
    """rosbags 0.11.9 (shown here): get_types_from_idl refuses the #include lines rosidl writes
    in every ros2idl schema; the reader removes them (strip_idl_directives)."""
    from rosbags.typesys import get_types_from_idl

    text, _ = _idl_schema(event_typestore())
    packet_idl = text.split("=" * 80 + "\n")[1].split("\n", 1)[1]
    with pytest.raises(Exception, match="Could not parse"):
        get_types_from_idl(packet_idl)
    assert "event_camera_msgs/msg/EventPacket" in get_types_from_idl(
        strip_idl_directives(packet_idl))


@pytest.mark.parametrize("schema", ["ros2msg", "ros2idl"])
def test_mcap_libcaer_cmp_with_either_schema(tmp_path, schema):
    ts = event_typestore()
    ev = random_events(4_000, 346, 260, t0=1_700_000_000_000_000, duration_us=40_000, seed=5)
    ev = np.sort(ev, order=["t", "x", "p", "y"])
    msgs = []
    for k, chunk in enumerate(_split(ev, 900)):
        tb, payload = ros_codecs.encode_libcaer_cmp(chunk["t"], chunk["x"], chunk["y"],
                                                    chunk["p"], 0)
        msgs.append(("/cam/events", PACKET, int(chunk["t"][-1]) * 1000 + 5,
                     _packet(ts, payload, "libcaer_cmp", tb, 346, 260, k, tb)))
    defs = {PACKET: _idl_schema(ts)} if schema == "ros2idl" else None
    bag = write_bag(tmp_path / "b", msgs, storage="mcap", msgdefs=defs)
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.rosbag2 import Reader

    with Reader(bag) as r:        # the schema really is stored in this form
        fmt = r.connections[0].msgdef.format
    assert fmt == (MessageDefinitionFormat.IDL if schema == "ros2idl"
                   else MessageDefinitionFormat.MSG)
    mcap = next(bag.glob("*.mcap"))
    for spec in (bag, mcap):        # the folder, and the .mcap file on its own
        src, got, *_ = read_all(spec)
        assert np.array_equal(got, ev), spec
        assert (src.encoding, src.camera, src.width) == ("libcaer_cmp", "cam0", 346)


def test_legacy_event_array_msgs_mono_and_a_metadata_without_storage_id(tmp_path):
    """event_array_msgs/msg/EventArray (the old name, same fields) with mono payloads. Then the
    folder's metadata.yaml gets storage_identifier "" (as some rosbag2 versions write it):
    rosbags 0.11.9 refuses the folder (shown), the reader opens the file it lists."""
    ts = event_typestore()
    typ = "event_array_msgs/msg/EventArray"
    ev = random_events(2_000, 640, 480, t0=3_000_000, duration_us=8_000, seed=9)
    msgs = []
    for k, chunk in enumerate(_split(ev, 500)):
        tb = int(chunk["t"][0]) * 1000
        payload = ros_codecs.encode_mono(chunk["t"] * 1000, chunk["x"], chunk["y"], chunk["p"],
                                         tb)
        msgs.append(("/event_camera/events", typ, int(chunk["t"][-1]) * 1000,
                     _packet(ts, payload, "mono", tb, 640, 480, k, tb, typ=typ)))
    bag = write_bag(tmp_path / "legacy", msgs)
    assert np.array_equal(read_all(bag)[1], ev)
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: sqlite3",
                                             "storage_identifier: ''"))
    from rosbags.rosbag2 import Reader

    with pytest.raises(Exception, match="Storage plugin"):
        with Reader(bag):
            pass
    src, got, *_ = read_all(bag)
    assert np.array_equal(got, ev) and src.describe()["storage"] == "sqlite3"


def test_a_bag_without_stored_definitions_and_large_messages_in_packets(tmp_path):
    """The real sqlite3 bags store no definitions (the defaults are used: see the real tests);
    here a message holding more events than packet_events is cut into packets."""
    ts = event_typestore()
    ev = random_events(10_000, 640, 480, t0=0, duration_us=5_000, seed=2)
    tb, payload = ros_codecs.encode_libcaer(ev["t"], ev["x"], ev["y"], ev["p"], 0)
    bag = write_bag(tmp_path / "big", [("/e", PACKET, 1, _packet(ts, payload, "libcaer", tb,
                                                                  640, 480, 0, 0))])
    src, got, _, _, _, pkts = read_all(bag, packet_events=3_000)
    assert np.array_equal(got, ev) and [len(p.events) for p in pkts] == [3000, 3000, 3000, 1000]


# -- choosing the topic, errors -----------------------------------------------------------------

@pytest.fixture
def two_camera_bag(tmp_path):
    ts = event_typestore()
    msgs = []
    for k, topic in enumerate(("/left/events", "/right/events")):
        ev = random_events(500, 320, 240, t0=1_000_000 * (k + 1), seed=k)
        tb, payload = ros_codecs.encode_libcaer(ev["t"], ev["x"], ev["y"], ev["p"], 0)
        msgs.append((topic, PACKET, 10 + k, _packet(ts, payload, "libcaer", tb, 320, 240, 0, 0)))
    for k, topic in enumerate(("/left/image_raw", "/right/image_raw")):
        f = Frame(1_000_000 * (k + 1), np.full((240, 320), 10 * (k + 1), np.uint8))
        msgs.append((topic, "sensor_msgs/msg/Image", 20 + k, _image(ts, f)))
    msgs.append(("/odom", "sensor_msgs/msg/Imu", 30, _imu(ts, 5, (0, 0, 1), (0, 0, 0))))
    return write_bag(tmp_path / "two", msgs)


def test_several_event_topics_need_a_topic(two_camera_bag, capsys):
    with pytest.raises(SourceError) as e:
        open_source(two_camera_bag)
    assert "2 event topics (/left/events, /right/events); pick one with --topic TOPIC" in \
        one_line(e)
    src, ev, _, frames, imu, _ = read_all(two_camera_bag, stream="/right/events")
    assert int(ev["t"][0]) >= 2_000_000 and src.frame_topic == "/right/image_raw"
    assert [int(f.image[0, 0]) for f in frames] == [20]       # its own camera's frames
    assert src.imu_topic is None and not len(imu)   # /odom is not in the camera's namespace
    for flag in ("--topic", "--stream"):
        code, out, err = run_cli(capsys, "info", two_camera_bag, flag, "/left/events", "--json")
        assert code == 0 and json.loads(out)["events"] == 500
    code, out, err = run_cli(capsys, "info", two_camera_bag)
    assert code == 2 and err.count("\n") == 1 and "pick one with --topic TOPIC" in err


def test_cli_errors_are_one_line(two_camera_bag, tmp_path, capsys):
    code, out, err = run_cli(capsys, "info", two_camera_bag, "--topic", "/nope")
    assert code == 2 and err.count("\n") == 1 and "no topic '/nope'" in err
    code, out, err = run_cli(capsys, "info", two_camera_bag, "--stream", "/odom")
    assert code == 2 and err.count("\n") == 1 and "sensor_msgs/msg/Imu" in err
    # an event topic of a type this reader does not read
    from rosbags.rosbag2 import Writer

    with Writer(tmp_path / "odd", version=9) as w:
        c = w.add_connection("/celex/events", "celex5_msgs/msg/EventVector",
                             msgdef="uint8[] data", rihs01="RIHS01_" + "0" * 64)
        w.write(c, 1, b"\x00\x01\x00\x00\x00\x00\x00\x00")
    code, out, err = run_cli(capsys, "info", tmp_path / "odd")
    assert code == 2 and err.count("\n") == 1
    assert "/celex/events (celex5_msgs/msg/EventVector)" in err and "does not read" in err
    # an EventPacket with an encoding nobody defines, a corrupt payload, not a bag at all
    ts = event_typestore()
    bag = write_bag(tmp_path / "enc", [("/e", PACKET, 1, _packet(ts, [0, 0], "evt9", 0, 10, 10,
                                                                  0, 0))])
    code, out, err = run_cli(capsys, "info", bag)
    assert code == 2 and err.count("\n") == 1 and "encoding 'evt9'" in err
    bad = np.array([0x8001, 0x6000, 0x9123], "<u2").view(np.uint8)    # 0x9: undefined in EVT3
    bag = write_bag(tmp_path / "bad", [("/e", PACKET, 1, _packet(ts, bad, "evt3", 0, 10, 10,
                                                                  0, 0))])
    code, out, err = run_cli(capsys, "info", bag)
    assert code == 2 and err.count("\n") == 1 and "/e message 1" in err and "byte 4" in err
    (tmp_path / "junk.bag").write_bytes(b"#ROSBAG V2.0\n" + b"\x07" * 64)
    code, out, err = run_cli(capsys, "info", tmp_path / "junk.bag")
    assert code == 2 and err.count("\n") == 1 and "not a readable ROS 1 bag" in err


# -- the writer -----------------------------------------------------------------------------------

def test_writer_round_trip_of_a_real_davis_recording(realdata, tmp_path):
    """events, APS frames and IMU of a DAVIS346 .aedat4 -> RosbagWriter -> the reader: the same
    events, frames and IMU; its triggers (APS exposure signals, dv types 6-9) have no EVT 3.0
    word: dropped and counted."""
    spec = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    src, ev, tr, frames, imu, pkts = read_all(spec)
    out = tmp_path / "davis_bag"
    with RosbagWriter(out, width=src.width, height=src.height, camera=src.camera, frames=True,
                      imu=True, triggers=True) as w:
        for p in pkts:
            w.write(p)
    assert w.counts == {"events": 117_667, "frames": 3, "imu": 130, "triggers": 0}
    assert w.written == w.counts and w.dropped["triggers"] == len(tr) == 15
    assert "external edges only" in w.drop_reasons["triggers"]
    back, ev2, tr2, frames2, imu2, _ = read_all(out)
    assert np.array_equal(ev2, ev) and not len(tr2)
    assert (back.camera, back.width, back.height) == ("DAVIS346_00000104", 346, 260)
    assert [f.t_us for f in frames2] == [f.t_us for f in frames]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames2, frames))
    for f in ("t", "accel", "gyro"):
        assert np.array_equal(imu2[f], imu[f]), f
    assert (w.t_first_us, w.t_last_us) == (int(ev["t"][0]), int(ev["t"][-1]))
    assert w.bytes == sum(p.stat().st_size for p in out.iterdir())
    # the EVT3 words: a time_base above 24 bits, one stream across messages, <= 1 ms each
    from rosbags.rosbag2 import Reader

    ts = event_typestore()
    with Reader(out) as r:
        conn = next(c for c in r.connections if c.topic == "/event_camera/events")
        msgs = [ts.deserialize_cdr(raw, PACKET) for _, _, raw in r.messages([conn])]
    assert {m.time_base for m in msgs} == {((int(ev["t"][0]) >> 24) << 24) * 1000}
    assert [m.seq for m in msgs] == list(range(len(msgs))) and len(msgs) > 100
    assert all(m.encoding == "evt3" and (m.width, m.height) == (346, 260) for m in msgs)


def test_ros1_read_ros2_write_read(ros1_bag, tmp_path):
    """The real ROS 1 evt3 bag (with 4,157 triggers) -> RosbagWriter as one .mcap file -> the
    same events and triggers."""
    _, (src, ev, tr, _, _, pkts) = ros1_bag
    out = tmp_path / "copy.mcap"
    with RosbagWriter(out, width=640, height=480, camera=src.camera, triggers=True) as w:
        for p in pkts:
            w.write(p)
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert w.written == {"events": 343_474, "frames": 0, "imu": 0, "triggers": 4_157}
    back, ev2, tr2, *_ = read_all(out)
    assert np.array_equal(ev2, ev) and np.array_equal(tr2, tr)
    assert back.describe()["storage"] == "mcap" and back.camera == "0293"


def test_writer_message_size_memory_and_late_triggers(tmp_path):
    ev = random_events(60_000, 640, 480, t0=(1 << 24) - 3_000, duration_us=30_000, seed=4)
    tr = np.zeros(4, TRIGGER_DTYPE)
    tr["t"] = [int(ev["t"][100]), int(ev["t"][20_000]), int(ev["t"][59_000]), 5]
    tr["type"] = [1, 2, 1, 1]
    out = tmp_path / "b"
    with RosbagWriter(out, width=640, height=480, triggers=True, storage="mcap",
                      max_message_events=500) as w:
        w.write(Packet(events=ev[:30_000], triggers=tr[:2]))
        w.write(Packet(events=ev[30_000:], triggers=tr[2:]))    # t=5: after later events
    assert w.dropped["triggers"] == 1 and "after later events" in w.drop_reasons["triggers"]
    assert w.peak_buffered <= 30_000 + 500
    _, ev2, tr2, _, _, pkts = read_all(out)
    assert np.array_equal(ev2, ev) and np.array_equal(tr2, tr[:3])   # across a 24-bit wrap
    assert max(len(p.events) for p in pkts) <= 500
    # write_events on its own keeps at most TRIGGER_LAG_US of events back
    from evstream.sources.rosbag_writer import TRIGGER_LAG_US

    with RosbagWriter(tmp_path / "c", width=640, height=480, triggers=True) as w:
        for chunk in _split(ev, 2_000):
            w.write_events(chunk)
            span = int(chunk["t"][-1]) - (int(w._pending[0]["t"][0]) if w._pending else 0)
            assert not w._pending or span <= TRIGGER_LAG_US + 1_000
        w.write_triggers(tr[:1])
    assert np.array_equal(read_all(tmp_path / "c")[1], ev)


def _reference_evt3(words: np.ndarray, width: int, height: int):
    """EVT 3.0 as the ROS decoder reads it (event_camera_codecs evt3_decoder.h): time valid
    from a TIME_LOW after the first TIME_HIGH, TIME_LOW kept across TIME_HIGH words, a TIME_HIGH
    more than 10 below the last one is a 2^24 us rollover, events outside the sensor dropped,
    time_base ignored. -> [(t_us, x, y, p)], [(t_us, edge)]."""
    high = low = y = base = pol = 0
    valid = seen_high = False
    ev, tr = [], []
    for w in words.tolist():
        kind, v = w >> 12, w & 0xFFF
        if kind == 0x8:
            last = (high >> 12) & 0xFFF
            if v < last and last - v > 10:
                high += 1 << 24
            high = (high & ~((1 << 24) - 1)) | (v << 12)
            seen_high = True
        elif kind == 0x6:
            low = v
            valid = valid or seen_high
        elif not valid:
            continue
        elif kind == 0x0:
            y = v & 0x7FF
        elif kind == 0x2:
            if (v & 0x7FF) < width and y < height:
                ev.append((high | low, v & 0x7FF, y, v >> 11))
        elif kind == 0x3:
            base, pol = v & 0x7FF, v >> 11
        elif kind in (0x4, 0x5):
            n = 12 if kind == 0x4 else 8
            ev += [(high | low, base + b, y, pol) for b in range(n) if (v >> b) & 1]
            base += n
        elif kind == 0xA:
            tr.append((high | low, v & 1))
    return ev, tr


def test_writer_words_read_the_same_by_the_ros_decoder(tmp_path):
    """The ROS decoder keeps TIME_LOW when TIME_HIGH changes (evt_codec's resets it): events
    whose low 12 bits are 0 right after a TIME_HIGH, and a 24-bit wrap, read the same."""
    t0 = (5 << 24) - 9_000                            # crosses a 2^24 us wrap at 5 << 24
    boundaries = np.arange(-(-t0 // 4096) * 4096, t0 + 20_000, 4096)     # low 12 bits 0
    t = np.sort(np.concatenate([boundaries, random_events(300, t0=t0, duration_us=20_000)["t"]]))
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, np.arange(len(t)) % 60, 7, np.arange(len(t)) % 2
    assert int((ev["t"] % 4096 == 0).sum()) >= 4
    tr = np.zeros(2, TRIGGER_DTYPE)
    tr["t"], tr["type"] = [int(t[10]), int(t[-5])], [1, 2]
    with RosbagWriter(tmp_path / "b", width=64, height=64, triggers=True) as w:
        w.write(Packet(events=ev, triggers=tr))
    from rosbags.rosbag2 import Reader

    ts = event_typestore()
    with Reader(tmp_path / "b") as r:
        msgs = [ts.deserialize_cdr(raw, PACKET) for _, _, raw in r.messages()]
    words = np.concatenate([m.events.view("<u2") for m in msgs])
    base = msgs[0].time_base // 1000
    ref_ev, ref_tr = _reference_evt3(words, 64, 64)
    assert ref_ev == [(int(e["t"]) - base, int(e["x"]), int(e["y"]), int(e["p"])) for e in ev]
    assert ref_tr == [(int(t[10]) - base, 1), (int(t[-5]) - base, 0)]
    assert np.array_equal(read_all(tmp_path / "b")[1], ev)


def test_writer_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(EvstreamError) as e:
        RosbagWriter(tmp_path / "full", width=10, height=10)
    assert "exists and is not empty" in one_line(e)
    (tmp_path / "empty").mkdir()
    with RosbagWriter(tmp_path / "empty", width=10, height=10) as w:       # an empty folder: ok
        w.write_events(random_events(5, 10, 10))
    assert (tmp_path / "empty" / "metadata.yaml").is_file()
    (tmp_path / "afile").write_text("x")
    for path, needle in ((tmp_path / "afile", "is not a folder"),
                         (tmp_path / "nope" / "bag", "does not exist"),
                         (Path("/proc/evstream_rosbag_test"), "cannot create")):
        with pytest.raises(EvstreamError) as e:
            RosbagWriter(path, width=10, height=10)
        assert needle in one_line(e), path
    with pytest.raises(EvstreamError, match="does not fit EVT 3.0"):
        RosbagWriter(tmp_path / "big", width=4096, height=10)
    w = RosbagWriter(tmp_path / "order", width=10, height=10)
    w.write_events(random_events(5, 10, 10, t0=1000))
    with pytest.raises(EvstreamError, match="out of time order"):
        w.write_events(random_events(5, 10, 10, t0=0, duration_us=10))
    with pytest.raises(EvstreamError, match="outside the 10x10 sensor"):
        w.write_events(random_events(5, 20, 20, t0=100_000))
    w.close()
    w.close()                                              # idempotent
    with pytest.raises(EvstreamError, match="closed"):
        w.write_events(random_events(5, 10, 10, t0=200_000))
    assert np.array_equal(read_all(tmp_path / "order")[1]["t"],
                          random_events(5, 10, 10, t0=1000)["t"])
    a = RosbagWriter(tmp_path / "gone", width=10, height=10)
    a.abort()
    assert not (tmp_path / "gone").exists()


def test_writer_keeps_what_was_written_when_the_with_block_fails(tmp_path):
    ev = random_events(1_000, 64, 64, seed=8)
    with pytest.raises(RuntimeError):
        with RosbagWriter(tmp_path / "b", width=64, height=64) as w:
            w.write(Packet(events=ev))
            raise RuntimeError("boom")
    assert np.array_equal(read_all(tmp_path / "b")[1], ev)
