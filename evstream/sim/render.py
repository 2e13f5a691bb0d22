"""Rendering helpers shared by the procedural worlds: procedural textures, mip pyramids, motion.

Textures.
    `fractal_noise` makes a periodic float32 image in [0, 1] with a 1/f^beta amplitude spectrum
    (natural-image-like), from a numpy Generator. `TextureBank` collects textures (albedo in
    [0, 1], optional alpha coverage in [0, 1], optional uint8 class labels), builds a mip
    pyramid for each (2x2 box averages of *premultiplied* albedo and of alpha, so a blurred
    silhouette stays a correct "colour over coverage") and packs everything into one tuple of
    flat arrays for the Numba kernels (see TextureBank.pack).

    The Numba kernels that sample a packed bank live in seg_kernel.py, beside their only
    caller: Numba's on-disk cache notices changes to a function's own file only, so kernels
    that call each other across files could run stale code after an edit.

Motion.
    `SmoothSignal` is a sum of sinusoids with seeded frequencies and phases, normalised to a
    given standard deviation, with its exact integral (a speed signal integrates to distance
    analytically, so the camera pose at any time is a pure function of t: rendering never
    depends on the order or spacing of the virtual frames). `min_jerk` is the 10t^3-15t^4+6t^5
    profile the saccades use.

Everything here is deterministic for a given Generator state; nothing reads global random state.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MAX_LEVELS = 14


# ---------------------------------------------------------------------------------------------
# Procedural images

def fractal_noise(height: int, width: int, rng: np.random.Generator, beta: float = 1.0,
                  f_min: float = 0.0, f_max: float = 0.5) -> np.ndarray:
    """Periodic float32 (height, width) noise in [0, 1] with amplitude ~ 1/f^beta for
    f_min < f <= f_max (cycles per texel)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fy, fx)
    gain = np.where((f > f_min) & (f <= f_max) & (f > 0), 1.0 / np.maximum(f, 1e-9) ** beta, 0.0)
    spectrum = np.fft.rfft2(rng.standard_normal((height, width))) * gain
    img = np.fft.irfft2(spectrum, s=(height, width))
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def _halve(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


class TextureBank:
    """Textures for one world, packed for the Numba kernels (see the module top)."""

    def __init__(self) -> None:
        self._items: list[tuple[list[np.ndarray], list[np.ndarray], np.ndarray | None]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, albedo: np.ndarray, alpha: np.ndarray | None = None,
            labels: np.ndarray | None = None) -> int:
        """Add a texture (albedo float (h, w) in [0, 1]); returns its id."""
        albedo = np.asarray(albedo, np.float32)
        if albedo.ndim != 2:
            raise ValueError(f"texture must be 2-D, got shape {albedo.shape}")
        a = np.ones_like(albedo) if alpha is None else np.asarray(alpha, np.float32)
        if a.shape != albedo.shape:
            raise ValueError(f"alpha shape {a.shape} != albedo shape {albedo.shape}")
        if labels is not None and labels.shape != albedo.shape:
            raise ValueError(f"labels shape {labels.shape} != albedo shape {albedo.shape}")
        colour_levels, alpha_levels = [albedo * a], [a]
        while len(colour_levels) < MAX_LEVELS and max(colour_levels[-1].shape) > 1:
            colour_levels.append(_halve(colour_levels[-1]))
            alpha_levels.append(_halve(alpha_levels[-1]))
        self._items.append((colour_levels, alpha_levels,
                            None if labels is None else np.asarray(labels, np.uint8)))
        return len(self._items) - 1

    def pack(self) -> tuple:
        """The bank as the kernels take it: (texels, labels, meta, scale, levels), where
        texels is float32 (N, 2) of (premultiplied albedo, alpha) pairs (one cache line holds
        both), labels uint8 (N,) (level 0 only, 255 elsewhere), meta int64 (T, MAX_LEVELS, 3)
        = (offset, width, height) per level, scale float64 (T, MAX_LEVELS, 2) = level size
        over level-0 size, levels int64 (T,)."""
        total = sum(lv.size for c, _, _ in self._items for lv in c)
        texels = np.zeros((total, 2), np.float32)
        labels = np.full(total, 255, np.uint8)
        meta = np.zeros((len(self._items), MAX_LEVELS, 3), np.int64)
        scale = np.ones((len(self._items), MAX_LEVELS, 2), np.float64)
        levels = np.zeros(len(self._items), np.int64)
        off = 0
        for tid, (colour, alph, lab) in enumerate(self._items):
            levels[tid] = len(colour)
            h0, w0 = colour[0].shape
            for lv, (c, a) in enumerate(zip(colour, alph)):
                h, w = c.shape
                meta[tid, lv] = (off, w, h)
                scale[tid, lv] = (w / w0, h / h0)
                texels[off:off + c.size, 0] = c.ravel()
                texels[off:off + c.size, 1] = a.ravel()
                if lv == 0 and lab is not None:
                    labels[off:off + c.size] = lab.ravel()
                off += c.size
        return texels, labels, meta, scale, levels


# ---------------------------------------------------------------------------------------------
# Motion signals

class SmoothSignal:
    """A zero-mean sum of `terms` sinusoids with frequencies in [f_lo_hz, f_hi_hz] and random
    phases, scaled to standard deviation `std`; value(t_s) and its exact integral(t_s)."""

    def __init__(self, rng: np.random.Generator, std: float, f_lo_hz: float, f_hi_hz: float,
                 terms: int = 3) -> None:
        self.freq = rng.uniform(f_lo_hz, f_hi_hz, terms)
        self.phase = rng.uniform(0, 2 * np.pi, terms)
        weights = rng.uniform(0.5, 1.0, terms)
        # the std of sum w_i sin(.) over a long time is sqrt(sum w_i^2 / 2)
        self.amp = weights * (std / math.sqrt(float(np.sum(weights ** 2)) / 2.0)) \
            if std > 0 else np.zeros(terms)

    def value(self, t_s):
        t = np.asarray(t_s, np.float64)[..., None]
        return np.sum(self.amp * np.sin(2 * np.pi * self.freq * t + self.phase), axis=-1)

    def integral(self, t_s):
        """Integral of value from 0 to t_s."""
        t = np.asarray(t_s, np.float64)[..., None]
        w = 2 * np.pi * self.freq
        return np.sum(self.amp / w * (np.cos(self.phase) - np.cos(w * t + self.phase)), axis=-1)


def min_jerk(u):
    """Minimum-jerk position profile on [0, 1] (0 -> 1, zero speed and acceleration at ends)."""
    u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
    return u ** 3 * (10 - 15 * u + 6 * u * u)
