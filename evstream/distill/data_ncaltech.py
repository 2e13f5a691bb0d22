"""N-Caltech101 (events) with Caltech101 (images): object classification.

Layout (the two public archives unpacked side by side):
    ROOT/N-Caltech101/<class>/image_XXXX.bin      ATIS 40-bit events (the N-Caltech101 archive
      or ROOT/Caltech101/<class>/image_XXXX.bin    unpacks to Caltech101/), or ROOT/<class>/*.bin
    ROOT/101_ObjectCategories/<class>/image_XXXX.jpg   optional: the Caltech101 images
A recording and an image pair by class folder and file stem (image_0001.bin <-> image_0001.jpg);
the N-Caltech101 recordings were made by showing exactly those images to an ATIS sensor on a
moving mount. Every .bin file must then have its .jpg (a one-line error names the missing one).

Classes: the sorted names of the event class folders (101 object classes plus
BACKGROUND_Google, as both archives name them); the label is the index into that list.

Splits: the dataset has no official one. Within each class, files sorted by name: positions
k % 10 in 0..7 are "train", 8 "val", 9 "test" (80/10/10, deterministic); "all" is every file.

Events: read with evstream's ATIS reader into a fixed `sensor_size` (W, H), default 240x180, the
largest N-Caltech101 frame (recordings are cropped to their object, so most are smaller; events
outside the sensor are dropped and counted by the reader). One sample per recording, at its
end (last event t + 1): the window is [t_end - window_us, t_end), or the whole recording (all
three saccades, ~300 ms) with window_us=None.

Image: grey, scaled to fit the sensor with its aspect ratio kept, at the top-left corner, the
rest 0 (mid-grey in [-1, 1]). This is an approximation: the recordings' exact on-sensor
placement of the displayed image is not part of the dataset, which is why EvDistill uses
N-Caltech101 for unpaired (not pixel-aligned) distillation.
"""

from __future__ import annotations

import os

import numpy as np

from evstream.distill.data_base import EvDataset, SeqData, make_seqdata, read_image
from evstream.errors import EvstreamError
from evstream.types import concat_events

EVENT_DIRS = ("N-Caltech101", "Caltech101")
IMAGE_DIR = "101_ObjectCategories"
SPLIT_OF_POSITION = {**{k: "train" for k in range(8)}, 8: "val", 9: "test"}


def find_event_root(root: str) -> str | None:
    """The folder whose sub-folders are the classes holding .bin recordings."""
    for d in EVENT_DIRS:
        if _has_bins(os.path.join(root, d)):
            return os.path.join(root, d)
    if _has_bins(root):
        return root
    return None


def _has_bins(folder: str) -> bool:
    if not os.path.isdir(folder):
        return False
    for d in os.listdir(folder):
        sub = os.path.join(folder, d)
        if os.path.isdir(sub) and any(f.endswith(".bin") for f in os.listdir(sub)):
            return True
    return False


def decode_bin(path: str, width: int, height: int) -> SeqData:
    from evstream.sources import open_source

    src = open_source(path, width=width, height=height, bad_events="drop")
    try:
        events = concat_events([pkt.events for pkt in src.packets()])
    finally:
        src.close()
    return make_seqdata(events, width=width, height=height)


class NCaltechDataset(EvDataset):
    kind = "ncaltech"

    def __init__(self, root, split="train", task=None, representation=None, window_us=None,
                 input_cfg=None, cache_mb=2048, disk_cache=False, sensor_size=(240, 180)):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        ev_root = find_event_root(self.root)
        if ev_root is None:
            raise EvstreamError(f"{self.root}: no class folders with .bin recordings (looked in "
                                f"{', '.join(EVENT_DIRS)} and the folder itself)")
        if split not in ("all", None, *SPLIT_OF_POSITION.values()):
            raise EvstreamError(f"{self.root}: no split {split!r} (N-Caltech101 splits here: "
                                f"train, val, test, all)")
        self.width, self.height = (int(v) for v in sensor_size)
        self.classes = sorted(d for d in os.listdir(ev_root)
                              if os.path.isdir(os.path.join(ev_root, d)) and not d.startswith("."))
        self._finish_task("classification")
        img_root = os.path.join(self.root, IMAGE_DIR)
        self.has_images = os.path.isdir(img_root)
        self.files: list[tuple[str, int, str | None]] = []
        for c, name in enumerate(self.classes):
            bins = sorted(f for f in os.listdir(os.path.join(ev_root, name))
                          if f.endswith(".bin") and not f.startswith("."))
            for k, f in enumerate(bins):
                if split not in ("all", None) and SPLIT_OF_POSITION[k % 10] != split:
                    continue
                image = None
                if self.has_images:
                    image = os.path.join(img_root, name, f[:-4] + ".jpg")
                    if not os.path.isfile(image):
                        raise EvstreamError(f"{image}: missing (the image of "
                                            f"{os.path.join(ev_root, name, f)})")
                self.files.append((os.path.join(ev_root, name, f), c, image))
        if not self.files:
            raise EvstreamError(f"{ev_root}: no .bin recordings in split {split!r}")
        self._setup_representation()
        self.has_events = self.has_labels = True

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: str) -> SeqData:
        return self.cache.get(path, lambda: decode_bin(path, self.width, self.height))

    def _raw(self, i: int, parts) -> dict:
        path, label, image = self.files[i]
        out = {}
        if "events" in parts:
            out["events"] = recording_window(self, self._load(path))
        if "image" in parts:
            out["image"] = fit_image(read_image(image), self.height, self.width)
        if "label" in parts:
            out["label"] = label
        return out

    def _meta(self, i: int) -> dict:
        path, label, _ = self.files[i]
        seq = f"{self.classes[label]}/{os.path.basename(path)[:-4]}"
        data = self._load(path)           # cached: the events side has just read it
        t_us = int(data.t[-1]) + 1 if len(data.t) else 0
        return {"sequence": seq, "t_us": t_us, "conditions": {}}


def recording_window(ds: EvDataset, data: SeqData) -> np.ndarray:
    """The representation of a whole-recording sample: the window ending at its last event
    (t + 1), window_us long, or from its first event with window_us=None."""
    t_end = int(data.t[-1]) + 1 if len(data.t) else 0
    t0, t1 = ds.window_bounds(t_end, data.t[0] if len(data.t) else 0)
    return ds.represent(data.window(t0, t1), ds.height, ds.width, t1)


def fit_image(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w) -> float32 (height, width) in [-1, 1]: scaled to fit with its aspect ratio,
    top-left, the rest 0."""
    import cv2

    h, w = grey.shape
    s = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * s))), max(1, min(height, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(grey, (nw, nh), interpolation=interp)
    out = np.zeros((height, width), np.float32)
    out[:nh, :nw] = small.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    return out
