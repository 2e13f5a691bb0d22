"""Two-channel polarity count histogram, float32 (2, H, W).

    H[0, y, x] = number of OFF events (p <= 0) at (x, y)
    H[1, y, x] = number of ON events  (p > 0)  at (x, y)

Channel order: the channel index is the polarity bit (0 = OFF, 1 = ON), as in AEDAT4 /
dv-processing and tonic's ToFrame (which indexes its polarity axis by p). EvDistill's own input
is not this: its pre-rendered RGB event images hold ON then OFF, each plane over its own maximum
in 8 bits, with an empty third plane; that is `evdistill_rgb` (evdistill.py, with the evidence).

`histogram_max` is the max-normalised form: each polarity channel divided by its own maximum,
so each lies in [0, 1]; a channel with no events stays all zero.

Counts are exact integers in float32 up to 2**24 events per pixel. Event order does not matter
here (no sortedness check). The numpy reference uses np.bincount; the Numba kernel walks the
records once; both normalise with a float32 division, so the two agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from evstream.represent.registry import (OK, OUT_OF_BOUNDS, check_bounds_numpy,
                                         raise_kernel_error, register_representation,
                                         zeroed_output)


def histogram_numpy(events: np.ndarray, height: int, width: int, normalize: bool = False,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Polarity count histogram (2, height, width) float32; channel 0 OFF, 1 ON (reference)."""
    hist, height, width = zeroed_output(events, height, width, out, 2)
    if len(events) == 0:
        return hist
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    check_bounds_numpy(x, y, events["t"], height, width)
    channel = (events["p"] > 0).astype(np.int64)
    index = (channel * height + y) * width + x
    counts = np.bincount(index, minlength=2 * height * width)
    hist.reshape(-1)[:] = counts
    if normalize:
        for c in range(2):
            peak = hist[c].max()
            if peak > 0:
                hist[c] /= peak
    return hist


@njit(cache=True, nogil=True, boundscheck=False)
def polarity_count_kernel(events, height, width, flat, on_plane):
    """Per-polarity event counts added into `flat` (2 planes of height x width): ON events into
    plane `on_plane` (0 or 1), OFF into the other; -> (OK, 0) or (OUT_OF_BOUNDS, index)."""
    plane = np.int64(height) * np.int64(width)
    w64 = np.int64(width)
    uw = np.uint64(width)
    uh = np.uint64(height)
    one = np.float32(1.0)
    on = np.int64(on_plane)
    off = np.int64(1) - on
    for i in range(events.shape[0]):
        e = events[i]
        xx = np.uint64(e.x)
        yy = np.uint64(e.y)
        if xx >= uw or yy >= uh:
            return OUT_OF_BOUNDS, i
        base = plane * on if e.p > 0 else plane * off
        flat[base + np.int64(yy) * w64 + np.int64(xx)] += one
    return OK, 0


@njit(cache=True, nogil=True, boundscheck=False)
def _max_normalize_kernel(hist):
    for c in range(hist.shape[0]):
        ch = hist[c].reshape(-1)
        peak = np.float32(0.0)
        for j in range(ch.shape[0]):
            if ch[j] > peak:
                peak = ch[j]
        if peak > 0:
            for j in range(ch.shape[0]):
                ch[j] = ch[j] / peak


def histogram(events: np.ndarray, height: int, width: int, normalize: bool = False,
              out: np.ndarray | None = None) -> np.ndarray:
    """Polarity count histogram (2, height, width) float32; channel 0 OFF, 1 ON (fast kernel).

    `normalize=True` divides each channel by its own maximum. Writes into `out` when given.
    """
    hist, height, width = zeroed_output(events, height, width, out, 2)
    if len(events) == 0:
        return hist
    code, index = polarity_count_kernel(events, height, width, hist.reshape(-1), 1)
    raise_kernel_error(code, index, events, height, width)
    if normalize:
        _max_normalize_kernel(hist)
    return hist


histogram_numba = histogram


@register_representation("histogram")
class PolarityHistogram:
    """Event counts per pixel and polarity: channel 0 OFF, channel 1 ON."""

    requires_sorted = False
    test_params = ({},)
    normalize = False

    def channels(self) -> int:
        return 2

    def compute(self, events, height, width, out=None):
        return histogram(events, height, width, normalize=self.normalize, out=out)

    def compute_numpy(self, events, height, width, out=None):
        return histogram_numpy(events, height, width, normalize=self.normalize, out=out)


@register_representation("histogram_max")
class PolarityHistogramMax(PolarityHistogram):
    """Polarity counts with each channel divided by its own maximum (0 stays 0)."""

    normalize = True
