"""ROS bags as event sources, through the `rosbags` library (pure Python, no ROS install).

What opens (registered for ".bag", ".mcap", ".db3" and folders holding a metadata.yaml):
- a ROS 1 bag (`file.bag`), a ROS 2 bag folder (metadata.yaml + sqlite3 `.db3` or `.mcap`
  files), or one ROS 2 storage file on its own (`file.mcap`, `file.db3`).

Event topics, by message type:
- event_camera_msgs/msg/EventPacket and its older name event_array_msgs/msg/EventArray, with
  encoding evt3, libcaer, libcaer_cmp or mono (the codecs are in ros_codecs.py);
- dvs_msgs/msg/EventArray (rpg_dvs_ros) and prophesee_event_msgs/msg/EventArray (read with numpy
  views of the serialized bytes, ros_codecs.parse_event_array).
A bag with several event topics needs `stream=TOPIC` (`--topic TOPIC` on the command line,
alias of `--stream`, which picks a camera of a multi-camera .aedat4); without it the error lists them. Beside
the event topic the source reads sensor_msgs/msg/Image as APS frames and sensor_msgs/msg/Imu as
IMU samples: the topics in the event topic's namespace (/dvs/events -> /dvs/image_raw, /dvs/imu),
or the bag's only Image / Imu topic when there is one event topic.

Message types come from the definitions the bag stores (ROS 1 connection headers, the
message_definitions table of newer sqlite3 bags, mcap schemas in ros2msg or ros2idl form);
where a bag stores none (older sqlite3 bags), from the ROS 2 Humble types plus the event types
above, registered from their message definitions. Two rosbags 0.11.9 limitations are worked
around here (tests/test_rosbag.py shows both): its IDL parser refuses the `#include` lines that
rosidl puts in every ros2idl schema (they are removed before parsing: the types they name are in
the same schema), and it refuses a bag folder whose metadata.yaml has an empty
storage_identifier (as some rosbag2 versions write it): the storage files it lists are then
opened one by one, by their suffix.

Times are the sensor's, decoded from the messages (time_base + the payload's times, as the codec
defines them; header stamps only for frames and IMU samples), in nanoseconds and then floored to
evstream's int64 microseconds. Like the other readers, the source keeps the file's time origin:
an evt3 bag starts at the sensor's microsecond counter, a libcaer bag at the host time its driver
aligned the device clock to. Resolution: the first event message's width/height (--width /
--height only where those are 0; flags that disagree are a one-line error).

Packets: one event message at a time (bounded memory: nothing of the bag is held beyond the
message being decoded; a message with more than `packet_events` events is cut into several
packets), with the frames and IMU samples that came before it in the bag. Frames: mono8 and
mono16 (the high byte) as (H, W) uint8, bgr8 / rgb8 / bgra8 / rgba8 as (H, W, 3) BGR; other
encodings are skipped with a note. IMU: sensor_msgs/Imu's m/s^2 and rad/s become g and deg/s
(g = 9.81 m/s^2, as the iniVation ROS drivers write it); the temperature is not in the message
(NaN). Errors (not a bag, no event topic, an unknown type or encoding, a corrupt payload) are one
line naming the bag, the topic and the message.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_folder, register_reader
from evstream.sources import ros_codecs
from evstream.sources.base import EventSource
from evstream.types import IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet

log = logging.getLogger(__name__)

PACKET_EVENTS = 1 << 17
SIDE_BATCH = 256                 # frames / IMU samples held before they go out on their own
GRAVITY = 9.81                   # m/s^2 per g, as libcaer_driver and rpg_dvs_ros write IMU data

PACKET_MSG = """std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
"""
EVENT_MSG = "uint16 x\nuint16 y\nbuiltin_interfaces/Time ts\nbool polarity\n"


def _array_msg(pkg: str) -> str:
    return f"std_msgs/Header header\nuint32 height\nuint32 width\n{pkg}/Event[] events\n"


# type name -> message definition (ROS 2 form; rosbags reads `builtin_interfaces/Time` for ROS 1's
# `time` too), registered where the bag stores no definition (and used by the writer)
MSG_DEFS = {
    "event_camera_msgs/msg/EventPacket": PACKET_MSG,
    "event_array_msgs/msg/EventArray": PACKET_MSG,
    "dvs_msgs/msg/Event": EVENT_MSG,
    "dvs_msgs/msg/EventArray": _array_msg("dvs_msgs"),
    "prophesee_event_msgs/msg/Event": EVENT_MSG,
    "prophesee_event_msgs/msg/EventArray": _array_msg("prophesee_event_msgs"),
}
PACKET_TYPES = ("event_camera_msgs/msg/EventPacket", "event_array_msgs/msg/EventArray")
ARRAY_TYPES = ("dvs_msgs/msg/EventArray", "prophesee_event_msgs/msg/EventArray")
EVENT_TYPES = PACKET_TYPES + ARRAY_TYPES
IMAGE_TYPE = "sensor_msgs/msg/Image"
IMU_TYPE = "sensor_msgs/msg/Imu"


def event_typestore(ros1: bool = False):
    """A rosbags typestore with the ROS standard types (Noetic / Humble) and the event types."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    for name, text in MSG_DEFS.items():
        ts.register(get_types_from_msg(text, name))
    return ts


def types_from_definition(msgdef, msgtype: str) -> dict:
    """The types of a stored definition (rosbags MessageDefinition: MSG or IDL)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    if msgdef.format == MessageDefinitionFormat.MSG:
        return get_types_from_msg(msgdef.data, msgtype)
    sep = "=" * 80 + "\n"
    parts = ([p.split("\n", 1)[1] for p in msgdef.data.split(sep)[1:]]
             if msgdef.data.startswith(sep + "IDL: ") else [msgdef.data])
    types: dict = {}
    for idl in parts:
        types.update(get_types_from_idl(strip_idl_directives(idl)))
    return types


def strip_idl_directives(idl: str) -> str:
    """rosbags 0.11.9's IDL parser fails on preprocessor lines (`#include "std_msgs/msg/
    Header.idl"`, in every schema rosidl generates); the types they pull in are in the same
    schema, so the lines are dropped."""
    return re.sub(r"(?m)^[ \t]*#.*$", "", idl)


# -- the bag: one or more rosbags readers --------------------------------------------------------

class _Bag:
    """The rosbags readers of one bag, with the errors of opening it turned into one line."""

    def __init__(self, path: str):
        from rosbags.rosbag1 import Reader as Reader1
        from rosbags.rosbag2 import Reader as Reader2

        self.path = path
        self.readers: list = []
        self.ros1 = path.lower().endswith(".bag") and not os.path.isdir(path)
        self.storage = "rosbag1" if self.ros1 else ""
        try:
            if self.ros1:
                self._open(Reader1(Path(path)))
            elif os.path.isdir(path):
                self._open_folder(Reader2)
            else:
                self._open(Reader2(Path(path)))
                self.storage = "mcap" if path.lower().endswith(".mcap") else "sqlite3"
        except SourceError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - any rosbags failure is a bad bag
            self.close()
            kind = "ROS 1 bag" if self.ros1 else "ROS 2 bag"
            raise SourceError(f"{path}: not a readable {kind} ({_one_line(e)})") from None

    def _open(self, reader) -> None:
        reader.open()
        self.readers.append(reader)

    def _open_folder(self, Reader2) -> None:
        from ruamel.yaml import YAML

        meta = YAML(typ="safe").load(Path(self.path, "metadata.yaml").read_text())
        info = (meta or {}).get("rosbag2_bagfile_information") or {}
        self.storage = str(info.get("storage_identifier") or "")
        if self.storage:
            self._open(Reader2(Path(self.path)))
            return
        # rosbags 0.11.9 refuses storage_identifier "" (written by some rosbag2 versions): open
        # the files it lists, each by its suffix
        files = [Path(self.path, Path(p).name) for p in info.get("relative_file_paths") or []]
        if not files:
            raise SourceError(f"{self.path}: metadata.yaml names no storage files")
        for f in files:
            if f.suffix not in (".mcap", ".db3"):
                raise SourceError(f"{self.path}: metadata.yaml gives no storage_identifier and "
                                  f"{f.name} is neither .mcap nor .db3")
            if not f.exists():
                raise SourceError(f"{self.path}: {f.name} (listed in metadata.yaml) is missing")
            self._open(Reader2(f))
        self.storage = "mcap" if files[0].suffix == ".mcap" else "sqlite3"

    def topics(self) -> dict[str, tuple[str, int]]:
        """topic -> (message type, message count)."""
        out: dict[str, tuple[str, int]] = {}
        for r in self.readers:
            for c in r.connections:
                t, n = out.get(c.topic, (c.msgtype, 0))
                out[c.topic] = (t, n + c.msgcount)
        return out

    def connection(self, topic: str):
        return next(c for r in self.readers for c in r.connections if c.topic == topic)

    def messages(self, topics):
        """(topic, raw bytes) of these topics, in bag order (file after file)."""
        for r in self.readers:
            conns = [c for c in r.connections if c.topic in topics]
            if conns:       # an empty list would mean "every connection" to rosbags
                for conn, _, raw in r.messages(connections=conns):
                    yield conn.topic, raw

    def close(self) -> None:
        for r in self.readers:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing a reader that failed halfway
                pass
        self.readers = []


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- the source -----------------------------------------------------------------------------------

class RosbagSource(EventSource):
    """Events (and frames, IMU) of one event topic of a ROS 1 / ROS 2 bag (see the module doc)."""

    live = False

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 stream=None, packet_events=PACKET_EVENTS):
        self.name = os.fspath(path)
        self.packet_events = max(int(packet_events), 64)
        self.notes: list[str] = []
        self._where = ""              # the event message being read, for messages and locate()
        self._bag = _Bag(self.name)
        try:
            self._setup(stream, width, height)
        except BaseException:
            self._bag.close()
            raise
        super().__init__(bad_events=bad_events, filters=filters)

    # -- opening -----------------------------------------------------------------------------------
    def _setup(self, stream, width, height) -> None:
        topics = self._bag.topics()
        self.topic = self._event_topic(topics, stream)
        self.msgtype, self.messages = topics[self.topic]
        self.kind = "packet" if self.msgtype in PACKET_TYPES else "array"
        self.frame_topic = self._side_topic(topics, IMAGE_TYPE)
        self.imu_topic = self._side_topic(topics, IMU_TYPE)
        self._stores: dict[str, object] = {}
        for t in (self.topic, self.frame_topic, self.imu_topic):
            if t is not None:
                self._stores[t] = self._typestore(t)
        first = self._first_event_message()
        w, h = first["width"], first["height"]
        self.encoding = first.get("encoding")
        self.camera = first["frame_id"] or self.topic
        if w > 0 and h > 0:
            self.width, self.height = int(w), int(h)
            if (width is not None and width != self.width) or \
                    (height is not None and height != self.height):
                raise SourceError(f"{self.name}: {self.topic} says {self.width}x{self.height}; "
                                  f"--width/--height {width}x{height} disagree")
        elif width is not None and height is not None:
            self.width, self.height = int(width), int(height)
            self.resolution_note = "not in the messages (0x0); from --width/--height"
        else:
            self.width, self.height = self._infer_size()
            self.resolution_note = ("not in the messages (0x0); inferred from the largest x and "
                                    "y; set --width/--height if the sensor is larger")
        self.frame_size = self._first_frame_size()
        self.streams = ["events"]
        if self.frame_topic:
            self.streams.append("frames")
        if self.imu_topic:
            self.streams.append("imu")
        if self.encoding == "evt3":
            self.streams.append("triggers")

    def _event_topic(self, topics, stream) -> str:
        events = sorted(t for t, (typ, _) in topics.items() if typ in EVENT_TYPES)
        if stream is not None:
            if stream not in topics:
                raise SourceError(f"{self.name}: no topic {stream!r} in this bag (event topics: "
                                  f"{', '.join(events) or 'none'})")
            if stream not in events:
                raise SourceError(
                    f"{self.name}: topic {stream} has message type {topics[stream][0]}, not one "
                    f"this reader reads as events ({', '.join(EVENT_TYPES)})")
            return stream
        if len(events) > 1:
            raise SourceError(f"{self.name}: holds {len(events)} event topics "
                              f"({', '.join(events)}); pick one with --topic TOPIC")
        if events:
            return events[0]
        likely = [f"{t} ({typ})" for t, (typ, _) in sorted(topics.items())
                  if "event" in t.lower() or "event" in typ.lower()]
        if likely:
            raise SourceError(f"{self.name}: event topic {', '.join(likely)} has a message type "
                              f"this reader does not read (it reads {', '.join(EVENT_TYPES)})")
        listed = ", ".join(f"{t} ({typ})" for t, (typ, _) in sorted(topics.items())) or "none"
        raise SourceError(f"{self.name}: no event topic in this bag (topics: {listed})")

    def _side_topic(self, topics, msgtype) -> str | None:
        cands = sorted(t for t, (typ, _) in topics.items() if typ == msgtype)
        ns = self.topic.rsplit("/", 1)[0]
        near = [t for t in cands if t.startswith(ns + "/")]
        n_events = sum(typ in EVENT_TYPES for typ, _ in topics.values())
        pick = near or (cands if n_events == 1 else [])
        if len(pick) > 1:
            self._note(f"{len(pick)} {msgtype} topics ({', '.join(pick)}); reading {pick[0]}")
        return pick[0] if pick else None

    def _typestore(self, topic: str):
        """The typestore for one topic: the bag's own definition where it stores one (checked
        against the known layout for event arrays), else the defaults."""
        from rosbags.interfaces import MessageDefinitionFormat

        conn = self._bag.connection(topic)
        if conn.msgdef.format == MessageDefinitionFormat.NONE:
            if conn.msgtype not in default_typestore(self._bag.ros1).fielddefs:
                raise SourceError(f"{self.name}: topic {topic} has type {conn.msgtype}, which "
                                  "the bag does not define and this reader does not know")
            return default_typestore(self._bag.ros1)
        from rosbags.typesys import Stores, get_typestore

        try:
            ts = get_typestore(Stores.EMPTY)
            ts.register(types_from_definition(conn.msgdef, conn.msgtype))
        except Exception as e:  # noqa: BLE001 - a definition rosbags cannot parse
            raise SourceError(f"{self.name}: the bag's definition of {conn.msgtype} (topic "
                              f"{topic}) does not parse ({_one_line(e)})") from None
        if conn.msgtype in ARRAY_TYPES:
            known = default_typestore(self._bag.ros1).fielddefs
            event = conn.msgtype.replace("EventArray", "Event")
            for name in (conn.msgtype, event):
                have = ts.fielddefs.get(name)
                if have is None or _fields(have) != _fields(known[name]):
                    raise SourceError(f"{self.name}: {name} in this bag is not the layout this "
                                      f"reader knows (header, height, width, events of x, y, "
                                      f"ts, polarity)")
        return ts

    def _deserialize(self, topic: str, raw: bytes):
        ts = self._stores[topic]
        typ = self._bag.connection(topic).msgtype
        try:
            if self._bag.ros1:
                return ts.deserialize_ros1(raw, typ)
            return ts.deserialize_cdr(raw, typ)
        except Exception as e:  # noqa: BLE001 - damaged message bytes
            where = self._where if topic == self.topic and self._where else \
                f"a {topic} message" + (f" after {self._where}" if self._where else "")
            raise SourceError(f"{self.name}: {where}: cannot deserialize {typ} "
                              f"({_one_line(e)})") from None

    def _first_event_message(self) -> dict:
        for _, raw in self._messages((self.topic,)):
            self._where = f"{self.topic} message 1"
            if self.kind == "array":
                w, h, frame_id, _ = self._parse_array(raw)
                return {"width": w, "height": h, "frame_id": frame_id}
            msg = self._deserialize(self.topic, raw)
            if msg.encoding not in ros_codecs.ENCODINGS:
                raise SourceError(f"{self.name}: {self.topic} has encoding {msg.encoding!r}, "
                                  f"which this reader does not decode (it reads "
                                  f"{', '.join(ros_codecs.ENCODINGS)})")
            return {"width": int(msg.width), "height": int(msg.height),
                    "frame_id": msg.header.frame_id, "encoding": msg.encoding}
        raise SourceError(f"{self.name}: topic {self.topic} has no messages")

    def _first_frame_size(self):
        if self.frame_topic is None:
            return None
        for _, raw in self._messages((self.frame_topic,)):
            msg = self._deserialize(self.frame_topic, raw)
            return int(msg.width), int(msg.height)
        return None

    def _infer_size(self) -> tuple[int, int]:
        mx = my = -1
        for pkt in self._read():
            ev = pkt.events
            if len(ev):
                mx, my = max(mx, int(ev["x"].max())), max(my, int(ev["y"].max()))
        if mx < 0:
            raise SourceError(f"{self.name}: no events to infer the sensor size from; "
                              "give --width/--height")
        return mx + 1, my + 1

    # -- reading -----------------------------------------------------------------------------------
    def _messages(self, topics):
        it = self._bag.messages(topics)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except SourceError:
                raise
            except Exception as e:  # noqa: BLE001 - rosbags failing on damaged storage
                raise SourceError(f"{self.name}: reading the bag failed after "
                                  f"{self._where or 'its start'} ({_one_line(e)})") from None
            yield item

    def _parse_array(self, raw: bytes):
        try:
            return ros_codecs.parse_event_array(raw, self._bag.ros1)
        except ros_codecs.LayoutError as e:
            raise SourceError(f"{self.name}: {self._where}: {e}") from None

    def _read(self):
        decoders: dict[str, object] = {}
        frames: list[Frame] = []
        imu: list[np.ndarray] = []
        k = 0
        wanted = tuple(t for t in (self.topic, self.frame_topic, self.imu_topic) if t)
        for topic, raw in self._messages(wanted):
            if topic == self.topic:
                k += 1
                self._where = f"{self.topic} message {k}"
                for ev, tr in self._decode(raw, decoders):
                    pkt = Packet(events=ev, triggers=tr, frames=frames,
                                 imu=_concat_imu(imu))
                    frames, imu = [], []
                    yield pkt
            elif topic == self.frame_topic:
                f = self._frame(self._deserialize(topic, raw))
                if f is not None:
                    frames.append(f)
            else:
                imu.append(self._imu(self._deserialize(topic, raw)))
            if len(frames) >= SIDE_BATCH or len(imu) >= SIDE_BATCH:
                yield Packet(frames=frames, imu=_concat_imu(imu))
                frames, imu = [], []
        if frames or imu:
            yield Packet(frames=frames, imu=_concat_imu(imu))

    def _decode(self, raw: bytes, decoders: dict):
        """(events, triggers) chunks of one event message, times in microseconds."""
        if self.kind == "array":
            _, _, _, ev = self._parse_array(raw)
            chunks = [(ev[a:a + self.packet_events], np.zeros(0, TRIGGER_DTYPE))
                      for a in range(0, max(len(ev), 1), self.packet_events)]
        else:
            msg = self._deserialize(self.topic, raw)
            enc = msg.encoding
            if enc not in decoders:
                if enc not in ros_codecs.ENCODINGS:
                    raise SourceError(f"{self.name}: {self._where} has encoding {enc!r}, which "
                                      f"this reader does not decode")
                decoders[enc] = ros_codecs.make_decoder(enc)
            payload = np.asarray(msg.events, dtype=np.uint8)
            chunks = decoders[enc].decode(payload, int(msg.time_base), self.packet_events)
        try:
            for ev, tr in chunks:
                ev["t"] //= 1000
                tr["t"] //= 1000
                yield ev, tr
        except ros_codecs.PayloadError as e:
            raise SourceError(f"{self.name}: {self._where}: corrupt {self.encoding} payload at "
                              f"byte {e.offset} of its events: {e}") from None

    def _frame(self, msg) -> Frame | None:
        img = image_array(msg)
        if img is None:
            self._note(f"frames in encoding {msg.encoding!r} skipped (reads mono8, mono16, "
                       "bgr8, rgb8, bgra8, rgba8)")
            return None
        return Frame(t_us=_stamp_us(msg.header.stamp), image=img)

    @staticmethod
    def _imu(msg) -> np.ndarray:
        s = np.zeros(1, IMU_DTYPE)
        s["t"] = _stamp_us(msg.header.stamp)
        a, g = msg.linear_acceleration, msg.angular_velocity
        s["accel"] = np.array([a.x, a.y, a.z]) / GRAVITY
        s["gyro"] = np.degrees(np.array([g.x, g.y, g.z]))
        s["temperature"] = math.nan
        return s

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s: %s", self.name, text)

    def locate(self, i: int) -> str:
        return self._where

    def close(self) -> None:
        self._bag.close()

    def describe(self) -> dict:
        return {**super().describe(), "storage": self._bag.storage, "topic": self.topic,
                "message_type": self.msgtype, "encoding": self.encoding,
                "messages": self.messages, "frame_topic": self.frame_topic,
                "imu_topic": self.imu_topic, "notes": list(self.notes)}


def _fields(fielddef) -> list:
    return [(name.lower(), spec) for name, spec in fielddef[1]]


_DEFAULT_STORES: dict[bool, object] = {}


def default_typestore(ros1: bool = False):
    """event_typestore(ros1), made once per process (the readers and the writer only read it)."""
    if ros1 not in _DEFAULT_STORES:
        _DEFAULT_STORES[ros1] = event_typestore(ros1)
    return _DEFAULT_STORES[ros1]


def _stamp_us(stamp) -> int:
    return (int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)) // 1000


def _concat_imu(rows: list) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros(0, IMU_DTYPE)


def image_array(msg) -> np.ndarray | None:
    """sensor_msgs/Image -> uint8 (H, W) or BGR (H, W, 3); None for an encoding not read."""
    enc = msg.encoding.lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if h == 0 or w == 0 or len(data) < h * step:
        return None
    rows = data[:h * step].reshape(h, step)
    if enc in ("mono8", "8uc1"):
        img = rows[:, :w]
    elif enc in ("mono16", "16uc1"):
        img = (rows[:, :2 * w].view(">u2" if msg.is_bigendian else "<u2") >> 8).astype(np.uint8)
    elif enc in ("bgr8", "8uc3", "rgb8"):
        img = rows[:, :3 * w].reshape(h, w, 3)
        img = img[..., ::-1] if enc == "rgb8" else img
    elif enc in ("bgra8", "rgba8"):
        img = rows[:, :4 * w].reshape(h, w, 4)[..., :3]
        img = img[..., ::-1] if enc == "rgba8" else img
    else:
        return None
    return np.ascontiguousarray(img)


def open_rosbag(path, *, width=None, height=None, bad_events=None, filters=None, stream=None,
                packet_events=None) -> RosbagSource:
    """Open a ROS 1 bag, a ROS 2 bag folder or a ROS 2 .mcap / .db3 file (see the module doc)."""
    return RosbagSource(path, width=width, height=height, bad_events=bad_events, filters=filters,
                        stream=stream, packet_events=packet_events or PACKET_EVENTS)


register_reader((".bag", ".mcap", ".db3"), open_rosbag)
register_folder("metadata.yaml", open_rosbag)
