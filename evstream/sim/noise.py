"""The simulator's random parts: per-pixel thresholds, the hot-pixel set, noise event draws.

Everything random in `evstream.sim` comes from here, from numpy Generators that the simulator
derives from its one integer seed with `np.random.SeedSequence(seed).spawn(3)`: one stream for
the thresholds, one for the hot-pixel set, one for the per-interval noise draws. Separate
streams keep the parts independent of each other (turning background noise on does not change
the thresholds a seed gives), and no global random state (numpy's or Numba's) is touched, so two
simulators with the same seed produce the same bytes however their calls interleave.

Contracts:
- `draw_thresholds` returns float64 (H*W,) arrays c = max(c_nominal + sigma * N(0, 1),
  min_threshold): drawn once per pixel, ON and OFF independently (ON first, then OFF, from the
  same stream); sigma = 0 gives the nominal values exactly (still clipped to min_threshold).
- `choose_hot_pixels` returns round(fraction * H * W) distinct flat pixel indices
  (y * W + x), sorted ascending.
- `draw_noise(rng, ...)` returns the noise events of one frame interval (t0_us, t1_us] as three
  arrays (flat pixel int64, t int64, polarity int8 0/1), sorted by (pixel, t) with ties kept in
  draw order. Background activity is a Poisson process at `ba_rate_hz` at every pixel (the total
  count over the interval is Poisson(ba_rate_hz * H * W * dt_s), each event on a uniform pixel);
  each hot pixel is another Poisson process at `hot_rate_hz`. Times are uniform whole
  microseconds in (t0_us, t1_us]; polarity is ON or OFF with probability 1/2. A rate of 0 draws
  nothing from `rng`, so a configuration without noise leaves the stream untouched.
"""

from __future__ import annotations

import numpy as np


def draw_thresholds(rng: np.random.Generator, n_pixels: int, c_on: float, c_off: float,
                    sigma: float, min_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ON and OFF contrast thresholds, float64 (n_pixels,) each."""
    if sigma > 0:
        on = c_on + sigma * rng.standard_normal(n_pixels)
        off = c_off + sigma * rng.standard_normal(n_pixels)
    else:
        on = np.full(n_pixels, float(c_on))
        off = np.full(n_pixels, float(c_off))
    return np.maximum(on, min_threshold), np.maximum(off, min_threshold)


def choose_hot_pixels(rng: np.random.Generator, n_pixels: int, fraction: float) -> np.ndarray:
    """Sorted flat indices of round(fraction * n_pixels) distinct hot pixels."""
    n_hot = int(round(fraction * n_pixels))
    if n_hot == 0:
        return np.zeros(0, np.int64)
    return np.sort(rng.choice(n_pixels, size=n_hot, replace=False)).astype(np.int64)


_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8))


def draw_noise(rng: np.random.Generator, t0_us: int, t1_us: int, n_pixels: int,
               ba_rate_hz: float, hot_pixels: np.ndarray,
               hot_rate_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise events in (t0_us, t1_us]: (pixel, t_us, polarity), sorted by (pixel, t)."""
    dt_s = (t1_us - t0_us) * 1e-6
    parts = []
    if ba_rate_hz > 0:
        n = int(rng.poisson(ba_rate_hz * n_pixels * dt_s))
        parts.append(rng.integers(0, n_pixels, n, dtype=np.int64))
    if hot_rate_hz > 0 and len(hot_pixels):
        counts = rng.poisson(hot_rate_hz * dt_s, len(hot_pixels))
        parts.append(np.repeat(hot_pixels, counts))
    if not parts:
        return _EMPTY
    pixel = np.concatenate(parts) if len(parts) > 1 else parts[0]
    n = len(pixel)
    if n == 0:
        return _EMPTY
    t_us = rng.integers(t0_us + 1, t1_us + 1, n, dtype=np.int64)
    polarity = rng.integers(0, 2, n, dtype=np.int8)
    order = np.lexsort((t_us, pixel))            # stable: equal (pixel, t) keep draw order
    return pixel[order], t_us[order], polarity[order]
