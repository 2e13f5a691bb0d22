"""Dataset loaders (evstream.distill.data): every layout on tiny files written here in the exact
public layout, the real DAVIS346 recording and real N-MNIST .bin files, geometry, paired and
unpaired sampling, DataLoader batching with 0 and 2 workers, and one-line errors."""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch

from conftest import random_events
from evstream.distill.data import (PairedDataset, UnpairedDataset, collate, detect_kind,
                                   open_dataset)
from evstream.distill.data_dsec import H5Events
from evstream.errors import EvstreamError
from evstream.nn.geometry import to_network
from evstream.represent import get_representation
from evstream.sources.arrays import write_h5
from evstream.sources.atis import write_atis_bin
from evstream.sources.writer import Aedat4Writer
from evstream.types import Frame, Packet, make_events

torch.set_num_threads(1)

W, H = 32, 24
FRAME_T = (40_000, 80_000, 120_000, 160_000)
VOXEL = {"name": "voxel", "num_bins": 3, "normalize": False}
HIST = {"name": "histogram"}
SEG_CLASSES = ["flat", "background", "object", "vegetation", "human", "vehicle"]
DAVIS = "davis346_aestream_davis.aedat4"
TENSOR_PARTS = ("events", "image", "label")


def voxel(events, height=H, width=W):
    return get_representation("voxel").compute(events, height, width, num_bins=3,
                                               normalize=False)


def window(ev, t0, t1):
    return ev[(ev["t"] >= t0) & (ev["t"] < t1)]


def one_line(e: pytest.ExceptionInfo, path) -> None:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


# -- synth -------------------------------------------------------------------------------------

def make_synth(root, task="seg", fmt="aedat4", n_seq=3):
    """A tiny `evstream synth` dataset in the contract's layout; returns what went in."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "val": [], "test": []}
    seqs, truth = [], {}
    for k in range(n_seq):
        name = f"seq_{k:04d}"
        split = ("train", "train", "val", "test")[k % 4]
        splits[split].append(name)
        rng = np.random.default_rng(k)
        ev = random_events(3000, W, H, duration_us=200_000, seed=k)
        # events exactly on window bounds: t = frame time is outside its window, t = frame
        # time - 50 ms inside
        edge = np.array([t + d for t in FRAME_T for d in (-50_000, 0) if t + d >= 0])
        ev = np.concatenate([ev, make_events(edge, np.arange(len(edge)) % W, 5, 1)],
                            dtype=ev.dtype)
        ev = ev[np.argsort(ev["t"], kind="stable")]
        frames = rng.integers(0, 256, (len(FRAME_T), H, W), dtype=np.uint8)
        labels = rng.integers(0, 6, (len(FRAME_T), H, W)).astype(np.uint8)
        labels[:, :2] = 255
        labels[:, 2, :3] = 9                      # outside the classes: read as ignore
        d = root / name
        d.mkdir()
        if fmt == "aedat4":
            with Aedat4Writer(d / "events.aedat4", width=W, height=H, frames=True) as w:
                w.write(Packet(ev, [Frame(t, frames[i]) for i, t in enumerate(FRAME_T)]))
        else:
            write_h5(d / "events.h5", ev, W, H)
            np.savez(d / "frames.npz", t_us=np.array(FRAME_T, np.int64), frames=frames)
        cond = {"illumination": ("normal", "low", "over")[k % 3], "motion": "slow"}
        entry = {"name": name, "split": split, "seed": k, "events": len(ev),
                 "frames": len(FRAME_T), "t_end_us": 200_000, "conditions": cond}
        if task == "seg":
            np.savez(d / "labels.npz", t_us=np.array(FRAME_T, np.int64), labels=labels)
        else:
            entry.update(label=k % 2, **{"class": ("cat", "dog")[k % 2]})
            np.savez(d / "labels.npz", label=np.int64(k % 2))
        seqs.append(entry)
        truth[name] = (ev, frames, labels, cond)
    manifest = {"format": "evstream-synth", "version": 1, "task": task, "width": W, "height": H,
                "classes": SEG_CLASSES if task == "seg" else ["cat", "dog"],
                "colors": [[i * 40, 0, 0] for i in range(6 if task == "seg" else 2)],
                "seed": 0, "seconds": 0.2, "frame_rate": 25, "generator": {},
                "splits": splits, "sequences": seqs}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return truth


@pytest.fixture(scope="module")
def synth_seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_seg")
    return root, make_synth(root)


def test_synth_seg_samples_match_the_files(synth_seg):
    root, truth = synth_seg
    assert detect_kind(root) == "synth"
    ds = open_dataset(root, split="train", representation=VOXEL, window_us=50_000)
    assert (ds.kind, ds.task, ds.classes, ds.event_channels) == \
        ("synth", "segmentation", SEG_CLASSES, 3)
    assert ds.has_events and ds.has_images and ds.has_labels
    assert len(ds) == 2 * len(FRAME_T)                  # seq_0000, seq_0001, one per frame
    for i in (0, 3, 5):
        s = ds[i]
        name, k = f"seq_{i // 4:04d}", i % 4
        ev, frames, labels, cond = truth[name]
        t = FRAME_T[k]
        assert s["meta"] == {"dataset": "synth", "sequence": name, "index": i, "t_us": t,
                             "conditions": cond}
        assert s["events"].dtype == torch.float32 and s["events"].shape == (3, H, W)
        np.testing.assert_allclose(s["events"].numpy(), voxel(window(ev, t - 50_000, t)),
                                   rtol=1e-5, atol=1e-5)
        assert s["events"].abs().sum() > 0
        img = s["image"]
        assert img.dtype == torch.float32 and img.shape == (1, H, W)
        assert -1 <= img.min() and img.max() <= 1
        np.testing.assert_allclose(img[0].numpy(), frames[k] / 127.5 - 1, atol=1e-6)
        lab = s["label"]
        assert lab.dtype == torch.int64 and lab.shape == (H, W)
        want = labels[k].astype(np.int64)
        want[want == 9] = 255
        assert np.array_equal(lab.numpy(), want)
        assert (lab[:2] == 255).all() and (lab[2, :3] == 255).all()
    assert len(open_dataset(root, split="val", representation=VOXEL)) == 4
    assert len(open_dataset(root, split="all", representation=VOXEL)) == 12


def test_synth_h5_variant_equals_aedat4(tmp_path, synth_seg):
    root, truth = synth_seg
    make_synth(tmp_path / "h5", fmt="h5")
    a = open_dataset(root, split="train", representation=VOXEL)
    b = open_dataset(tmp_path / "h5", split="train", representation=VOXEL)
    assert len(a) == len(b) == 8
    for i in (1, 6):
        x, y = a[i], b[i]
        for k in ("events", "image", "label"):
            assert torch.equal(x[k], y[k]), k


def test_synth_classification(tmp_path):
    make_synth(tmp_path, task="cls", n_seq=2)
    ds = open_dataset(tmp_path, split="train", representation=HIST, window_us=30_000)
    assert (ds.task, ds.classes, len(ds), ds.event_channels) == \
        ("classification", ["cat", "dog"], 8, 2)
    s0, s5 = ds[0], ds[5]
    assert s0["label"].dtype == torch.int64 and s0["label"].shape == ()
    assert (int(s0["label"]), int(s5["label"])) == (0, 1)
    assert s0["image"].shape == (1, H, W)
    with pytest.raises(EvstreamError, match="classification dataset, but task='segmentation'"):
        open_dataset(tmp_path, task="seg")


def test_synth_disk_cache_is_memory_mapped_and_equal(tmp_path):
    make_synth(tmp_path, n_seq=1)
    a = open_dataset(tmp_path, representation=VOXEL, disk_cache=True)
    sa = a[2]
    cache = tmp_path / "seq_0000" / ".evstream-cache"
    assert sorted(p.name.split(".")[-2] for p in cache.iterdir()) == \
        ["events", "frames", "frames_t", "t"]
    b = open_dataset(tmp_path, representation=VOXEL, disk_cache=True)
    sb = b[2]
    data = b.cache._d[str(tmp_path / "seq_0000")]
    assert isinstance(data.events, np.memmap) and isinstance(data.frames, np.memmap)
    for k in ("events", "image", "label"):
        assert torch.equal(sa[k], sb[k])


def test_geometry_crop_resize_pad(synth_seg):
    root, truth = synth_seg
    cfg = {"height": 8, "width": 12, "crop": [2, 4, 16, 24], "resize": [8, 12],
           "pad_multiple": 16}
    plain = open_dataset(root, representation=VOXEL)
    ds = open_dataset(root, representation=VOXEL, input_cfg={"name": "m", "input": cfg})
    s, p = ds[1], plain[1]
    assert s["events"].shape == (3, 16, 16) and s["image"].shape == (1, 16, 16)
    assert s["label"].shape == (16, 16) and s["label"].dtype == torch.int64
    assert torch.equal(s["events"], to_network(p["events"].numpy(), cfg)[0])
    assert torch.equal(s["image"], to_network(p["image"].numpy(), cfg)[0])
    # labels: the crop, nearest-exact (halving: source pixel floor((i + 0.5) * 2) = 2i + 1),
    # padded with 255
    want = p["label"][2:18, 4:28][1::2, 1::2]
    assert torch.equal(s["label"][:8, :12], want)
    assert (s["label"][8:] == 255).all() and (s["label"][:, 12:] == 255).all()
    assert (s["events"][:, 8:] == 0).all() and (s["image"][:, :, 12:] == 0).all()


def test_paired_and_unpaired_are_deterministic(synth_seg):
    root, _ = synth_seg
    ds = open_dataset(root, split="all", representation=VOXEL)
    paired = PairedDataset(ds)
    assert len(paired) == 12 and paired.classes == SEG_CLASSES and paired.task == "segmentation"
    s = paired[7]
    assert s["meta"]["pair_index"] == s["meta"]["index"] == 7

    u1, u2 = UnpairedDataset(ds, seed=3), UnpairedDataset(ds, seed=3)
    perm0 = [u1.pair_index(i) for i in range(12)]
    assert sorted(perm0) == list(range(12)) and perm0 == [u2.pair_index(i) for i in range(12)]
    assert perm0 != list(range(12))
    u1.set_epoch(1)
    perm1 = [u1.pair_index(i) for i in range(12)]
    assert sorted(perm1) == list(range(12)) and perm1 != perm0
    assert [UnpairedDataset(ds, seed=4).pair_index(i) for i in range(12)] != perm0
    u1.set_epoch(0)
    assert [u1.pair_index(i) for i in range(12)] == perm0
    i = 5
    j = perm0[i]
    x = u1[i]
    assert x["meta"]["index"] == i and x["meta"]["pair_index"] == j
    assert torch.equal(x["events"], paired[i]["events"])
    assert torch.equal(x["image"], paired[j]["image"])
    assert torch.equal(x["label"], paired[j]["label"])


def test_timesurface_gets_the_window_end_as_reference(synth_seg):
    root, truth = synth_seg
    rep = {"name": "timesurface", "tau_us": 5_000}
    s = open_dataset(root, representation=rep, window_us=30_000)[2]
    ev = truth["seq_0000"][0]
    t = FRAME_T[2]
    want = get_representation("timesurface").compute(window(ev, t - 30_000, t), H, W,
                                                      tau_us=5_000, t_ref_us=t)
    np.testing.assert_allclose(s["events"].numpy(), want, rtol=1e-6)


def test_datasets_pickle_without_their_caches(synth_seg, tmp_path):
    """What a spawn-started DataLoader worker receives: no decoded events, no open h5 file."""
    root, _ = synth_seg
    ds = open_dataset(root, representation=VOXEL)
    u = UnpairedDataset(ds, seed=2)
    u.set_epoch(3)
    a = u[4]
    assert ds.cache._d
    v = pickle.loads(pickle.dumps(u))
    assert not v.base.cache._d and v.epoch == 3 and v.classes == SEG_CLASSES
    b = v[4]
    assert b["meta"] == a["meta"] and all(torch.equal(a[k], b[k]) for k in TENSOR_PARTS)
    make_dsec_seq(tmp_path / "seq", 4)
    d = open_dataset(tmp_path / "seq", representation=HIST, window_us=40_000)
    x = d[1]
    e = pickle.loads(pickle.dumps(d))
    assert e.seqs[0].events._f is None and torch.equal(e[1]["events"], x["events"])


def test_sequence_cache_is_a_byte_bounded_lru():
    from evstream.distill.data_base import SequenceCache, make_seqdata

    def load(n):
        return lambda: make_seqdata(random_events(n, W, H), width=W, height=H)

    c = SequenceCache(max_bytes=100 * 24 + 10)      # 100 events (16 B + 8 B of t) fit
    a = c.get("a", load(60))
    assert c.get("a", load(60)) is a and c.loads == 1
    c.get("b", load(30))
    assert set(c._d) == {"a", "b"}
    c.get("c", load(30))                            # over the bound: "a" (oldest) goes
    assert set(c._d) == {"b", "c"} and c.loads == 3
    c.get("b", load(30))
    c.get("d", load(500))                           # alone over the bound: kept by itself
    assert set(c._d) == {"d"}


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches(synth_seg, workers):
    root, _ = synth_seg
    ds = open_dataset(root, split="all", representation=VOXEL)
    u = UnpairedDataset(ds, seed=1)
    u.set_epoch(2)
    loader = torch.utils.data.DataLoader(u, batch_size=5, num_workers=workers,
                                         collate_fn=collate)
    batches = list(loader)
    assert [b["events"].shape[0] for b in batches] == [5, 5, 2]
    b = batches[0]
    assert b["events"].shape == (5, 3, H, W) and b["image"].shape == (5, 1, H, W)
    assert b["label"].shape == (5, H, W) and b["label"].dtype == torch.int64
    assert b["meta"]["index"] == [0, 1, 2, 3, 4]
    assert b["meta"]["pair_index"] == [u.pair_index(i) for i in range(5)]
    assert b["meta"]["sequence"][0] == "seq_0000" and len(b["meta"]["conditions"]) == 5
    ref = collate([u[i] for i in range(10, 12)])
    for k in ("events", "image", "label"):
        assert torch.equal(batches[2][k], ref[k])


# -- recordings (the real DAVIS346 file with APS frames) ----------------------------------------

def test_real_davis346_recording(realdata, tmp_path):
    import dv_processing as dv

    src = realdata / "aedat4" / DAVIS
    (tmp_path / "rec").mkdir()
    os.symlink(src, tmp_path / "rec" / DAVIS)
    assert detect_kind(tmp_path / "rec") == "recording"
    ds = open_dataset(tmp_path / "rec", representation=HIST, window_us=40_000)
    assert (ds.kind, ds.task, ds.has_images, ds.has_labels) == ("recording", None, True, False)
    assert (ds.height, ds.width) == (260, 346)
    # independent decode with dv-processing itself
    rec = dv.io.MonoCameraRecording(str(src))
    evs, frames = [], []
    while (b := rec.getNextEventBatch()) is not None:
        evs.append(b.numpy())
    while (f := rec.getNextFrame()) is not None:
        frames.append((int(f.timestamp), f.image))
    t_all = np.concatenate([e["timestamp"] for e in evs])
    assert len(t_all) == 117_667
    assert [t for t, _ in frames] == [1633953690976518, 1633953691016518, 1633953691056518]
    assert len(ds) == 3
    for i, (t, img) in enumerate(frames):
        s = ds[i]
        assert s["meta"]["t_us"] == t and s["meta"]["sequence"] == DAVIS
        assert s["events"].shape == (2, 260, 346) and s["image"].shape == (1, 260, 346)
        n = int(((t_all >= t - 40_000) & (t_all < t)).sum())
        assert int(s["events"].sum()) == n > 0
        np.testing.assert_allclose(s["image"][0].numpy(), img.reshape(260, 346) / 127.5 - 1,
                                   atol=1e-6)
    one = open_dataset(src, representation=HIST, window_us=40_000)   # the file itself
    assert len(one) == 3 and torch.equal(one[2]["events"], ds[2]["events"])


def test_recording_without_frames_is_sampled_by_time(tmp_path):
    ev = random_events(2000, W, H, t0=1_000, duration_us=100_000, seed=7)
    with Aedat4Writer(tmp_path / "a.aedat4", width=W, height=H) as w:
        w.write(Packet(ev))
    ds = open_dataset(tmp_path, representation=HIST, window_us=20_000, stride_us=30_000)
    t0 = int(ev["t"][0])
    want = list(range(t0 + 20_000, int(ev["t"][-1]) + 2, 30_000))
    assert [ds[i]["meta"]["t_us"] for i in range(len(ds))] == want
    assert not ds.has_images and "image" not in ds[0]
    assert int(ds[1]["events"].sum()) == len(window(ev, want[1] - 20_000, want[1]))


# -- DDD17: EvDistill and EV-SegNet releases ------------------------------------------------------

def test_ddd17_evdistill_ab_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "test").mkdir(parents=True)
    (tmp_path / "labels" / "test").mkdir(parents=True)
    truth = {}
    for name in ("rec1487417411_export_10", "rec1487417411_export_11"):
        ab_rgb = rng.integers(0, 256, (12, 32, 3), dtype=np.uint8)
        ab_rgb[:, 16:] = ab_rgb[:, 16:, :1]           # the APS half is grey, as released
        cv2.imwrite(str(tmp_path / "images" / "test" / f"{name}.png"), ab_rgb[:, :, ::-1])
        lab = rng.integers(0, 6, (12, 16)).astype(np.uint8)
        lab[0] = 255
        lab[1, 0] = 7
        cv2.imwrite(str(tmp_path / "labels" / "test" / f"{name}.png"), lab)
        truth[name] = (ab_rgb, lab)
    assert detect_kind(tmp_path) == "ddd17"
    ds = open_dataset(tmp_path, split="val")            # the release has test only
    assert (ds.kind, ds.event_channels, ds.classes, len(ds)) == ("ddd17", 3, SEG_CLASSES, 2)
    assert (ds.height, ds.width) == (12, 16)
    s = ds[1]
    ab, lab = truth["rec1487417411_export_11"]
    assert s["meta"]["sequence"] == "rec1487417411_export_11" and s["meta"]["t_us"] == -1
    assert s["events"].shape == (3, 12, 16) and s["events"].dtype == torch.float32
    np.testing.assert_allclose(s["events"].numpy(), ab[:, :16].transpose(2, 0, 1) / 255,
                               atol=1e-6)
    np.testing.assert_allclose(s["image"][0].numpy(), ab[:, 16:, 0] / 127.5 - 1, atol=1e-6)
    want = lab.astype(np.int64)
    want[want == 7] = 255
    assert np.array_equal(s["label"].numpy(), want)
    with pytest.raises(EvstreamError, match="no 'train' split") as e:
        open_dataset(tmp_path, split="train")
    one_line(e, tmp_path / "images")


def test_evsegnet_npy_events(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("images", "labels", "events"):
        (tmp_path / sub / "train").mkdir(parents=True)
    ev = rng.normal(size=(12, 16, 6))                 # float64, channels last, as released
    img = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    lab = rng.integers(0, 6, (12, 16)).astype(np.uint8)
    lab[-1] = 255
    cv2.imwrite(str(tmp_path / "images" / "train" / "rec1_5.png"), img)
    cv2.imwrite(str(tmp_path / "labels" / "train" / "rec1_5.png"), lab)
    np.save(tmp_path / "events" / "train" / "rec1_5.npy", ev)
    assert detect_kind(tmp_path) == "evsegnet"
    cfg = {"crop": None, "resize": None, "pad_multiple": 16}
    ds = open_dataset(tmp_path, input_cfg=cfg)
    s = ds[0]
    assert ds.event_channels == 6 and s["events"].shape == (6, 16, 16)
    assert (ds.height, ds.width) == (12, 16)
    np.testing.assert_allclose(s["events"][:, :12].numpy(), ev.transpose(2, 0, 1), rtol=1e-6)
    assert (s["label"][12:] == 255).all() and torch.equal(s["label"][:12],
                                                           torch.from_numpy(lab.astype(np.int64)))
    np.testing.assert_allclose(s["image"][0, :12].numpy(), img / 127.5 - 1, atol=1e-6)
    cv2.imwrite(str(tmp_path / "images" / "train" / "rec1_6.png"), img)
    with pytest.raises(EvstreamError, match="'rec1_6' has no match") as e:
        open_dataset(tmp_path)
    one_line(e, tmp_path)


# -- N-Caltech101 (with the real N-MNIST .bin files) ---------------------------------------------

def test_ncaltech_with_real_nmnist_bins(realdata, tmp_path):
    bins = {"one": "nmnist_03263_aertb.bin", "anchor": "nmnist_tonic_sample.bin"}
    counts = {"one": 5_999, "anchor": 4_325}
    for cls, f in bins.items():
        (tmp_path / "Caltech101" / cls).mkdir(parents=True)
        os.symlink(realdata / "atis_bin" / f, tmp_path / "Caltech101" / cls / "image_0001.bin")
        (tmp_path / "101_ObjectCategories" / cls).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "101_ObjectCategories" / cls / "image_0001.jpg"),
                    np.full((50, 100, 3), 200, np.uint8))
    assert detect_kind(tmp_path) == "ncaltech"
    ds = open_dataset(tmp_path, split="all", representation=HIST, window_us=None,
                      sensor_size=(34, 34))
    assert (ds.task, ds.classes, len(ds)) == ("classification", ["anchor", "one"], 2)
    for i, cls in enumerate(["anchor", "one"]):
        s = ds[i]
        assert int(s["label"]) == i and s["label"].dtype == torch.int64
        assert s["events"].shape == (2, 34, 34)
        assert int(s["events"].sum()) == counts[cls]            # every event of the file
        assert s["meta"]["sequence"] == f"{cls}/image_0001"
        img = s["image"][0]
        assert img.shape == (34, 34)
        # 100x50 fitted into 34x34 keeps its aspect: 34x17 at the top, the rest 0
        assert torch.allclose(img[:17], torch.tensor(200 / 127.5 - 1)) and (img[17:] == 0).all()
    assert ds[0]["meta"]["t_us"] == 311_176                     # last event t + 1
    short = open_dataset(tmp_path, split="all", representation=HIST, window_us=50_000,
                         sensor_size=(34, 34))
    assert 0 < int(short[0]["events"].sum()) < 4_325


# -- N-MNIST (the real recordings in its published layout) ---------------------------------------

def test_nmnist_published_layout_real_recordings(realdata, tmp_path):
    root = realdata / "nmnist_real"
    per_class = [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]           # MANIFEST.md
    assert detect_kind(root) == "nmnist"
    train = open_dataset(root, split="train", representation=HIST, window_us=400_000)
    val = open_dataset(root, split="val", representation=HIST, window_us=400_000)
    assert (train.task, train.classes) == ("classification", [str(d) for d in range(10)])
    assert not train.has_images and train.has_labels and train.has_events
    assert len(train) + len(val) == 1_000
    # every tenth recording of each digit is held out: floor(n / 10) per class
    assert len(val) == sum(n // 10 for n in per_class)
    assert not {p for p, _ in train.files} & {p for p, _ in val.files}
    assert [lab for _, lab in val.files].count(7) == 11
    i = [k for k, (p, _) in enumerate(train.files) if p.endswith(os.path.join("5", "1.bin"))]
    s = train[i[0]]
    assert int(s["label"]) == 5 and s["events"].shape == (2, 34, 34)
    assert int(s["events"].sum()) == 4_681                     # Train/5/1.bin, all its events
    assert s["meta"]["t_us"] == 305_925 and s["meta"]["sequence"] == "5/1"
    with pytest.raises(EvstreamError, match="Test: no N-MNIST recordings"):
        open_dataset(root, split="test")
    # a root holding only Test/: the folder is the split
    (tmp_path / "Test" / "3").mkdir(parents=True)
    os.symlink(root / "Train" / "3" / os.listdir(root / "Train" / "3")[0],
               tmp_path / "Test" / "3" / "12.bin")
    test = open_dataset(tmp_path, split="test", representation=HIST, window_us=400_000)
    assert len(test) == 1 and int(test[0]["label"]) == 3
    with pytest.raises(EvstreamError, match="Train: no N-MNIST recordings"):
        open_dataset(tmp_path, split="train")


def test_ncaltech_splits_by_position(tmp_path):
    d = tmp_path / "N-Caltech101" / "ant"
    d.mkdir(parents=True)
    for k in range(12):
        write_atis_bin(d / f"image_{k + 1:04d}.bin", random_events(50, 30, 20, seed=k))
    sizes = {s: len(open_dataset(tmp_path, split=s, sensor_size=(30, 20), window_us=None))
             for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 10, "val": 1, "test": 1, "all": 12}
    ds = open_dataset(tmp_path, split="val", sensor_size=(30, 20), window_us=None)
    assert ds[0]["meta"]["sequence"] == "ant/image_0009" and not ds.has_images


# -- DSEC ------------------------------------------------------------------------------------------

T_OFFSET = 5_000_000_000


def make_dsec_seq(folder, seed, label_times=None, rect_shift=0):
    ev = random_events(4000, W, H, t0=T_OFFSET + 3_000, duration_us=200_000, seed=seed)
    (folder / "events" / "left").mkdir(parents=True)
    write_h5(folder / "events" / "left" / "events.h5", ev, W, H)
    if rect_shift:
        import h5py

        ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
        m = np.stack([xs + rect_shift, ys], axis=-1)
        with h5py.File(folder / "events" / "left" / "rectify_map.h5", "w") as f:
            f["rectify_map"] = m
    labels = images = None
    if label_times is not None:
        rng = np.random.default_rng(seed)
        ld = folder / "semantic" / "left" / "11classes" / "data"
        ld.mkdir(parents=True)
        idir = folder / "images" / "left" / "ev_inf"
        idir.mkdir(parents=True)
        labels = rng.integers(0, 11, (len(label_times), H - 4, W)).astype(np.uint8)
        images = rng.integers(0, 256, (len(label_times), H, W), dtype=np.uint8)
        for k in range(len(label_times)):
            cv2.imwrite(str(ld / f"{k:06d}.png"), labels[k])
            cv2.imwrite(str(idir / f"{k:06d}.png"), images[k])
        np.savetxt(folder / "semantic" / "timestamps.txt", np.array(label_times), fmt="%d")
    return ev, labels, images


def test_dsec_semantic_labels_rectify_and_crop(tmp_path):
    times = [T_OFFSET + 60_000, T_OFFSET + 150_000]
    ev, labels, images = make_dsec_seq(tmp_path / "train" / "zurich_city_00_a", 0, times,
                                       rect_shift=1)
    make_dsec_seq(tmp_path / "test" / "zurich_city_13_a", 1, times)
    assert detect_kind(tmp_path) == "dsec"
    ds = open_dataset(tmp_path, split="train", representation=VOXEL, window_us=50_000)
    assert (ds.task, len(ds.classes), len(ds), ds.has_images) == ("segmentation", 11, 2, True)
    assert (ds.height, ds.width) == (H - 4, W)
    s = ds[1]
    assert s["meta"] == {"dataset": "dsec", "sequence": "zurich_city_00_a", "index": 1,
                         "t_us": times[1], "conditions": {}}
    w = window(ev, times[1] - 50_000, times[1])
    w = w[w["x"] < W - 1].copy()
    w["x"] += 1                                     # the rectify map moves every event right
    assert s["events"].shape == (3, H - 4, W) and s["label"].shape == (H - 4, W)
    np.testing.assert_allclose(s["events"].numpy(), voxel(w)[:, :H - 4], rtol=1e-5, atol=1e-5)
    assert np.array_equal(s["label"].numpy(), labels[1])
    np.testing.assert_allclose(s["image"][0].numpy(), images[1][:H - 4] / 127.5 - 1, atol=1e-6)
    assert len(open_dataset(tmp_path, split="val", representation=VOXEL)) == 2   # -> test


def test_dsec_events_only_fixed_intervals(tmp_path):
    ev, _, _ = make_dsec_seq(tmp_path / "seq", 2)
    path = tmp_path / "seq" / "events" / "left" / "events.h5"
    ds = open_dataset(path, representation=HIST, window_us=40_000, stride_us=25_000)
    assert (ds.kind, ds.task, ds.has_labels, ds.has_images) == ("dsec", None, False, False)
    assert (ds.height, ds.width) == (H, W)
    want = list(range(int(ev["t"][0]) + 40_000, int(ev["t"][-1]) + 2, 25_000))
    assert [ds[i]["meta"]["t_us"] for i in range(len(ds))] == want
    for i in (0, 3):
        t = want[i]
        assert int(ds[i]["events"].sum()) == len(window(ev, t - 40_000, t))


def test_dsec_window_reads_exact_slices(tmp_path):
    ev, _, _ = make_dsec_seq(tmp_path / "seq", 3)
    h5 = H5Events(str(tmp_path / "seq" / "events" / "left" / "events.h5"))
    assert (h5.width, h5.height, h5.n, h5.t_first) == (W, H, len(ev), int(ev["t"][0]))
    rng = np.random.default_rng(0)
    bounds = [(T_OFFSET - 9_000, T_OFFSET - 10), (T_OFFSET - 5, T_OFFSET + 4_000),
              (T_OFFSET, T_OFFSET + 1), (T_OFFSET + 3_000, T_OFFSET + 4_000),
              (T_OFFSET + 203_000, T_OFFSET + 300_000)]
    bounds += [tuple(sorted(rng.integers(T_OFFSET, T_OFFSET + 210_000, 2))) for _ in range(20)]
    for t0, t1 in bounds:
        got = h5.window(t0, t1)
        want = window(ev, t0, t1)
        assert np.array_equal(got, want), (t0, t1)


# -- errors --------------------------------------------------------------------------------------

def test_errors_are_one_line_naming_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(EvstreamError, match="no such file or folder") as e:
        open_dataset(missing)
    one_line(e, missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(EvstreamError, match="cannot tell the dataset layout") as e:
        open_dataset(tmp_path / "empty")
    one_line(e, tmp_path / "empty")
    with pytest.raises(EvstreamError, match="unknown dataset kind 'mnist'"):
        open_dataset(tmp_path / "empty", kind="mnist")

    bad = tmp_path / "bad"
    make_synth(bad, n_seq=1)
    man = bad / "manifest.json"
    good = man.read_text()
    man.write_text(good[:-5])
    with pytest.raises(EvstreamError, match="not valid JSON") as e:
        open_dataset(bad)
    one_line(e, man)
    man.write_text(good.replace("evstream-synth", "something-else"))
    with pytest.raises(EvstreamError, match="format 'something-else'") as e:
        open_dataset(bad)
    one_line(e, man)
    man.write_text(good.replace('"version": 1', '"version": 7'))
    with pytest.raises(EvstreamError, match="version 7"):
        open_dataset(bad)
    man.write_text(good)
    with pytest.raises(EvstreamError, match="option bogus not valid for synth") as e:
        open_dataset(bad, bogus=1)
    one_line(e, bad)
    with pytest.raises(EvstreamError, match="no split 'dev'"):
        open_dataset(bad, split="dev")

    # a corrupt events file: construction reads only labels.npz, the first sample decodes
    ev_file = bad / "seq_0000" / "events.aedat4"
    ev_file.write_bytes(b"#!AER-DAT4.0\r\n" + bytes(range(256)) * 4)
    ds = open_dataset(bad)
    with pytest.raises(EvstreamError) as e:
        ds[0]
    one_line(e, ev_file)
    # a truncated recording
    rec = tmp_path / "rec"
    make_synth(rec, n_seq=1)
    data = (rec / "seq_0000" / "events.aedat4").read_bytes()
    cut = tmp_path / "cut.aedat4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(EvstreamError) as e:
        open_dataset(cut)
    one_line(e, cut)
    # a corrupt label npz and a corrupt PNG
    (rec / "seq_0000" / "labels.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(EvstreamError, match="not a readable .npz") as e:
        open_dataset(rec)
    one_line(e, rec / "seq_0000" / "labels.npz")
    for sub in ("images", "labels"):
        (tmp_path / "ddd" / sub / "test").mkdir(parents=True)
    png = tmp_path / "ddd" / "images" / "test" / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(tmp_path / "ddd" / "labels" / "test" / "a.png"), np.zeros((4, 4), np.uint8))
    ds = open_dataset(tmp_path / "ddd", split="test")
    with pytest.raises(EvstreamError, match="cannot decode") as e:
        ds[0]
    one_line(e, png)
