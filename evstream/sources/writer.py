"""Write .aedat4 recordings (LZ4) with dv-processing 2.0.4's MonoCameraWriter.

    with Aedat4Writer("out.aedat4", width=346, height=260, frames=True, imu=True) as w:
        for pkt in source.packets():
            w.write(pkt)

Contracts:
- Atomic: everything goes to a hidden temp file beside the target (".NAME.evstream-XXXX.aedat4")
  that is renamed onto the target only by a successful close(). An exception inside the `with`,
  or abort(), removes the temp file: a half-written recording never appears under the target
  name, and an existing file there is untouched until the rename.
- Each stream must be written in time order (dv refuses otherwise; so do we, with a one-line
  error). Streams are independent: events are buffered (FLUSH_EVENTS) and may land in the file
  after frames/IMU/triggers of the same time, which AEDAT4 readers handle.
- Frames/IMU/triggers are written only when the writer was created with frames/imu/triggers.
- Errors are EvstreamError (one line, naming the file).

Getting numpy events into dv. dv 2.0.4 has no numpy -> EventStore constructor; what its Python
binding offers is per event. Measured on this project's 2-core machine, 10 M random events,
end to end into an LZ4 file (tools/bench/io.py --write reproduces them):
    EventStore.push_back(t, x, y, p) loop               1.1-2.3 M ev/s conversion
    EventStore.push_back((t, x, y, p)) loop             3.2-4.0 M ev/s conversion, ~3.3 end to end
    EventPacket(EventVector([dv.Event(...)...]))         1.5-1.7 M ev/s conversion
    uncompressed AEDAT4 bytes -> dv's own reader        38-70 M ev/s conversion, 11-14 end to end
    dv EventStore straight from a dv source              16-19 M ev/s (dv's LZ4 writer alone)
So events are converted by writing them, as the format's raw EventPacket flatbuffers, into a
small uncompressed AEDAT4 scratch file that dv's reader turns back into native EventStores
(`_ScratchConverter`); dv's LZ4 writer is then the bottleneck. Events that came from a dv
source keep their EventStore (remember_dv_store / dv_store_of) and are written as they are.

dv 2.0.4 bugs worked around here (each shown by a test in tests/test_aedat4.py):
- writeEvents(store) of a sliced EventStore (slice/sliceTime) writes the whole underlying
  packet, not the slice: only whole stores are ever passed to it (remember_dv_store takes
  whole stores only; the scratch reader yields whole packets).
- MonoCameraWriter on a path that does not end in ".aedat4" calls std::terminate (the process
  aborts, no exception): the target and the temp names are checked to end in ".aedat4".
"""

from __future__ import annotations

import os
import secrets
import struct
import tempfile
import weakref
from datetime import timedelta

import numpy as np

from evstream.errors import EvstreamError
from evstream.types import EVENT_DTYPE, Frame, Packet

FLUSH_EVENTS = 1 << 18          # numpy events buffered before one conversion + write
SCRATCH_PACKET_EVENTS = 1 << 16  # events per EventPacket in the scratch file


# -- dv EventStores that travel with our event arrays ----------------------------------------

_DV_STORES: dict[int, tuple[weakref.ref, object]] = {}


def remember_dv_store(events: np.ndarray, store) -> None:
    """Note that `events` is a view of the WHOLE dv EventStore `store` (not a slice of one), so
    a writer can write the store itself. Forgotten when the array is garbage-collected."""
    key = id(events)
    _DV_STORES[key] = (weakref.ref(events, lambda _r, k=key: _DV_STORES.pop(k, None)), store)


def dv_store_of(events: np.ndarray):
    """The dv EventStore remembered for exactly this array (same object, same length), or None."""
    hit = _DV_STORES.get(id(events))
    if hit is None or hit[0]() is not events or len(hit[1]) != len(events):
        return None
    return hit[1]


# -- numpy -> dv EventStores through an uncompressed AEDAT4 scratch file ---------------------

def _io_header(xml: bytes) -> bytes:
    """IOHeader flatbuffer: compression NONE, no packet table, the stream-list XML."""
    out = bytearray(struct.pack("<I4s", 20, b"IOHE"))               # root table at 20
    out += struct.pack("<5H2x", 10, 20, 4, 12, 8)                    # vtable: 3 fields
    out += struct.pack("<iiIq", 20 - 8, 0, 40 - 28, -1)              # table at 20, 8-aligned i64
    out += struct.pack("<I", len(xml)) + xml + b"\0"                 # string at 40
    out += bytes(-len(out) % 8)
    return bytes(out)


def _event_packet_head(n: int) -> bytes:
    """The 32 bytes before n 16-byte Event structs in a size-prefixed "EVTS" flatbuffer."""
    return struct.pack("<II4s2x3HiII", 28 + 16 * n, 16, b"EVTS", 6, 8, 4, 6, 4, n)


def stream_xml(streams: list[tuple[str, str, tuple[int, int] | None]], camera: str,
               compression: str) -> str:
    """The outInfo XML for [(name, typeIdentifier, size or None)] streams of one camera."""
    nodes = []
    for i, (name, type_id, size) in enumerate(streams):
        info = f'<attr key="source" type="string">{_xml_text(camera)}</attr>'
        if size:
            info = (f'<attr key="sizeX" type="int">{size[0]}</attr>'
                    f'<attr key="sizeY" type="int">{size[1]}</attr>') + info
        nodes.append(
            f'<node name="{i}" path="/outInfo/{i}/">'
            f'<attr key="compression" type="string">{compression}</attr>'
            f'<attr key="originalModuleName" type="string">evstream</attr>'
            f'<attr key="originalOutputName" type="string">{name}</attr>'
            f'<attr key="typeDescription" type="string">{name}</attr>'
            f'<attr key="typeIdentifier" type="string">{type_id}</attr>'
            f'<node name="info" path="/outInfo/{i}/info/">{info}</node></node>')
    return ('<dv version="2.0"><node name="outInfo" path="/outInfo/">' + "".join(nodes)
            + "</node></dv>")


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _zero_padding(ev: np.ndarray) -> np.ndarray:
    """The 16-byte records of `ev` as a new (n, 16) uint8 array with the 3 padding bytes after
    the polarity zeroed. dv copies records byte for byte, padding included, into the file it
    compresses; arrays made by np.empty or by dv's .numpy() carry whatever memory held there,
    which made the same events compress to files up to 27 % apart (a flaky size check in
    tests/test_aedat4.py) and the output not reproducible."""
    rec = np.ascontiguousarray(ev).view(np.uint8).reshape(-1, EVENT_DTYPE.itemsize).copy()
    rec[:, EVENT_DTYPE.fields["p"][1] + 1:] = 0
    return rec


class _ScratchConverter:
    """EVENT_DTYPE arrays -> whole dv EventStores, via one reusable scratch .aedat4 file."""

    def __init__(self, width: int, height: int):
        fd, self.path = tempfile.mkstemp(prefix="evstream-scratch-", suffix=".aedat4")
        os.close(fd)
        xml = stream_xml([("events", "EVTS", (width, height))], "scratch", "NONE").encode()
        header = _io_header(xml)
        self.header = b"#!AER-DAT4.0\r\n" + struct.pack("<i", len(header)) + header

    def stores(self, ev: np.ndarray):
        import dv_processing as dv

        p = ev["p"]
        if len(ev) and (int(p.min()) < 0 or int(p.max()) > 1):
            ev = ev.copy()
            ev["p"] = p != 0
        with open(self.path, "wb") as f:
            f.write(self.header)
            for i in range(0, len(ev), SCRATCH_PACKET_EVENTS):
                part = _zero_padding(ev[i:i + SCRATCH_PACKET_EVENTS])
                f.write(struct.pack("<ii", 0, 32 + 16 * len(part)))
                f.write(_event_packet_head(len(part)))
                f.write(memoryview(part).cast("B"))
        rec = dv.io.MonoCameraRecording(self.path)
        while (store := rec.getNextEventBatch()) is not None:
            yield store

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def numpy_to_store(ev: np.ndarray):
    """One EVENT_DTYPE array -> one dv.EventStore (for callers that need a store, e.g. tests
    and dv's noise filters); uses the scratch-file path."""
    import dv_processing as dv

    conv = _ScratchConverter(1, 1)
    try:
        out = dv.EventStore()
        for store in conv.stores(ev):
            out.add(store)
        return out
    finally:
        conv.close()


# -- the writer ---------------------------------------------------------------------------------

def _us(td) -> int:
    return int(td / timedelta(microseconds=1)) if isinstance(td, timedelta) else int(td)


class Aedat4Writer:
    def __init__(self, path, *, width: int, height: int, camera: str = "evstream",
                 frames: bool = False, imu: bool = False, triggers: bool = False,
                 frame_size: tuple[int, int] | None = None):
        import dv_processing as dv

        self.path = os.fspath(path)
        if not self.path.lower().endswith(".aedat4"):
            raise EvstreamError(f"{self.path}: an AEDAT 4.0 recording must end in .aedat4")
        if width <= 0 or height <= 0:
            raise EvstreamError(f"{self.path}: bad resolution {width}x{height}")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise EvstreamError(f"{self.path}: folder {folder} does not exist")
        if os.path.isdir(self.path):
            raise EvstreamError(f"{self.path}: is a directory")
        stem = os.path.basename(self.path)[:-len(".aedat4")]
        self.tmp_path = os.path.join(folder, f".{stem}.evstream-{secrets.token_hex(4)}.aedat4")
        self.width, self.height, self.camera = int(width), int(height), camera
        self.frame_size = tuple(frame_size) if frame_size else (self.width, self.height)
        self.has = {"frames": frames, "imu": imu, "triggers": triggers}
        cfg = dv.io.MonoCameraWriter.Config(camera, dv.CompressionType.LZ4)
        cfg.addEventStream((self.width, self.height))
        if frames:
            cfg.addFrameStream(self.frame_size)
        if imu:
            cfg.addImuStream()
        if triggers:
            cfg.addTriggerStream()
        self.counts = {"events": 0, "frames": 0, "imu": 0, "triggers": 0}
        self.t_first_us: int | None = None
        self.t_last_us: int | None = None
        self.bytes = 0
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._last = {"events": None, "frames": None, "imu": None, "triggers": None}
        self._conv: _ScratchConverter | None = None
        self._closed = False
        try:
            self._w = dv.io.MonoCameraWriter(self.tmp_path, cfg)
        except Exception as e:  # noqa: BLE001
            raise EvstreamError(f"{self.path}: cannot create ({_one_line(e)})") from None

    # -- writing ---------------------------------------------------------------------------
    def write(self, packet: Packet) -> None:
        self.write_events(packet.events)
        for f in packet.frames:
            self.write_frame(f)
        if len(packet.imu):
            self.write_imu(packet.imu)
        if len(packet.triggers):
            self.write_triggers(packet.triggers)

    def write_events(self, ev: np.ndarray) -> None:
        self._check_open()
        if len(ev) == 0:
            return
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"write_events needs EVENT_DTYPE events, not {ev.dtype}")
        self._in_order("events", int(ev["t"][0]), int(ev["t"][-1]))
        store = dv_store_of(ev)
        if store is not None:
            self._flush()
            self._dv("events", self._w.writeEvents, store)
        else:
            self._pending.append(ev)
            self._n_pending += len(ev)
            if self._n_pending >= FLUSH_EVENTS:
                self._flush()
        self.counts["events"] += len(ev)
        if self.t_first_us is None:
            self.t_first_us = int(ev["t"][0])
        self.t_last_us = int(ev["t"][-1])

    def write_frame(self, frame: Frame) -> None:
        import dv_processing as dv

        self._check_open()
        if not self.has["frames"]:
            return
        self._in_order("frames", frame.t_us, frame.t_us)
        image = np.ascontiguousarray(frame.image)
        dvf = dv.Frame(int(frame.t_us), int(frame.exposure_us), 0, 0, image,
                       dv.FrameSource.UNDEFINED)
        self._dv("frames", self._w.writeFrame, dvf)
        self.counts["frames"] += 1

    def write_imu(self, imu: np.ndarray) -> None:
        import dv_processing as dv

        self._check_open()
        if not self.has["imu"] or not len(imu):
            return
        self._in_order("imu", int(imu["t"][0]), int(imu["t"][-1]))
        vec = dv.IMUPacket.ImuVector([
            dv.IMU(int(s["t"]), float(s["temperature"]), *map(float, s["accel"]),
                   *map(float, s["gyro"]), 0.0, 0.0, 0.0) for s in imu])
        self._dv("imu", self._w.writeImuPacket, dv.IMUPacket(vec))
        self.counts["imu"] += len(imu)

    def write_triggers(self, triggers: np.ndarray) -> None:
        import dv_processing as dv

        self._check_open()
        if not self.has["triggers"] or not len(triggers):
            return
        self._in_order("triggers", int(triggers["t"][0]), int(triggers["t"][-1]))
        vec = dv.TriggerPacket.TriggersVector([
            dv.Trigger(int(t), dv.TriggerType(int(k))) for t, k in
            zip(triggers["t"].tolist(), triggers["type"].tolist())])
        self._dv("triggers", self._w.writeTriggerPacket, dv.TriggerPacket(vec))
        self.counts["triggers"] += len(triggers)

    # -- finishing -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, finalise and move the file into place. Safe to call twice."""
        if self._closed:
            return
        try:
            self._flush()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._release()
        try:
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self._remove_tmp()
            raise EvstreamError(f"{self.path}: cannot move the finished recording into place "
                                f"({e.strerror})") from None
        self.bytes = os.path.getsize(self.path)

    def abort(self) -> None:
        """Drop everything written so far; the target is left as it was."""
        self._closed = True
        self._pending.clear()
        self._release()
        self._remove_tmp()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- helpers ---------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self._pending:
            return
        ev = self._pending[0] if len(self._pending) == 1 else \
            np.concatenate(self._pending, dtype=EVENT_DTYPE)
        self._pending, self._n_pending = [], 0
        if self._conv is None:
            self._conv = _ScratchConverter(self.width, self.height)
        try:
            for store in self._conv.stores(ev):
                self._dv("events", self._w.writeEvents, store)
        except EvstreamError:
            raise
        except Exception as e:  # noqa: BLE001 - the scratch round trip failing is a bug
            raise RuntimeError(f"numpy -> dv event conversion failed: {_one_line(e)}") from e

    def _dv(self, stream: str, fn, obj) -> None:
        try:
            fn(obj)
        except Exception as e:  # noqa: BLE001
            raise EvstreamError(f"{self.path}: writing {stream} failed "
                                f"({_one_line(e)})") from None

    def _in_order(self, stream: str, t0: int, t1: int) -> None:
        last = self._last[stream]
        if (last is not None and t0 < last) or t1 < t0:
            raise EvstreamError(f"{self.path}: {stream} out of time order (t={t0} us after "
                                f"t={last} us); AEDAT4 streams are written in time order")
        self._last[stream] = t1

    def _check_open(self) -> None:
        if self._closed:
            raise EvstreamError(f"{self.path}: writer is closed")

    def _release(self) -> None:
        # dv finalises the file (packet table, header) when the writer object is destroyed
        self._w = None
        if self._conv is not None:
            self._conv.close()
            self._conv = None

    def _remove_tmp(self) -> None:
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __del__(self):
        if not getattr(self, "_closed", True):
            self.abort()


def _one_line(e: BaseException) -> str:
    from evstream.sources.recording import dv_message

    return dv_message(e)
