"""Write a ROS 2 bag of event packets, APS frames and IMU samples, streaming, through `rosbags`.

    with RosbagWriter("out_bag", width=640, height=480, frames=True, imu=True) as w:
        for pkt in source.packets():
            w.write(pkt)

The interface is writer.Aedat4Writer's (`write`, `write_events/frame/imu/triggers`, `close`,
`counts` / `written`, `t_first_us` / `t_last_us`, `bytes`), plus `dropped` / `drop_reasons`
(given to the writer, not in the bag: a trigger type EVT 3.0 has no word for, a trigger later
than the events already written, a stream the writer was opened without) and `abort()`.

What the bag holds (ROS 2, serialization cdr, metadata version 8):
- `<prefix>/events`: event_camera_msgs/msg/EventPacket, encoding "evt3": one message per
  `packet_us` (1 ms) of events, or `max_message_events` events, whichever comes first. The
  words are one EVT 3.0 stream across messages (the encoder state goes on from message to
  message, as a camera's does), so a decoder must read the topic from its first message. EVT
  3.0 counts 24-bit microseconds: `time_base` (ns) holds the part of the first time above those
  24 bits, the words the rest (and its wraps); readers add the two ("event ros time = time_base
  + decoded event time"). Triggers are EXT_TRIGGER words in the same stream (channel 0): dv
  TriggerType 1 (rising) and 2 (falling) only; others are dropped and counted. The header stamp
  is the message's first time, the bag's receive time its last; frame_id is `camera`. Every
  TIME_HIGH is followed by a TIME_LOW (`low_after_high`), so the ROS decoder, which keeps
  TIME_LOW across TIME_HIGH words, reads the same times (modulo 2^24 us: it ignores time_base).
- `<prefix>/image_raw`: sensor_msgs/msg/Image, mono8 for (H, W) uint8 frames, bgr8 for
  (H, W, 3), mono16 for uint16; stamp = the frame time (the exposure is not in the message).
- `<prefix>/imu`: sensor_msgs/msg/Imu, one message per sample: m/s^2 (g * 9.81, as the
  iniVation ROS drivers) and rad/s; no orientation (orientation_covariance[0] = -1, REP 145);
  the temperature is not in the message.
Times must be >= 0 (ROS time) and each stream in time order (one-line errors otherwise).

Storage: sqlite3 into a bag folder (the default), mcap with `storage="mcap"`, or a single
`.mcap` file when the path ends in ".mcap" (written in a hidden folder beside it and moved into
place by close()). An existing non-empty folder is refused; an empty one is used. Memory stays
bounded: events wait at most `packet_us` (or, when write_events is called on its own with
triggers on, TRIGGER_LAG_US, so triggers given after them still fit in) before they go to the
bag; frames and IMU samples go at once. rosbags writes the sqlite3 bag in one transaction and the
mcap summary at close(): the bag is complete (and readable) only after close(), which an
exception inside the `with` still calls.
"""

from __future__ import annotations

import os
import secrets
import shutil

import numpy as np

from evstream.errors import EvstreamError
from evstream.sources import evt_codec as codec
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet, concat_events

PACKET_US = 1000
MAX_MESSAGE_EVENTS = 1 << 16
TRIGGER_LAG_US = 100_000
EVT3_TRIGGER_TYPES = (1, 2)
GRAVITY = 9.81
STREAMS = ("events", "frames", "imu", "triggers")


class RosbagWriter:
    def __init__(self, path, *, width: int, height: int, camera: str = "evstream",
                 frames: bool = False, imu: bool = False, triggers: bool = False,
                 frame_size: tuple[int, int] | None = None, storage: str | None = None,
                 topic_prefix: str = "/event_camera", packet_us: int = PACKET_US,
                 max_message_events: int = MAX_MESSAGE_EVENTS):
        self.path = os.fspath(path)
        self.single_file = self.path.lower().endswith(".mcap")
        storage = storage or ("mcap" if self.single_file else "sqlite3")
        if storage not in ("sqlite3", "mcap"):
            raise EvstreamError(f"{self.path}: storage must be sqlite3 or mcap, not {storage!r}")
        if self.single_file and storage != "mcap":
            raise EvstreamError(f"{self.path}: a .mcap file holds mcap storage, not {storage}")
        self.storage = storage
        if int(width) <= 0 or int(height) <= 0:
            raise EvstreamError(f"{self.path}: bad resolution {width}x{height}")
        if int(width) > 2048 or int(height) > 2048:
            raise EvstreamError(f"{self.path}: a {width}x{height} sensor does not fit EVT 3.0 "
                                "(11-bit x and y: at most 2048x2048)")
        self.width, self.height, self.camera = int(width), int(height), camera
        self.frame_size = tuple(frame_size) if frame_size else (self.width, self.height)
        self.has = {"frames": bool(frames), "imu": bool(imu), "triggers": bool(triggers)}
        self.packet_us = max(int(packet_us), 1)
        self.max_message_events = max(int(max_message_events), 1)
        self.counts = dict.fromkeys(STREAMS, 0)      # what the bag holds, once closed
        self.written = dict.fromkeys(STREAMS, 0)     # already handed to the bag's storage
        self.dropped = dict.fromkeys(STREAMS, 0)     # given, but not in the bag
        self.drop_reasons: dict[str, str] = {}
        self.t_first_us: int | None = None
        self.t_last_us: int | None = None
        self.bytes = 0
        self.peak_buffered = 0
        self._last = dict.fromkeys(STREAMS)          # newest time given, per stream
        self._pending: list[np.ndarray] = []         # events not yet in a message
        self._n_pending = 0
        self._held = np.zeros(0, TRIGGER_DTYPE)      # triggers not yet in a message
        self._flushed_to = None                      # messages hold everything before this
        self._enc = codec.new_encoder_state()
        self._base_us: int | None = None             # time_base, us (a multiple of 2^24)
        self._seq = 0
        self._closed = False
        self._bag = None
        self._target = self._check_target()
        self._open(topic_prefix.rstrip("/"))

    # -- opening ---------------------------------------------------------------------------------
    def _check_target(self) -> str:
        """The folder rosbags writes into (checked here so a bad path is one line)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise EvstreamError(f"{self.path}: folder {folder} does not exist")
        if self.single_file:
            if os.path.isdir(self.path):
                raise EvstreamError(f"{self.path}: is a directory")
            name = os.path.basename(self.path)[:-len(".mcap")]
            return os.path.join(folder, f".{name}.evstream-{secrets.token_hex(4)}")
        if os.path.isdir(self.path):
            if os.listdir(self.path):
                raise EvstreamError(f"{self.path}: folder exists and is not empty (a ROS 2 bag "
                                    "is written into a new folder)")
            try:
                os.rmdir(self.path)       # rosbags makes the folder itself
            except OSError as e:
                raise EvstreamError(f"{self.path}: cannot use this folder ({e.strerror})") from None
        elif os.path.exists(self.path):
            raise EvstreamError(f"{self.path}: exists and is not a folder (a ROS 2 bag is a "
                                "folder)")
        return self.path

    def _open(self, prefix: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        from evstream.sources.rosbag import default_typestore

        self._ts = default_typestore()
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._bag = Writer(self._target, version=8, storage_plugin=plugin)
            self._bag.open()
            add = self._bag.add_connection
            self._topics = {"events": add(f"{prefix}/events", "event_camera_msgs/msg/EventPacket",
                                          typestore=self._ts)}
            if self.has["frames"]:
                self._topics["frames"] = add(f"{prefix}/image_raw", "sensor_msgs/msg/Image",
                                             typestore=self._ts)
            if self.has["imu"]:
                self._topics["imu"] = add(f"{prefix}/imu", "sensor_msgs/msg/Imu",
                                          typestore=self._ts)
        except OSError as e:
            self._fail()
            raise EvstreamError(f"{self.path}: cannot create ({e.strerror})") from None
        except Exception as e:  # noqa: BLE001 - rosbags' WriterError and friends
            self._fail()
            raise EvstreamError(f"{self.path}: cannot create ({' '.join(str(e).split())})") \
                from None
        t = self._ts.types
        self._Time, self._Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]

    def _fail(self) -> None:
        self._closed = True
        if self._bag is not None and self._bag.storage is not None:
            try:
                self._bag.abort()
            except Exception:  # noqa: BLE001 - already failing
                pass
        self._bag = None
        if self.single_file or os.path.isdir(self._target):
            shutil.rmtree(self._target, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------------
    def write(self, packet: Packet) -> None:
        """Events, frames, IMU samples and triggers of one packet; its events and triggers go
        into messages up to the packet's newest time (later packets start there)."""
        self._check_open()
        self._add_events(packet.events)
        for f in packet.frames:
            self.write_frame(f)
        if len(packet.imu):
            self.write_imu(packet.imu)
        self._add_triggers(packet.triggers)
        newest = [int(a["t"][-1]) for a in (packet.events, packet.triggers) if len(a)]
        if newest:
            self._flush(max(newest))

    def write_events(self, ev: np.ndarray) -> None:
        self._check_open()
        self._add_events(ev)
        if len(ev):
            lag = TRIGGER_LAG_US if self.has["triggers"] else 0
            self._flush(int(ev["t"][-1]) - lag)

    def write_triggers(self, triggers: np.ndarray) -> None:
        self._check_open()
        self._add_triggers(triggers)

    def write_frame(self, frame: Frame) -> None:
        self._check_open()
        if not self.has["frames"]:
            self._drop("frames", 1, "the writer was opened without frames")
            return
        self._in_order("frames", frame.t_us, frame.t_us)
        img = np.asarray(frame.image)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.dtype == np.uint8 and img.ndim == 2:
            enc, step = "mono8", img.shape[1]
        elif img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
            enc, step = "bgr8", 3 * img.shape[1]
        elif img.dtype == np.uint16 and img.ndim == 2:
            enc, step = "mono16", 2 * img.shape[1]
            img = img.astype("<u2")
        else:
            raise EvstreamError(f"{self.path}: frame at t={frame.t_us} us is {img.dtype} "
                                f"{img.shape}; writes uint8 (H, W) / (H, W, 3) or uint16 (H, W)")
        t = self._ts.types
        msg = t["sensor_msgs/msg/Image"](
            header=self._header(frame.t_us * 1000), height=img.shape[0], width=img.shape[1],
            encoding=enc, is_bigendian=0, step=step,
            data=np.ascontiguousarray(img).reshape(-1).view(np.uint8))
        self._put("frames", msg, "sensor_msgs/msg/Image", frame.t_us * 1000, 1)
        self.counts["frames"] += 1

    def write_imu(self, imu: np.ndarray) -> None:
        self._check_open()
        if not len(imu):
            return
        if not self.has["imu"]:
            self._drop("imu", len(imu), "the writer was opened without IMU")
            return
        if imu.dtype != IMU_DTYPE:
            raise TypeError(f"write_imu needs IMU_DTYPE samples, not {imu.dtype}")
        self._in_order("imu", int(imu["t"][0]), int(imu["t"][-1]))
        t = self._ts.types
        Imu, Vec, Quat = (t["sensor_msgs/msg/Imu"], t["geometry_msgs/msg/Vector3"],
                          t["geometry_msgs/msg/Quaternion"])
        no_orientation = np.zeros(9)
        no_orientation[0] = -1.0
        acc = imu["accel"].astype(np.float64) * GRAVITY
        gyr = np.radians(imu["gyro"].astype(np.float64))
        for k in range(len(imu)):
            ts_ns = int(imu["t"][k]) * 1000
            msg = Imu(header=self._header(ts_ns), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0),
                      orientation_covariance=no_orientation,
                      angular_velocity=Vec(x=float(gyr[k, 0]), y=float(gyr[k, 1]),
                                           z=float(gyr[k, 2])),
                      angular_velocity_covariance=np.zeros(9),
                      linear_acceleration=Vec(x=float(acc[k, 0]), y=float(acc[k, 1]),
                                              z=float(acc[k, 2])),
                      linear_acceleration_covariance=np.zeros(9))
            self._put("imu", msg, "sensor_msgs/msg/Imu", ts_ns, 1)
        self.counts["imu"] += len(imu)

    # -- events and triggers: one EVT 3.0 stream -------------------------------------------------
    def _add_events(self, ev: np.ndarray) -> None:
        if not len(ev):
            return
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"write_events needs EVENT_DTYPE events, not {ev.dtype}")
        t = ev["t"]
        if bool(np.any(t[1:] < t[:-1])):
            i = int(np.flatnonzero(t[1:] < t[:-1])[0]) + 1
            raise EvstreamError(f"{self.path}: events out of time order at t={int(t[i])} us "
                                f"(after t={int(t[i - 1])} us)")
        self._in_order("events", int(t[0]), int(t[-1]))
        out = np.flatnonzero((ev["x"] >= self.width) | (ev["y"] >= self.height))
        if len(out):
            e = ev[int(out[0])]
            raise EvstreamError(f"{self.path}: event at t={int(e['t'])} us (x={int(e['x'])}, "
                                f"y={int(e['y'])}) is outside the {self.width}x{self.height} "
                                "sensor")
        self._pending.append(ev)
        self._n_pending += len(ev)
        self.peak_buffered = max(self.peak_buffered, self._n_pending)
        self.counts["events"] += len(ev)
        if self.t_first_us is None:
            self.t_first_us = int(t[0])
        self.t_last_us = int(t[-1])

    def _add_triggers(self, tr: np.ndarray) -> None:
        if not len(tr):
            return
        if not self.has["triggers"]:
            self._drop("triggers", len(tr), "the writer was opened without triggers")
            return
        if tr.dtype != TRIGGER_DTYPE:
            raise TypeError(f"write_triggers needs TRIGGER_DTYPE triggers, not {tr.dtype}")
        tr = tr[np.argsort(tr["t"], kind="stable")]
        if int(tr["t"][0]) < 0:
            raise EvstreamError(f"{self.path}: trigger at t={int(tr['t'][0])} us: ROS times are "
                                ">= 0")
        ok = np.isin(tr["type"], EVT3_TRIGGER_TYPES)
        self._drop("triggers", len(tr) - int(ok.sum()), "EVT 3.0 triggers are external edges "
                   "only (dv TriggerType 1 rising, 2 falling)")
        tr = tr[ok]
        if self._flushed_to is not None:
            late = tr["t"] < self._flushed_to
            self._drop("triggers", int(late.sum()), "came after later events had been written "
                       "(the events topic is one time-ordered EVT 3.0 stream)")
            tr = tr[~late]
        if len(tr):
            held = np.concatenate((self._held, tr))
            self._held = held[np.argsort(held["t"], kind="stable")]
            self.counts["triggers"] += len(tr)

    def _flush(self, upto: int | None) -> None:
        """Write the messages whose time window is complete: every item before `upto` has
        been given (None: everything, at close)."""
        ev = self._pending[0] if len(self._pending) == 1 else concat_events(self._pending)
        tr = self._held
        i = j = 0
        while i < len(ev) or j < len(tr):
            start = min(int(ev["t"][i]) if i < len(ev) else np.iinfo(np.int64).max,
                        int(tr["t"][j]) if j < len(tr) else np.iinfo(np.int64).max)
            end = start + self.packet_us
            i2 = i + int(np.searchsorted(ev["t"][i:], end, "left"))
            full = i2 - i >= self.max_message_events
            if full:
                i2 = i + self.max_message_events
                end = int(ev["t"][i2 - 1]) + 1
            elif upto is not None and end > upto:
                break                                   # more may come before `end`
            j2 = j + int(np.searchsorted(tr["t"][j:], end, "left"))
            self._message(ev[i:i2], tr[j:j2])
            i, j = i2, j2
            self._flushed_to = end if upto is None else min(end, upto)
        rest = ev[i:]
        self._pending = [rest] if len(rest) else []
        self._n_pending = len(rest)
        self._held = tr[j:]

    def _message(self, ev: np.ndarray, tr: np.ndarray) -> None:
        t0 = min(int(a["t"][0]) for a in (ev, tr) if len(a))
        t1 = max(int(a["t"][-1]) for a in (ev, tr) if len(a))
        if t0 < 0:
            raise EvstreamError(f"{self.path}: event at t={t0} us: ROS times are >= 0")
        if self._base_us is None:
            self._base_us = (t0 >> 24) << 24
        base, state = self._base_us, self._enc
        prev = int(state[codec.ENC_HIGH])
        cap = 4 * (len(ev) + len(tr)) + ((t1 - base) >> 12) // 2047 \
            - max(prev, 0) // 2047 + 8
        out = np.empty(max(cap, 16), dtype="<u2")
        k = codec.encode_evt3(ev["t"] - base, ev["x"], ev["y"], ev["p"], tr["t"] - base,
                              tr["type"], out, state)
        msg = self._ts.types["event_camera_msgs/msg/EventPacket"](
            header=self._header(t0 * 1000), height=self.height, width=self.width, seq=self._seq,
            time_base=base * 1000, encoding="evt3", is_bigendian=False,
            events=low_after_high(out[:k]).view(np.uint8))
        self._seq += 1
        self._put("events", msg, "event_camera_msgs/msg/EventPacket", t1 * 1000, 0)
        self.written["events"] += len(ev)
        self.written["triggers"] += len(tr)

    # -- finishing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is held back and finish the bag (safe to call twice)."""
        if self._closed:
            return
        try:
            self._flush(None)
        except BaseException:
            self._finish()
            raise
        self._finish()

    def _finish(self) -> None:
        self._closed = True
        bag, self._bag = self._bag, None
        try:
            bag.close()
        except OSError as e:
            raise EvstreamError(f"{self.path}: cannot finish the bag ({e.strerror})") from None
        if self.single_file:
            name = os.path.basename(self._target)
            try:
                os.replace(os.path.join(self._target, f"{name}.mcap"), self.path)
            except OSError as e:
                raise EvstreamError(f"{self.path}: cannot move the finished bag into place "
                                    f"({e.strerror})") from None
            finally:
                shutil.rmtree(self._target, ignore_errors=True)
            self.bytes = os.path.getsize(self.path)
        else:
            self.bytes = sum(e.stat().st_size for e in os.scandir(self.path) if e.is_file())

    def abort(self) -> None:
        """Drop the bag: what was written is removed."""
        if self._closed:
            return
        self._fail()
        if not self.single_file:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    # -- helpers ---------------------------------------------------------------------------------
    def _header(self, t_ns: int):
        if t_ns < 0:
            raise EvstreamError(f"{self.path}: t={t_ns // 1000} us: ROS times are >= 0")
        return self._Header(stamp=self._Time(sec=t_ns // 1_000_000_000,
                                             nanosec=t_ns % 1_000_000_000),
                            frame_id=self.camera)

    def _put(self, stream: str, msg, msgtype: str, t_ns: int, n: int) -> None:
        try:
            data = self._ts.serialize_cdr(msg, msgtype)
            self._bag.write(self._topics[stream], t_ns, data)
        except OSError as e:
            raise EvstreamError(f"{self.path}: writing {stream} failed ({e.strerror})") from None
        self.written[stream] += n

    def _drop(self, stream: str, n: int, reason: str) -> None:
        if n:
            self.dropped[stream] += int(n)
            self.drop_reasons.setdefault(stream, reason)

    def _in_order(self, stream: str, t0: int, t1: int) -> None:
        last = self._last[stream]
        if (last is not None and t0 < last) or t1 < t0:
            raise EvstreamError(f"{self.path}: {stream} out of time order (t={t0} us after "
                                f"t={last} us); each stream is written in time order")
        if t0 < 0:
            raise EvstreamError(f"{self.path}: {stream} at t={t0} us: ROS times are >= 0")
        self._last[stream] = t1

    def _check_open(self) -> None:
        if self._closed:
            raise EvstreamError(f"{self.path}: writer is closed")


def low_after_high(words: np.ndarray) -> np.ndarray:
    """EVT 3.0 words with a TIME_LOW 0 after every TIME_HIGH that no TIME_LOW (or TIME_HIGH)
    follows. evt_codec's encoder leaves it out where the time's low bits are 0, since its
    decoder resets TIME_LOW when TIME_HIGH changes; the ROS decoder (event_camera_codecs) keeps
    the old TIME_LOW instead, and starts only at a TIME_LOW after the first TIME_HIGH. With the
    word both read the same times."""
    kind = words >> 12
    nxt = np.append(kind[1:], -1)
    at = np.flatnonzero((kind == 0x8) & (nxt != 0x6) & (nxt != 0x8))
    return np.insert(words, at + 1, np.uint16(0x6000)) if len(at) else words
