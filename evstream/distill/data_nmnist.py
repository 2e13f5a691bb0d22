"""N-MNIST (real ATIS recordings of MNIST digits): event classification, 10 classes.

Layout (the published archive, unpacked):
    ROOT/Train/<digit>/<mnist index>.bin     ATIS 40-bit events, 34x34, ~300 ms, three saccades
    ROOT/Test/<digit>/<mnist index>.bin
A root may hold only one of the two folders. The folder is the split and the digit folder the
label (0-9). N-MNIST has no APS frames (an ATIS watched the digits on a screen), so it has
events and labels only: it trains the event student with ground-truth labels (setting
events_gt), not a distillation.

Splits:
    train   Train/ minus the validation hold-out
    val     every tenth recording of each digit in Train/ (positions k % 10 == 9 of the files
            sorted by their numeric index): a fixed, class-balanced hold-out
    test    Test/ (the official test set)
    all     Train/ and Test/ together
A split whose folder is missing is a one-line error naming the folder.

Events: read with evstream's ATIS reader into a 34x34 sensor (events outside it are dropped and
counted by the reader). One sample per recording, at its end (last event t + 1); the window is
[t_end - window_us, t_end), so a window_us longer than the recordings (~310 ms) sees all three
saccades, as the live pipeline does with the same window.
"""

from __future__ import annotations

import os

from evstream.distill.data_base import EvDataset, SeqData
from evstream.distill.data_ncaltech import decode_bin, recording_window
from evstream.errors import EvstreamError

SPLIT_DIRS = ("Train", "Test")
CLASSES = tuple(str(d) for d in range(10))
SENSOR = (34, 34)                      # width, height
VAL_EVERY = 10                         # every tenth Train recording of a digit is "val"


def _has_digit_bins(folder: str) -> bool:
    if not os.path.isdir(folder):
        return False
    for d in CLASSES:
        sub = os.path.join(folder, d)
        if os.path.isdir(sub) and any(f.endswith(".bin") for f in os.listdir(sub)):
            return True
    return False


def is_nmnist_root(root: str) -> bool:
    """ROOT/Train or ROOT/Test holding digit folders of .bin recordings."""
    return any(_has_digit_bins(os.path.join(root, d)) for d in SPLIT_DIRS)


def _stem_key(name: str):
    stem = name[:-4]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def list_recordings(folder: str) -> list[tuple[str, int, int]]:
    """(path, label, position within its digit) for every .bin under folder/<digit>/."""
    out = []
    for label, d in enumerate(CLASSES):
        sub = os.path.join(folder, d)
        if not os.path.isdir(sub):
            continue
        names = sorted((f for f in os.listdir(sub) if f.endswith(".bin")
                        and not f.startswith(".")), key=_stem_key)
        out += [(os.path.join(sub, f), label, k) for k, f in enumerate(names)]
    return out


class NMnistDataset(EvDataset):
    kind = "nmnist"

    def __init__(self, root, split="train", task=None, representation=None, window_us=None,
                 input_cfg=None, cache_mb=1024, disk_cache=False):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        if split not in ("train", "val", "test", "all", None):
            raise EvstreamError(f"{self.root}: no split {split!r} (N-MNIST splits: train, val, "
                                f"test, all)")
        self.width, self.height = SENSOR
        self.classes = list(CLASSES)
        self._finish_task("classification")
        self.files: list[tuple[str, int]] = []
        wanted = {"train": ("Train",), "val": ("Train",), "test": ("Test",),
                  "all": SPLIT_DIRS, None: SPLIT_DIRS}[split]
        for d in wanted:
            folder = os.path.join(self.root, d)
            if not _has_digit_bins(folder):
                if split in ("all", None):
                    continue
                raise EvstreamError(f"{folder}: no N-MNIST recordings (<digit>/*.bin) for split "
                                    f"{split!r}")
            for path, label, k in list_recordings(folder):
                held_out = k % VAL_EVERY == VAL_EVERY - 1
                if (split == "train" and held_out) or (split == "val" and not held_out):
                    continue
                self.files.append((path, label))
        if not self.files:
            raise EvstreamError(f"{self.root}: no N-MNIST recordings in split {split!r}")
        self._setup_representation()
        self.has_events = self.has_labels = True
        self.has_images = False

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: str) -> SeqData:
        return self.cache.get(path, lambda: decode_bin(path, self.width, self.height))

    def _raw(self, i: int, parts) -> dict:
        path, label = self.files[i]
        out = {}
        if "events" in parts:
            out["events"] = recording_window(self, self._load(path))
        if "label" in parts:
            out["label"] = label
        return out

    def _meta(self, i: int) -> dict:
        path, label = self.files[i]
        data = self._load(path)
        t_us = int(data.t[-1]) + 1 if len(data.t) else 0
        return {"sequence": f"{label}/{os.path.basename(path)[:-4]}", "t_us": t_us,
                "conditions": {}}
