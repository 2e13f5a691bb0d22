"""What every dataset layout shares: the sample contract, the event-window cache, file helpers.

A layout module (data_stream, data_ddd17, data_ncaltech, data_dsec) subclasses `EvDataset` and
implements `_raw(i, parts)`: the sample's pieces as numpy arrays at the layout's native
resolution --
    "events": float32 (C, H, W)   a representation window (or the layout's stored event tensor)
    "image":  uint8 (H, W) grey APS frame, or float32 (H, W) already in [-1, 1]
    "label":  (H, W) integer map, or an int (classification)
and `_meta(i)`: {"sequence", "t_us", "conditions"}. `get()` turns those into the sample the
trainer sees (data.py describes it): the image scaled to [-1, 1], label values >= the number of
classes mapped to 255 (ignore), and the model's input geometry applied to all three through
evstream.nn.geometry.to_network (events and image bilinear, zero-padded; labels nearest-exact,
padded with 255). `parts` names what the caller needs, so an unpaired sample computes the event
window of one index and reads the image of another without doing the rest of either.

Event windows. A layout with raw events keeps a whole sequence decoded as one EVENT_DTYPE array
plus a contiguous copy of its t column, and cuts the window [t_end - window_us, t_end) out of it
with two np.searchsorted calls (O(log N), no copy: the representation kernels read any strided
view). Decoded sequences live in a `SequenceCache`: an LRU bounded in bytes, one per dataset
object and so one per DataLoader worker (a worker forked after the dataset was built starts with
the parent's entries, shared copy-on-write; a pickled dataset -- spawn -- starts empty).
With `disk_cache=True` a decoded sequence is also written beside the data, as
    <folder of the file>/.evstream-cache/<file name>.<size>-<mtime_ns>.<part>.npy
(part: events, t, frames_t, frames), atomically (temp file + os.replace), and later opened
with np.load(mmap_mode="r"), so every worker shares the page cache and nothing is decoded
twice. The size and mtime in the name tie the cache to one version of the file; stale versions
are removed when a new one is written. A folder that cannot be written falls back to memory
(logged once). `evstream synth` output is a good candidate; DSEC files are never cached (their
windows are read straight from the HDF5 file, see data_dsec.py).

Errors: anything wrong with the user's files is a one-line EvstreamError naming the path.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from evstream.errors import EvstreamError
from evstream.types import EVENT_DTYPE

log = logging.getLogger(__name__)

IGNORE = 255
ALL_PARTS = frozenset({"events", "image", "label", "meta"})
DEFAULT_REPRESENTATION = {"name": "voxel", "num_bins": 5, "normalize": True}
TASKS = {"segmentation": "segmentation", "seg": "segmentation",
         "classification": "classification", "cls": "classification"}
# split names a layout may lack, and the folder used instead (EV-SegNet, DSEC-Semantic and the
# EvDistill release ship train/test only; their authors validate on test)
SPLIT_FALLBACK = {"val": "test"}


# -- decoded sequences and their cache ---------------------------------------------------------

@dataclass
class SeqData:
    """One decoded sequence: sorted events, their t column (contiguous, for searchsorted), and
    its APS frames (t_us int64 (M,), uint8 (M, H, W); M may be 0)."""

    events: np.ndarray
    t: np.ndarray
    frames_t: np.ndarray
    frames: np.ndarray
    width: int
    height: int
    labels: np.ndarray | None = None      # per-frame label maps, where a layout has them

    @property
    def nbytes(self) -> int:
        arrays = (self.events, self.t, self.frames_t, self.frames, self.labels)
        return sum(a.nbytes for a in arrays if a is not None and not isinstance(a, np.memmap))

    def window(self, t0_us: int, t1_us: int) -> np.ndarray:
        """The events with t0_us <= t < t1_us (a view)."""
        a = int(np.searchsorted(self.t, t0_us, "left"))
        b = int(np.searchsorted(self.t, t1_us, "left"))
        return self.events[a:b]


def make_seqdata(events: np.ndarray, frames_t=None, frames=None, *, width: int,
                 height: int) -> SeqData:
    if frames_t is None or len(frames_t) == 0:
        frames_t = np.zeros(0, np.int64)
        frames = np.zeros((0, height, width), np.uint8)
    return SeqData(events, np.ascontiguousarray(events["t"], dtype=np.int64),
                   np.asarray(frames_t, np.int64), np.asarray(frames), int(width), int(height))


class SequenceCache:
    """LRU of decoded sequences, bounded in bytes (memory-mapped arrays count nothing). The
    newest entry is kept even when it alone exceeds the bound."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self.loads = 0              # how many times a loader ran (tests, diagnostics)

    def get(self, key, load: Callable[[], SeqData]) -> SeqData:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
            return hit
        value = load()
        self.loads += 1
        self._d[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self._bytes -= old.nbytes
        return value

    def __getstate__(self):
        return {"max_bytes": self.max_bytes, "_d": OrderedDict(), "_bytes": 0, "loads": 0}


_DISK_WARNED: set[str] = set()
_CACHE_PARTS = ("events", "t", "frames_t", "frames")


def cached_decode(path: str, decode: Callable[[], SeqData], disk_cache: bool) -> SeqData:
    """decode() the file at `path`, through the .npy cache beside it when disk_cache is set."""
    if not disk_cache:
        return decode()
    st = os.stat(path)
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), ".evstream-cache")
    base = os.path.basename(path)
    stem = os.path.join(folder, f"{base}.{st.st_size}-{st.st_mtime_ns}")
    files = {k: f"{stem}.{k}.npy" for k in _CACHE_PARTS}
    if all(os.path.exists(f) for f in files.values()):
        try:
            arr = {k: np.load(f, mmap_mode="r") for k, f in files.items()}
            if arr["events"].dtype == EVENT_DTYPE and arr["frames"].ndim == 3:
                return SeqData(arr["events"], arr["t"], arr["frames_t"], arr["frames"],
                               width=_dim(arr, 2), height=_dim(arr, 1))
        except (OSError, ValueError) as e:
            log.warning("%s: ignoring an unreadable cache entry (%s)", stem, e)
    data = decode()
    try:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):         # older versions of this file
            if name.startswith(base + ".") and not name.startswith(os.path.basename(stem) + "."):
                os.unlink(os.path.join(folder, name))
        for k, f in files.items():
            tmp = f"{f}.tmp-{os.getpid()}.npy"
            np.save(tmp, getattr(data, k))
            os.replace(tmp, f)
    except OSError as e:
        if folder not in _DISK_WARNED:
            _DISK_WARNED.add(folder)
            log.warning("%s: cannot write the event cache (%s); keeping it in memory only",
                        folder, e.strerror or e)
    return data


def _dim(arr: dict, axis: int) -> int:
    # frames carry the size when there are any; otherwise the cache stores an empty (0, H, W)
    return int(arr["frames"].shape[axis])


# -- small file readers -------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_image(path: str, *, grey: bool = True, rgb: bool = False) -> np.ndarray:
    """An image file as uint8 (H, W) grey, or (H, W, 3) in R, G, B order with rgb=True."""
    import cv2

    if not os.path.isfile(path):
        raise EvstreamError(f"{path}: no such file")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EvstreamError(f"{path}: cannot decode the image (corrupt or not an image)")
    if img.dtype != np.uint8:
        raise EvstreamError(f"{path}: {img.dtype} pixels, expected 8-bit")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if rgb:
        if img.ndim == 2:
            return np.repeat(img[:, :, None], 3, axis=2)
        return np.ascontiguousarray(img[:, :, ::-1])
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img


def read_label_png(path: str) -> np.ndarray:
    """A label map PNG holding class ids as 8-bit grey values -> uint8 (H, W).

    Palette PNGs are refused: OpenCV (the only PNG decoder here) expands a palette to colours, so
    the class ids would be lost. Every label release this module reads (EV-SegNet, EvDistill,
    DSEC-Semantic) stores grey ids."""
    import cv2

    if not os.path.isfile(path):
        raise EvstreamError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == PNG_MAGIC and len(head) >= 26 and head[25] == 3:
        raise EvstreamError(f"{path}: a palette PNG; label maps must hold class ids as 8-bit grey "
                            f"values")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EvstreamError(f"{path}: cannot decode the label map (corrupt or not an image)")
    if img.ndim == 3:
        if img.shape[2] >= 3 and np.array_equal(img[:, :, 0], img[:, :, 1]) \
                and np.array_equal(img[:, :, 0], img[:, :, 2]):
            img = img[:, :, 0]
        else:
            raise EvstreamError(f"{path}: a colour label map ({img.shape[2]} channels); label "
                                f"maps must hold class ids as 8-bit grey values")
    if img.dtype != np.uint8:
        if img.size and int(img.max()) > 255:
            raise EvstreamError(f"{path}: label values above 255 ({img.dtype})")
        img = img.astype(np.uint8)
    return img


def load_npz(path: str, keys: tuple[str, ...]) -> dict:
    """The named arrays of an .npz file; a missing or corrupt file or key is one line."""
    if not os.path.isfile(path):
        raise EvstreamError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise EvstreamError(f"{path}: lacks {', '.join(missing)} (holds "
                                    f"{', '.join(z.files) or 'nothing'})")
            return {k: z[k] for k in keys}
    except EvstreamError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/format errors of a damaged file
        raise EvstreamError(f"{path}: not a readable .npz ({first_line(e)})") from None


def load_npy(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise EvstreamError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise EvstreamError(f"{path}: not a readable .npy ({first_line(e)})") from None


def png_size(path: str) -> tuple[int, int] | None:
    """(width, height) from a PNG header without decoding it; None for other files."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != PNG_MAGIC or len(head) < 24:
        return None
    return struct.unpack(">II", head[16:24])


def first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def grey_frame(image: np.ndarray) -> np.ndarray:
    """An APS frame as uint8 (H, W): colour frames are converted, (H, W, 1) squeezed."""
    if image.ndim == 3:
        if image.shape[2] == 1:
            return image[:, :, 0]
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2GRAY)
    return image


# -- the dataset base ---------------------------------------------------------------------------

class EvDataset(torch.utils.data.Dataset):
    """Base of every layout; see the module essay. Subclasses set the attributes below and
    implement _raw / _meta / __len__."""

    kind = "?"

    def __init__(self, root, split: str, task: str | None, representation: dict | None,
                 window_us: int | None, input_cfg: dict | None, cache_mb: int = 2048,
                 disk_cache: bool = False):
        self.root = os.fspath(root)
        self.split = split
        self.requested_task = normalise_task(task, self.root)
        rep = dict(DEFAULT_REPRESENTATION if representation is None else representation)
        if "name" not in rep:
            raise EvstreamError(f"{self.root}: representation {rep!r} has no 'name'")
        self.representation = rep
        if window_us is not None and int(window_us) <= 0:
            raise EvstreamError(f"{self.root}: window_us must be positive, got {window_us}")
        self.window_us = None if window_us is None else int(window_us)
        if input_cfg is not None and "input" in input_cfg and isinstance(input_cfg["input"], dict):
            input_cfg = input_cfg["input"]           # a whole model config was passed
        self.input_cfg = input_cfg
        self.cache = SequenceCache(int(cache_mb) << 20)
        self.disk_cache = bool(disk_cache)
        # filled by subclasses
        self.classes: list[str] = []
        self.colors: list[list[int]] | None = None
        self.task: str | None = None
        self.has_events = self.has_images = self.has_labels = False
        self.event_channels = 0
        self.height: int | None = None      # native sample size where every sample shares it
        self.width: int | None = None
        self._rep = None

    # -- what subclasses implement --------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _raw(self, i: int, parts) -> dict:
        raise NotImplementedError

    def _meta(self, i: int) -> dict:
        raise NotImplementedError

    # -- shared helpers for subclasses ------------------------------------------------------
    def _finish_task(self, native: str | None) -> None:
        """Settle .task from the layout's own task (None: unlabelled) and the requested one."""
        want = self.requested_task
        if native is not None and want is not None and want != native:
            raise EvstreamError(f"{self.root}: a {native} dataset, but task={want!r} was asked")
        self.task = native or want

    def _setup_representation(self) -> None:
        from evstream.represent import get_representation

        self._rep = get_representation(self.representation["name"])
        self._rep_params = {k: v for k, v in self.representation.items() if k != "name"}
        try:
            self.event_channels = int(self._rep.channels(**self._rep_params))
        except TypeError as e:
            raise EvstreamError(f"{self.root}: representation {self.representation!r}: "
                                f"{first_line(e)}") from None

    def represent(self, events: np.ndarray, height: int, width: int, t_end_us: int) -> np.ndarray:
        """One window of events -> float32 (C, H, W) with the dataset's representation."""
        extra = {"t_ref_us": int(t_end_us)} if self.representation["name"] == "timesurface" else {}
        return self._rep.compute(events, height, width, **self._rep_params, **extra)

    def window_bounds(self, t_end_us: int, t_first_us: int) -> tuple[int, int]:
        """[t0, t1) of the window ending at t_end_us; window_us None = from the first event."""
        if self.window_us is None:
            return int(t_first_us), int(t_end_us)
        return int(t_end_us) - self.window_us, int(t_end_us)

    def check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a dataset of {n}")
        return i % n if n else i

    # -- the public side ----------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict:
        return self.get(i)

    def get(self, i: int, parts=ALL_PARTS) -> dict:
        """Sample i with only `parts` (a subset of events/image/label/meta)."""
        from evstream.nn.geometry import to_network

        i = self.check_index(int(i))
        parts = frozenset(parts)
        have = {"events": self.has_events, "image": self.has_images, "label": self.has_labels}
        want = {p for p, ok in have.items() if ok and p in parts}
        raw = self._raw(i, want) if want else {}
        out: dict = {}
        cfg = self.input_cfg
        if "events" in want:
            ev = np.ascontiguousarray(raw["events"], dtype=np.float32)
            out["events"] = to_network(ev, cfg)[0] if cfg is not None else torch.from_numpy(ev)
        if "image" in want:
            img = raw["image"]
            if img.dtype == np.uint8:
                img = img.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
            img = np.ascontiguousarray(img[None], dtype=np.float32)
            out["image"] = to_network(img, cfg)[0] if cfg is not None else torch.from_numpy(img)
        if "label" in want:
            out["label"] = self._label_tensor(raw["label"])
        if "meta" in parts:
            m = self._meta(i)
            out["meta"] = {"dataset": self.kind, "sequence": m.get("sequence", ""), "index": i,
                           "t_us": int(m.get("t_us", -1)),
                           "conditions": dict(m.get("conditions") or {})}
        return out

    def _label_tensor(self, label) -> torch.Tensor:
        from evstream.nn.geometry import to_network

        if self.task == "classification":
            return torch.tensor(int(label), dtype=torch.int64)
        lab = np.asarray(label).astype(np.int64)
        if self.classes:
            lab[(lab >= len(self.classes)) | (lab < 0)] = IGNORE
        if self.input_cfg is not None:
            return to_network(lab, self.input_cfg, labels=True)
        return torch.from_numpy(lab)

    def describe(self) -> dict:
        return {"kind": self.kind, "root": self.root, "split": self.split, "samples": len(self),
                "task": self.task, "classes": list(self.classes),
                "has_events": self.has_events, "has_images": self.has_images,
                "has_labels": self.has_labels, "event_channels": self.event_channels,
                "height": self.height, "width": self.width,
                "representation": dict(self.representation), "window_us": self.window_us}

    def __repr__(self) -> str:
        d = self.describe()
        return (f"{type(self).__name__}({d['root']!r}, split={d['split']!r}, "
                f"samples={d['samples']}, task={d['task']!r})")


def normalise_task(task: str | None, where: str) -> str | None:
    if task is None:
        return None
    if task not in TASKS:
        raise EvstreamError(f"{where}: unknown task {task!r} (known: segmentation, "
                            f"classification)")
    return TASKS[task]


def pick_split_dir(root: str, split: str, what: str) -> str:
    """root/split, or the fallback folder for a split the layout does not ship."""
    for name in (split, SPLIT_FALLBACK.get(split)):
        if name and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                  and not d.startswith(".")) if os.path.isdir(root) else []
    raise EvstreamError(f"{root}: no {split!r} split in this {what} (it has: "
                        f"{', '.join(have) or 'no folders'})")
