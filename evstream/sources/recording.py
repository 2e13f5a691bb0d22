"""AEDAT 4.0 recordings (.aedat4) through dv-processing 2.0.4.

What the source yields:
- Packets in time order: each event batch of the file (one AEDAT4 packet of the events stream)
  together with the frames, IMU samples and triggers stamped up to that batch's last event;
  whatever is left of those streams after the last batch comes in one final packet. A file
  whose single events packet holds every event (the davis346_wheel_* recordings) is one packet.
- Events go through `self.dv_events(store)` (noise filters on the dv EventStore, then a
  zero-copy view as EVENT_DTYPE). Frames, IMU and triggers use the converters in camera.py.
- `camera` is the recording's camera name, `width`/`height` the events stream's sizeX/sizeY
  (`frame_size` the frames stream's, or None).
  --width/--height are used only where the file has no resolution; a flag that disagrees with
  the file is a one-line error. `streams` lists the streams the file declares (even empty ones).
- A file with several cameras needs `stream=CAMERA`; without it the error lists the names.

Every dv-processing exception becomes a one-line SourceError naming the file (and the packet
where there is one). That is not enough on its own: dv-processing 2.0.4 hangs on some damaged
LZ4 payloads and segfaults on some damaged packets, so every read here first waits until
aedat4_check.PacketChecker has passed the packet dv is about to decode (see that module). Files
over SYNC_CHECK_BYTES are checked in a background thread, ahead of dv; smaller ones, and files
without a packet table (dv decodes every packet while opening those), are checked up front.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_reader
from evstream.sources.aedat4_check import COMPRESSION, PacketChecker, read_layout
from evstream.sources.base import EventSource
from evstream.sources.dv_shared import dv_message, remember_dv_store
from evstream.types import IMU_DTYPE, TRIGGER_DTYPE, EVENT_DTYPE, Frame, Packet

_EMPTY_IMU = np.zeros(0, IMU_DTYPE)             # shared by every packet of _events_only
_EMPTY_TRIGGERS = np.zeros(0, TRIGGER_DTYPE)
_EMPTY_IMU.flags.writeable = _EMPTY_TRIGGERS.flags.writeable = False

SYNC_CHECK_BYTES = 4 << 20       # smaller files are checked before reading, without a thread
WARM_UP_PACKETS = 2              # see Aedat4Source.warm_up
WARM_UP_BYTES = 4 << 20          # (a file of a few huge packets is not decoded twice)


# -- the source ---------------------------------------------------------------------------------

class Aedat4Source(EventSource):
    live = False
    # Set True (evstream record does) to keep each event array's dv EventStore reachable
    # through dv_shared.dv_store_of(events), so an .aedat4 -> .aedat4 copy skips the conversion.
    share_dv_stores = False

    def __init__(self, path: str, *, width: int | None = None, height: int | None = None,
                 bad_events: str | None = None, filters=None, stream: str | None = None):
        import dv_processing as dv

        self.name = path
        self._rec = None
        self._checker = None
        lay = read_layout(path)
        cameras = lay.cameras()
        if stream is None and len(cameras) > 1:
            raise SourceError(f"{path}: holds {len(cameras)} cameras ({', '.join(cameras)}); "
                              f"pick one with --stream CAMERA")
        if stream is not None and stream not in cameras:
            raise SourceError(f"{path}: no camera {stream!r} in this file (it holds: "
                              f"{', '.join(cameras) or 'none'})")
        self.layout = lay
        no_table = lay.table_pos < 0
        # dv decodes every packet while opening a file without a table: check them all first
        self._checker = PacketChecker(
            path, lay, background=not no_table and lay.file_size > SYNC_CHECK_BYTES)
        try:
            if no_table:
                self._checker.wait_all()
            try:
                self._rec = dv.io.MonoCameraRecording(path, stream) if stream else \
                    dv.io.MonoCameraRecording(path)
                rec = self._rec
                self.camera = rec.getCameraName()
                names = list(rec.getStreamNames())
                res = rec.getEventResolution() if rec.isEventStreamAvailable() else None
                fres = rec.getFrameResolution() if rec.isFrameStreamAvailable() else None
                self.frame_size = tuple(int(v) for v in fres) if fres is not None else None
                res = res if res is not None else fres
                self.time_range_us = tuple(int(t) for t in rec.getTimeRange())
            except Exception as e:  # noqa: BLE001 - any dv failure is a bad file
                raise SourceError(f"{path}: {dv_message(e)}") from None
            self._has = {k: k in names for k in ("events", "frames", "imu", "triggers")}
            self.streams = [k for k in ("events", "frames", "imu", "triggers") if self._has[k]]
            self._order = self._read_order(self.camera)
            self._count = dict.fromkeys(self._has, 0)
            self._set_resolution(res, width, height)
        except BaseException:
            self.close()
            raise
        self.compression = COMPRESSION[lay.compression]
        super().__init__(bad_events=bad_events, filters=filters)

    def _read_order(self, camera: str) -> dict[str, np.ndarray | None]:
        """Per dv stream name, the file-order indices of its packets (None: not known, so a
        read waits for the whole check)."""
        lay = self.layout
        out: dict[str, np.ndarray | None] = {}
        for name in self._has:
            ids = [s.id for s in lay.streams.values() if s.name == name and s.source == camera]
            out[name] = np.flatnonzero(lay.stream_ids == ids[0]) if len(ids) == 1 else None
        return out

    def _set_resolution(self, res, width, height) -> None:
        path = self.name
        if res is not None:
            self.width, self.height = int(res[0]), int(res[1])
            if (width is not None and width != self.width) or \
                    (height is not None and height != self.height):
                raise SourceError(f"{path}: the file says {self.width}x{self.height}; "
                                  f"--width/--height {width}x{height} disagree")
        elif width is not None and height is not None:
            self.width, self.height = width, height
            self.resolution_note = "not in the file; from --width/--height"
        else:
            mx = my = -1
            for store in self._dv_batches():
                if len(store):
                    c = store.coordinates()
                    mx, my = max(mx, int(c[:, 0].max())), max(my, int(c[:, 1].max()))
            self._rewind()
            self.width, self.height = (width or mx + 1 or 1), (height or my + 1 or 1)
            self.resolution_note = "not in the file; inferred from the largest x and y"

    # dv reads, each gated by the packet check and with errors turned into one line
    def _dv_next(self, stream: str, method: str):
        k = self._count[stream]
        order = self._order[stream]
        if order is None:
            self._checker.wait_all()
        elif k < len(order):
            self._checker.wait(int(order[k]))
        try:
            item = getattr(self._rec, method)()
        except Exception as e:  # noqa: BLE001
            where = f" (packet {int(order[k])})" if order is not None and k < len(order) else ""
            raise SourceError(f"{self.name}: reading {stream}{where}: {dv_message(e)}") from None
        self._count[stream] = k + 1
        return item

    def _dv_batches(self):
        while self._has["events"]:
            store = self._dv_next("events", "getNextEventBatch")
            if store is None:
                return
            yield store

    def _rewind(self) -> None:
        self._rec.resetSequentialRead()
        self._count = dict.fromkeys(self._has, 0)

    def _read(self) -> Iterator[Packet]:
        from evstream.sources.camera import frame_from_dv, imu_from_dv, triggers_from_dv

        if self._rec is None:
            raise SourceError(f"{self.name}: source is closed")
        if any(self._count.values()):
            # a second pass starts time over: reset the base class's time-order check too
            self._rewind()
            self._last_t = np.iinfo(np.int64).min
        remember = remember_dv_store if self.share_dv_stores and self.filters is None else None
        if self.filters is None and self._has["events"] and not (
                self._has["frames"] or self._has["imu"] or self._has["triggers"]):
            # events only, unfiltered (most files): nothing to interleave, so the least work
            # per packet (a DAVIS file holds a few hundred events a packet)
            yield from self._events_only(remember)
            return
        side = _SideStreams(self, frame_from_dv, imu_from_dv, triggers_from_dv)
        for store in self._dv_batches():
            if len(store) == 0:
                continue
            t_end = store.getHighestTime()
            events = self.dv_events(store)
            if remember is not None:
                remember(events, store)
            frames, imu, triggers = side.until(t_end)
            yield Packet(events, frames, imu, triggers)
        frames, imu, triggers = side.until(None)
        if frames or len(imu) or len(triggers):
            yield Packet(np.zeros(0, EVENT_DTYPE), frames, imu, triggers)

    def _events_only(self, remember) -> Iterator[Packet]:
        """_read for a file with only events and no filters: _dv_next and dv_events inlined
        (the same checks, gate and errors), about 5 us a packet less."""
        order = self._order["events"]
        if order is None:
            self._checker.wait_all()
        order = [] if order is None else order.tolist()
        wait, get = self._checker.wait, self._rec.getNextEventBatch
        count = self._count
        k = count["events"]
        while True:
            if k < len(order):
                wait(order[k])
            try:
                store = get()
            except Exception as e:  # noqa: BLE001
                where = f" (packet {order[k]})" if k < len(order) else ""
                raise SourceError(f"{self.name}: reading events{where}: {dv_message(e)}") \
                    from None
            k += 1
            count["events"] = k
            if store is None:
                return
            if len(store):
                events = store.numpy().view(EVENT_DTYPE)
                if remember is not None:
                    remember(events, store)
                yield Packet(events, [], _EMPTY_IMU, _EMPTY_TRIGGERS)

    def warm_up(self) -> None:
        """Decode the first WARM_UP_PACKETS event packets (each at most WARM_UP_BYTES in the
        file), holding them as the stream does, then rewind. dv-processing 2.0.4's first reads
        in a process fault in its buffers: on a 64k-event packet the first read took 2.6-3.2 ms
        and the second 1.2 against 0.75 later (~1,400 page faults), inside the stream."""
        if self._rec is None or any(self._count.values()) or not self._has["events"]:
            return
        order = self._order["events"]
        if order is None or not len(order) or \
                self.layout.sizes[order[:WARM_UP_PACKETS]].max() > WARM_UP_BYTES:
            return
        held = []
        for store in self._dv_batches():
            held.append(store.numpy() if len(store) else store)
            if len(held) == WARM_UP_PACKETS:
                break
        self._rewind()

    def close(self) -> None:
        self._rec = None      # dv closes the file when the reader is destroyed
        if self._checker is not None:
            self._checker.close()

    def describe(self) -> dict:
        d = super().describe()
        d.update(streams=list(self.streams), compression=self.compression,
                 time_range_us=list(self.time_range_us),
                 finished=self.layout.table_pos >= 0, tail_bytes=self.layout.tail_bytes)
        return d


class _SideStreams:
    """Frames, IMU and triggers held back until the event batches catch up with them."""

    def __init__(self, src: Aedat4Source, frame_from_dv, imu_from_dv, triggers_from_dv):
        self.src = src
        self.conv = {"imu": imu_from_dv, "triggers": triggers_from_dv}
        self.frame_from_dv = frame_from_dv
        self.frame: Frame | None = None
        self.frames_done = not src._has["frames"]
        self.buf = {"imu": np.zeros(0, IMU_DTYPE), "triggers": np.zeros(0, TRIGGER_DTYPE)}
        self.done = {k: not src._has[k] for k in self.buf}

    def until(self, t_us: int | None):
        frames = []
        while not self.frames_done:
            if self.frame is None:
                f = self.src._dv_next("frames", "getNextFrame")
                if f is None:
                    self.frames_done = True
                    break
                self.frame = self.frame_from_dv(f)
            if t_us is not None and self.frame.t_us > t_us:
                break
            frames.append(self.frame)
            self.frame = None
        out = [frames]
        method = {"imu": "getNextImuBatch", "triggers": "getNextTriggerBatch"}
        for k in ("imu", "triggers"):
            buf = self.buf[k]
            while not self.done[k] and (t_us is None or not len(buf) or buf["t"][-1] <= t_us):
                batch = self.src._dv_next(k, method[k])
                if batch is None:
                    self.done[k] = True
                    break
                if len(batch):
                    buf = np.concatenate([buf, self.conv[k](batch)])
            cut = len(buf) if t_us is None else int(np.searchsorted(buf["t"], t_us, "right"))
            out.append(buf[:cut])
            self.buf[k] = buf[cut:]
        return out


def open_aedat4(path, *, width=None, height=None, bad_events=None, filters=None, stream=None):
    return Aedat4Source(os.fspath(path), width=width, height=height, bad_events=bad_events,
                        filters=filters, stream=stream)


register_reader(".aedat4", open_aedat4)
