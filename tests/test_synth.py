"""Procedural worlds, the frame camera, the virtual-frame driver and `evstream synth`: labels with
structure, events on moving edges, low light and over-exposure in the APS frames only, motion
blur, determinism, and the dataset layout of the contract read back through the project's own
readers (open_source, `evstream info`)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from evstream.sim.camera import ILLUMINATIONS, MOTIONS, ApsConfig, aps_image
from evstream.sim.dataset import (CONDITION_CYCLE, DEFAULT_SIM, SynthConfig, generate_dataset,
                                  plan_sequences, sequence_outputs, split_sizes)
from evstream.sim.driver import StepConfig, run_world
from evstream.sim.esim import EventSimulator, SimConfig
from evstream.sim.scenes_cls import CLS_CLASSES, ClsWorld
from evstream.sim.scenes_seg import SEG_CLASSES, SegSceneConfig, SegWorld
from evstream.sources import open_source
from evstream.types import EVENT_DTYPE, concat_events

FLAT, BACKGROUND, OBJECT, VEGETATION, HUMAN, VEHICLE = range(6)
SMALL_SCENE = SegSceneConfig(period_m=51.2)     # smaller textures: quicker to build
TINY = dict(width=64, height=48, seconds=0.2)


def seg_config(**kw) -> SynthConfig:
    base = dict(task="seg", sequences=3, seed=1, seg_scene=SMALL_SCENE, **TINY)
    base.update(kw)
    return SynthConfig(**base).resolved()


def run_sequence(cfg: SynthConfig, conditions: dict, seed: int = 7):
    entry = {"name": "t", "split": "test", "seed": seed, "conditions": conditions}
    world, exposure_us, outputs = sequence_outputs(cfg, entry)
    outs = list(outputs)
    events = concat_events([o.events for o in outs])
    frames = [o for o in outs if o.frame is not None]
    return world, events, frames


# ---------------------------------------------------------------------------------------------
# The segmentation world

def test_seg_world_has_every_class_with_street_structure():
    w, h = 96, 72
    world = SegWorld(w, h, 6.0, {"illumination": "normal", "motion": "fast"}, 2, SMALL_SCENE)
    counts = np.zeros(256, np.int64)
    row_flat = np.zeros(h)
    row_background = np.zeros(h)
    n = 0
    for t_us in range(0, 6_000_000, 300_000):
        rad, lab = world.render(t_us, True)
        assert rad.dtype == np.float32 and lab.dtype == np.uint8 and lab.shape == (h, w)
        assert np.isfinite(rad).all() and rad.min() > 0
        counts += np.bincount(lab.ravel(), minlength=256)
        row_flat += (lab == FLAT).mean(axis=1)
        row_background += (lab == BACKGROUND).mean(axis=1)
        n += 1
    assert all(counts[c] > 0 for c in range(6)), counts[:6]
    assert set(np.flatnonzero(counts)) <= set(range(6)) | {255}
    row_flat /= n
    row_background /= n
    hood_top = int(h * (1 - SMALL_SCENE.hood_fraction))
    assert (lab[-1] == 255).all()                       # the car's hood: no label
    assert (lab[hood_top - 6:hood_top - 2] != 255).all()
    # road at the bottom (just above the hood), sky/buildings at the top
    assert row_flat[hood_top - 6:hood_top - 1].mean() > 0.6
    assert row_flat[: h // 4].max() == 0
    assert row_background[: h // 4].mean() > 0.6
    assert row_background[hood_top - 6:hood_top - 1].mean() < 0.2
    # vehicles stand on the road: wherever one shows, it reaches below the horizon
    for t_us in range(0, 6_000_000, 600_000):
        _, lab = world.render(t_us, True)
        ys = np.flatnonzero((lab == VEHICLE).any(axis=1))
        assert len(ys) == 0 or ys.max() > world.cy


def test_seg_render_is_a_pure_function_of_time():
    world = SegWorld(48, 36, 2.0, {"illumination": "low", "motion": "slow"}, 5, SMALL_SCENE)
    a, la = world.render(700_000, True)
    world.render(1_900_000, True)
    b, lb = world.render(700_000, True)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    c, none = world.render(700_000, False)
    assert none is None and c.tobytes() == a.tobytes()
    other = SegWorld(48, 36, 2.0, {"illumination": "low", "motion": "slow"}, 6, SMALL_SCENE)
    assert other.render(700_000, False)[0].tobytes() != a.tobytes()


def test_events_come_from_moving_edges():
    cfg = seg_config(seconds=0.4)
    world, events, frames = run_sequence(cfg, {"illumination": "normal", "motion": "fast"})
    assert events.dtype == EVENT_DTYPE and len(events) > 1000
    assert np.all(np.diff(events["t"]) >= 0)
    assert events["t"][0] > 0 and events["t"][-1] <= 400_000
    # where the log radiance changed between two frame times vs where it did not
    t0, t1 = frames[3].frame.t_us, frames[6].frame.t_us
    l0 = np.log(world.render(t0, False)[0] + 1e-5)
    l1 = np.log(world.render(t1, False)[0] + 1e-5)
    change = np.abs(l1 - l0)
    inside = events[(events["t"] > t0) & (events["t"] <= t1)]
    per_pixel = np.zeros(change.shape)
    np.add.at(per_pixel, (inside["y"], inside["x"]), 1)
    moving, still = change > 0.5, change < 0.02
    assert moving.sum() > 50 and still.sum() > 200
    assert per_pixel[moving].mean() > 20 * max(per_pixel[still].mean(), 0.01)
    # the hood never moves: only noise there (0.1 Hz per pixel and a few hot pixels)
    assert per_pixel[-2:].sum() <= 5


def test_low_light_frames_dark_and_noisy_events_comparable():
    cfg = seg_config(seconds=0.4)
    out = {}
    for ill in ("normal", "low", "over"):
        _, events, frames = run_sequence(cfg, {"illumination": ill, "motion": "slow"}, seed=11)
        images = np.stack([f.frame.image for f in frames]).astype(np.float64)
        hood = images[:, -2:, 8:-8]                 # static: frame-to-frame change is noise
        out[ill] = {"events": len(events), "mean": images[:, :-8].mean(),
                    "noise": hood.std(axis=0).mean() / max(hood.mean(), 1e-9),
                    "clipped": np.mean(images[:, :-8] >= 255),
                    "exposure": frames[0].frame.exposure_us}
    n, low, over = out["normal"], out["low"], out["over"]
    assert low["mean"] < 0.6 * n["mean"]
    assert low["noise"] > 2 * n["noise"]
    assert low["exposure"] == 30_000 and n["exposure"] == 10_000
    # the log sensor sees the same scene: the only difference is the dark sensor's extra
    # background activity (DEFAULT_SIM.ba_rate_hz x (10 - 1) per pixel)
    extra_noise = DEFAULT_SIM.ba_rate_hz * 9 * cfg.width * cfg.height * cfg.seconds
    assert abs(low["events"] - n["events"] - extra_noise) < 0.15 * n["events"]
    assert over["clipped"] > 0.3 and over["clipped"] > 5 * n["clipped"]
    assert 0.9 < over["events"] / n["events"] < 1.1


# ---------------------------------------------------------------------------------------------
# The frame camera and the driver

def test_aps_model_clips_quantises_and_adds_noise():
    cfg = ApsConfig()
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 0.5, np.float32)
    clean = aps_image(flat, 10_000, 1.0, cfg, None, noise=False)
    assert clean.dtype == np.uint8
    expected = 0.5 * cfg.electrons_per_unit_s * 0.01 * 255 / cfg.full_well_e
    assert int(clean[0, 0]) == int(math.floor(expected + 0.5))
    noisy = aps_image(flat, 10_000, 1.0, cfg, rng).astype(np.float64)
    e = 0.5 * cfg.electrons_per_unit_s * 0.01
    assert noisy.std() == pytest.approx(math.sqrt(e + cfg.read_noise_e ** 2)
                                        * 255 / cfg.full_well_e, rel=0.15)
    assert (aps_image(flat * 8, 10_000, 1.0, cfg, rng) == 255).all()      # full well
    dark = aps_image(flat * 0.03, 30_000, 4.0, cfg, rng).astype(np.float64)
    assert dark.mean() < 0.5 * noisy.mean()
    assert dark.std() / dark.mean() > 3 * noisy.std() / noisy.mean()


class BarWorld:
    """A bright vertical bar (4 px wide, anti-aliased) moving right at speed_px_s."""

    def __init__(self, height=16, width=80, speed_px_s=1000.0):
        self.height, self.width, self.speed = height, width, speed_px_s
        self.calls = []

    def render(self, t_us, labels):
        self.calls.append((t_us, labels))
        x0 = 10 + self.speed * t_us * 1e-6
        xs = np.arange(self.width)
        cover = np.clip(np.minimum(xs + 1, x0 + 4) - np.maximum(xs, x0), 0, 1)
        rad = np.tile((0.02 + 0.6 * cover).astype(np.float32), (self.height, 1))
        lab = np.tile((cover >= 0.5).astype(np.uint8), (self.height, 1)) if labels else None
        return rad, lab


def _drive(world, exposure_us=10_000, t_end_us=80_000, step=StepConfig()):
    sim = EventSimulator(world.height, world.width, SimConfig(sigma_threshold=0.0), seed=1)
    frame_times = [20_000, 60_000]
    outs = list(run_world(world, sim, frame_times, exposure_us, t_end_us, aps=ApsConfig(),
                          gain=1.0, rng=np.random.default_rng(0), step=step))
    return outs


def test_driver_blurs_moving_edges_over_the_exposure():
    def lit_width(image):          # pixels the bar lit during the exposure (> 10 % of peak)
        profile = image[8].astype(np.float64)
        lo, hi = np.median(profile), profile.max()
        return int(np.sum(profile > lo + 0.1 * (hi - lo)))

    still = _drive(BarWorld(speed_px_s=0.0))[0].frame.image
    moving = _drive(BarWorld(speed_px_s=1000.0))[0].frame.image    # 10 px per 10 ms exposure
    longer = _drive(BarWorld(speed_px_s=1000.0), exposure_us=30_000)[0].frame.image
    assert 4 <= lit_width(still) <= 5
    assert 12 <= lit_width(moving) <= 15
    assert 32 <= lit_width(longer) <= 35
    # the blurred bar keeps its energy: the sum over the row is the same
    row = [im[8].astype(np.float64) - np.median(im[8]) for im in (still, moving)]
    assert row[1].sum() == pytest.approx(row[0].sum(), rel=0.1)


def test_driver_time_grid_frames_labels_and_events():
    world = BarWorld(speed_px_s=300.0)
    step = StepConfig(max_virtual_fps=2000, min_virtual_fps=250, exposure_steps=4)
    outs = _drive(world, step=step)
    assert [o.frame.t_us for o in outs if o.frame is not None] == [20_000, 60_000]
    assert outs[-1].frame is None
    times = [t for t, _ in world.calls]
    assert times[0] == 0 and times[-1] == 80_000 and np.all(np.diff(times) > 0)
    assert {t for t, lab in world.calls if lab} == {20_000, 60_000}
    for centre in (20_000, 60_000):                   # exposure window edges hit exactly
        assert centre - 5_000 in times and centre + 5_000 in times
    gaps = np.diff(times)
    assert gaps.min() >= 2 / 3 * 500 and gaps.max() <= 1.5 * 4_000
    inside = [g for t, g in zip(times[1:], gaps) if 15_000 < t <= 25_000]
    assert max(inside) <= 2_500                        # >= 4 steps per exposure
    for o in outs:
        if o.frame is not None:
            assert o.labels.shape == (16, 80) and o.labels.sum() > 0
    ev = concat_events([o.events for o in outs])
    assert len(ev) > 100 and np.all(np.diff(ev["t"]) >= 0)
    assert ev["t"].min() > 0 and ev["t"].max() <= 80_000
    # a faster scene takes shorter steps (adaptive), a static one the longest allowed
    static, slow, fast = (BarWorld(speed_px_s=v) for v in (0.0, 20.0, 700.0))
    for w in (static, slow, fast):
        _drive(w, step=step)
    assert len(static.calls) < len(slow.calls) < len(fast.calls)
    assert 3_000 < np.median(np.diff([t for t, _ in static.calls])) <= 4_000
    assert np.median(np.diff([t for t, _ in fast.calls])) == 500


# ---------------------------------------------------------------------------------------------
# Determinism

def test_same_seed_same_bytes():
    cfg = seg_config()
    cond = {"illumination": "low", "motion": "fast"}
    _, ev_a, fr_a = run_sequence(cfg, cond, seed=3)
    _, ev_b, fr_b = run_sequence(cfg, cond, seed=3)
    assert len(ev_a) > 500
    assert ev_a.tobytes() == ev_b.tobytes()
    assert all(a.frame.image.tobytes() == b.frame.image.tobytes()
               and a.labels.tobytes() == b.labels.tobytes() for a, b in zip(fr_a, fr_b))
    _, ev_c, _ = run_sequence(cfg, cond, seed=4)
    assert ev_c.tobytes() != ev_a.tobytes()


# ---------------------------------------------------------------------------------------------
# The object-recognition world

def test_cls_world_saccades_and_classes():
    cond = {"illumination": "normal", "motion": "fast"}
    world = ClsWorld(128, 128, 0.3, cond, 1, CLS_CLASSES.index("star"))
    offsets = np.array([world.offset(t) for t in np.linspace(0, 0.3, 31)])
    assert np.allclose(offsets[0], offsets[-1], atol=1e-9)    # a closed triangle
    corners = [world.offset(t) for t in (0.0, 0.1, 0.2)]
    sides = [math.dist(corners[i], corners[(i + 1) % 3]) for i in range(3)]
    assert sides == pytest.approx([world.amplitude_px] * 3)
    a, none = world.render(50_000)
    assert none is None and a.shape == (128, 128) and a.dtype == np.float32
    assert a.tobytes() == world.render(50_000)[0].tobytes()
    assert a.tobytes() != world.render(150_000)[0].tobytes()
    slow = ClsWorld(128, 128, 0.3, {"illumination": "low", "motion": "slow"}, 1, 5)
    assert slow.amplitude_px < world.amplitude_px
    assert slow.render(0)[0].mean() < 0.1 * a.mean()
    with pytest.raises(ValueError):
        ClsWorld(64, 64, 0.3, cond, 1, len(CLS_CLASSES))
    images = [ClsWorld(64, 64, 0.3, cond, 9, k).render(0)[0] for k in range(len(CLS_CLASSES))]
    assert len({im.tobytes() for im in images}) == len(CLS_CLASSES)


# ---------------------------------------------------------------------------------------------
# Planning: splits, conditions, labels

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 20, 101])
def test_split_sizes(n):
    sizes = split_sizes(n, (0.7, 0.15, 0.15))
    assert sum(sizes) == n
    if n >= 3:
        assert min(sizes) >= 1
    if n >= 5:
        assert sizes[2] >= 3
    assert sizes[0] >= sizes[1]
    assert split_sizes(n, (1.0, 0.0, 0.0)) == [n, 0, 0]


def test_plan_is_deterministic_and_test_split_has_every_condition():
    cfg = seg_config(sequences=12)
    plan = plan_sequences(cfg)
    assert plan == plan_sequences(cfg)
    assert [e["name"] for e in plan] == [f"seq_{i:04d}" for i in range(12)]
    test = [e for e in plan if e["split"] == "test"]
    assert {e["conditions"]["illumination"] for e in test} == set(ILLUMINATIONS)
    assert {e["conditions"]["motion"] for e in test} == set(MOTIONS)
    # one adverse condition per test sequence: each differs from (normal, slow) in <= 1 way
    pairs = sorted((e["conditions"]["illumination"], e["conditions"]["motion"]) for e in test)
    assert pairs == sorted(CONDITION_CYCLE[:5])
    assert all((ill != "normal") + (mot != "slow") <= 1 for ill, mot in pairs)
    assert sorted(CONDITION_CYCLE) == sorted((i, m) for i in ILLUMINATIONS for m in MOTIONS)
    assert len({e["seed"] for e in plan}) == 12
    assert plan_sequences(replace(cfg, seed=2)) != plan
    three = plan_sequences(seg_config(sequences=3))
    assert sorted(e["split"] for e in three) == ["test", "train", "val"]
    assert len({e["conditions"]["illumination"] for e in three}) == 3
    cls = SynthConfig(task="cls", sequences=120, seed=4).resolved()
    plan = plan_sequences(cls)
    train = [e for e in plan if e["split"] == "train"]
    per_class = np.bincount([e["label"] for e in train], minlength=10)
    assert per_class.max() - per_class.min() <= 1
    pairs = {(e["label"], e["conditions"]["illumination"], e["conditions"]["motion"])
             for e in train}
    assert len(pairs) > 50                     # classes are not tied to conditions
    assert all(e["class"] == CLS_CLASSES[e["label"]] for e in plan)


# ---------------------------------------------------------------------------------------------
# `evstream synth`: the layout of the contract

@pytest.fixture(scope="module")
def seg_dataset(tmp_path_factory):
    from evstream.cli import main

    out = tmp_path_factory.mktemp("synth") / "seg"
    code = main(["synth", "seg", str(out), "--sequences", "3", "--seconds", "0.2",
                 "--width", "64", "--height", "48", "--seed", "5", "--workers", "1",
                 "--no-progress", "--json"])
    assert code == 0
    return out


def test_synth_writes_the_contract_layout(seg_dataset):
    m = json.loads((seg_dataset / "manifest.json").read_text())
    assert (m["format"], m["version"], m["task"]) == ("evstream-synth", 1, "seg")
    assert (m["width"], m["height"], m["seed"], m["seconds"], m["frame_rate"]) == \
        (64, 48, 5, 0.2, 25.0)
    assert m["classes"] == SEG_CLASSES and len(m["colors"]) == 6
    gen = m["generator"]
    for key in ("scene", "simulator", "stepping", "aps", "illumination", "motion"):
        assert key in gen
    assert gen["simulator"]["c_on"] == 0.25 and gen["scene"]["hfov_deg"] == 70.0
    assert sorted(sum(m["splits"].values(), [])) == ["seq_0000", "seq_0001", "seq_0002"]
    assert all(len(v) == 1 for v in m["splits"].values())
    assert sorted(p.name for p in seg_dataset.iterdir()) == \
        ["manifest.json", "seq_0000", "seq_0001", "seq_0002"]
    for seq in m["sequences"]:
        assert seq["name"] in m["splits"][seq["split"]]
        assert seq["conditions"]["illumination"] in ILLUMINATIONS
        assert seq["conditions"]["motion"] in MOTIONS
        assert seq["frames"] == 5 and seq["t_end_us"] == 200_000
        folder = seg_dataset / seq["name"]
        assert sorted(p.name for p in folder.iterdir()) == ["events.aedat4", "labels.npz"]
        src = open_source(folder / "events.aedat4")
        try:
            assert (src.width, src.height, src.camera) == (64, 48, "evstream-synth")
            packets = list(src.packets())
        finally:
            src.close()
        events = concat_events([p.events for p in packets])
        frames = [f for p in packets for f in p.frames]
        assert len(events) == seq["events"] > 0
        assert np.all(np.diff(events["t"]) >= 0) and events["t"][-1] <= 200_000
        with np.load(folder / "labels.npz") as z:
            assert sorted(z.files) == ["labels", "t_us"]
            t_us, labels = z["t_us"], z["labels"]
        assert t_us.dtype == np.int64 and labels.dtype == np.uint8
        assert labels.shape == (5, 48, 64)
        assert t_us.tolist() == [f.t_us for f in frames] == [20_000, 60_000, 100_000,
                                                            140_000, 180_000]
        assert all(f.image.shape == (48, 64) and f.image.dtype == np.uint8 for f in frames)
        assert set(np.unique(labels)) <= set(range(6)) | {255}
        assert (labels[:, -1] == 255).all() and (labels[:, 20:30] == FLAT).any()


def test_info_reads_a_synth_sequence(seg_dataset, capsys):
    m = json.loads((seg_dataset / "manifest.json").read_text())
    code, out, err = run_cli(capsys, "info", seg_dataset / "seq_0000" / "events.aedat4",
                             "--json")
    assert code == 0, err
    d = json.loads(out)
    assert (d["width"], d["height"], d["camera"]) == (64, 48, "evstream-synth")
    assert d["events"] == m["sequences"][0]["events"] and d["frames"] == 5
    assert d["streams"] == ["events", "frames"]


def test_synth_refuses_a_non_empty_out_unless_forced(seg_dataset, tmp_path, capsys):
    before = (seg_dataset / "manifest.json").read_text()
    code, out, err = run_cli(capsys, "synth", "seg", seg_dataset, "--sequences", "1",
                             "--seconds", "0.04", "--width", "32", "--height", "24",
                             "--no-progress")
    assert code == 2 and "not empty" in err and "--force" in err and len(err.splitlines()) == 1
    assert (seg_dataset / "manifest.json").read_text() == before
    with pytest.raises(SystemExit) as exit_info:             # argparse: one line, exit 2
        run_cli(capsys, "synth", "seg", tmp_path / "x", "--split", "0.5,0.5")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--split" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, "synth", "seg", tmp_path / "x", "--split", "0.5,0.6,0",
                             "--no-progress")
    assert code == 2 and "--split" in err and "sum to 1" in err
    code, out, err = run_cli(capsys, "synth", "seg", tmp_path / "x", "--seconds", "0.01",
                             "--no-progress")
    assert code == 2 and "--seconds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    # --force replaces an existing non-empty folder
    target = tmp_path / "forced"
    target.mkdir()
    (target / "junk.txt").write_text("old")
    code, out, err = run_cli(capsys, "synth", "cls", target, "--sequences", "1",
                             "--seconds", "0.08", "--width", "32", "--height", "32",
                             "--no-progress", "--force", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sequences"] == 1 and summary["splits"]["train"] == 1
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "seq_0000"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    import evstream.sim.dataset as ds

    real = ds.generate_sequence
    calls = []

    def failing(cfg, entry, folder, progress=None):
        calls.append(entry["name"])
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(cfg, entry, folder, progress)

    monkeypatch.setattr(ds, "generate_sequence", failing)
    out = tmp_path / "data"
    with pytest.raises(RuntimeError, match="boom"):
        generate_dataset(out, SynthConfig(task="cls", sequences=3, seconds=0.08, width=32,
                                          height=32))
    assert list(tmp_path.iterdir()) == []


def test_h5_variant(tmp_path, capsys):
    out = tmp_path / "h5"
    code, stdout, err = run_cli(capsys, "synth", "seg", out, "--sequences", "1",
                                "--seconds", "0.12", "--width", "40", "--height", "32",
                                "--format", "h5", "--split", "1,0,0", "--no-progress",
                                "--json", "--seed", "3")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    seq = m["sequences"][0]
    assert m["generator"]["format"] == "h5" and m["splits"] == {
        "train": ["seq_0000"], "val": [], "test": []}
    folder = out / "seq_0000"
    assert sorted(p.name for p in folder.iterdir()) == ["events.h5", "frames.npz",
                                                       "labels.npz"]
    src = open_source(folder / "events.h5")
    try:
        assert (src.width, src.height) == (40, 32)
        events = concat_events([p.events for p in src.packets()])
    finally:
        src.close()
    assert len(events) == seq["events"] > 0 and np.all(np.diff(events["t"]) >= 0)
    import h5py

    with h5py.File(folder / "events.h5") as f:
        ms_to_idx = f["ms_to_idx"][()]
        assert int(f["t_offset"][()]) == 0
    t = events["t"]
    for ms in (0, 10, 50, len(ms_to_idx) - 1):
        assert ms_to_idx[ms] == np.searchsorted(t, ms * 1000)
    with np.load(folder / "frames.npz") as z:
        assert z["frames"].shape == (3, 32, 40) and z["frames"].dtype == np.uint8
        assert z["t_us"].tolist() == [20_000, 60_000, 100_000]
    with np.load(folder / "labels.npz") as z:
        assert z["labels"].shape == (3, 32, 40) and z["t_us"].tolist() == [20_000, 60_000,
                                                                           100_000]


def test_workers_do_not_change_the_bytes(tmp_path):
    cfg = SynthConfig(task="cls", sequences=3, seconds=0.12, width=48, height=40, seed=9)
    one = generate_dataset(tmp_path / "one", cfg, workers=1)
    two = generate_dataset(tmp_path / "two", cfg, workers=2)
    assert one["events"] == two["events"] > 0
    for name in ("seq_0000", "seq_0001", "seq_0002"):
        evs = []
        for root in ("one", "two"):
            src = open_source(tmp_path / root / name / "events.aedat4")
            try:
                evs.append(concat_events([p.events for p in src.packets()]))
            finally:
                src.close()
            with np.load(tmp_path / root / name / "labels.npz") as z:
                assert int(z["label"]) in range(10)
        assert evs[0].tobytes() == evs[1].tobytes()
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    for a, b in zip(m1["sequences"], m2["sequences"]):
        a.pop("params"), b.pop("params")
        assert a == b
