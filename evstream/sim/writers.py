"""Streaming writers for one synthetic sequence: events + APS frames, labels.

Sequences can be long (10 minutes of driving is ~15,000 frames and hundreds of millions of
events), so nothing here holds a whole sequence in memory:

- `NpzStream(path)`: a .npz archive written member by member. `put(name, array)` stores a
  small array; `stream(name, dtype, shape)` declares the one big array whose first axis is
  then filled chunk by chunk with `append(chunk)` (the .npy header needs the final shape up
  front, and the stream's end checks that exactly that many rows arrived; a zip file takes one
  member at a time, so `put` calls made meanwhile are written at close()). np.load reads the
  result like any npz. Members named in `compress` are deflated (labels shrink ~20x).
- `H5EventWriter(path, width, height)`: DSEC layout, appended chunk by chunk:
  events/{t (uint32 us relative to t_offset = 0), x, y (uint16), p (uint8 1 = ON)},
  t_offset (int64 0), ms_to_idx (uint64: first event index with t >= i ms, i = 0 .. last ms),
  width/height root attributes: what evstream's .h5 reader (sources/arrays.py) expects.
- `SequenceWriter(folder, fmt, width, height, frames=M, labels=bool)`: events.aedat4 (events
  and frames through evstream.sources.writer.Aedat4Writer, itself atomic) or events.h5 +
  frames.npz, plus labels.npz (t_us, labels) when asked. `abort()` drops what was written.
Event times must fit uint32 microseconds in the h5 variant (71 minutes).

Full disk: dv-processing 2.0.4's writer aborts the whole process when a write fails (the
Aedat4Writer checks first), and h5py crashes at exit after a failed write, so `SequenceWriter`
checks the free space before each write (`ROOM_BYTES`, or four times what the last write took if more) and stops with a one-line
error while it still can.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from evstream.errors import EvstreamError
from evstream.outpaths import check_free
from evstream.types import EVENT_DTYPE, Frame


class NpzStream:
    def __init__(self, path, compress: tuple[str, ...] = ()) -> None:
        self.path = os.fspath(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._compress = set(compress)
        self._stream = None          # [name, file, rows expected, rows written, dtype, row shape]
        self._deferred: list[tuple[str, np.ndarray]] = []

    def _member(self, name: str):
        info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
        if name in self._compress:
            info.compress_type = zipfile.ZIP_DEFLATED
            # fast deflate; ZipInfo's attribute is _compresslevel up to Python 3.12
            if hasattr(info, "compress_level"):
                info.compress_level = 1
            else:
                info._compresslevel = 1
        return self._zip.open(info, "w", force_zip64=True)

    def put(self, name: str, array) -> None:
        """Store a small array (deferred to close() while a stream is open: a zip file takes
        one member at a time)."""
        array = np.asarray(array)
        if self._stream is not None:
            self._deferred.append((name, array.copy()))
            return
        with self._member(name) as f:
            np.lib.format.write_array(f, array, allow_pickle=False)

    def stream(self, name: str, dtype, shape: tuple[int, ...]) -> None:
        """Start the (one) streamed member: `shape[0]` rows of shape[1:] follow via append."""
        if self._stream is not None:
            self._finish()
        f = self._member(name)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                  "fortran_order": False, "shape": tuple(int(s) for s in shape)}
        np.lib.format.write_array_header_2_0(f, header)
        self._stream = [name, f, int(shape[0]), 0, np.dtype(dtype), tuple(shape[1:])]

    def append(self, chunk) -> None:
        """Rows (or one row) of the streamed member."""
        name, f, expected, written, dtype, row = self._stream
        chunk = np.ascontiguousarray(chunk, dtype=dtype)
        if chunk.shape == row:
            rows = 1
        elif chunk.shape[1:] == row:
            rows = chunk.shape[0]
        else:
            raise ValueError(f"{self.path}: rows of {name} have shape {row}, got {chunk.shape}")
        if written + rows > expected:
            raise ValueError(f"{self.path}: more than the declared {expected} rows of {name}")
        f.write(chunk.tobytes())
        self._stream[3] += rows

    def _finish(self) -> None:
        name, f, expected, written = self._stream[:4]
        self._stream = None
        f.close()
        if written != expected:
            raise ValueError(f"{self.path}: {name} got {written} of its {expected} rows")

    def close(self) -> None:
        if self._stream is not None:
            self._finish()
        for name, array in self._deferred:
            self.put(name, array)
        self._deferred.clear()
        self._zip.close()

    def abort(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
        self._zip.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class H5EventWriter:
    CHUNK = 1 << 18

    def __init__(self, path, width: int, height: int) -> None:
        import h5py

        self.path = os.fspath(path)
        self._f = h5py.File(self.path, "w")
        self._f.attrs["width"] = int(width)
        self._f.attrs["height"] = int(height)
        g = self._f.create_group("events")
        self._d = {
            "t": g.create_dataset("t", (0,), np.uint32, maxshape=(None,), chunks=(self.CHUNK,)),
            "x": g.create_dataset("x", (0,), np.uint16, maxshape=(None,), chunks=(self.CHUNK,)),
            "y": g.create_dataset("y", (0,), np.uint16, maxshape=(None,), chunks=(self.CHUNK,)),
            "p": g.create_dataset("p", (0,), np.uint8, maxshape=(None,), chunks=(self.CHUNK,)),
        }
        self.n = 0
        self._ms_to_idx: list[np.ndarray] = []
        self._next_ms = 0

    def write(self, ev: np.ndarray) -> None:
        if not len(ev):
            return
        t = ev["t"]
        if int(t[-1]) >= 2 ** 32 or int(t[0]) < 0:
            raise EvstreamError(f"{self.path}: event times beyond uint32 microseconds")
        last_ms = int(t[-1]) // 1000
        if last_ms >= self._next_ms:
            ms = np.arange(self._next_ms, last_ms + 1, dtype=np.int64) * 1000
            self._ms_to_idx.append(self.n + np.searchsorted(t, ms, side="left"))
            self._next_ms = last_ms + 1
        n1 = self.n + len(ev)
        for name, dtype in (("t", np.uint32), ("x", np.uint16), ("y", np.uint16),
                            ("p", np.uint8)):
            d = self._d[name]
            d.resize((n1,))
            d[self.n:n1] = ev[name].astype(dtype)
        self.n = n1

    def close(self) -> None:
        ms = np.concatenate(self._ms_to_idx) if self._ms_to_idx else np.zeros(0, np.int64)
        self._f.create_dataset("ms_to_idx", data=ms.astype(np.uint64))
        self._f.create_dataset("t_offset", data=np.int64(0))
        self._f.close()

    def abort(self) -> None:
        self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


ROOM_BYTES = 16 << 20          # free space every write leaves at least (see the module top)


class SequenceWriter:
    """events.aedat4 | events.h5 + frames.npz, and labels.npz, in one folder."""

    def __init__(self, folder, fmt: str, width: int, height: int, frames: int,
                 labels: bool) -> None:
        from evstream.sources.writer import Aedat4Writer

        self.folder = os.fspath(folder)
        self.fmt = fmt
        self.width, self.height, self.frames_expected = width, height, int(frames)
        self.events = 0
        self.frames = 0
        self._parts: list = []
        try:
            if fmt == "aedat4":
                self._aedat = Aedat4Writer(os.path.join(self.folder, "events.aedat4"),
                                           width=width, height=height, camera="evstream-synth",
                                           frames=True, atomic=True)
                self._parts.append(self._aedat)
                self._h5 = self._frames = None
            elif fmt == "h5":
                self._aedat = None
                self._h5 = H5EventWriter(os.path.join(self.folder, "events.h5"), width, height)
                self._parts.append(self._h5)
                self._frames = NpzStream(os.path.join(self.folder, "frames.npz"))
                self._parts.append(self._frames)
                self._frames.stream("frames", np.uint8, (frames, height, width))
            else:
                raise EvstreamError(f"unknown dataset format {fmt!r} (aedat4 or h5)")
            self._labels = None
            if labels:
                self._labels = NpzStream(os.path.join(self.folder, "labels.npz"),
                                         compress=("labels",))
                self._parts.append(self._labels)
                self._labels.stream("labels", np.uint8, (frames, height, width))
            self._times: list[int] = []
        except BaseException:
            self.abort()
            raise

    def write_events(self, ev: np.ndarray) -> None:
        if not len(ev):
            return
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"events must be EVENT_DTYPE, not {ev.dtype}")
        self._room(ev.nbytes)
        if self._aedat is not None:
            self._aedat.write_events(ev)
        else:
            self._h5.write(ev)
        self.events += len(ev)

    def _room(self, nbytes: int) -> None:
        check_free(self.folder, "dataset", need=max(ROOM_BYTES, 4 * int(nbytes)))

    def write_frame(self, frame: Frame, labels: np.ndarray | None) -> None:
        self._room(2 * frame.image.nbytes)
        if self._aedat is not None:
            self._aedat.write_frame(frame)
        else:
            self._frames.append(frame.image)
        if self._labels is not None:
            if labels is None:
                raise ValueError(f"frame at t={frame.t_us} us has no labels")
            self._labels.append(labels)
        self._times.append(int(frame.t_us))
        self.frames += 1

    def close(self) -> None:
        try:
            times = np.array(self._times, np.int64)
            for npz in (self._frames, self._labels):
                if npz is not None:
                    npz.put("t_us", times)
            for part in self._parts:
                part.close()
        except BaseException:
            self.abort()
            raise
        self._parts = []

    def abort(self) -> None:
        for part in self._parts:
            try:
                part.abort()
            except Exception:  # noqa: BLE001 - best effort while failing anyway
                pass
        self._parts = []
