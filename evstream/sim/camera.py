"""What a frame camera (the DAVIS APS) makes of the scene radiance, and the lighting conditions.

Radiance units: 1.0 is a white (albedo 1) surface under normal daylight. The worlds render
linear radiance = albedo x illumination scale (+ sky), which the event simulator sees directly
(log response, huge dynamic range), while the APS frame goes through this model:

    electrons = clip(electrons_per_unit_s * exposure_s * mean radiance over the exposure
                     + shot noise + read noise, 0, full_well_e)
    DN        = clip(round(electrons * gain * 255 / full_well_e), 0, 255)      -> uint8

- Exposure integration: the caller averages the virtual frames rendered inside the exposure
  window (evstream.sim.driver does it with the trapezoid rule), so motion blurs the frame.
- Shot noise is Gaussian with variance = electrons (Poisson at these counts), read noise is
  Gaussian with `read_noise_e` electrons; both from the caller's Generator. `noise=False`
  returns the noise-free rendition (the tests measure noise against it).
- Saturation: the pixel clips at the full well, the ADC at 255: over-exposure is flat white.

Conditions. `ILLUMINATION[name]` maps a condition to the radiance scale of the world, the APS
exposure and gain that a camera would end up with, and a multiplier for the DVS background
activity (the DVS is noisier in the dark):
    normal  daylight, 10 ms exposure, gain 1: white surfaces at ~75 % of full scale, sky clipped.
    low     dusk/night (radiance x 0.03): the auto-exposure maxes out at 30 ms and the gain at
            4x, so frames are dark (white ~ 27 % of full scale) and noisy (tens of electrons
            in dark regions), and the longer exposure blurs more.
    over    bright sun (radiance x 4) with the exposure still at 10 ms: everything brighter
            than ~1/4 of white clips.
Events see the same scene in all three up to a scale, which a log sensor does not care about
(the ESIM `eps` is set far below the darkest radiance), so event counts stay comparable.
`MOTION[name]` scales the worlds' speeds: "slow" and "fast".
Exposures are clipped to `max_exposure_fraction` of the frame period by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ILLUMINATION = {
    "normal": {"radiance_scale": 1.0, "exposure_us": 10_000, "gain": 1.0, "ba_multiplier": 1.0},
    "low": {"radiance_scale": 0.03, "exposure_us": 30_000, "gain": 4.0, "ba_multiplier": 10.0},
    "over": {"radiance_scale": 4.0, "exposure_us": 10_000, "gain": 1.0, "ba_multiplier": 1.0},
}
MOTION = {"slow": 0.5, "fast": 1.4}          # speed multipliers of the worlds' nominal motion
ILLUMINATIONS = tuple(ILLUMINATION)
MOTIONS = tuple(MOTION)


@dataclass(frozen=True)
class ApsConfig:
    full_well_e: float = 8000.0            # electrons at which a pixel saturates
    electrons_per_unit_s: float = 600_000.0  # electrons per second per radiance unit
    read_noise_e: float = 6.0              # read noise std, electrons
    max_exposure_fraction: float = 0.9     # exposure <= this fraction of the frame period

    def __post_init__(self) -> None:
        if not (self.full_well_e > 0 and self.electrons_per_unit_s > 0
                and self.read_noise_e >= 0 and 0 < self.max_exposure_fraction <= 1):
            raise ValueError(f"bad ApsConfig {self}")


def aps_image(mean_radiance: np.ndarray, exposure_us: int, gain: float, config: ApsConfig,
              rng: np.random.Generator | None, noise: bool = True) -> np.ndarray:
    """uint8 (H, W) APS frame from the mean radiance over the exposure (see the module top)."""
    electrons = mean_radiance.astype(np.float32) * np.float32(
        config.electrons_per_unit_s * exposure_us * 1e-6)
    if noise:
        if rng is None:
            raise ValueError("aps_image needs a Generator for noise")
        std = np.sqrt(np.maximum(electrons, 0) + np.float32(config.read_noise_e ** 2))
        electrons = electrons + std * rng.standard_normal(electrons.shape, np.float32)
    np.clip(electrons, 0, config.full_well_e, out=electrons)
    dn = electrons * np.float32(gain * 255.0 / config.full_well_e) + np.float32(0.5)
    np.clip(dn, 0, 255, out=dn)
    return dn.astype(np.uint8)


def exposure_for(illumination: str, frame_rate: float, config: ApsConfig) -> int:
    """Exposure (us) of a condition, clipped to the frame period's allowed fraction."""
    period_us = 1e6 / frame_rate
    return int(max(1, min(ILLUMINATION[illumination]["exposure_us"],
                          int(config.max_exposure_fraction * period_us))))
