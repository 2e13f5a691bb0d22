"""Voxel grid, exactly as E2VID defines it (`events_to_voxel_grid` in uzh-rpg/rpg_e2vid,
utils/inference_utils.py; read there, written here from the definition).

For a window of N events sorted by t, with B bins:

    t_first, t_last = t[0], t[N-1]          the events' own first/last timestamps, not the
                                             window bounds
    dT  = t_last - t_first, or 1 when that is 0
    tau = (B - 1) * (t - t_first) / dT       in [0, B-1]
    pol = +1 if p > 0 else -1
    k   = floor(tau), frac = tau - k
    V[k,   y, x] += pol * (1 - frac)
    V[k+1, y, x] += pol * frac               only when k + 1 < B

V is float32 (B, H, W). E2VID writes the polarity step as `pols[pols == 0] = -1` and the floor
as `astype(int)` (the same for tau >= 0). An empty window gives all zeros (E2VID would fail on
it). With B = 1 every event adds its polarity to the one bin.

Normalisation (`normalize=True`), after E2VID's EventPreprocessor: the non-zero voxels are
shifted and scaled to mean 0 and standard deviation 1; zero voxels stay 0. E2VID computes the
std with torch's `Tensor.std()`, which is the unbiased one (N - 1), and so do we. E2VID has no
guard for std = 0 (all non-zero voxels equal, or only one: the unbiased std of one value is NaN)
and fills the tensor with NaN. Here, when the std is not > 0, the non-zero voxels are only
shifted by the mean (a fallback later event-vision code uses too), so the output is always
finite.

"Non-zero" needs one refinement to be well defined. Every weight is an integer multiple of 1/dT
(frac = ((B-1)(t - t_first) mod dT) / dT), so an exact voxel value is m/dT for an integer m, and
a voxel whose contributions cancel (m = 0) is exactly 0 in exact arithmetic; in float32 it may
come out as a residue of ~1e-8 depending on summation order (E2VID's GPU path, with unordered
atomic adds, is not even deterministic about it), and counting that residue as a non-zero voxel
drags the mean and std and maps it to -mean/std. So normalisation treats |v| < 1/(2 dT) as 0
(and writes 0 there): it never touches a genuine value (|v| >= 1/dT), and as long as float32
rounding stays below half a quantum (any ordinary window: 1/(2 dT) = 1e-5 for 50 ms, against
residues of ~6e-8 per contribution) it makes the set of normalised voxels independent of
summation order, which is what lets the fast kernel and the reference agree after normalisation
too. For very long spans (dT beyond ~2**20 us) the quantum falls under float32 resolution and a
residue can again pass for a value, as in E2VID.

Two implementations, held equal by tests/test_represent.py:

- `voxel_grid_numpy`: the formula above, step by step, with `np.add.at` (the readable reference).
- `voxel_grid` (also `voxel_grid_numba`): the fast single-threaded Numba kernel. It walks the
  structured array's records directly (one 16-byte record per event; this beat separate t/x/y/p
  field arrays and a raw uint64 view in measurements). Because t is sorted, k only grows, so
  it visits the bins in order, and inside bin k takes frac = (num - k*dT) * (1/dT) from the
  exact integer num = (B-1)*(t - t_first): no per-event division or float floor, and frac is 0
  exactly when E2VID's is. Weights are rounded to float32 and accumulated in float32. The lower
  weight is 1 - frac in float32 when dT <= 2**24 us (then 1 - frac >= 2**-24 cannot round to 0)
  and ((k+1)*dT - num) * (1/dT) for longer spans (~10% slower), so no weight is 0 unless
  E2VID's is. The last bin only receives events at t_last (frac 0): its loop has no upper
  write. Sortedness and sensor bounds are checked in the same pass.

Agreement: each kernel weight is E2VID's float64 weight rounded to float32; both accumulate in
float32 (`np.add.at` rounds to the float32 grid after every add), but in different orders, so a
voxel with n contributions agrees to about n * 2**-24 of its partial sums. Tests use
rtol = atol = 1e-5 at ordinary densities. Exact cancellations are where the order shows (0 in
one, ~1e-8 in the other), hence the residue rule in the normalisation above.

Incremental accumulation (`VoxelAccumulator`, for the window stage). The grid of a time
window can only be computed once the window has closed, because dT depends on its last event.
But when the window [t0_us, t1_us) contains an event at t1_us - 1 (nearly always at DAVIS
rates), t_last is known in advance. The accumulator therefore adds each chunk of the open
window's events as it arrives, with t_first from the window's first event and the GUESS
t_last = t1_us - 1, using the exact per-event arithmetic of `_voxel_kernel` (same k, same
float32 weights, same writes in the same event order). At close, if the real t_last equals
the guess, every voxel received the same float32 additions in the same order as the batch
kernel would give it, so the grid is bit-identical to `voxel_grid` (tests hold this on real
recordings and random streams); only the rest of the events and the optional normalisation are
left for the close. Otherwise (a miss, an error, or an empty window) it recomputes from scratch
with `voxel_grid`: the result is always exactly `voxel_grid`'s, never an approximation.

`cache=True` keeps the compiled kernels in __pycache__, so a later process loads them in
milliseconds. `fastmath` is off: it measured no faster here (the loop is bound by scattered
read-modify-writes) and would license reassociation.

Timestamps: (B-1) * (t_last - t_first) must fit in int64 (with B = 1000 that is ~290 years).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from evstream.represent.registry import (OK, OUT_OF_BOUNDS, UNSORTED, check_bounds_numpy,
                                         check_events, check_out, check_size,
                                         check_sorted_numpy, raise_kernel_error,
                                         register_representation)


def _check_bins(num_bins: int) -> int:
    num_bins = int(num_bins)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    return num_bins


def _zeroed_grid(events, num_bins, height, width, out) -> tuple[np.ndarray, int, int, int]:
    """Check the arguments both forms take; -> (zeroed (B, H, W) output, B, height, width)."""
    check_events(events)
    num_bins = _check_bins(num_bins)
    height, width = check_size(height, width)
    grid = check_out(out, (num_bins, height, width))
    grid.fill(0)
    return grid, num_bins, height, width


# ---------------------------------------------------------------------------------------------
# Reference (numpy)

def voxel_grid_numpy(events: np.ndarray, num_bins: int, height: int, width: int,
                     normalize: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """E2VID voxel grid, float32 (num_bins, height, width): the readable reference."""
    grid, num_bins, height, width = _zeroed_grid(events, num_bins, height, width, out)
    if len(events) == 0:
        return grid
    t = events["t"].astype(np.int64)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    check_bounds_numpy(x, y, t, height, width)
    check_sorted_numpy(t)

    t_first, t_last = t[0], t[-1]
    d_t = t_last - t_first
    if d_t == 0:
        d_t = 1
    tau = (num_bins - 1) * (t - t_first) / d_t          # float64, exact integer numerator
    pol = np.where(events["p"] > 0, 1.0, -1.0)
    k = np.floor(tau).astype(np.int64)
    frac = tau - k
    pixel = y * width + x
    plane = height * width

    flat = grid.reshape(-1)
    np.add.at(flat, k * plane + pixel, pol * (1.0 - frac))
    upper = k + 1 < num_bins
    np.add.at(flat, (k[upper] + 1) * plane + pixel[upper], (pol * frac)[upper])

    if normalize:
        normalize_nonzero_numpy(grid, _residue_bound(events))
    return grid


def normalize_nonzero_numpy(grid: np.ndarray, zero_below: float = 0.0) -> np.ndarray:
    """In place: entries with |v| >= zero_below (and v != 0) to mean 0 and unbiased std 1; the
    rest to 0. Without spread (std not > 0) the kept entries are only shifted by the mean."""
    keep = (grid != 0) & (np.abs(grid) >= zero_below)
    values = grid[keep].astype(np.float64)
    grid[~keep] = 0
    if values.size == 0:
        return grid
    mean = values.mean()
    std = values.std(ddof=1) if values.size > 1 else 0.0
    if std > 0:
        grid[keep] = ((values - mean) * (1.0 / std)).astype(np.float32)
    else:
        grid[keep] = (values - mean).astype(np.float32)
    return grid


def _residue_bound(events: np.ndarray) -> float:
    """Half the weight quantum 1/dT: smaller magnitudes are cancellation residue (see top)."""
    d_t = int(events["t"][-1]) - int(events["t"][0])
    return 0.5 / (d_t if d_t > 0 else 1)


# ---------------------------------------------------------------------------------------------
# Fast kernel (Numba)

@njit(cache=True, nogil=True, boundscheck=False)
def _voxel_kernel(events, num_bins, height, width, flat):
    """Accumulate into `flat` (zeroed, length num_bins*height*width). Returns (status, index)."""
    n = events.shape[0]
    t_first = np.int64(events[0].t)
    d_t = np.int64(events[n - 1].t) - t_first
    if d_t == 0:
        d_t = 1
    bm1 = np.int64(num_bins - 1)
    inv_dt = 1.0 / d_t
    plane = np.int64(height) * np.int64(width)
    w64 = np.int64(width)
    uw = np.uint64(width)
    uh = np.uint64(height)
    one = np.float32(1.0)
    short = d_t <= (1 << 24)
    t_prev = t_first
    i = 0
    for k in range(bm1):                        # bins 0 .. B-2: lower and upper weight
        lo = k * d_t
        hi = lo + d_t
        base = k * plane
        while i < n:
            e = events[i]
            t = np.int64(e.t)
            num = bm1 * (t - t_first)
            if num >= hi:
                break
            if t < t_prev:
                return UNSORTED, i
            xx = np.uint64(e.x)                 # negative signed values wrap to huge: one test
            yy = np.uint64(e.y)
            if xx >= uw or yy >= uh:
                return OUT_OF_BOUNDS, i
            pol = one if e.p > 0 else -one
            up = pol * np.float32((num - lo) * inv_dt)
            if short:                           # 1 - frac >= 2**-24: safe in float32
                low = pol - up
            else:
                low = pol * np.float32((hi - num) * inv_dt)
            idx = base + np.int64(yy) * w64 + np.int64(xx)
            flat[idx] += low
            flat[idx + plane] += up
            t_prev = t
            i += 1
    base = bm1 * plane                          # bin B-1: only events at t_last (frac 0)
    while i < n:
        e = events[i]
        t = np.int64(e.t)
        if t < t_prev:
            return UNSORTED, i
        xx = np.uint64(e.x)
        yy = np.uint64(e.y)
        if xx >= uw or yy >= uh:
            return OUT_OF_BOUNDS, i
        flat[base + np.int64(yy) * w64 + np.int64(xx)] += one if e.p > 0 else -one
        t_prev = t
        i += 1
    return OK, 0


_BEYOND = 99          # _voxel_accumulate: an event after the guessed t_last


@njit(cache=True, nogil=True, boundscheck=False)
def _voxel_accumulate(events, start, t_first, d_t, k, num_bins, height, width, flat):
    """Add events[start:] to `flat` with a fixed t_first and d_t (> 0), event by event exactly
    as `_voxel_kernel` does with the same t_first and d_t; k is the bin reached so far (bins
    only grow, as there). Returns (status, index or the new k); status _BEYOND when an event
    lies after t_first + d_t (the guess was wrong)."""
    n = events.shape[0]
    bm1 = np.int64(num_bins - 1)
    inv_dt = 1.0 / d_t
    plane = np.int64(height) * np.int64(width)
    w64 = np.int64(width)
    uw = np.uint64(width)
    uh = np.uint64(height)
    one = np.float32(1.0)
    short = d_t <= (1 << 24)
    num_max = bm1 * d_t
    t_prev = np.int64(events[start - 1].t) if start > 0 else t_first
    lo = k * d_t
    hi = lo + d_t
    base = k * plane
    for i in range(start, n):
        e = events[i]
        t = np.int64(e.t)
        if t < t_prev:
            return UNSORTED, i
        num = bm1 * (t - t_first)
        if num > num_max:
            return _BEYOND, i
        xx = np.uint64(e.x)
        yy = np.uint64(e.y)
        if xx >= uw or yy >= uh:
            return OUT_OF_BOUNDS, i
        pol = one if e.p > 0 else -one
        idx = np.int64(yy) * w64 + np.int64(xx)
        if num == num_max:                      # the last bin: only events at t_last
            flat[bm1 * plane + idx] += pol
        else:
            while num >= hi:                    # the bin of this event (k <= B-2 here)
                k += 1
                lo = hi
                hi = lo + d_t
                base += plane
            up = pol * np.float32((num - lo) * inv_dt)
            if short:
                low = pol - up
            else:
                low = pol * np.float32((hi - num) * inv_dt)
            flat[base + idx] += low
            flat[base + idx + plane] += up
        t_prev = t
    return OK, k


@njit(cache=True, nogil=True, boundscheck=False)
def _normalize_nonzero_kernel(flat, zero_below):
    count = 0
    total = 0.0
    for j in range(flat.shape[0]):
        v = flat[j]
        if v != 0:
            if abs(v) >= zero_below:
                count += 1
                total += v
            else:
                flat[j] = 0
    if count == 0:
        return
    mean = total / count
    ssd = 0.0
    for j in range(flat.shape[0]):
        v = flat[j]
        if v != 0:
            d = np.float64(v) - mean
            ssd += d * d
    std = np.sqrt(ssd / (count - 1)) if count > 1 else 0.0
    scale = 1.0 / std if std > 0 else 1.0
    for j in range(flat.shape[0]):
        v = flat[j]
        if v != 0:
            flat[j] = np.float32((np.float64(v) - mean) * scale)


def voxel_grid(events: np.ndarray, num_bins: int, height: int, width: int,
               normalize: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """E2VID voxel grid, float32 (num_bins, height, width): the fast kernel.

    Writes into `out` (zeroed first) when given and returns it. Raises ValueError for events
    outside height x width or not sorted by t. Never modifies `events`.
    """
    grid, num_bins, height, width = _zeroed_grid(events, num_bins, height, width, out)
    if len(events) == 0:
        return grid
    flat = grid.reshape(-1)
    code, index = _voxel_kernel(events, num_bins, height, width, flat)
    raise_kernel_error(code, index, events, height, width)
    if normalize:
        _normalize_nonzero_kernel(flat, _residue_bound(events))
    return grid


voxel_grid_numba = voxel_grid


class VoxelAccumulator:
    """Speculative incremental voxel grid of one time window at a time (see the module notes).

        acc = VoxelAccumulator(num_bins, height, width, normalize)
        acc.begin(out, t_last_guess_us=w.t1_us - 1)   # zeroes `out` (off the latency path)
        acc.update(events_so_far)     # the open window's events until now (a growing prefix)
        grid, exact = acc.finish(window_events)   # == voxel_grid(window_events, ..., out=out)

    `update` and `finish` take the window's events from its first one, every time: each call
    adds only the events past those already added, so the caller must pass the same events
    again as a prefix (the window stage passes views of the windower's buffer). `finish`
    returns `out` holding exactly `voxel_grid(window_events, ...)` and whether the
    speculative grid was used (True) or recomputed (False). Errors (unsorted, outside the
    sensor) surface from `finish` as the same ValueError `voxel_grid` raises.
    """

    def __init__(self, num_bins: int, height: int, width: int, normalize: bool = False):
        self.num_bins = _check_bins(num_bins)
        self.height, self.width = check_size(height, width)
        self.normalize = bool(normalize)
        self.grid: np.ndarray | None = None
        self._flat = None
        self._guess = 0
        self._t_first = 0
        self._d_t = 1
        self._done = 0
        self._k = 0
        self._valid = False

    def begin(self, out: np.ndarray, t_last_guess_us: int) -> None:
        """Start a window in `out` (zeroed here), guessing its last event at t_last_guess_us."""
        self.grid = check_out(out, (self.num_bins, self.height, self.width))
        self.grid.fill(0)
        self._flat = self.grid.reshape(-1)
        self._guess = int(t_last_guess_us)
        self._done = 0
        self._valid = True

    def update(self, events: np.ndarray) -> None:
        if self.grid is None:
            raise ValueError("VoxelAccumulator.update() before begin()")
        n = len(events)
        if not self._valid or n <= self._done:
            return
        if self._done == 0:
            check_events(events)
            self._t_first = int(events["t"][0])
            d_t = self._guess - self._t_first
            if d_t < 0:                        # the window starts after the guess: no use
                self._valid = False
                return
            self._d_t = d_t if d_t > 0 else 1
            self._k = 0
        code, k = _voxel_accumulate(events, self._done, self._t_first, self._d_t, self._k,
                                    self.num_bins, self.height, self.width, self._flat)
        if code != OK:
            self._valid = False                 # finish() recomputes (and raises, if bad)
            return
        self._done, self._k = n, k

    def finish(self, events: np.ndarray) -> tuple[np.ndarray, bool]:
        """The window's grid (in the `out` given to begin) and whether the guess held."""
        if self.grid is None:
            raise ValueError("VoxelAccumulator.finish() before begin()")
        n = len(events)
        hit = self._valid and n > 0 and int(events["t"][n - 1]) == self._guess
        if hit:
            self.update(events)
        grid, self.grid, self._flat = self.grid, None, None
        if hit and self._valid:
            if self.normalize:
                _normalize_nonzero_kernel(grid.reshape(-1), _residue_bound(events))
            return grid, True
        return voxel_grid(events, self.num_bins, self.height, self.width,
                          normalize=self.normalize, out=grid), False


@register_representation("voxel")
class VoxelGrid:
    """E2VID voxel grid: num_bins channels, bilinear in time, polarity +-1."""

    requires_sorted = True
    test_params = ({"num_bins": 5}, {"num_bins": 1}, {"num_bins": 3, "normalize": True})

    def channels(self, num_bins: int = 5, normalize: bool = False) -> int:
        return _check_bins(num_bins)

    def compute(self, events, height, width, out=None, num_bins: int = 5,
                normalize: bool = False):
        return voxel_grid(events, num_bins, height, width, normalize=normalize, out=out)

    def compute_numpy(self, events, height, width, out=None, num_bins: int = 5,
                      normalize: bool = False):
        return voxel_grid_numpy(events, num_bins, height, width, normalize=normalize, out=out)

    def accumulator(self, height, width, num_bins: int = 5, normalize: bool = False):
        return VoxelAccumulator(num_bins, height, width, normalize=normalize)
