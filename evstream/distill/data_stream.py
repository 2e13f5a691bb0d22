"""Event streams with APS frames: `evstream synth` datasets and the user's own recordings.

kind="synth" -- the layout `evstream synth` writes (contract section 5):
    ROOT/manifest.json       {"format": "evstream-synth", "version": 1, "task": "seg" | "cls",
                              "width", "height", "classes", "colors", "splits": {split: [names]},
                              "sequences": [{"name", "split", "conditions", "label" (cls)}...]}
    ROOT/<name>/events.aedat4             events + grey APS frames
            or  events.h5 + frames.npz    DSEC-layout events; t_us int64 (M,), frames uint8 (M,H,W)
    ROOT/<name>/labels.npz                seg: t_us (M,) = the frame times, labels uint8 (M,H,W);
                                          cls: label (scalar; the manifest's "label" wins)
  One sample per APS frame: events in [t_frame - window_us, t_frame) through the representation,
  the frame, and the frame's label map (seg) or the sequence's class (cls). The label times must
  equal the frame times exactly; anything else is a one-line error naming labels.npz. Splits are
  the manifest's (by sequence, never by frame); split="all" takes every sequence.

kind="recording" -- `evstream record` output (or any .aedat4): ROOT is one .aedat4 file or a
  folder of them (searched recursively; hidden files skipped). A folder with a sub-folder named
  like the split uses that sub-folder; otherwise every split name gives all the files. Samples
  at the APS frame times, as above, without labels; a recording without frames is sampled every
  `stride_us` (default window_us) from its first event + window_us, events only. A folder mixing
  recordings with and without frames yields no images at all (has_images False).

Events are decoded once per sequence (aedat4 through evstream's reader, bad events dropped and
counted; h5 through its array reader) and cached (data_base.py: memory LRU, optional .npy cache
beside the file). A window before the first event is simply empty: every frame is a sample.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from evstream.distill.data_base import (EvDataset, SeqData, cached_decode, grey_frame, load_npz,
                                        make_seqdata)
from evstream.errors import EvstreamError
from evstream.types import concat_events

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SYNTH_TASKS = {"seg": "segmentation", "cls": "classification"}


# -- decoding --------------------------------------------------------------------------------

def decode_recording(path: str) -> SeqData:
    """Every event and APS frame of one .aedat4 file."""
    from evstream.sources import open_source

    src = open_source(path, bad_events="drop")
    try:
        batches, frames = [], []
        for pkt in src.packets():
            batches.append(pkt.events)
            frames.extend(pkt.frames)
        width, height = int(src.width), int(src.height)
    finally:
        src.close()
    events = concat_events(batches)
    if not frames:
        return make_seqdata(events, width=width, height=height)
    images = [grey_frame(np.asarray(f.image)) for f in frames]
    for k, img in enumerate(images):
        if img.shape != (height, width):
            raise EvstreamError(f"{path}: APS frame {k} is {img.shape[1]}x{img.shape[0]}, the "
                                f"events {width}x{height}; frames must cover the event sensor")
    return make_seqdata(events, np.array([f.t_us for f in frames], np.int64),
                        np.stack(images).astype(np.uint8, copy=False), width=width,
                        height=height)


def decode_h5_with_frames(events_path: str, frames_path: str, width: int,
                          height: int) -> SeqData:
    from evstream.sources import open_source

    src = open_source(events_path, width=width, height=height)
    try:
        events = concat_events([pkt.events for pkt in src.packets()])
    finally:
        src.close()
    z = load_npz(frames_path, ("t_us", "frames"))
    frames = z["frames"]
    if frames.ndim != 3 or frames.shape[1:] != (height, width) or frames.dtype != np.uint8 \
            or len(z["t_us"]) != len(frames):
        raise EvstreamError(f"{frames_path}: frames {frames.dtype}{list(frames.shape)} with "
                            f"{len(z['t_us'])} times; expected uint8 (M, {height}, {width})")
    return make_seqdata(events, z["t_us"], frames, width=width, height=height)


# -- synth ---------------------------------------------------------------------------------------

def read_manifest(root: str) -> dict:
    """ROOT/manifest.json, checked; a bad one is one line naming it."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise EvstreamError(f"{root}: no {MANIFEST} (not an evstream synth dataset)")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except json.JSONDecodeError as e:
        raise EvstreamError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvstreamError(f"{path}: cannot read ({e})") from None
    if not isinstance(m, dict) or m.get("format") != "evstream-synth":
        fmt = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise EvstreamError(f"{path}: format {fmt!r}, expected 'evstream-synth'")
    if m.get("version") != 1:
        raise EvstreamError(f"{path}: version {m.get('version')!r}; this evstream reads "
                            f"version 1")
    if m.get("task") not in SYNTH_TASKS:
        raise EvstreamError(f"{path}: task {m.get('task')!r}, expected 'seg' or 'cls'")
    for k in ("width", "height"):
        v = m.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise EvstreamError(f"{path}: {k} {v!r} is not a positive integer")
    classes = m.get("classes")
    if not isinstance(classes, list) or not classes or \
            not all(isinstance(c, str) for c in classes):
        raise EvstreamError(f"{path}: classes must be a non-empty list of names")
    seqs = m.get("sequences")
    if not isinstance(seqs, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in seqs):
        raise EvstreamError(f"{path}: sequences must be a list of objects with a 'name'")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in splits.values()):
        raise EvstreamError(f"{path}: splits must map split names to lists of sequence names")
    known = {s["name"] for s in seqs}
    for split, names in splits.items():
        missing = [n for n in names if n not in known]
        if missing:
            raise EvstreamError(f"{path}: split {split!r} names {missing[0]!r}, which is not "
                                f"in sequences")
    if m["task"] == "cls":
        for s in seqs:
            lab = s.get("label")
            if not isinstance(lab, int) or isinstance(lab, bool) or \
                    not 0 <= lab < len(classes):
                raise EvstreamError(f"{path}: sequence {s['name']!r} has label {lab!r}, not a "
                                    f"class index below {len(classes)}")
    return m


@dataclasses.dataclass
class _Seq:
    name: str
    folder: str
    conditions: dict
    label: int | None = None


class SynthDataset(EvDataset):
    kind = "synth"

    def __init__(self, root, split="train", task=None, representation=None, window_us=50_000,
                 input_cfg=None, cache_mb=2048, disk_cache=False):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        if self.window_us is None:
            raise EvstreamError(f"{self.root}: a synth dataset needs a window_us")
        m = read_manifest(self.root)
        self.manifest = m
        self.width, self.height = m["width"], m["height"]
        self.classes = list(m["classes"])
        colors = m.get("colors")
        self.colors = [list(c) for c in colors] if isinstance(colors, list) else None
        self._finish_task(SYNTH_TASKS[m["task"]])
        if split in ("all", None):
            names = [s["name"] for s in m["sequences"]]
        elif split in m["splits"]:
            names = list(m["splits"][split])
        else:
            raise EvstreamError(f"{os.path.join(self.root, MANIFEST)}: no split {split!r} "
                                f"(it has: {', '.join(sorted(m['splits'])) or 'none'})")
        by_name = {s["name"]: s for s in m["sequences"]}
        self.seqs = [_Seq(n, os.path.join(self.root, n), dict(by_name[n].get("conditions") or {}),
                          by_name[n].get("label")) for n in names]
        self._setup_representation()
        self.has_events = self.has_images = self.has_labels = True
        seq_idx, times = [], []
        for k, s in enumerate(self.seqs):
            self._events_file(s)                       # exists, or a one-line error now
            if self.task == "segmentation":
                t = load_npz(os.path.join(s.folder, "labels.npz"), ("t_us",))["t_us"]
            else:
                t = self._frames_t(s)
            t = np.asarray(t, np.int64).reshape(-1)
            seq_idx.append(np.full(len(t), k, np.int32))
            times.append(t)
        self._seq_idx = np.concatenate(seq_idx) if seq_idx else np.zeros(0, np.int32)
        self._frame_idx = np.concatenate([np.arange(len(t)) for t in times]) if times else \
            np.zeros(0, np.int64)
        self._t = np.concatenate(times) if times else np.zeros(0, np.int64)

    def _events_file(self, s: _Seq) -> tuple[str, str | None]:
        a4 = os.path.join(s.folder, "events.aedat4")
        h5 = os.path.join(s.folder, "events.h5")
        if os.path.isfile(a4):
            return a4, None
        if os.path.isfile(h5):
            fr = os.path.join(s.folder, "frames.npz")
            if not os.path.isfile(fr):
                raise EvstreamError(f"{s.folder}: events.h5 without frames.npz")
            return h5, fr
        if not os.path.isdir(s.folder):
            raise EvstreamError(f"{s.folder}: sequence folder missing (named in the manifest)")
        raise EvstreamError(f"{s.folder}: no events.aedat4 or events.h5")

    def _frames_t(self, s: _Seq) -> np.ndarray:
        ev, fr = self._events_file(s)
        if fr is not None:
            return load_npz(fr, ("t_us",))["t_us"]
        return self._load(s).frames_t

    def _load(self, s: _Seq) -> SeqData:
        return self.cache.get(s.folder, lambda: self._decode(s))

    def _decode(self, s: _Seq) -> SeqData:
        ev, fr = self._events_file(s)
        if fr is None:
            data = cached_decode(ev, lambda: decode_recording(ev), self.disk_cache)
        else:
            data = cached_decode(ev, lambda: decode_h5_with_frames(ev, fr, self.width,
                                                                   self.height),
                                 self.disk_cache)
        if (data.width, data.height) != (self.width, self.height):
            raise EvstreamError(f"{ev}: {data.width}x{data.height} sensor; the manifest says "
                                f"{self.width}x{self.height}")
        if self.task != "segmentation":
            return data
        path = os.path.join(s.folder, "labels.npz")
        z = load_npz(path, ("t_us", "labels"))
        t, labels = np.asarray(z["t_us"], np.int64), z["labels"]
        if labels.ndim != 3 or labels.shape[1:] != (self.height, self.width) or \
                len(labels) != len(t) or labels.dtype != np.uint8:
            raise EvstreamError(f"{path}: labels {labels.dtype}{list(labels.shape)} with "
                                f"{len(t)} times; expected uint8 ({len(t)}, {self.height}, "
                                f"{self.width})")
        if len(t) != len(data.frames_t) or not np.array_equal(t, data.frames_t):
            bad = next((k for k in range(min(len(t), len(data.frames_t)))
                        if t[k] != data.frames_t[k]), min(len(t), len(data.frames_t)))
            raise EvstreamError(f"{path}: {len(t)} label times, {len(data.frames_t)} APS frames "
                                f"in {os.path.basename(ev)}; they differ from index {bad}")
        return dataclasses.replace(data, labels=labels)

    def __len__(self) -> int:
        return len(self._t)

    def _raw(self, i: int, parts) -> dict:
        s = self.seqs[self._seq_idx[i]]
        k = int(self._frame_idx[i])
        t = int(self._t[i])
        data = self._load(s)
        out = {}
        if "events" in parts:
            t0, t1 = self.window_bounds(t, data.t[0] if len(data.t) else t)
            out["events"] = self.represent(data.window(t0, t1), self.height, self.width, t1)
        if "image" in parts:
            if k >= len(data.frames):
                raise EvstreamError(f"{s.folder}: labels.npz has more times than the "
                                    f"{len(data.frames)} APS frames")
            out["image"] = data.frames[k]
        if "label" in parts:
            out["label"] = data.labels[k] if self.task == "segmentation" else self._cls_label(s)
        return out

    def _cls_label(self, s: _Seq) -> int:
        if s.label is not None:
            return int(s.label)
        return int(load_npz(os.path.join(s.folder, "labels.npz"), ("label",))["label"])

    def _meta(self, i: int) -> dict:
        s = self.seqs[self._seq_idx[i]]
        return {"sequence": s.name, "t_us": int(self._t[i]), "conditions": s.conditions}


# -- recordings -----------------------------------------------------------------------------------

def find_recordings(root: str, split: str | None) -> list[str]:
    if os.path.isfile(root):
        if not root.lower().endswith(".aedat4"):
            raise EvstreamError(f"{root}: not an .aedat4 recording")
        return [root]
    folder = root
    if split and os.path.isdir(os.path.join(root, split)):
        folder = os.path.join(root, split)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(".aedat4") and not f.startswith(".")]
    if not found:
        raise EvstreamError(f"{folder}: no .aedat4 recordings")
    return found


class RecordingDataset(EvDataset):
    kind = "recording"

    def __init__(self, root, split="train", task=None, representation=None, window_us=50_000,
                 input_cfg=None, cache_mb=2048, disk_cache=False, stride_us=None):
        super().__init__(root, split, task, representation, window_us, input_cfg, cache_mb,
                         disk_cache)
        self.files = find_recordings(self.root, split)
        self._finish_task(None)
        self._setup_representation()
        self.has_events = True
        self.has_labels = False
        stride = int(stride_us) if stride_us is not None else self.window_us
        seq_idx, times, frame_idx = [], [], []
        framed = []
        for k, path in enumerate(self.files):
            data = self._load(k)
            if len(data.frames_t):
                t = data.frames_t
                fi = np.arange(len(t))
                framed.append(True)
            else:
                if self.window_us is None or stride is None or stride <= 0:
                    raise EvstreamError(f"{path}: no APS frames; sampling by time needs a "
                                        f"positive window_us / stride_us")
                if len(data.t):
                    t = np.arange(int(data.t[0]) + self.window_us, int(data.t[-1]) + 2, stride,
                                  dtype=np.int64)
                else:
                    t = np.zeros(0, np.int64)
                fi = np.full(len(t), -1)
                framed.append(False)
            seq_idx.append(np.full(len(t), k, np.int32))
            times.append(np.asarray(t, np.int64))
            frame_idx.append(fi)
        sizes = {(self._load(k).width, self._load(k).height) for k in range(len(self.files))}
        if len(sizes) == 1:
            self.width, self.height = sizes.pop()
        self.has_images = all(framed)
        if any(framed) and not all(framed):
            log.info("%s: some recordings have no APS frames; images are left out", self.root)
        self._seq_idx = np.concatenate(seq_idx)
        self._t = np.concatenate(times)
        self._frame_idx = np.concatenate(frame_idx)

    def _load(self, k: int) -> SeqData:
        path = self.files[k]
        return self.cache.get(path, lambda: cached_decode(path, lambda: decode_recording(path),
                                                          self.disk_cache))

    def __len__(self) -> int:
        return len(self._t)

    def _raw(self, i: int, parts) -> dict:
        k = int(self._seq_idx[i])
        t = int(self._t[i])
        data = self._load(k)
        out = {}
        if "events" in parts:
            t0, t1 = self.window_bounds(t, data.t[0] if len(data.t) else t)
            out["events"] = self.represent(data.window(t0, t1), data.height, data.width, t1)
        if "image" in parts:
            out["image"] = data.frames[int(self._frame_idx[i])]
        return out

    def _meta(self, i: int) -> dict:
        path = self.files[int(self._seq_idx[i])]
        name = os.path.relpath(path, self.root) if os.path.isdir(self.root) else \
            os.path.basename(path)
        return {"sequence": name, "t_us": int(self._t[i]), "conditions": {}}
