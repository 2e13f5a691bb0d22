"""DDD17 semantic segmentation, as the two public releases ship it. Both hold event tensors that
were computed once and stored (no raw events), so the `representation` and `window_us` options do
not apply: `event_channels` says what the stored tensor holds, `event_encoding` how.

Both label sets are EV-SegNet's 6 classes (labels from a Cityscapes network run on the APS frames,
grouped into categories), stored as 8-bit grey PNGs of class ids:
    0 flat, 1 background (construction + sky), 2 object, 3 vegetation (nature), 4 human,
    5 vehicle; 255 ignore.
Any other value is read as ignore (255), as EV-SegNet's loader does (label >= n_classes).
EV-SegNet's frames are DDD17's DAVIS346 APS frames cropped to their top 200 rows (346x200): its
generator drops the bottom rows (the car's hood, where the labels are noisy). The EvDistill
release pairs the same DDD17 frames with their events; its halves are expected at that 346x200
crop, but any even-width AB image is read.

kind="evsegnet" -- Shathe/Ev-SegNet (read: README.md, utils/Loader.py, generate_dataset.py,
show_events.py, train_eager.py):
    ROOT/images/<split>/<rec>_<frame>.png   grey APS frame, 346x200 (cv2.imwrite)
    ROOT/labels/<split>/<rec>_<frame>.png   class ids, 346x200
    ROOT/events/<split>/<rec>_<frame>.npy   float (200, 346, 6), channels last:
        0 ON count, 1 OFF count, 2 ON mean time, 3 ON time std, 4 OFF mean time, 5 OFF time std
        (the order of show_events.py's "our codification"; the paper's 6-channel encoding of the
        events around each frame, values already normalised by the release)
  splits: train, test, other (test = rec1487417411, other = rec1487356509). Ev-SegNet pairs the
  three folders by sorted order; here by file stem, and a stem missing from one folder is an
  error. The .npy is read as stored (channels last) and returned channels first, float32.

kind="ddd17" -- the EvDistill release, addisonwang2013/evdistill (read: README.md,
event_aps_dataset_v2.py, test_evdistill.py, evaluate.py, configs/configurations.py, visualize.py):
    ROOT/images/<split>/<name>.png   an "AB" image: left half the event image, right half the
                                      APS frame, side by side (so 692x200 for 346x200 halves)
    ROOT/labels/<split>/<name>.png   class ids for the same frame
  splits: train, val, test, other (the loader's assert); the public download holds test only.
  The official loader opens the AB PNG as RGB, splits it at width // 2 and feeds each half to a
  3-channel network after ToTensor (values / 255); here: events = the left half as float32
  (3, H, W) in [0, 1], channels in R, G, B order, exactly what their event network saw; the
  image = the right half converted to grey. What each of the three event channels encodes is not
  documented in the release (the README only says the events are "embedded and stored as
  multi-channel event images"), so they are passed on unchanged. The official loader resizes
  everything to 512x256 (bicubic; labels nearest); here the model's input geometry applies
  instead. A label PNG whose size differs from the halves is resized to it (nearest), as the
  official loader's common resize would.

A split the release lacks falls back to test for "val" (see data_base.SPLIT_FALLBACK).
"""

from __future__ import annotations

import os

import numpy as np

from evstream.distill.data_base import (EvDataset, load_npy, pick_split_dir, png_size,
                                        read_image, read_label_png)
from evstream.errors import EvstreamError

DDD17_CLASSES = ["flat", "background", "object", "vegetation", "human", "vehicle"]
# the palette EvDistill's visualize.py draws these classes with (RGB)
DDD17_COLORS = [[128, 64, 128], [70, 70, 70], [250, 170, 30], [152, 251, 152], [220, 20, 60],
                [0, 0, 142]]
EVSEGNET_CHANNELS = ("on_count", "off_count", "on_mean_t", "on_std_t", "off_mean_t", "off_std_t")


def _stems(folder: str, suffix: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise EvstreamError(f"{folder}: no such folder")
    return {f[:-len(suffix)]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(suffix) and not f.startswith(".")}


class _PairedFolders(EvDataset):
    """images/labels(/events) folders of one split, paired by file stem."""

    folders: tuple[tuple[str, str], ...] = ()
    release = "?"

    def __init__(self, root, split="train", task=None, representation=None, window_us=None,
                 input_cfg=None, cache_mb=2048, disk_cache=False):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        self.window_us = None             # stored event tensors: no window to choose
        self.classes = list(DDD17_CLASSES)
        self.colors = [list(c) for c in DDD17_COLORS]
        self._finish_task("segmentation")
        files = {}
        for sub, suffix in self.folders:
            files[sub] = _stems(pick_split_dir(os.path.join(self.root, sub), split, self.release),
                                suffix)
        names = sorted(files["images"])
        if not names:
            raise EvstreamError(f"{os.path.join(self.root, 'images')}: no PNG files for split "
                                f"{split!r}")
        for sub, found in files.items():
            if set(found) != set(names):
                odd = sorted(set(names) ^ set(found))[0]
                where = sub if odd not in found else "images"
                raise EvstreamError(f"{os.path.join(self.root, where)}: {odd!r} has no match "
                                    f"(images, labels{', events' if 'events' in files else ''} "
                                    f"must hold the same file names)")
        self.names = names
        self.files = files
        self.has_events = self.has_images = self.has_labels = True

    def __len__(self) -> int:
        return len(self.names)

    def _meta(self, i: int) -> dict:
        return {"sequence": self.names[i], "t_us": -1, "conditions": {}}


class EvSegNetDataset(_PairedFolders):
    kind = "evsegnet"
    release = "EV-SegNet DDD17 release"
    folders = (("images", ".png"), ("labels", ".png"), ("events", ".npy"))
    event_encoding = "EV-SegNet 6 channels: " + ", ".join(EVSEGNET_CHANNELS)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.event_channels = len(EVSEGNET_CHANNELS)
        self.representation = {"name": "evsegnet6"}
        size = png_size(self.files["labels"][self.names[0]])
        if size is not None:
            self.width, self.height = size

    def _raw(self, i: int, parts) -> dict:
        name = self.names[i]
        out = {}
        shape = None
        if "label" in parts:
            out["label"] = read_label_png(self.files["labels"][name])
            shape = out["label"].shape
        if "image" in parts:
            out["image"] = read_image(self.files["images"][name])
            shape = shape or out["image"].shape
        if "events" in parts:
            path = self.files["events"][name]
            ev = load_npy(path)
            if ev.ndim != 3 or ev.shape[2] != len(EVSEGNET_CHANNELS) or ev.dtype.kind not in "fiu":
                raise EvstreamError(f"{path}: {ev.dtype}{list(ev.shape)}, expected a (H, W, 6) "
                                    f"event tensor")
            out["events"] = np.ascontiguousarray(ev.transpose(2, 0, 1), dtype=np.float32)
            shape = shape or ev.shape[:2]
        for k, v in out.items():
            if v.shape[-2:] != tuple(shape):
                raise EvstreamError(f"{self.files[_FOLDER[k]][name]}: {v.shape[-1]}x"
                                    f"{v.shape[-2]}, the other files of {name!r} are "
                                    f"{shape[1]}x{shape[0]}")
        return out


_FOLDER = {"events": "events", "image": "images", "label": "labels"}


class EvDistillDataset(_PairedFolders):
    kind = "ddd17"
    release = "EvDistill DDD17 release"
    folders = (("images", ".png"), ("labels", ".png"))
    event_encoding = "EvDistill event PNG: the AB image's left half, RGB / 255"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.event_channels = 3
        self.representation = {"name": "evdistill_png"}
        first = self.files["images"][self.names[0]]
        size = png_size(first)
        if size is not None and size[0] % 2:
            raise EvstreamError(f"{first}: {size[0]} pixels wide; an AB image (events | APS "
                                f"side by side) has an even width")
        if size is not None:
            self.width, self.height = size[0] // 2, size[1]

    def _raw(self, i: int, parts) -> dict:
        import cv2

        name = self.names[i]
        path = self.files["images"][name]
        out = {}
        if "events" in parts or "image" in parts:
            ab = read_image(path, rgb=True)
            h, w = ab.shape[:2]
            if w % 2:
                raise EvstreamError(f"{path}: {w} pixels wide; an AB image (events | APS side "
                                    f"by side) has an even width")
            half = w // 2
            if "events" in parts:
                out["events"] = np.ascontiguousarray(
                    ab[:, :half].transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255)
            if "image" in parts:
                out["image"] = cv2.cvtColor(np.ascontiguousarray(ab[:, half:]),
                                            cv2.COLOR_RGB2GRAY)
        if "label" in parts:
            lpath = self.files["labels"][name]
            lab = read_label_png(lpath)
            size = png_size(path)
            hw = (size[1], size[0] // 2) if size is not None else lab.shape
            if lab.shape != hw:
                lab = cv2.resize(lab, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
            out["label"] = lab
        return out
