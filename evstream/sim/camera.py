"""What a frame camera (the DAVIS APS) makes of the scene radiance, and the lighting conditions.

Radiance units: 1.0 is a white (albedo 1) surface under normal daylight. The worlds render
linear radiance = albedo x illumination scale (+ sky), which the event simulator sees directly
(log response, huge dynamic range), while the APS frame goes through this model, calibrated on
real DAVIS frames by tools/calibrate_aps.py (figures and method in docs/aps_model.md):

    e   = k * t * R                               R: mean radiance over the exposure t
    e'  = clip(e + sqrt(e) n1 + r_e n2, 0, FW)    shot + read noise (n1, n2 ~ N(0, 1))
    DN  = G * e' * 255 / FW  +  O                 G: gain of the condition
    O   = black + c[x] + r[y] + p[y, x]           fixed per sequence (`sensor_offsets`)
    out = clip(round(DN), 0, 255)                 -> uint8 (255 where e' = FW)

- Exposure integration: the caller averages the virtual frames rendered inside the exposure
  window (evstream.sim.driver does it with the trapezoid rule), so motion blurs the frame.
- Shot noise is Gaussian with variance = electrons (Poisson at these counts), read noise is
  Gaussian with `read_noise_e` electrons (input-referred: the gain amplifies it); both from
  the caller's Generator. `noise=False` returns the noise-free rendition.
- Conversion: FW = `full_well_e` electrons give 255 DN at gain 1; the measured DAVIS240C
  slope of the temporal variance, 0.00137 DN^2 per DN, makes FW = 186,600 e- (an apparent
  figure: the 10-bit ADC is read out as 8 bits) and the read noise 0.51 DN = 374 e-, so the
  range is 20 log10(255 / 0.51) = 54 dB (datasheet DAVIS346: ~55 dB; DVS ~120 dB).
- Fixed pattern (DN, after the gain, drawn once per sequence from the caller's Generator by
  `sensor_offsets`, passed back in as `offsets`): a black level below zero (dark pixels read
  exactly 0 on a real DAVIS: crushed blacks), a column pattern c[x], a row pattern r[y] (the
  stripes of the DAVIS240 frames) and a per-pixel pattern p[y, x], each Gaussian.
  Without `offsets` the sensor is offset-free (the ideal rendition, for unit tests).
- Saturation: the pixel clips at the full well, the ADC at 255; a full pixel reads 255
  whatever its offsets: over-exposure is flat white (as on the real frames).
- 8-bit quantisation: round to the nearest DN.

Conditions. `ILLUMINATION[name]` maps a condition to the radiance scale of the world's
surfaces, the sky's radiance relative to them (`sky_scale`, default 1), the APS exposure and
gain that a camera would end up with, and a multiplier for the DVS background activity (the DVS
is noisier in the dark):
    normal  daylight, 10 ms exposure, gain 1: white surfaces at ~75 % of full scale, sky
            clipped; temporal noise ~0.6 DN, a clean frame.
    low     dusk (radiance x 0.03): the auto-exposure maxes out at 30 ms and the gain at 2.6x,
            which puts the street frame at a mean of ~17 DN and a 99th percentile of ~60 DN
            (the real low_light_model.png: 19.9 and 48): few grey levels, the temporal noise
            amplified to ~1.3 DN on top of the ~1.3 DN fixed pattern, the darkest surfaces at
            SNR ~1-3, blacks crushed to 0, and a 30 ms exposure blurs.
    over    bright sun (radiance x 4) with the exposure still at 10 ms: everything brighter
            than ~1/3 of white clips (about half of the street frame).
    hdr     night street under a bright sky (surfaces x 0.006, the sky 100x that, ~0.6 of
            daylight; the haze stays at the surfaces' level): exposed for the frame period
            (clipped to 0.9 of it, 36 ms at 25 fps) at gain 1, the sky saturates while the
            street sits at 0-4 DN and mostly reads 0 (simulated: ~60 % at 0 and 8-16 % at
            255; the real night_run.png: 65 % and 6.8 %).
Events see the same surfaces in every condition up to a scale, which a log sensor does not
care about (the ESIM `eps` is set far below the darkest radiance), so event counts stay
comparable (hdr: the skyline's contrast is 100x stronger, one more log step for a DVS).
`MOTION[name]` scales the worlds' speeds: "slow" and "fast".
Exposures are clipped to `max_exposure_fraction` of the frame period by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ILLUMINATION = {
    "normal": {"radiance_scale": 1.0, "exposure_us": 10_000, "gain": 1.0, "ba_multiplier": 1.0},
    "low": {"radiance_scale": 0.03, "exposure_us": 30_000, "gain": 2.6, "ba_multiplier": 10.0},
    "over": {"radiance_scale": 4.0, "exposure_us": 10_000, "gain": 1.0, "ba_multiplier": 1.0},
    "hdr": {"radiance_scale": 0.006, "sky_scale": 100.0, "exposure_us": 40_000, "gain": 1.0,
            "ba_multiplier": 10.0},
}
MOTION = {"slow": 0.5, "fast": 1.4}          # speed multipliers of the worlds' nominal motion
ILLUMINATIONS = tuple(ILLUMINATION)
MOTIONS = tuple(MOTION)


@dataclass(frozen=True)
class ApsConfig:
    full_well_e: float = 186_600.0           # electrons giving 255 DN at gain 1 (1/0.00137 x 255)
    electrons_per_unit_s: float = 14_000_000.0  # e-/s per radiance unit: white = 75 % at 10 ms
    read_noise_e: float = 374.0              # read noise std, electrons (0.51 DN at gain 1)
    max_exposure_fraction: float = 0.9       # exposure <= this fraction of the frame period
    black_level_dn: float = -2.0             # offset of a dark pixel (< 0: dark reads 0)
    column_fpn_dn: float = 0.46              # std of the per-column offset
    row_fpn_dn: float = 1.09                 # std of the per-row offset
    pixel_fpn_dn: float = 0.61               # std of the per-pixel offset

    def __post_init__(self) -> None:
        if not (self.full_well_e > 0 and self.electrons_per_unit_s > 0
                and self.read_noise_e >= 0 and 0 < self.max_exposure_fraction <= 1
                and min(self.column_fpn_dn, self.row_fpn_dn, self.pixel_fpn_dn) >= 0):
            raise ValueError(f"bad ApsConfig {self}")

    def noise_dn(self, signal_dn: float, gain: float = 1.0) -> float:
        """Temporal noise std (DN, before rounding) at a signal of signal_dn above black."""
        dn_per_e = gain * 255.0 / self.full_well_e
        return float(np.sqrt(dn_per_e * max(signal_dn, 0.0)
                             + (dn_per_e * self.read_noise_e) ** 2))


def sensor_offsets(shape: tuple[int, int], config: ApsConfig,
                   rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W) fixed offsets in DN of one sensor (one sequence): black level plus
    column, row and pixel patterns, drawn from rng (see the module top)."""
    h, w = shape
    col = rng.standard_normal(w, np.float32) * np.float32(config.column_fpn_dn)
    row = rng.standard_normal(h, np.float32) * np.float32(config.row_fpn_dn)
    pix = rng.standard_normal((h, w), np.float32) * np.float32(config.pixel_fpn_dn)
    return pix + col[None, :] + row[:, None] + np.float32(config.black_level_dn)


def aps_image(mean_radiance: np.ndarray, exposure_us: int, gain: float, config: ApsConfig,
              rng: np.random.Generator | None, noise: bool = True,
              offsets: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H, W) APS frame from the mean radiance over the exposure (see the module top);
    `offsets` from `sensor_offsets` (None: an offset-free sensor)."""
    electrons = mean_radiance.astype(np.float32) * np.float32(
        config.electrons_per_unit_s * exposure_us * 1e-6)
    if noise:
        if rng is None:
            raise ValueError("aps_image needs a Generator for noise")
        std = np.sqrt(np.maximum(electrons, 0) + np.float32(config.read_noise_e ** 2))
        electrons = electrons + std * rng.standard_normal(electrons.shape, np.float32)
    np.clip(electrons, 0, config.full_well_e, out=electrons)
    dn = electrons * np.float32(gain * 255.0 / config.full_well_e) + np.float32(0.5)
    if offsets is not None:
        dn += offsets
        dn[electrons >= np.float32(config.full_well_e)] = 255     # a full pixel reads 255
    np.clip(dn, 0, 255, out=dn)
    return dn.astype(np.uint8)


def exposure_for(illumination: str, frame_rate: float, config: ApsConfig) -> int:
    """Exposure (us) of a condition, clipped to the frame period's allowed fraction."""
    period_us = 1e6 / frame_rate
    return int(max(1, min(ILLUMINATION[illumination]["exposure_us"],
                          int(config.max_exposure_fraction * period_us))))
