"""Write .aedat4 recordings (LZ4) with dv-processing 2.0.4's MonoCameraWriter.

    with Aedat4Writer("out.aedat4", width=346, height=260, frames=True, imu=True) as w:
        for pkt in source.packets():
            w.write(pkt)

Two ways to write, chosen by `atomic`:
- Streaming (the default; `evstream record`, `run --record`): the recording is written straight
  to its name as it goes, so a SIGKILL, a crash or a power cut leaves a file that dv-processing
  and evstream read up to about a second before it stopped. An existing file there is replaced
  (the commands refuse one unless --force). close() finishes the file (packet table, header)
  and fsyncs it; an exception inside the `with` does the same, so what was recorded is kept;
  abort() removes the file.
- Atomic (`atomic=True`; datasets, benchmarks): everything goes to a hidden temp file beside
  the target (".NAME.evstream-XXXX.aedat4") that only a successful close() renames onto the
  target. An exception inside the `with`, or abort(), removes the temp file: a half-written
  file never appears under the target name, and an existing file there is untouched until the
  rename.

What dv-processing 2.0.4 puts on disk, and when (measured; tests/test_record.py and
tests/test_aedat4.py hold it):
- The header goes out when the writer is created, with the packet-table position -1; the table
  and a second header write (with its position) only when the writer is destroyed. A file whose
  header says -1 is read by dv (and by aedat4_check) by walking the packet headers, and a
  packet cut short at the end of such a file is skipped: so a file killed mid-write is readable,
  while a finished file cut short is not (its header points past the end; `evstream repair`).
- Packets are compressed in the calling thread and queued to a write thread that busy-polls its
  queue (it keeps one core at ~100% for as long as the writer is open, idle or not) and writes
  through a C stdio FILE with a 64 KiB buffer, flushed only when full and at close. Nothing in
  the Python binding flushes it: at 10 kev/s that buffer alone would hold the last second or
  more of a recording.
So in streaming mode a flusher thread, every SYNC_S, hands numpy events that have waited
FLUSH_S to dv (when write() has not), calls libc's fflush(NULL) (glibc locks each stream, so
this is safe beside dv's thread; dv's FILE is one of them) and fdatasync()s the file through a
descriptor of our own. An event handed to write() reaches the disk within about
FLUSH_S + SYNC_S (0.5 s) as long as dv's thread keeps up.

Contracts (both ways):
- Each stream must be written in time order (dv refuses otherwise; so do we, with a one-line
  error). Streams are independent: events are buffered (FLUSH_EVENTS, or FLUSH_S of wall time
  when streaming) and may land in the file after frames/IMU/triggers of the same time, which
  AEDAT4 readers handle.
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
source keep their EventStore (dv_shared.remember_dv_store / dv_store_of) and are written as
they are.

A full disk: dv 2.0.4's write thread calls std::terminate when a write fails, which kills the
process with nothing said; so every write first checks that ROOM_BYTES stay free (`_room`) and
otherwise stops with a one-line error, leaving a recording that ends there.

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
import threading
import time
from datetime import timedelta

import numpy as np

from evstream.errors import EvstreamError
from evstream.outpaths import free_bytes
from evstream.sources.dv_shared import dv_message, dv_store_of
from evstream.sources.stream_writer import check_output_file
from evstream.types import EVENT_DTYPE, Frame, Packet

ROOM_BYTES = 16 << 20           # free space a recording leaves: dv aborts on a failed write
ROOM_CHECK_S = 0.05             # at most this often while more than 4 x ROOM_BYTES are free
FLUSH_EVENTS = 1 << 18          # numpy events buffered before one conversion + write
FLUSH_S = 0.25                  # streaming: numpy events wait at most this long (wall time)
SYNC_S = 0.25                   # streaming: fflush + fdatasync this often
SCRATCH_PACKET_EVENTS = 1 << 16  # events per EventPacket in the scratch file


# -- numpy -> dv EventStores through an uncompressed AEDAT4 scratch file ---------------------

def io_header(xml: bytes, compression: int = 0, table_pos: int = -1) -> bytes:
    """IOHeader flatbuffer: compression (0 NONE, 1 LZ4, ...), the packet table's position (-1:
    none), the stream-list XML. Its size does not depend on table_pos."""
    out = bytearray(struct.pack("<I4s", 20, b"IOHE"))               # root table at 20
    out += struct.pack("<5H2x", 10, 20, 4, 12, 8)                    # vtable: 3 fields
    out += struct.pack("<iiIq", 20 - 8, compression, 40 - 28, table_pos)  # 8-aligned i64
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

    def __init__(self, width: int, height: int, packet_events: int = SCRATCH_PACKET_EVENTS):
        self.packet_events = max(1, int(packet_events))
        fd, self.path = tempfile.mkstemp(prefix="evstream-scratch-", suffix=".aedat4")
        os.close(fd)
        xml = stream_xml([("events", "EVTS", (width, height))], "scratch", "NONE").encode()
        header = io_header(xml)
        self.header = b"#!AER-DAT4.0\r\n" + struct.pack("<i", len(header)) + header

    def stores(self, ev: np.ndarray):
        import dv_processing as dv

        p = ev["p"]
        if len(ev) and (int(p.min()) < 0 or int(p.max()) > 1):
            ev = ev.copy()
            ev["p"] = p != 0
        with open(self.path, "wb") as f:
            f.write(self.header)
            step = self.packet_events
            for i in range(0, len(ev), step):
                part = _zero_padding(ev[i:i + step])
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


_FFLUSH = None


def _fflush_all() -> None:
    """libc fflush(NULL): every C stdio output stream of this process, dv's FILE among them.
    ctypes releases the GIL for the call."""
    global _FFLUSH
    if _FFLUSH is None:
        import ctypes

        fn = ctypes.CDLL(None).fflush
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
        _FFLUSH = fn
    _FFLUSH(None)


class Aedat4Writer:
    def __init__(self, path, *, width: int, height: int, camera: str = "evstream",
                 frames: bool = False, imu: bool = False, triggers: bool = False,
                 frame_size: tuple[int, int] | None = None, atomic: bool = False,
                 packet_events: int = SCRATCH_PACKET_EVENTS):
        import dv_processing as dv

        self.path = os.fspath(path)
        if not self.path.lower().endswith(".aedat4"):
            raise EvstreamError(f"{self.path}: an AEDAT 4.0 recording must end in .aedat4")
        folder = check_output_file(self.path, width, height)
        self.atomic = bool(atomic)
        self.tmp_path: str | None = None
        if self.atomic:
            stem = os.path.basename(self.path)[:-len(".aedat4")]
            self.tmp_path = os.path.join(folder,
                                         f".{stem}.evstream-{secrets.token_hex(4)}.aedat4")
        self._target = self.tmp_path or self.path          # the file dv writes
        self.width, self.height, self.camera = int(width), int(height), camera
        self.frame_size = tuple(frame_size) if frame_size else (self.width, self.height)
        self.has = {"frames": frames, "imu": imu, "triggers": triggers}
        self._packet_events = int(packet_events)   # numpy events per AEDAT4 packet, at most
        cfg = dv.io.MonoCameraWriter.Config(camera, dv.CompressionType.LZ4)
        cfg.addEventStream((self.width, self.height))
        if frames:
            cfg.addFrameStream(self.frame_size)
        if imu:
            cfg.addImuStream()
        if triggers:
            cfg.addTriggerStream()
        self.counts = {"events": 0, "frames": 0, "imu": 0, "triggers": 0}   # given to write()
        self.written = dict(self.counts)    # handed to dv: what the file holds once finished
        self.t_first_us: int | None = None
        self.t_last_us: int | None = None
        self.bytes = 0
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._pending_since = 0.0
        self._last = {"events": None, "frames": None, "imu": None, "triggers": None}
        self._conv: _ScratchConverter | None = None
        self._closed = False
        self._w = None
        self._fd = -1                       # streaming: our descriptor, for fdatasync
        self._lock = threading.Lock()       # streaming: write() vs the flusher thread
        self._room_t, self._room_free = -1e9, 0     # the last free-space look-up (_room)
        self._flusher: threading.Thread | None = None
        self._stop_flusher = threading.Event()
        self._flusher_error: BaseException | None = None
        if not self.atomic:
            try:   # our own descriptor: a clear error now, and fdatasync later
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as e:
                raise EvstreamError(f"{self.path}: cannot create ({e.strerror})") from None
        try:
            self._w = dv.io.MonoCameraWriter(self._target, cfg)
        except Exception as e:  # noqa: BLE001
            self._closed = True
            self._close_fd()
            self._remove(self._target)
            raise EvstreamError(f"{self.path}: cannot create ({dv_message(e)})") from None
        if not self.atomic:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="aedat4-flush")
            self._flusher.start()

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
        with self._lock:
            if store is not None:
                self._flush()
                self._dv("events", self._w.writeEvents, store, len(store))
            else:
                now = time.monotonic()
                if not self._pending:
                    self._pending_since = now
                self._pending.append(ev)
                self._n_pending += len(ev)
                if self._n_pending >= FLUSH_EVENTS or \
                        (not self.atomic and now - self._pending_since >= FLUSH_S):
                    self._flush()
        self.counts["events"] += len(ev)
        if self.t_first_us is None:
            self.t_first_us = int(ev["t"][0])
        self.t_last_us = int(ev["t"][-1])

    def end_packet(self) -> None:
        """Hand the events buffered so far to dv now, as their own packet(s) (at most
        packet_events each): a file with a given packet structure (tools/bench builds files
        shaped like real recordings this way)."""
        self._check_open()
        with self._lock:
            self._flush()

    def write_frame(self, frame: Frame) -> None:
        import dv_processing as dv

        self._check_open()
        if not self.has["frames"]:
            return
        self._in_order("frames", frame.t_us, frame.t_us)
        image = np.ascontiguousarray(frame.image)
        dvf = dv.Frame(int(frame.t_us), int(frame.exposure_us), 0, 0, image,
                       dv.FrameSource.UNDEFINED)
        with self._lock:
            self._dv("frames", self._w.writeFrame, dvf, 1)
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
        with self._lock:
            self._dv("imu", self._w.writeImuPacket, dv.IMUPacket(vec), len(imu))
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
        with self._lock:
            self._dv("triggers", self._w.writeTriggerPacket, dv.TriggerPacket(vec), len(triggers))
        self.counts["triggers"] += len(triggers)

    # -- finishing -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and finish the file (packet table, header); atomic: move it into place,
        streaming: fsync it. Safe to call twice."""
        if self._closed:
            return
        self._stop_flush_loop()
        try:
            with self._lock:
                self._flush()
        except BaseException:
            if self.atomic:
                self.abort()
            else:          # keep what is on disk, finished
                self._finish_streaming()
            raise
        if not self.atomic:
            self._finish_streaming()
            return
        self._closed = True
        self._release()
        try:
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self._remove(self.tmp_path)
            raise EvstreamError(f"{self.path}: cannot move the finished recording into place "
                                f"({e.strerror})") from None
        self.bytes = os.path.getsize(self.path)

    def abort(self) -> None:
        """Drop everything written so far: the file dv wrote is removed (atomic: the target is
        left as it was)."""
        self._closed = True
        self._stop_flush_loop()
        self._pending.clear()
        self._release()
        self._close_fd()
        self._remove(self._target)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not self.atomic:
            self.close()
        else:
            self.abort()
        return False

    # -- helpers ---------------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the buffered numpy events to dv (the caller holds self._lock)."""
        if not self._pending:
            return
        ev = self._pending[0] if len(self._pending) == 1 else \
            np.concatenate(self._pending, dtype=EVENT_DTYPE)
        self._pending, self._n_pending = [], 0
        if self._conv is None:
            self._conv = _ScratchConverter(self.width, self.height, self._packet_events)
        try:
            for store in self._conv.stores(ev):
                self._dv("events", self._w.writeEvents, store, len(store))
        except EvstreamError:
            raise
        except Exception as e:  # noqa: BLE001 - the scratch round trip failing is a bug
            raise RuntimeError(f"numpy -> dv event conversion failed: {dv_message(e)}") from e

    def _flush_loop(self) -> None:
        """Streaming: every SYNC_S, events that waited FLUSH_S go to dv (when no write() came
        to do it), then dv's stdio buffer goes to the kernel and the kernel's to the disk."""
        synced_dir = False
        while not self._stop_flusher.wait(SYNC_S):
            try:
                with self._lock:
                    if self._pending and time.monotonic() - self._pending_since >= FLUSH_S:
                        self._flush()
                self._sync()
                if not synced_dir:       # the new name survives a power cut too
                    _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
                    synced_dir = True
            except BaseException as e:  # noqa: BLE001 - raised again by the next write()
                self._flusher_error = e
                return

    def _sync(self) -> None:
        _fflush_all()
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)
            except OSError:
                pass     # a file system without fdatasync: the data is in the kernel anyway

    def _stop_flush_loop(self) -> None:
        if self._flusher is not None:
            self._stop_flusher.set()
            if self._flusher is not threading.current_thread():
                self._flusher.join()
            self._flusher = None

    def _finish_streaming(self) -> None:
        self._closed = True
        self._release()               # dv writes the table and the final header, then fclose
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
        self._close_fd()
        self.bytes = os.path.getsize(self.path)

    def _room(self) -> None:
        """Stop with a one-line error before the disk is full: dv 2.0.4's write thread calls
        std::terminate when a write fails (the process aborts, nothing is reported). The free
        space is looked up at most every ROOM_CHECK_S while there is plenty of it."""
        now = time.monotonic()
        if now - self._room_t < ROOM_CHECK_S and self._room_free >= 4 * ROOM_BYTES:
            return
        self._room_t, self._room_free = now, free_bytes(self._target)
        if self._room_free < ROOM_BYTES:
            raise EvstreamError(f"{self.path}: disk full ({self._room_free} bytes left, "
                                f"{ROOM_BYTES} kept free): recording stopped")

    def _dv(self, stream: str, fn, obj, n: int) -> None:
        self._room()
        try:
            fn(obj)
        except Exception as e:  # noqa: BLE001
            raise EvstreamError(f"{self.path}: writing {stream} failed "
                                f"({dv_message(e)})") from None
        self.written[stream] += n

    def _in_order(self, stream: str, t0: int, t1: int) -> None:
        last = self._last[stream]
        if (last is not None and t0 < last) or t1 < t0:
            raise EvstreamError(f"{self.path}: {stream} out of time order (t={t0} us after "
                                f"t={last} us); AEDAT4 streams are written in time order")
        self._last[stream] = t1

    def _check_open(self) -> None:
        if self._closed:
            raise EvstreamError(f"{self.path}: writer is closed")
        if self._flusher_error is not None:
            e, self._flusher_error = self._flusher_error, None
            raise e

    def _release(self) -> None:
        # dv finalises the file (packet table, header) when the writer object is destroyed
        self._w = None
        if self._conv is not None:
            self._conv.close()
            self._conv = None

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _remove(path) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, TypeError):
            pass

    def __del__(self):
        if getattr(self, "_closed", True):
            return
        if self.atomic:
            self.abort()
        else:            # a recording is never dropped by accident: finish what is there
            try:
                self.close()
            except Exception:  # noqa: BLE001 - nowhere to report it from __del__
                pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
