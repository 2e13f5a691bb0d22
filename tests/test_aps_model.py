"""The calibrated APS model (evstream.sim.camera, docs/aps_model.md): temporal noise as the
formula says, a fixed pattern that belongs to the sensor (one per sequence, another per seed),
black level and saturation, and frames of the street world that fail where real DAVIS frames
fail (low light, hdr night, over-exposure)."""

from __future__ import annotations

import numpy as np
import pytest

from evstream.sim.camera import (ILLUMINATION, ApsConfig, aps_image, exposure_for,
                                 sensor_offsets)
from evstream.sim.driver import run_world
from evstream.sim.esim import EventSimulator, SimConfig
from evstream.sim.scenes_seg import SegSceneConfig, SegWorld

CFG = ApsConfig()
SMALL_SCENE = SegSceneConfig(period_m=51.2)


def radiance_for_dn(dn: float, exposure_us: int = 10_000, gain: float = 1.0) -> float:
    return dn * CFG.full_well_e / (255 * gain * CFG.electrons_per_unit_s * exposure_us * 1e-6)


@pytest.mark.parametrize("dn, gain", [(8.0, 1.0), (100.0, 1.0), (20.0, 2.6), (200.0, 1.0)])
def test_temporal_noise_matches_the_formula(dn, gain):
    rad = np.full((200, 200), radiance_for_dn(dn, gain=gain), np.float32)
    rng = np.random.default_rng(0)
    offsets = sensor_offsets(rad.shape, CFG, rng)
    a = aps_image(rad, 10_000, gain, CFG, rng, offsets=offsets).astype(np.float64)
    b = aps_image(rad, 10_000, gain, CFG, rng, offsets=offsets).astype(np.float64)
    # the difference of two frames of one sensor holds no fixed pattern; + 1/12: rounding
    expected = np.sqrt(CFG.noise_dn(dn, gain) ** 2 + 1 / 12)
    assert (a - b).std() / np.sqrt(2) == pytest.approx(expected, rel=0.06)
    assert a.mean() == pytest.approx(dn + CFG.black_level_dn, abs=0.3)


def test_calibrated_figures():
    # the measured DAVIS figures (tools/calibrate_aps.py): 0.51 DN read noise, 54 dB
    assert CFG.noise_dn(0.0) == pytest.approx(0.51, abs=0.01)
    assert 20 * np.log10(255 / CFG.noise_dn(0.0)) == pytest.approx(54, abs=1)
    assert CFG.noise_dn(100.0) ** 2 - CFG.noise_dn(0.0) ** 2 == pytest.approx(0.137, rel=0.02)


def test_offsets_are_the_configured_pattern_and_depend_on_the_seed():
    shape = (400, 600)
    off = sensor_offsets(shape, CFG, np.random.default_rng(1))
    assert off.dtype == np.float32 and off.shape == shape
    col = off.mean(0) - off.mean()
    row = off.mean(1) - off.mean()
    assert col.std() == pytest.approx(np.hypot(CFG.column_fpn_dn, CFG.pixel_fpn_dn / 20),
                                      rel=0.1)
    assert row.std() == pytest.approx(CFG.row_fpn_dn, rel=0.15)
    pixel = off - off.mean(0)[None, :] - off.mean(1)[:, None] + off.mean()
    assert pixel.std() == pytest.approx(CFG.pixel_fpn_dn, rel=0.05)
    assert off.mean() == pytest.approx(CFG.black_level_dn, abs=0.2)
    again = sensor_offsets(shape, CFG, np.random.default_rng(1))
    other = sensor_offsets(shape, CFG, np.random.default_rng(2))
    assert again.tobytes() == off.tobytes()
    assert abs(np.corrcoef(col, other.mean(0) - other.mean())[0, 1]) < 0.2


class FlatWorld:
    """A static grey wall (radiance for ~60 DN at 10 ms)."""

    height, width = 64, 96

    def render(self, t_us, labels):
        rad = np.full((self.height, self.width), radiance_for_dn(60.0), np.float32)
        return rad, (np.zeros(rad.shape, np.uint8) if labels else None)


def column_profiles(seed: int) -> np.ndarray:
    world = FlatWorld()
    sim = EventSimulator(world.height, world.width, SimConfig(sigma_threshold=0.0), seed=1)
    outs = run_world(world, sim, [20_000, 60_000, 100_000], 10_000, 120_000, aps=CFG,
                     gain=1.0, rng=np.random.default_rng(seed))
    frames = np.stack([o.frame.image for o in outs if o.frame is not None]).astype(np.float64)
    return frames.mean(1) - frames.mean((1, 2))[:, None]


def test_column_pattern_is_fixed_within_a_sequence_and_differs_between_seeds():
    a = column_profiles(5)
    assert len(a) == 3 and a.std() == pytest.approx(CFG.column_fpn_dn, rel=0.35)
    assert min(np.corrcoef(a)[0, 1:]) > 0.9                 # the same columns in every frame
    b = column_profiles(6)
    assert abs(np.corrcoef(a[0], b[0])[0, 1]) < 0.4
    assert column_profiles(5).tobytes() == a.tobytes()      # deterministic for a seed


def test_black_level_and_saturation():
    rng = np.random.default_rng(3)
    off = sensor_offsets((100, 100), CFG, rng)
    black = aps_image(np.zeros((100, 100), np.float32), 36_000, 1.0, CFG, rng, offsets=off)
    assert np.mean(black == 0) > 0.9                # crushed blacks (real night sky: 96.7 %)
    full = np.full((100, 100), radiance_for_dn(400.0), np.float32)
    assert (aps_image(full, 10_000, 1.0, CFG, rng, offsets=off) == 255).all()


@pytest.fixture(scope="module")
def street_frames():
    """One APS frame of the same small street world (same seed) in every illumination."""
    out = {}
    for ill, illum in ILLUMINATION.items():
        world = SegWorld(96, 72, 1.0, {"illumination": ill, "motion": "slow"}, 4, SMALL_SCENE)
        rad, _ = world.render(500_000, False)
        rng = np.random.default_rng(9)
        off = sensor_offsets(rad.shape, CFG, rng)
        exp = exposure_for(ill, 25.0, CFG)
        frames = [aps_image(rad, exp, illum["gain"], CFG, rng, offsets=off)[:-10]
                  for _ in range(4)]                         # the hood cropped
        clean = aps_image(rad, exp, illum["gain"], CFG, None, noise=False)[:-10]
        out[ill] = (np.stack(frames).astype(np.float64), clean.astype(np.float64))
    return out


def test_low_light_is_dark_and_noisy_where_normal_is_clean(street_frames):
    snr = {}
    for ill in ("normal", "low"):
        frames, clean = street_frames[ill]
        dark = clean <= np.percentile(clean, 25)             # the darkest quarter
        snr[ill] = np.median(frames.mean(0)[dark]) / np.median(frames.std(0, ddof=1)[dark])
    low = street_frames["low"][0]
    assert 10 < low.mean() < 28 and np.percentile(low, 99) < 90      # real: 19.9, p99 48
    assert 0.5 < snr["low"] < 5 and snr["normal"] > 4 * snr["low"]


def test_over_and_hdr_saturate(street_frames):
    over = street_frames["over"][0]
    normal = street_frames["normal"][0]
    assert np.mean(over == 255) > 0.3 and np.mean(over == 255) > 5 * np.mean(normal == 255)
    hdr = street_frames["hdr"][0]
    assert 0.03 < np.mean(hdr == 255) < 0.4                  # the sky (real night: 6.8 %)
    assert np.mean(hdr == 0) > 0.4                           # the street (real night: 65 %)


def test_same_seed_same_frame():
    rad = np.random.default_rng(0).random((32, 48), np.float32)
    frames = []
    for seed in (7, 7, 8):
        rng = np.random.default_rng(seed)
        off = sensor_offsets(rad.shape, CFG, rng)
        frames.append(aps_image(rad, 10_000, 1.0, CFG, rng, offsets=off).tobytes())
    assert frames[0] == frames[1] != frames[2]
