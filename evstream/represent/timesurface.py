"""Time surface with exponential decay, per polarity, float32 (2, H, W).

    T(x, y, p) = the timestamp of the last event at (x, y) with polarity p (channel 0 OFF, 1 ON)
    S[p, y, x] = exp(-(t_ref - T(x, y, p)) / tau)     for pixels with an event, else 0

t_ref is the window end when the caller gives one (`t_ref_us`) and the last event's timestamp
otherwise; it may not be earlier than the last event. S lies in (0, 1]: 1 for an event at
t_ref, decaying with age; pixels without events are 0 (and so are events old enough for the
float32 value to underflow, ~100 tau). `tau_us` defaults to 50 ms, the default window length.

`last_timestamps` exposes T itself as int64 (2, H, W), with NEVER_US where a pixel saw no event.
dv-processing's `dv.TimeSurface` (2.0.4) is that same raw map without the polarity split: an
int64 matrix, zero-initialised, where `accept` stores each event's timestamp at (y, x), so
after sorted input it holds the newest timestamp per pixel; its `generateFrame` only renders it
as a uint8 image, and `dv.SpeedInvariantTimeSurface` is a different (rank-based) surface. So the
comparable quantity is max(T[0], T[1]) with NEVER_US read as 0, which the tests check equal to
dv's map on a real recording.

Both representations need t sorted non-decreasing (then "last" and "newest" agree) and raise
ValueError otherwise. The reference takes np.maximum.at of the timestamps (numpy leaves the
order of repeated fancy-index assignment unspecified, so "last write wins" would not do). The
Numba kernel scans the events backwards and fills each pixel the first time it meets it,
treating 0 in the output as "not yet seen"; a float32 value that underflows to 0 is harmless
because every earlier event at that pixel is older and underflows too. So it evaluates exp at
most 2*H*W times and needs no scratch map. The exp is taken in float64 and rounded to float32 in
both; libm and numpy's exp may differ by an ulp in float64, so the tests allow rtol 1e-6.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from evstream.represent.registry import (OK, OUT_OF_BOUNDS, UNSORTED, check_bounds_numpy,
                                         check_events, check_out, check_size,
                                         check_sorted_numpy, raise_kernel_error,
                                         register_representation)

NEVER_US = np.iinfo(np.int64).min      # last_timestamps() value for a pixel without events
DEFAULT_TAU_US = 50_000


def _check_params(events: np.ndarray, tau_us, t_ref_us) -> tuple[float, int | None]:
    tau_us = float(tau_us)
    if not tau_us > 0:
        raise ValueError(f"tau_us must be > 0, got {tau_us}")
    if t_ref_us is not None:
        t_ref_us = int(t_ref_us)
        if len(events) and t_ref_us < int(events["t"][-1]):
            raise ValueError(f"t_ref_us={t_ref_us} is earlier than the last event "
                             f"(t={int(events['t'][-1])})")
    return tau_us, t_ref_us


def _surface_args(events, height, width, tau_us, t_ref_us, out):
    """Check time_surface's arguments; -> (output, height, width, tau_us, t_ref_us)."""
    check_events(events)
    height, width = check_size(height, width)
    tau_us, t_ref_us = _check_params(events, tau_us, t_ref_us)
    return check_out(out, (2, height, width)), height, width, tau_us, t_ref_us


def _check_stamps_out(out, height, width):
    if out is None:
        return np.empty((2, height, width), np.int64)
    if not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.shape != (2, height, width) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous int64 array of shape "
                         f"{(2, height, width)}")
    return out


def _never_stamps(events, height, width, out) -> tuple[np.ndarray, int, int]:
    """Check last_timestamps' arguments; -> ((2, H, W) int64 output all NEVER_US, height, width)."""
    check_events(events)
    height, width = check_size(height, width)
    stamps = _check_stamps_out(out, height, width)
    stamps.fill(NEVER_US)
    return stamps, height, width


# ---------------------------------------------------------------------------------------------
# Reference (numpy)

def last_timestamps_numpy(events: np.ndarray, height: int, width: int,
                          out: np.ndarray | None = None) -> np.ndarray:
    """Newest timestamp per polarity and pixel, int64 (2, H, W); NEVER_US where none."""
    stamps, height, width = _never_stamps(events, height, width, out)
    if len(events) == 0:
        return stamps
    t = events["t"].astype(np.int64)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    check_bounds_numpy(x, y, t, height, width)
    check_sorted_numpy(t)
    channel = (events["p"] > 0).astype(np.int64)
    np.maximum.at(stamps.reshape(-1), (channel * height + y) * width + x, t)
    return stamps


def time_surface_numpy(events: np.ndarray, height: int, width: int,
                       tau_us: float = DEFAULT_TAU_US, t_ref_us: int | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Exponentially decayed time surface (2, H, W) float32 (reference)."""
    surface, height, width, tau_us, t_ref_us = _surface_args(events, height, width, tau_us,
                                                             t_ref_us, out)
    stamps = last_timestamps_numpy(events, height, width)
    if len(events) == 0:
        surface.fill(0)
        return surface
    t_ref = int(events["t"][-1]) if t_ref_us is None else t_ref_us
    seen = stamps != NEVER_US
    age = (t_ref - np.where(seen, stamps, t_ref)).astype(np.float64)
    surface[...] = np.where(seen, np.exp(-age / tau_us), 0.0)
    return surface


# ---------------------------------------------------------------------------------------------
# Fast kernels (Numba)

@njit(cache=True, nogil=True, boundscheck=False)
def _last_timestamps_kernel(events, height, width, flat):
    plane = np.int64(height) * np.int64(width)
    w64 = np.int64(width)
    uw = np.uint64(width)
    uh = np.uint64(height)
    n = events.shape[0]
    t_prev = np.int64(events[0].t)
    for i in range(n):
        e = events[i]
        t = np.int64(e.t)
        if t < t_prev:
            return UNSORTED, i
        xx = np.uint64(e.x)
        yy = np.uint64(e.y)
        if xx >= uw or yy >= uh:
            return OUT_OF_BOUNDS, i
        base = plane if e.p > 0 else np.int64(0)
        flat[base + np.int64(yy) * w64 + np.int64(xx)] = t
        t_prev = t
    return OK, 0


@njit(cache=True, nogil=True, boundscheck=False)
def _time_surface_kernel(events, height, width, t_ref, inv_tau, flat):
    """`flat` zeroed. Backward scan; returns (status, index) with the forward-order index."""
    plane = np.int64(height) * np.int64(width)
    w64 = np.int64(width)
    uw = np.uint64(width)
    uh = np.uint64(height)
    n = events.shape[0]
    t_next = np.int64(events[n - 1].t)
    for i in range(n - 1, -1, -1):
        e = events[i]
        t = np.int64(e.t)
        if t > t_next:
            return UNSORTED, i + 1
        xx = np.uint64(e.x)
        yy = np.uint64(e.y)
        if xx >= uw or yy >= uh:
            return OUT_OF_BOUNDS, i
        idx = (plane if e.p > 0 else np.int64(0)) + np.int64(yy) * w64 + np.int64(xx)
        if flat[idx] == 0:
            flat[idx] = np.float32(np.exp(-(np.float64(t_ref - t) * inv_tau)))
        t_next = t
    return OK, 0


def last_timestamps(events: np.ndarray, height: int, width: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Newest timestamp per polarity and pixel, int64 (2, H, W); NEVER_US where none (fast)."""
    stamps, height, width = _never_stamps(events, height, width, out)
    if len(events) == 0:
        return stamps
    code, index = _last_timestamps_kernel(events, height, width, stamps.reshape(-1))
    raise_kernel_error(code, index, events, height, width)
    return stamps


def time_surface(events: np.ndarray, height: int, width: int, tau_us: float = DEFAULT_TAU_US,
                 t_ref_us: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Exponentially decayed time surface (2, H, W) float32; channel 0 OFF, 1 ON (fast)."""
    surface, height, width, tau_us, t_ref_us = _surface_args(events, height, width, tau_us,
                                                             t_ref_us, out)
    surface.fill(0)
    if len(events) == 0:
        return surface
    t_ref = int(events["t"][-1]) if t_ref_us is None else t_ref_us
    code, index = _time_surface_kernel(events, height, width, np.int64(t_ref), 1.0 / tau_us,
                                       surface.reshape(-1))
    raise_kernel_error(code, index, events, height, width)
    return surface


time_surface_numba = time_surface


@register_representation("timesurface")
class TimeSurface:
    """exp(-(t_ref - last t)/tau) per pixel and polarity: channel 0 OFF, channel 1 ON."""

    requires_sorted = True
    test_params = ({}, {"tau_us": 5_000})

    def channels(self, tau_us: float = DEFAULT_TAU_US, t_ref_us: int | None = None) -> int:
        return 2

    def compute(self, events, height, width, out=None, tau_us: float = DEFAULT_TAU_US,
                t_ref_us: int | None = None):
        return time_surface(events, height, width, tau_us=tau_us, t_ref_us=t_ref_us, out=out)

    def compute_numpy(self, events, height, width, out=None, tau_us: float = DEFAULT_TAU_US,
                      t_ref_us: int | None = None):
        return time_surface_numpy(events, height, width, tau_us=tau_us, t_ref_us=t_ref_us,
                                  out=out)
