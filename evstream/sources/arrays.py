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

`write_npz(path, events, width, height)` writes t, x, y, p arrays plus width/height;
`write_h5(path, events, width, height)` writes the DSEC layout (events/t as uint32 relative to
t_offset when the span allows, t_offset, ms_to_idx, width/height root attributes).
"""

from __future__ import annotations

import logging
import os
import zipfile

import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_reader
from evstream.sources.base import EventSource
from evstream.types import EVENT_DTYPE, Packet

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

def _check_writable(events: np.ndarray) -> None:
    if events.dtype != EVENT_DTYPE:
        raise ValueError("events must be EVENT_DTYPE")


def write_npz(path, events: np.ndarray, width: int, height: int) -> None:
    """t (int64 us), x, y (uint16), p (int8, 1 = ON) arrays plus width/height scalars."""
    _check_writable(events)
    with open(path, "wb") as f:
        np.savez(f, t=events["t"].astype(np.int64), x=events["x"].astype(np.uint16),
                 y=events["y"].astype(np.uint16), p=events["p"].astype(np.int8),
                 width=np.int64(width), height=np.int64(height))


def write_h5(path, events: np.ndarray, width: int, height: int,
             chunk_events: int = 1 << 20) -> None:
    """DSEC layout: events/{t,x,y,p}, t_offset, ms_to_idx, width/height root attributes."""
    import h5py

    _check_writable(events)
    t = events["t"].astype(np.int64)
    t_offset = int(t[0]) if len(t) else 0
    rel = t - t_offset
    t_dtype = np.uint32 if (not len(rel) or (rel.min() >= 0 and rel.max() < 2**32)) else np.int64
    n_ms = int(rel[-1]) // 1000 + 1 if len(rel) else 0
    ms_to_idx = np.searchsorted(rel, np.arange(n_ms, dtype=np.int64) * 1000, side="left")
    chunks = (min(max(len(t), 1), chunk_events),)
    with h5py.File(path, "w") as f:
        f.attrs["width"] = int(width)
        f.attrs["height"] = int(height)
        g = f.create_group("events")
        g.create_dataset("t", data=rel.astype(t_dtype), chunks=chunks,
                         maxshape=(None,))
        g.create_dataset("x", data=events["x"].astype(np.uint16), chunks=chunks,
                         maxshape=(None,))
        g.create_dataset("y", data=events["y"].astype(np.uint16), chunks=chunks,
                         maxshape=(None,))
        g.create_dataset("p", data=events["p"].astype(np.uint8), chunks=chunks,
                         maxshape=(None,))
        f.create_dataset("t_offset", data=np.int64(t_offset))
        f.create_dataset("ms_to_idx", data=ms_to_idx.astype(np.uint64))
