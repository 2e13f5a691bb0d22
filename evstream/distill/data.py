"""Training datasets: one sample contract over every layout evstream trains on.

    ds = open_dataset("runs/synth", split="train", representation={"name": "voxel",
                      "num_bins": 5, "normalize": True}, window_us=50_000,
                      input_cfg=model_cfg["input"])
    loader = DataLoader(UnpairedDataset(ds, seed=0), batch_size=8, shuffle=True,
                        num_workers=2, collate_fn=collate)

A sample is a dict:
    "events"  float32 (C, H, W): the representation of the events in [t - window_us, t), t the
              sample time (layouts that ship stored event tensors give those; `event_channels`
              says C); absent when the dataset has no events
    "image"   float32 (1, H, W): the APS frame (grey) scaled to [-1, 1] (E2A's tanh range); absent
              when there is none
    "label"   int64 (H, W), 255 = ignore (segmentation; values >= the number of classes are read
              as 255), or an int64 scalar (classification); absent when unlabelled
    "meta"    {"dataset": kind, "sequence": name, "index": i, "t_us": sample time (-1 when the
              layout has no times), "conditions": {...} (synth: illumination, motion), and, through
              the paired/unpaired wrappers, "pair_index": the index the image and label came from}
With input_cfg (the model config's "input" block, or a whole model config) the model's geometry
is applied to all three through evstream.nn.geometry.to_network: crop, resize (bilinear; labels
nearest-exact), pad to the multiple (0; labels 255). Without it, the layout's native size.
A dataset object has .kind, .classes, .colors (or None), .task ("segmentation" |
"classification" | None), .has_events / .has_images / .has_labels, .event_channels,
.representation, .window_us, .height / .width (the native sample size before geometry, None
when samples differ), and get(i, parts) for a subset of {"events", "image", "label", "meta"}
(a sample without "meta" in parts has no meta).

Layouts (kind=None detects them, in this order; each module's essay documents its layout):
    synth      ROOT/manifest.json ("evstream-synth")                        data_stream.py
    evsegnet   ROOT/images/, labels/, events/ (EV-SegNet's DDD17)           data_ddd17.py
    ddd17      ROOT/images/, labels/ (EvDistill's DDD17 AB images)          data_ddd17.py
    nmnist     ROOT/Train|Test/<digit>/*.bin (N-MNIST, the folder is the split)  data_nmnist.py
    ncaltech   ROOT/N-Caltech101|Caltech101/<class>/*.bin (+ 101_ObjectCategories/)
                                                                            data_ncaltech.py
    dsec       an .h5 file, or folders with events/left/events.h5 (+ DSEC-Semantic labels)
                                                                            data_dsec.py
    recording  an .aedat4 file, or a folder holding .aedat4 files           data_stream.py
Layout-specific options go through open_dataset's **options (disk_cache and cache_mb for all;
stride_us for recording/dsec; sensor_size for ncaltech/dsec; dsec_classes, rectify for dsec); an
option a layout does not take is a one-line error.

Pairing. PairedDataset(ds)[i] is ds[i]: events, image and label of the same instant (what a
DAVIS gives). UnpairedDataset(ds, seed)[i] takes the events (and meta) of sample i and the image
and label of sample perm[i], perm a permutation of the indices drawn from (seed, epoch): every
image is used once per epoch, the pairing is deterministic for a given seed and epoch and
changes with set_epoch(e). Call set_epoch before creating each epoch's DataLoader iterator: a
DataLoader copies the dataset into its workers when the iterator starts, so with
persistent_workers=True the workers keep the epoch they started with.

collate(batch) stacks the tensors and turns meta into a dict of lists; it works as the
DataLoader's collate_fn with num_workers=0 or more (samples are plain tensors and python
values; dataset objects pickle without their caches or open files).

Errors: a missing root, a layout that cannot be told, a bad manifest, an unreadable or corrupt
file -> one-line EvstreamError naming the path. Errors found while reading a sample in a
DataLoader worker come back through torch, which adds the worker's traceback to the message.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

from evstream.distill.data_base import ALL_PARTS, EvDataset
from evstream.distill.data_ddd17 import EvDistillDataset, EvSegNetDataset
from evstream.distill.data_dsec import EVENTS_REL, DsecDataset
from evstream.distill.data_ncaltech import NCaltechDataset, find_event_root
from evstream.distill.data_nmnist import NMnistDataset, is_nmnist_root
from evstream.distill.data_stream import MANIFEST, RecordingDataset, SynthDataset
from evstream.errors import EvstreamError

__all__ = ["KINDS", "EvDataset", "PairedDataset", "UnpairedDataset", "collate", "detect_kind",
           "open_dataset"]

KINDS: dict[str, type[EvDataset]] = {
    "synth": SynthDataset,
    "recording": RecordingDataset,
    "ddd17": EvDistillDataset,
    "evsegnet": EvSegNetDataset,
    "ncaltech": NCaltechDataset,
    "nmnist": NMnistDataset,
    "dsec": DsecDataset,
}


def open_dataset(root, split: str = "train", task: str | None = None,
                 representation: dict | None = None, window_us: int | None = 50_000,
                 input_cfg: dict | None = None, kind: str | None = None,
                 **options) -> EvDataset:
    """Open the dataset at `root` (see the module essay)."""
    root = os.fspath(root)
    if kind is None:
        kind = detect_kind(root)
    elif not os.path.exists(root):
        raise EvstreamError(f"{root}: no such file or folder")
    if kind not in KINDS:
        raise EvstreamError(f"{root}: unknown dataset kind {kind!r} (known: "
                            f"{', '.join(sorted(KINDS))})")
    cls = KINDS[kind]
    args = dict(split=split, task=task, representation=representation, window_us=window_us,
                input_cfg=input_cfg, **options)
    try:
        inspect.signature(cls).bind(root, **args)
    except TypeError:
        valid = [p for p in inspect.signature(cls).parameters
                 if p not in ("root", "split", "task", "representation", "window_us",
                              "input_cfg")]
        bad = sorted(set(options) - set(valid))
        raise EvstreamError(f"{root}: option {', '.join(bad)} not valid for {kind} datasets "
                            f"(valid: {', '.join(valid)})") from None
    return cls(root, **args)


def detect_kind(root) -> str:
    """The layout of `root` (see the module essay for the order)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise EvstreamError(f"{root}: no such file or folder")
    if os.path.isfile(root):
        low = root.lower()
        if low.endswith(".aedat4"):
            return "recording"
        if low.endswith((".h5", ".hdf5")):
            return "dsec"
        raise EvstreamError(f"{root}: not a dataset (a dataset file is an .aedat4 recording or "
                            f"an .h5 events file; other layouts are folders)")
    isdir = lambda *p: os.path.isdir(os.path.join(root, *p))  # noqa: E731
    if os.path.isfile(os.path.join(root, MANIFEST)):
        return "synth"
    if isdir("images") and isdir("labels"):
        return "evsegnet" if isdir("events") else "ddd17"
    if is_nmnist_root(root):
        return "nmnist"
    if find_event_root(root) is not None:
        return "ncaltech"
    if _looks_dsec(root):
        return "dsec"
    if _has_aedat4(root, depth=3):
        return "recording"
    raise EvstreamError(f"{root}: cannot tell the dataset layout (no {MANIFEST}, images/ + "
                        f"labels/, N-MNIST Train/Test digit folders or N-Caltech101 class "
                        f"folders of .bin files, DSEC {EVENTS_REL} or .h5 files, or .aedat4 "
                        f"recordings); pass kind=")


def _looks_dsec(root: str) -> bool:
    if os.path.isfile(os.path.join(root, EVENTS_REL)):
        return True
    for d in os.listdir(root):
        full = os.path.join(root, d)
        if d.lower().endswith((".h5", ".hdf5")) and os.path.isfile(full):
            return True
        if os.path.isdir(full):
            if os.path.isfile(os.path.join(full, EVENTS_REL)):
                return True
            for s in os.listdir(full):          # split folders: ROOT/<split>/<seq>/events/...
                if os.path.isfile(os.path.join(full, s, EVENTS_REL)):
                    return True
    return False


def _has_aedat4(folder: str, depth: int) -> bool:
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if name.lower().endswith(".aedat4") and os.path.isfile(full):
            return True
        if depth > 1 and os.path.isdir(full) and _has_aedat4(full, depth - 1):
            return True
    return False


# -- pairing ---------------------------------------------------------------------------------------

class _Wrapper(torch.utils.data.Dataset):
    def __init__(self, base: EvDataset):
        if not isinstance(base, EvDataset):
            raise TypeError(f"expected a dataset from open_dataset, got {type(base).__name__}")
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):
        # classes, task, has_*, event_channels ... of the wrapped dataset
        if name in ("base", "epoch") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


class PairedDataset(_Wrapper):
    """Events, image and label of the same instant (see the module essay)."""

    def __getitem__(self, i: int) -> dict:
        s = self.base.get(i, ALL_PARTS)
        s["meta"]["pair_index"] = s["meta"]["index"]
        return s


class UnpairedDataset(_Wrapper):
    """Events of sample i with the image and label of a seeded permutation's i-th index."""

    def __init__(self, base: EvDataset, seed: int = 0):
        super().__init__(base)
        if not base.has_events or not (base.has_images or base.has_labels):
            raise EvstreamError(f"{base.root}: unpaired sampling needs events and images or "
                                f"labels (this {base.kind} dataset has events={base.has_events},"
                                f" images={base.has_images}, labels={base.has_labels})")
        self.seed = int(seed)
        self._perm_epoch = None
        self._perm = None

    def pair_index(self, i: int) -> int:
        i = self.base.check_index(int(i))
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._perm = rng.permutation(len(self.base))
            self._perm_epoch = self.epoch
        return int(self._perm[i])

    def __getitem__(self, i: int) -> dict:
        j = self.pair_index(i)
        s = self.base.get(i, {"events", "meta"})
        s.update(self.base.get(j, {"image", "label"}))
        s["meta"]["pair_index"] = j
        return s


# -- batching --------------------------------------------------------------------------------------

TENSOR_KEYS = ("events", "image", "label")


def collate(batch: list[dict]) -> dict:
    """Stack "events"/"image"/"label" into batch tensors; meta becomes a dict of lists."""
    if not batch:
        raise ValueError("collate: empty batch")
    keys = set(batch[0])
    for k, s in enumerate(batch):
        if set(s) != keys:
            raise ValueError(f"collate: sample {k} has {sorted(s)}, sample 0 {sorted(keys)}")
    out = {}
    for key in TENSOR_KEYS:
        if key in keys:
            out[key] = torch.stack([s[key] for s in batch])
    if "meta" in keys:
        out["meta"] = {k: [s["meta"].get(k) for s in batch] for k in batch[0]["meta"]}
    return out
