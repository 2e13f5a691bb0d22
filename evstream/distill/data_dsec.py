"""DSEC-style HDF5 events, optionally with DSEC-Semantic labels (kind="dsec").

Event files (DSEC's format, also what evstream.sources.arrays.write_h5 writes):
    events/{t, x, y, p}   t in us relative to t_offset; p 0/1
    t_offset              added to t (DSEC: a time of day in us)
    ms_to_idx             ms_to_idx[m] = the first event with t >= 1000 m (relative t)
    width/height          root attributes where evstream wrote the file (DSEC: 640x480, the
                          default; `sensor_size=(W, H)` overrides)
Windows are read straight from the file: ms_to_idx bounds the slice to the enclosing
milliseconds, np.searchsorted on that slice of t finds the exact [t0, t1), and only those
events are read (a DSEC sequence holds 10^8-10^9 events: nothing is decoded whole). A file
without ms_to_idx keeps its t column in memory once. The file is opened lazily in each process
(h5py handles do not survive fork). Compressed DSEC files need the `hdf5plugin` package; without
it the read fails with a one-line error that says so.

Layouts (read from uzh-rpg/ess: README.md, DSEC/dataset/sequence.py, provider.py,
utils/labels.py, DSEC/utils/eventslicer.py; and uzh-rpg/DSEC README.md):
    ROOT/<split>/<seq>/events/left/events.h5 (+ rectify_map.h5)     DSEC-Semantic: splits
    ROOT/<split>/<seq>/semantic/[left/]{11classes,19classes}/data/NNNNNN.png    train and test
    ROOT/<split>/<seq>/semantic/[left/]timestamps.txt       one us time per label, same order
    ROOT/<split>/<seq>/images/left/ev_inf/NNNNNN.png        optional: frames warped into the
                                                            event camera, one per label
  also ROOT/<seq>/events/left/events.h5 (sequence folders without splits: every split gives all
  of them), ROOT itself a sequence folder, ROOT a folder of .h5 files, or ROOT one .h5 file.
  (ESS's README puts the class folders under semantic/left/, its loader under semantic/: both
  are accepted.)

Samples: at the label timestamps of a labelled sequence; otherwise every `stride_us` (default
window_us) from the first event + window_us. Events in [t - window_us, t) are rectified when
rectify_map.h5 is there (DSEC's map, (H, W, 2) float: the rectified x, y of each raw pixel;
rounded to the nearest pixel, events that land outside the sensor dropped), then represented at
the sensor size. DSEC-Semantic labels are 640x440: ESS drops the bottom 40 rows of the event
tensor, and so do we -- events and images are cropped to the label's height (top rows).

Classes: 11 (DSEC-Semantic's: background, building, fence, person, pole, road, sidewalk,
vegetation, car, wall, traffic sign) or, with dsec_classes=19, Cityscapes' 19 train ids; 255
ignore. ESS uses every second label and skips the first ones (too few events before them); here
every label is a sample.
"""

from __future__ import annotations

import os

import numpy as np

from evstream.distill.data_base import (SPLIT_FALLBACK, EvDataset, first_line, png_size,
                                        read_image, read_label_png)
from evstream.errors import EvstreamError
from evstream.types import EVENT_DTYPE

DSEC_SIZE = (640, 480)
CLASSES_11 = ["background", "building", "fence", "person", "pole", "road", "sidewalk",
              "vegetation", "car", "wall", "traffic sign"]
CLASSES_19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
              "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
              "bus", "train", "motorcycle", "bicycle"]
EVENTS_REL = os.path.join("events", "left", "events.h5")


class H5Events:
    """Windows of one DSEC-layout events file, read on demand (see the module essay)."""

    def __init__(self, path: str, sensor_size=None):
        self.path = path
        self._f = None
        self._pid = None
        self._t_all = None
        f = self._file()
        try:
            ev = f["events"]
            self.n = int(ev["t"].shape[0])
            for k in ("x", "y", "p"):
                if int(ev[k].shape[0]) != self.n:
                    raise EvstreamError(f"{path}: events/{k} has {ev[k].shape[0]} entries, "
                                        f"events/t {self.n}")
        except KeyError as e:
            raise EvstreamError(f"{path}: lacks {e.args[0] if e.args else 'events/{t,x,y,p}'} "
                                f"(a DSEC events file holds events/t, x, y, p)") from None
        self.t_offset = int(np.asarray(f["t_offset"][()]).reshape(-1)[0]) \
            if "t_offset" in f else 0
        self.ms_to_idx = np.asarray(f["ms_to_idx"][()], np.int64) if "ms_to_idx" in f else None
        if sensor_size is not None:
            self.width, self.height = (int(v) for v in sensor_size)
        elif "width" in f.attrs and "height" in f.attrs:
            self.width, self.height = int(f.attrs["width"]), int(f.attrs["height"])
        else:
            self.width, self.height = DSEC_SIZE
        if self.n:
            self.t_first = int(self._read(ev["t"], 0, 1)[0]) + self.t_offset
            self.t_last = int(self._read(ev["t"], self.n - 1, self.n)[0]) + self.t_offset
        else:
            self.t_first = self.t_last = self.t_offset

    def _file(self):
        import h5py

        try:
            import hdf5plugin  # noqa: F401  (blosc/zstd filters of the DSEC release)
        except ImportError:
            pass
        if self._f is None or self._pid != os.getpid():
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise EvstreamError(f"{self.path}: not a readable HDF5 file "
                                    f"({first_line(e)})") from None
            self._pid = os.getpid()
        return self._f

    def _read(self, d, a: int, b: int) -> np.ndarray:
        try:
            return np.asarray(d[a:b])
        except OSError as e:
            msg = first_line(e)
            hint = " (a compression filter is missing: pip install hdf5plugin)" \
                if "filter" in msg.lower() else ""
            raise EvstreamError(f"{self.path}: cannot read {d.name}[{a}:{b}]: {msg}{hint}") \
                from None

    def window(self, t0_us: int, t1_us: int) -> np.ndarray:
        """EVENT_DTYPE events with t0_us <= t < t1_us (absolute times, t_offset included)."""
        ev = self._file()["events"]
        r0, r1 = int(t0_us) - self.t_offset, int(t1_us) - self.t_offset
        if r1 <= r0 or r1 <= 0 or self.n == 0:      # relative times are never negative
            return np.zeros(0, EVENT_DTYPE)
        if self.ms_to_idx is not None:
            m = self.ms_to_idx
            m0 = max(0, r0 // 1000)
            m1 = -(-r1 // 1000)
            lo = int(m[m0]) if m0 < len(m) else self.n
            hi = int(m[m1]) if 0 <= m1 < len(m) else self.n
            hi = max(hi, lo)
            t = self._read(ev["t"], lo, hi).astype(np.int64)
        else:
            if self._t_all is None:
                self._t_all = self._read(ev["t"], 0, self.n).astype(np.int64)
            lo, t = 0, self._t_all
        a = lo + int(np.searchsorted(t, r0, "left"))
        b = lo + int(np.searchsorted(t, r1, "left"))
        out = np.empty(b - a, EVENT_DTYPE)
        out["t"] = t[a - lo:b - lo] + self.t_offset
        out["x"] = self._read(ev["x"], a, b)
        out["y"] = self._read(ev["y"], a, b)
        out["p"] = self._read(ev["p"], a, b) > 0
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_f"] = None
        d["_pid"] = None
        return d


def _find_sequences(root: str, split: str | None) -> list[tuple[str, str]]:
    """[(name, sequence folder or .h5 file)]."""
    if os.path.isfile(root):
        if not root.lower().endswith((".h5", ".hdf5")):
            raise EvstreamError(f"{root}: not an .h5 events file")
        return [(os.path.splitext(os.path.basename(root))[0], root)]
    if os.path.isfile(os.path.join(root, EVENTS_REL)):
        return [(os.path.basename(os.path.normpath(root)), root)]
    parent = root
    if split:
        for name in (split, SPLIT_FALLBACK.get(split)):
            if name and os.path.isdir(os.path.join(root, name)):
                parent = os.path.join(root, name)
                break
    out = []
    for d in sorted(os.listdir(parent)):
        full = os.path.join(parent, d)
        if d.startswith("."):
            continue
        if os.path.isfile(os.path.join(full, EVENTS_REL)):
            out.append((d, full))
        elif os.path.isfile(full) and d.lower().endswith((".h5", ".hdf5")):
            out.append((os.path.splitext(d)[0], full))
    if not out:
        splits = [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
        raise EvstreamError(f"{parent}: no DSEC sequences (folders with {EVENTS_REL}, or .h5 "
                            f"files) for split {split!r}; folders here: "
                            f"{', '.join(splits) or 'none'}")
    return out


class _DsecSeq:
    def __init__(self, name: str, where: str, n_classes: int, sensor_size, rectify: bool):
        self.name = name
        events = where if os.path.isfile(where) else os.path.join(where, EVENTS_REL)
        self.events = H5Events(events, sensor_size)
        self.rectify_map = None
        rect = os.path.join(os.path.dirname(events), "rectify_map.h5")
        if rectify and os.path.isdir(where) and os.path.isfile(rect):
            self.rectify_map = _load_rectify(rect, self.events.width, self.events.height)
        self.labels: list[str] | None = None
        self.images: list[str] | None = None
        self.times = None
        if os.path.isdir(where):
            self._find_semantic(where, n_classes)

    def _find_semantic(self, where: str, n_classes: int) -> None:
        sem = os.path.join(where, "semantic")
        if not os.path.isdir(sem):
            return
        sub = f"{n_classes}classes"
        label_dir = next((d for d in (os.path.join(sem, "left", sub, "data"),
                                      os.path.join(sem, sub, "data")) if os.path.isdir(d)), None)
        ts = next((f for f in (os.path.join(sem, "timestamps.txt"),
                               os.path.join(sem, "left", "timestamps.txt")) if os.path.isfile(f)),
                  None)
        if label_dir is None or ts is None:
            raise EvstreamError(f"{sem}: a DSEC-Semantic folder needs {sub}/data/*.png and "
                                f"timestamps.txt")
        try:
            times = np.loadtxt(ts, dtype=np.int64, ndmin=1, comments="#")
        except ValueError as e:
            raise EvstreamError(f"{ts}: not a list of integer us times ({first_line(e)})") \
                from None
        labels = sorted(os.path.join(label_dir, f) for f in os.listdir(label_dir)
                        if f.endswith(".png"))
        if len(labels) != len(times):
            raise EvstreamError(f"{ts}: {len(times)} times for {len(labels)} label maps in "
                                f"{label_dir}")
        self.labels, self.times = labels, times
        img_dir = os.path.join(where, "images", "left", "ev_inf")
        if os.path.isdir(img_dir):
            imgs = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir)
                          if f.endswith(".png"))
            if len(imgs) != len(times):
                raise EvstreamError(f"{img_dir}: {len(imgs)} images for {len(times)} label "
                                    f"times")
            self.images = imgs


def _load_rectify(path: str, width: int, height: int) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            m = np.asarray(f["rectify_map"][()], np.float32)
    except (OSError, KeyError) as e:
        raise EvstreamError(f"{path}: not a DSEC rectify map ({first_line(e)})") from None
    if m.shape != (height, width, 2):
        raise EvstreamError(f"{path}: rectify_map is {list(m.shape)}, expected "
                            f"[{height}, {width}, 2]")
    return m


def rectify(events: np.ndarray, rect: np.ndarray, width: int, height: int) -> np.ndarray:
    """Events moved to their rectified pixel (nearest), those landing outside dropped. New array."""
    xy = rect[events["y"], events["x"]]
    x = np.rint(xy[:, 0])
    y = np.rint(xy[:, 1])
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out = events[keep].copy()
    out["x"] = x[keep].astype(np.uint16)
    out["y"] = y[keep].astype(np.uint16)
    return out


class DsecDataset(EvDataset):
    kind = "dsec"

    def __init__(self, root, split="train", task=None, representation=None, window_us=50_000,
                 input_cfg=None, cache_mb=2048, disk_cache=False, stride_us=None,
                 dsec_classes=11, rectify=True, sensor_size=None):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        if self.window_us is None:
            raise EvstreamError(f"{self.root}: DSEC windows need a window_us")
        if dsec_classes not in (11, 19):
            raise EvstreamError(f"{self.root}: dsec_classes must be 11 or 19, not "
                                f"{dsec_classes!r}")
        self.seqs = [_DsecSeq(n, w, dsec_classes, sensor_size, rectify)
                     for n, w in _find_sequences(self.root, split)]
        labelled = [s.labels is not None for s in self.seqs]
        self.has_labels = all(labelled)
        self.has_images = self.has_labels and all(s.images is not None for s in self.seqs)
        self.has_events = True
        if self.has_labels:
            self.classes = list(CLASSES_11 if dsec_classes == 11 else CLASSES_19)
        self._finish_task("segmentation" if self.has_labels else None)
        sizes = set()
        for s in self.seqs:                 # labelled samples are cropped to the label height
            size = png_size(s.labels[0]) if self.has_labels and s.labels else None
            sizes.add((s.events.width, size[1] if size else s.events.height))
        if len(sizes) == 1:
            self.width, self.height = sizes.pop()
        self._setup_representation()
        stride = int(stride_us) if stride_us is not None else self.window_us
        if stride <= 0:
            raise EvstreamError(f"{self.root}: stride_us must be positive")
        seq_idx, times, label_idx = [], [], []
        for k, s in enumerate(self.seqs):
            if s.labels is not None:
                t = s.times.astype(np.int64)
                li = np.arange(len(t))
            else:
                e = s.events
                t = np.arange(e.t_first + self.window_us, e.t_last + 2, stride, dtype=np.int64) \
                    if e.n else np.zeros(0, np.int64)
                li = np.full(len(t), -1)
            seq_idx.append(np.full(len(t), k, np.int32))
            times.append(t)
            label_idx.append(li)
        self._seq_idx = np.concatenate(seq_idx)
        self._t = np.concatenate(times)
        self._label_idx = np.concatenate(label_idx)

    def __len__(self) -> int:
        return len(self._t)

    def _raw(self, i: int, parts) -> dict:
        s = self.seqs[int(self._seq_idx[i])]
        k = int(self._label_idx[i])
        t = int(self._t[i])
        e = s.events
        out = {}
        rows = e.height
        if k >= 0:
            if "label" in parts:
                out["label"] = read_label_png(s.labels[k])
                lw, lh = out["label"].shape[1], out["label"].shape[0]
            else:
                lw, lh = png_size(s.labels[k]) or (e.width, e.height)
            if lw != e.width or lh > e.height:
                raise EvstreamError(f"{s.labels[k]}: {lw}x{lh} label map for a "
                                    f"{e.width}x{e.height} sensor")
            rows = lh
        if "events" in parts:
            t0, t1 = self.window_bounds(t, e.t_first)
            ev = e.window(t0, t1)
            if s.rectify_map is not None and len(ev):
                ev = rectify(ev, s.rectify_map, e.width, e.height)
            elif len(ev) and (int(ev["x"].max()) >= e.width or int(ev["y"].max()) >= e.height):
                ev = ev[(ev["x"] < e.width) & (ev["y"] < e.height)]
            rep = self.represent(ev, e.height, e.width, t1)
            out["events"] = rep[:, :rows]
        if "image" in parts:
            img = read_image(s.images[k])
            if img.shape[1] != e.width or img.shape[0] < rows:
                raise EvstreamError(f"{s.images[k]}: {img.shape[1]}x{img.shape[0]} image for a "
                                    f"{e.width}x{e.height} sensor")
            out["image"] = img[:rows]
        return out

    def _meta(self, i: int) -> dict:
        s = self.seqs[int(self._seq_idx[i])]
        return {"sequence": s.name, "t_us": int(self._t[i]), "conditions": {}}
