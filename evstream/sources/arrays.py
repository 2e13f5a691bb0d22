"""Event arrays in .npy / .npz / .h5 / .hdf5 files: reader and writers.

What is accepted (field names are matched case-insensitively, with these aliases):
    t: t, ts, t_us, timestamp, timestamps, time, times     x: x, xs     y: y, ys
    p: p, pol, polarity, polarities, ps
- .npy: one structured array with those fields (memory-mapped, read in chunks).
- .npz: separate t, x, y, p arrays, or one structured array (`events` or the only structured
  member). npz members cannot be memory-mapped, so each field is loaded whole when first read.
- .h5 / .hdf5: DSEC layout, `events/{t,x,y,p}` datasets with an optional root `t_offset`
  (added to t) and `ms_to_idx` (DSEC's millisecond index; recorded in describe()); or the same
  datasets at the top level; or a compound dataset `events` with those fields. Datasets are read
  in slices of `chunk_events`, so a multi-GB file is never loaded at once. Compressed DSEC files
  need the filter plugins of the `hdf5plugin` package (imported when installed); without them
  the read fails with a one-line SourceError that says so.

Times: integer t is in microseconds; float t is taken as seconds (and `time_note` says so),
unless `time_unit` ("s", "ms", "us" or "ns") is given. Polarity: -1/+1, 0/1 or bool -> 1 = ON,
0 = OFF (anything > 0 is ON). Coordinates must be integral; negative ones count as outside.

Resolution: `width`/`height` attributes (h5 root or `events` group; npz members), or
`sensor_size` = (W, H[, polarities]) as tonic writes it, else the width/height options, else
max x/y + 1 over the whole file with `resolution_note`. Options override the file.

Bad input (not a npy/npz/HDF5 file, missing fields, fields of different lengths, non-integral
coordinates) raises a one-line SourceError that lists what the file holds. Under
bad_events="error", events out of time order or outside the sensor raise BadEventsError with
the event index; with "drop" the base class drops and counts them.

Writers (see the notes above them): `NpyWriter`, `NpzWriter`, `H5Writer` stream packets into
.npy / .npz / DSEC-layout .h5 files with bounded memory; `write_npz(path, events, width,
height)` (t, x, y, p arrays plus width/height) and `write_h5(path, events, width, height)` (the
DSEC layout: events/t as uint32 relative to t_offset while the span allows, t_offset, ms_to_idx,
width/height root attributes) write one array through them.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile

import numpy as np

from evstream.errors import EvstreamError, SourceError
from evstream.sources import register_reader
from evstream.sources.base import EventSource
from evstream.sources.stream_writer import NAMES, SYNC_S, StreamWriter
from evstream.types import EVENT_DTYPE, Packet, concat_events

log = logging.getLogger(__name__)

ALIASES = {
    "t": ("t", "ts", "t_us", "timestamp", "timestamps", "time", "times"),
    "x": ("x", "xs"),
    "y": ("y", "ys"),
    "p": ("p", "pol", "polarity", "polarities", "ps"),
}
_UNIT_TO_US = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}


def _pick(names, what: str):
    """The first name among `names` matching an alias of field `what` (case-insensitive)."""
    low = {n.lower(): n for n in names}
    for alias in ALIASES[what]:
        if alias in low:
            return low[alias]
    return None


class _Columns:
    """Uniform access to four equal-length columns: read(start, stop) -> dict of arrays."""

    def __init__(self, getters: dict, n: int):
        self.getters, self.n = getters, n

    def read(self, start: int, stop: int) -> dict:
        return {k: g(start, stop) for k, g in self.getters.items()}


class ArraySource(EventSource):
    """Events from a .npy / .npz / .h5 file (see the module essay)."""

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 time_unit: str | None = None, chunk_events: int = 1 << 20):
        self.name = os.fspath(path)
        self.live = False
        super().__init__(bad_events=bad_events, filters=filters)
        if time_unit is not None and time_unit not in _UNIT_TO_US:
            raise SourceError(f"{self.name}: time_unit must be one of {sorted(_UNIT_TO_US)}, "
                              f"not {time_unit!r}")
        self.time_unit = time_unit
        self.time_note = ""
        if int(chunk_events) < 1:
            raise SourceError(f"{self.name}: chunk_events must be at least 1")
        self.chunk_events = int(chunk_events)
        self.t_offset_us = 0
        self.ms_to_idx = False
        self._h5 = None
        self._attrs: dict = {}
        suffix = os.path.splitext(self.name)[1].lower()
        try:
            if suffix == ".npy":
                self._cols = self._open_npy()
                self.camera = "event array (.npy)"
            elif suffix == ".npz":
                self._cols = self._open_npz()
                self.camera = "event arrays (.npz)"
            else:
                self._cols = self._open_h5()
                self.camera = "event arrays (HDF5)"
            self._set_resolution(width, height)
            if self._cols.n:
                self._times(self._cols.read(0, 1)["t"])     # sets time_note now, not mid-read
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open_npy(self) -> _Columns:
        try:
            arr = np.load(self.name, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SourceError(f"{self.name}: not a readable .npy file ({_first_line(e)})") from None
        return self._from_structured(arr, "the .npy array")

    def _from_structured(self, arr, where: str) -> _Columns:
        names = arr.dtype.names
        if not names:
            raise SourceError(f"{self.name}: {where} is a plain {arr.dtype} array of shape "
                              f"{arr.shape} with no field names; need a structured array with "
                              f"t, x, y, p fields")
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        fields = self._match(names, f"{where} has fields {', '.join(names)}")
        return _Columns({k: (lambda a, b, f=f: np.asarray(arr[f][a:b])) for k, f in fields.items()},
                        len(arr))

    def _match(self, names, holds: str) -> dict:
        fields = {k: _pick(names, k) for k in ALIASES}
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            looked = "; ".join(f"{k}: {', '.join(ALIASES[k])}" for k in missing)
            raise SourceError(f"{self.name}: no {', '.join(missing)} field (looked for {looked}); "
                              f"{holds}")
        return fields

    def _open_npz(self) -> _Columns:
        try:
            z = np.load(self.name, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise SourceError(f"{self.name}: not a readable .npz file ({_first_line(e)})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise SourceError(f"{self.name}: not a .npz archive (it holds a single array)")
        self._npz = z
        keys = list(z.files)
        for k in ("width", "height", "sensor_size"):
            kk = _pick_key(keys, k)
            if kk is not None:
                self._attrs[k] = self._npz_load(kk)
        if all(_pick(keys, k) for k in ALIASES):
            fields = self._match(keys, "")
            arrays = {k: np.atleast_1d(self._npz_load(f)) for k, f in fields.items()}
            self._check_lengths({k: len(v) for k, v in arrays.items()}, fields)
            return _Columns({k: (lambda a, b, v=v: v[a:b]) for k, v in arrays.items()},
                            len(arrays["t"]))
        for k in ["events"] + keys:
            if k in keys:
                arr = self._npz_load(k)
                if arr.dtype.names:
                    return self._from_structured(arr, f"npz member {k!r}")
        shapes = ", ".join(f"{k} {self._npz_shape(k)}" for k in keys) or "nothing"
        self._match(keys, f"the archive holds: {shapes}")   # raises: some field is missing
        raise SourceError(f"{self.name}: no event arrays found")

    def _npz_load(self, key):
        try:
            return self._npz[key]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise SourceError(f"{self.name}: npz member {key!r} is unreadable "
                              f"({_first_line(e)})") from None

    def _npz_shape(self, key) -> str:
        a = self._npz_load(key)
        return f"{a.dtype}{list(a.shape)}"

    def _open_h5(self) -> _Columns:
        import h5py

        try:
            import hdf5plugin  # noqa: F401  (registers blosc/zstd/... filters used by DSEC)
        except ImportError:
            pass
        try:
            self._h5 = f = h5py.File(self.name, "r")
        except OSError as e:
            raise SourceError(f"{self.name}: not a readable HDF5 file ({_first_line(e)})") from None
        for k in ("width", "height", "sensor_size"):
            for holder in (f, f.get("events")):
                if holder is not None and k in holder.attrs and k not in self._attrs:
                    self._attrs[k] = np.asarray(holder.attrs[k])
        if "t_offset" in f and isinstance(f["t_offset"], h5py.Dataset):
            self.t_offset_us = int(np.asarray(f["t_offset"][()]).reshape(-1)[0])
        self.ms_to_idx = "ms_to_idx" in f
        ev = f.get("events")
        if isinstance(ev, h5py.Group):
            return self._from_h5_group(ev, "events/")
        if isinstance(ev, h5py.Dataset) and ev.dtype.names:
            fields = self._match(ev.dtype.names,
                                 f"dataset 'events' has fields {', '.join(ev.dtype.names)}")
            return _Columns({k: (lambda a, b, fn=fn: self._h5_read(ev, a, b, fn))
                             for k, fn in fields.items()}, ev.shape[0])
        return self._from_h5_group(f, "")

    def _from_h5_group(self, g, prefix: str) -> _Columns:
        import h5py

        dsets = [k for k in g.keys() if isinstance(g[k], h5py.Dataset)]
        listing = _h5_listing(self._h5)
        fields = self._match(dsets, f"the file holds: {listing}")
        for k, n in fields.items():
            if g[n].ndim != 1:
                raise SourceError(f"{self.name}: dataset {prefix}{n} has shape {g[n].shape}, "
                                  f"not 1-D; the file holds: {listing}")
        self._check_lengths({k: g[n].shape[0] for k, n in fields.items()},
                            {k: prefix + n for k, n in fields.items()})
        getters = {k: (lambda a, b, d=g[n]: self._h5_read(d, a, b)) for k, n in fields.items()}
        return _Columns(getters, g[fields["t"]].shape[0])

    def _h5_read(self, d, a, b, field=None):
        try:
            out = d.fields(field)[a:b] if field is not None else d[a:b]
        except OSError as e:
            msg = _first_line(e)
            hint = (" (a compression filter is missing: pip install hdf5plugin)"
                    if "filter" in msg.lower() else "")
            raise SourceError(f"{self.name}: cannot read {d.name}[{a}:{b}]: {msg}{hint}") from None
        return out

    def _check_lengths(self, lengths: dict, fields: dict) -> None:
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{fields[k]} has {n}" for k, n in lengths.items())
            raise SourceError(f"{self.name}: event fields differ in length ({desc})")

    def _set_resolution(self, width, height) -> None:
        fw = fh = None
        a = self._attrs
        if "width" in a and "height" in a:
            fw, fh = _scalar(a["width"]), _scalar(a["height"])
        elif "sensor_size" in a and np.asarray(a["sensor_size"]).size >= 2:
            ss = np.asarray(a["sensor_size"]).reshape(-1)
            fw, fh = int(ss[0]), int(ss[1])
        w = width if width is not None else fw
        h = height if height is not None else fh
        if w is None or h is None:
            mx, my = self._max_xy()
            if w is None:
                w = mx + 1
            if h is None:
                h = my + 1
            self.resolution_note = (f"inferred {w}x{h} from the data (the file has no width/"
                                    f"height); pass --width/--height")
        elif (width is not None or height is not None) and fw is not None and (w, h) != (fw, fh):
            self.resolution_note = f"resolution {w}x{h} from options (the file says {fw}x{fh})"
        self.width, self.height = int(w), int(h)

    def _max_xy(self) -> tuple[int, int]:
        mx = my = -1
        for start in range(0, self._cols.n, self.chunk_events):
            c = self._cols.read(start, min(start + self.chunk_events, self._cols.n))
            if len(c["x"]):
                mx = max(mx, int(np.max(c["x"])))
                my = max(my, int(np.max(c["y"])))
        if mx < 0:
            raise SourceError(f"{self.name}: no events to infer the resolution from; pass "
                              f"width/height")
        return mx, my

    # -- reading -----------------------------------------------------------------------------
    def _read(self):
        for start in range(0, self._cols.n, self.chunk_events):
            stop = min(start + self.chunk_events, self._cols.n)
            c = self._cols.read(start, stop)
            ev = np.empty(stop - start, EVENT_DTYPE)
            ev["t"] = self._times(c["t"]) + self.t_offset_us
            for k in ("x", "y"):
                ev[k] = self._coords(c[k], k, start)
            ev["p"] = np.asarray(c["p"]) > 0
            self._start = start
            yield Packet(events=ev)

    def _times(self, t) -> np.ndarray:
        t = np.asarray(t)
        unit = self.time_unit
        if unit is None:
            if t.dtype.kind == "f":
                unit = "s"
                if not self.time_note:
                    self.time_note = ("float timestamps read as seconds (pass time_unit='us', "
                                      "'ms' or 'ns' otherwise)")
                    log.info("%s: %s", self.name, self.time_note)
            else:
                unit = "us"
        if t.dtype.kind in "iub" and unit == "us":
            return t.astype(np.int64)
        if t.dtype.kind not in "iubf":
            raise SourceError(f"{self.name}: timestamps have dtype {t.dtype}, not numbers")
        return np.round(t.astype(np.float64) * _UNIT_TO_US[unit]).astype(np.int64)

    def _coords(self, v, name: str, start: int) -> np.ndarray:
        v = np.asarray(v)
        if v.dtype.kind == "f":
            bad = v != np.floor(v)
            if bad.any():
                i = int(np.argmax(bad))
                raise SourceError(f"{self.name}: {name} at event index {start + i} is "
                                  f"{float(v[i])!r}, not a pixel coordinate")
        elif v.dtype.kind not in "iub":
            raise SourceError(f"{self.name}: {name} has dtype {v.dtype}, not numbers")
        v = v.astype(np.int64)
        # negative or huge coordinates become 65535: outside any sensor, so the check catches them
        return np.where((v < 0) | (v > 65535), 65535, v)

    def locate(self, i: int) -> str:
        """Event i of the latest packet as an index into the user's arrays."""
        return f"event index {self._start + i}"

    def describe(self) -> dict:
        d = super().describe()
        d.update(events_in_file=self._cols.n, t_offset_us=self.t_offset_us,
                 ms_to_idx=self.ms_to_idx, time_note=self.time_note)
        return d

    def close(self) -> None:
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None
        z = getattr(self, "_npz", None)
        if z is not None:
            z.close()
            self._npz = None


def _scalar(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _pick_key(keys, name: str):
    low = {k.lower(): k for k in keys}
    return low.get(name)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _h5_listing(f) -> str:
    import h5py

    items: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and len(items) < 20:
            items.append(f"{name} {obj.dtype}{list(obj.shape)}")

    f.visititems(visit)
    return ", ".join(items) or "no datasets"


def open_arrays(path, *, width=None, height=None, bad_events=None, filters=None,
                time_unit: str | None = None, chunk_events: int = 1 << 20) -> ArraySource:
    return ArraySource(path, width=width, height=height, bad_events=bad_events, filters=filters,
                       time_unit=time_unit, chunk_events=chunk_events)


register_reader((".npz", ".npy", ".h5", ".hdf5"), open_arrays)


# -- writers -----------------------------------------------------------------------------------
#
# Streaming writers (stream_writer.StreamWriter's interface; `evstream convert` / `record`
# through sources/writers.py). Each holds at most one packet plus the buffer named below, so a
# file larger than memory converts:
# - NpyWriter: one structured array (t int64, x/y uint16, p int8) appended as it comes; the
#   header (with the count) sits in a fixed HEADER_BYTES at the start and is rewritten after
#   every write(), so a killed writer leaves a .npy holding every event written. Peak memory:
#   the packet in hand.
# - NpzWriter: a .npz (zip of t, x, y, p .npy members plus width/height) cannot grow member by
#   member, so each field goes to a hidden temporary file beside OUT as it comes, and close()
#   stores them into the zip, COPY_BYTES at a time (zip64, stored, or deflated with
#   compress=True). Peak memory: the packet in hand plus COPY_BYTES; peak disk: the events
#   twice (the temporaries and the zip) during close(). Nothing is readable before close():
#   a killed writer leaves an empty OUT and its hidden temporaries (.evstream-*.t/x/y/p).
# - H5Writer: the DSEC layout in chunked, resizable datasets (events/t as uint32 relative to
#   t_offset, the first event's time, widened in place to int64 chunk by chunk if a recording
#   outgrows 71.6 min; events/x, y uint16, p uint8; ms_to_idx; width/height root attributes),
#   appended every `chunk_events` events, optional compression (gzip, lzf, or hdf5plugin's
#   zstd / blosc, the filters DSEC's own files use). Peak memory: the packet in hand plus
#   chunk_events. HDF5 gives no crash guarantee: the file is flushed every SYNC_S as a best
#   effort, but a killed writer may leave a file h5py cannot open.
# All three hold events only (frames, IMU samples, triggers: dropped and counted).

NPY_FIELDS = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
HEADER_BYTES = 192
COPY_BYTES = 1 << 20
_ARRAY_CANNOT = {k: f"event arrays hold events only (no {NAMES[k]})"
                 for k in ("frames", "imu", "triggers")}
_NPZ_FIELDS = {"t": np.dtype("<i8"), "x": np.dtype("<u2"), "y": np.dtype("<u2"),
               "p": np.dtype("i1")}


def _npy_header(dtype: np.dtype, n: int, size: int | None = None) -> bytes:
    """A version 1.0 .npy header for a 1-D array of n items, padded to `size` bytes."""
    body = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (int(n),)}).encode("latin1")
    size = size or -(-(len(body) + 11) // 64) * 64
    pad = size - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"an npy header of {len(body)} bytes does not fit {size}")
    return b"\x93NUMPY\x01\x00" + (size - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


def _fields(ev: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.empty(len(ev), dtype)
    for k in ("t", "x", "y"):
        out[k] = ev[k]
    out["p"] = ev["p"] > 0
    return out


class NpyWriter(StreamWriter):
    """A .npy structured array of events, written as it comes (see the notes above)."""

    format_name = "npy"
    suffixes = (".npy",)
    cannot = _ARRAY_CANNOT

    def __init__(self, path, *, width, height, **kw):
        super().__init__(path, width=width, height=height, **kw)
        self._f = self._create()
        self._f.write(_npy_header(NPY_FIELDS, 0, HEADER_BYTES))
        self._sync()

    def _write(self, events, frames, imu, triggers):
        if not len(events):
            return
        self._f.write(_fields(events, NPY_FIELDS).tobytes())
        self.written["events"] += len(events)
        self._f.seek(0)
        self._f.write(_npy_header(NPY_FIELDS, self.written["events"], HEADER_BYTES))
        self._f.seek(0, os.SEEK_END)
        self._sync()


class NpzWriter(StreamWriter):
    """A .npz of t, x, y, p arrays plus width/height (as write_npz), through temporary files
    (see the notes above)."""

    format_name = "npz"
    suffixes = (".npz",)
    cannot = _ARRAY_CANNOT

    def __init__(self, path, *, width, height, compress: bool = False, **kw):
        import secrets

        super().__init__(path, width=width, height=height, **kw)
        self.compress = bool(compress)
        self._f = self._create()
        folder = os.path.dirname(os.path.abspath(self.path))
        token = secrets.token_hex(4)
        self._tmp = {k: os.path.join(folder, f".evstream-{token}.{k}") for k in _NPZ_FIELDS}
        self._parts = {}
        try:
            for k, name in self._tmp.items():
                self._parts[k] = self._create(name)
        except EvstreamError:
            self.abort()
            raise

    def _write(self, events, frames, imu, triggers):
        if not len(events):
            return
        for k, dtype in _NPZ_FIELDS.items():
            v = events[k] > 0 if k == "p" else events[k]
            self._parts[k].write(np.ascontiguousarray(v, dtype).tobytes())

    def _finish(self):
        n = self.counts["events"]
        mode = zipfile.ZIP_DEFLATED if self.compress else zipfile.ZIP_STORED
        for part in self._parts.values():
            part.flush()
        with zipfile.ZipFile(self._f, "w", mode, allowZip64=True) as z:
            for k, dtype in _NPZ_FIELDS.items():
                with z.open(f"{k}.npy", "w", force_zip64=True) as m, \
                        open(self._tmp[k], "rb") as part:
                    m.write(_npy_header(dtype, n))
                    while chunk := part.read(COPY_BYTES):
                        m.write(chunk)
            for k, v in (("width", self.width), ("height", self.height)):
                with z.open(f"{k}.npy", "w") as m:
                    np.lib.format.write_array(m, np.int64(v))
        self.written["events"] = n

    def _cleanup(self):
        for part in getattr(self, "_parts", {}).values():
            part.close()
        for name in getattr(self, "_tmp", {}).values():
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass


def h5_compression(name: str | None) -> dict:
    """h5py create_dataset keywords for a compression name: None, gzip, lzf, zstd, blosc (the
    last two through hdf5plugin)."""
    if name in (None, "none"):
        return {}
    if name in ("gzip", "lzf"):
        return {"compression": name}
    if name in ("zstd", "blosc"):
        import hdf5plugin

        return dict(hdf5plugin.Zstd() if name == "zstd" else
                    hdf5plugin.Blosc(cname="zstd", shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"compression must be none, gzip, lzf, zstd or blosc, not {name!r}")


class H5Writer(StreamWriter):
    """The DSEC layout, in chunked resizable datasets (see the notes above)."""

    format_name = "HDF5 (DSEC layout)"
    suffixes = (".h5", ".hdf5")
    cannot = _ARRAY_CANNOT

    def __init__(self, path, *, width, height, chunk_events: int = 1 << 16,
                 compression: str | None = None, **kw):
        import h5py

        super().__init__(path, width=width, height=height, **kw)
        self.chunk_events = int(chunk_events)
        filters = h5_compression(compression)
        try:
            self._h5 = h5py.File(self.path, "w")
        except OSError as e:
            raise EvstreamError(f"{self.path}: cannot create ({_first_line(e)})") from None
        f = self._h5
        f.attrs["width"], f.attrs["height"] = self.width, self.height
        g = f.create_group("events")
        chunks = (self.chunk_events,)
        self._filters = filters
        self._ds = {k: g.create_dataset(k, (0,), dtype=dt, chunks=chunks, maxshape=(None,),
                                        **filters)
                    for k, dt in (("t", np.uint32), ("x", np.uint16), ("y", np.uint16),
                                  ("p", np.uint8))}
        self._ms = f.create_dataset("ms_to_idx", (0,), dtype=np.uint64, chunks=(4096,),
                                    maxshape=(None,))
        self._t_offset = f.create_dataset("t_offset", data=np.int64(0))
        self.t_offset_us: int | None = None
        self._next_ms = 0
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def _write(self, events, frames, imu, triggers):
        if not len(events):
            return
        self._pending.append(events)
        self._n_pending += len(events)
        self._buffered(self._n_pending)
        if self._n_pending >= self.chunk_events:
            self._append()

    def _append(self) -> None:
        if not self._pending:
            return
        ev = self._pending[0] if len(self._pending) == 1 else concat_events(self._pending)
        self._pending, self._n_pending = [], 0
        if self.t_offset_us is None:
            self.t_offset_us = int(ev["t"][0])
            self._t_offset[()] = self.t_offset_us
        rel = ev["t"] - self.t_offset_us
        if int(rel[-1]) >= 1 << 32 and self._ds["t"].dtype == np.uint32:
            self._widen_t()
        base = self.written["events"]
        n = base + len(ev)
        for k, ds in self._ds.items():
            ds.resize((n,))
            ds[base:n] = rel if k == "t" else (ev["p"] > 0) if k == "p" else ev[k]
        last_ms = int(rel[-1]) // 1000
        if last_ms >= self._next_ms:
            ms = np.arange(self._next_ms, last_ms + 1, dtype=np.int64) * 1000
            idx = base + np.searchsorted(rel, ms, "left")
            m0 = self._ms.shape[0]
            self._ms.resize((m0 + len(ms),))
            self._ms[m0:] = idx.astype(np.uint64)
            self._next_ms = last_ms + 1
        self.written["events"] = n
        now = time.monotonic()
        if now - self._last_sync >= SYNC_S:
            self._last_sync = now
            self._h5.flush()

    def _widen_t(self) -> None:
        """events/t from uint32 to int64, chunk by chunk (a recording past 71.6 min)."""
        g = self._h5["events"]
        old = self._ds["t"]
        new = g.create_dataset("t_int64", (old.shape[0],), dtype=np.int64,
                               chunks=(self.chunk_events,), maxshape=(None,), **self._filters)
        for a in range(0, old.shape[0], self.chunk_events):
            new[a:a + self.chunk_events] = old[a:a + self.chunk_events]
        del g["t"]
        g.move("t_int64", "t")
        self._ds["t"] = g["t"]

    def _finish(self):
        try:
            self._append()
        finally:
            self._h5.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self):
        if getattr(self, "_h5", None) is not None and self._h5.id.valid:
            self._h5.close()
        super().abort()


def write_npz(path, events: np.ndarray, width: int, height: int) -> None:
    """t (int64 us), x, y (uint16), p (int8, 1 = ON) arrays plus width/height scalars."""
    _check_writable(events)
    with NpzWriter(path, width=width, height=height) as w:
        w.write(Packet(events=events))


def write_h5(path, events: np.ndarray, width: int, height: int,
             chunk_events: int = 1 << 20) -> None:
    """DSEC layout: events/{t,x,y,p}, t_offset, ms_to_idx, width/height root attributes."""
    _check_writable(events)
    with H5Writer(path, width=width, height=height,
                  chunk_events=min(max(len(events), 1), chunk_events)) as w:
        w.write(Packet(events=events))


def _check_writable(events: np.ndarray) -> None:
    if events.dtype != EVENT_DTYPE:
        raise ValueError("events must be EVENT_DTYPE")
