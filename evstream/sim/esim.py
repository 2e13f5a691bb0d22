"""ESIM-style event simulator: intensity frames rendered at a high rate -> DVS events.

The model (after Rebecq, Gehrig & Scaramuzza, "ESIM: an Open Event Camera Simulator", CoRL 2018,
plus the noise and refractory effects that v2e and real sensors add):

Intensity and log intensity.
    A frame is a (H, W) image of linear intensity I. uint8 frames mean I = value / 255; float
    frames are taken as they are, on the same scale (1.0 = full white; brighter is allowed,
    negative or non-finite values are rejected). Each pixel tracks
        L = log(I + eps)                               (lin_log_threshold == 0, the default)
    with eps (default 1e-3, i.e. a quarter of one uint8 step) keeping black pixels finite. With
    lin_log_threshold = T > 0, as in v2e, small intensities are treated linearly instead:
        L = log(I)                       for I >= T
        L = log(T) + (I - T) / T         for I <  T        (eps is then unused)
    Below T this is the tangent of log at T, so L and its slope are continuous and it stays
    increasing on any intensity scale. (v2e's linear part is the chord through the origin,
    x * log(T) / T, which only works for T > 1 on a 0..255 scale; the tangent works for any T and
    keeps dark pixels from amplifying quantisation and render noise the way log(I + eps) does.)
    `log_intensity(frame, config)` is this mapping in plain numpy (the readable reference).

Events.
    Every pixel keeps its previous L (L0 at t0) and a reference level `ref`. For the next frame
    (L1 at t1) L(t) is interpolated linearly between (t0, L0) and (t1, L1). With per-pixel
    thresholds c_on, c_off:
        d = L1 - ref
        d >= c_on   -> n = floor(d / c_on) ON events, the k-th where L(t) crosses ref + k*c_on
        -d >= c_off -> n = floor(-d / c_off) OFF events, at ref - k*c_off
    and the reference ends at ref + n*c_on (or ref - n*c_off): it moves by exactly one threshold
    per crossing, never snaps to L1, so the remainder carries into the next interval. Since L is
    linear inside an interval only one polarity can fire per pixel per interval. The first frame
    only initialises L0 = ref = L(frame); it yields no events.

Timestamps.
    The k-th crossing is at fraction f = (level - L0) / (L1 - L0) of the interval and is stamped
    t0 + floor(f * (t1 - t0) + 0.5), clamped to [t0 + 1, t1]: every event of a step lies in the
    half-open interval (t0, t1], so consecutive steps never share or reorder a timestamp.

Thresholds.
    c_on and c_off are drawn once per pixel at construction, max(c + sigma * N(0, 1),
    min_threshold), ON and OFF independently, from the seeded generator (see noise.py).

Refractory period (refractory_us = R).
    A pixel emits an event at t only if t - t_last >= R, where t_last is the time of its last
    *emitted* event (signal or noise); R = 0 lets a pixel fire several events in the same
    microsecond. A crossing that falls inside the refractory period is dropped, but it still
    moves the reference by its threshold, exactly as an emitted one: the pixel keeps tracking the
    signal while it is blind, and when the period ends it fires on the next crossing only, with no
    burst of catch-up events for what it missed. Dropped crossings do not restart the period.

Noise.
    Background activity: a Poisson process at ba_rate_hz at every pixel. Hot pixels: a fixed set
    of round(hot_pixel_fraction * H * W) pixels chosen from the seed, each a Poisson process at
    hot_pixel_rate_hz. Noise events have random polarity and uniform whole-microsecond times in
    the interval; they pass through the same refractory gate as signal events (and restart it),
    but leave the reference alone (they model the sensor's spurious resets, not light).

Order and determinism.
    `step` returns EVENT_DTYPE events sorted by t; equal times are ordered by pixel (y, then x),
    and inside one pixel in the order the pixel fired (a signal crossing before a noise event at
    the same microsecond). The same seed, config and frames give byte-identical output however
    the frames are split across `step` calls or `simulate` runs; no global random state is used.

Streaming contract: `EventSimulator(height, width, config, seed)`, then `.step(frame, t_us)` per
frame with strictly increasing integer t_us. A bad frame (wrong shape or dtype, NaN, negative
intensity, time not increasing) raises ValueError and leaves the simulator's state untouched.
The simulator never modifies the caller's frames.

How it runs (a step at 346x260 costs ~0.4-0.6 ms of CPU here, see tools/bench/sim.py):
float frames go through `_log_into` (numpy's SIMD log, ~10x faster than a scalar log in a
Numba loop, and the very function `log_intensity` uses, so the reference and the simulator agree
bit for bit); uint8 frames through a 256-entry table of the same values (no log at all). Then
the Numba kernels (cache=True, single-threaded; a dataset generator gets its parallelism from
one process per sequence): `_emit_kernel` walks the pixels once, merging each pixel's crossings
with its noise events in time order, applying the refractory gate and updating the state, and
stops before a pixel whose events would not fit the output buffer, so the caller can grow the
buffer and resume (no counting pass first); `_sort_kernel` is a stable counting sort on t - t0,
used whenever the interval is short compared to the event count (otherwise numpy's stable
argsort, which orders identically). Event buffers are zero-filled and records are gathered as
raw bytes, so the 3 padding bytes of each record are always 0 and outputs compare by bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from numba import njit

from evstream.sim.noise import choose_hot_pixels, draw_noise, draw_thresholds
from evstream.types import EVENT_DTYPE


@dataclass(frozen=True)
class SimConfig:
    c_on: float = 0.2                 # ON contrast threshold: rise in L (natural log) per event
    c_off: float = 0.2                # OFF contrast threshold: fall in L per event
    sigma_threshold: float = 0.03     # std of per-pixel threshold noise (log units), drawn once
                                      # per pixel and per polarity from the seed; 0 = uniform
    min_threshold: float = 0.01       # per-pixel thresholds are clipped from below to this (> 0)
    refractory_us: int = 0            # a pixel emits at most one event per this many us; 0 = off
    ba_rate_hz: float = 0.0           # background activity: Poisson events per pixel per second
    hot_pixel_fraction: float = 0.0   # fraction of pixels that are hot (a fixed set per seed)
    hot_pixel_rate_hz: float = 100.0  # event rate of each hot pixel (random polarity)
    eps: float = 1e-3                 # L = log(I + eps) with I in [0, 1] (uint8 / 255); > 0
                                      # unless lin_log_threshold is set
    lin_log_threshold: float = 0.0    # T > 0: L is linear (tangent of log) below intensity T,
                                      # log(I) above, eps unused; 0 = pure log(I + eps)

    def __post_init__(self) -> None:
        for name in ("c_on", "c_off", "min_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SimConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("sigma_threshold", "ba_rate_hz", "hot_pixel_rate_hz", "eps",
                     "lin_log_threshold"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"SimConfig.{name} must be finite and >= 0, got {value}")
        if not 0 <= self.hot_pixel_fraction <= 1:
            raise ValueError(f"SimConfig.hot_pixel_fraction must be in [0, 1], "
                             f"got {self.hot_pixel_fraction}")
        if int(self.refractory_us) != self.refractory_us or self.refractory_us < 0:
            raise ValueError(f"SimConfig.refractory_us must be an integer >= 0, "
                             f"got {self.refractory_us}")
        if self.lin_log_threshold == 0 and self.eps == 0:
            raise ValueError("SimConfig.eps must be > 0 when lin_log_threshold is 0 "
                             "(log(0) is -inf)")


# ---------------------------------------------------------------------------------------------
# Log intensity (numpy reference)

def _log_into(intensity: np.ndarray, config: SimConfig, out: np.ndarray) -> np.ndarray:
    """out[...] = L(intensity) for float intensities; the one implementation of the mapping."""
    thr = config.lin_log_threshold
    with np.errstate(invalid="ignore", divide="ignore"):   # NaN / negative: caller reports
        if thr == 0:
            np.add(intensity, config.eps, out=out, dtype=np.float64)
            np.log(out, out=out)
            return out
        np.maximum(intensity, thr, out=out, dtype=np.float64)
        np.log(out, out=out)
        dark = intensity < thr
        out[dark] = math.log(thr) + (intensity[dark].astype(np.float64) - thr) / thr
    return out


def log_intensity(frame: np.ndarray, config: SimConfig) -> np.ndarray:
    """L of a uint8 or float frame as float64 (same shape): the readable reference."""
    frame = np.asarray(frame)
    intensity = frame / 255.0 if frame.dtype == np.uint8 else frame
    return _log_into(intensity, config, np.empty(frame.shape, np.float64))


# ---------------------------------------------------------------------------------------------
# Kernels (Numba)

@njit(cache=True, nogil=True)
def _crossings(d, c_on, c_off):
    """Number of threshold crossings for a change d from the reference."""
    if d >= c_on:
        return np.int64(math.floor(d / c_on))
    if -d >= c_off:
        return np.int64(math.floor(-d / c_off))
    return np.int64(0)


@njit(cache=True, nogil=True)
def _emit_kernel(l1, l0, ref, c_on, c_off, last_t, width, t0, t1, refractory_us,
                 noise_pix, noise_t, noise_p, out, pixel, j, n_out):
    """Events of the interval (t0, t1] in pixel order into `out`, from flat pixel `pixel`,
    noise entry `j` and output slot `n_out` on; updates l0, ref, last_t as it goes.

    Returns (n_out, pixel, j). pixel == l1.shape[0] when done; otherwise `out` had no room for
    that pixel's events, nothing of that pixel was touched, and the caller grows `out` and calls
    again with the returned values."""
    n_pix = l1.shape[0]
    n_noise = noise_pix.shape[0]
    capacity = out.shape[0]
    dt = t1 - t0
    never = np.int64(1) << 62
    for i in range(pixel, n_pix):
        li = l1[i]
        r = ref[i]
        d = li - r
        n_cross = _crossings(d, c_on[i], c_off[i])
        n_here = 0
        while j + n_here < n_noise and noise_pix[j + n_here] == i:
            n_here += 1
        if n_cross + n_here == 0:
            l0[i] = li
            continue
        if n_out + n_cross + n_here > capacity:
            return n_out, i, j
        if d > 0:
            step = c_on[i]
            pol = 1
        else:
            step = -c_off[i]
            pol = 0
        a = l0[i]
        slope = li - a
        x = i % width
        y = i // width
        last = last_t[i]
        k = 1
        j_end = j + n_here
        while k <= n_cross or j < j_end:
            if k <= n_cross:
                frac = (r + k * step - a) / slope if slope != 0 else 1.0
                if frac > 1.0:
                    frac = 1.0
                tc = t0 + np.int64(math.floor(frac * dt + 0.5))
                if tc <= t0:
                    tc = t0 + 1
                elif tc > t1:
                    tc = t1
            else:
                tc = never
            if j < j_end and noise_t[j] < tc:          # a crossing goes first on a tie
                t = noise_t[j]
                p = noise_p[j]
                j += 1
            else:
                t = tc
                p = pol
                k += 1
            if t - last >= refractory_us:
                e = out[n_out]
                e.t = t
                e.x = x
                e.y = y
                e.p = p
                n_out += 1
                last = t
        ref[i] = r + n_cross * step
        last_t[i] = last
        l0[i] = li
    return n_out, n_pix, j


@njit(cache=True, nogil=True)
def _sort_kernel(events, t0, dt, out):
    """Stable counting sort of events (all t in (t0, t0 + dt]) by t into out."""
    n = events.shape[0]
    start = np.zeros(dt + 1, np.int64)
    for i in range(n):
        start[events[i].t - t0] += 1
    total = np.int64(0)
    for k in range(dt + 1):
        c = start[k]
        start[k] = total
        total += c
    for i in range(n):
        e = events[i]
        k = e.t - t0
        o = out[start[k]]
        start[k] += 1
        o.t = e.t
        o.x = e.x
        o.y = e.y
        o.p = e.p


def _sorted_by_time(events: np.ndarray, t0_us: int, t1_us: int) -> np.ndarray:
    """A new array of `events` (all in (t0_us, t1_us]) stably sorted by t."""
    dt = t1_us - t0_us
    if dt <= 4 * len(events) + 65_536:
        out = np.zeros(len(events), EVENT_DTYPE)     # zeros: padding bytes 13..15 defined
        _sort_kernel(events, t0_us, dt, out)
        return out
    # Gather whole 16-byte records as raw bytes: numpy's structured copies may skip the padding
    # bytes (numpy 2.4 leaves them undefined in boolean indexing and zeros_like, for example),
    # and byte-identical output needs them to stay the zeros the buffer was made with.
    raw = np.ascontiguousarray(events).view(np.uint8).reshape(-1, EVENT_DTYPE.itemsize)
    return raw[np.argsort(events["t"], kind="stable")].view(EVENT_DTYPE).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Streaming simulator

_EMPTY_NOISE = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8))


class EventSimulator:
    """Frames in, events out; keeps per-pixel state between `step` calls (see the module top)."""

    def __init__(self, height: int, width: int, config: SimConfig | None = None,
                 seed: int = 0) -> None:
        height, width = int(height), int(width)
        if not (0 < height <= 65_536 and 0 < width <= 65_536):
            raise ValueError(f"sensor size must be 1..65536 each, got {width}x{height}")
        self.height, self.width = height, width
        self.config = config if config is not None else SimConfig()
        self.seed = int(seed)
        cfg = self.config
        n_pix = height * width
        rng_thr, rng_hot, self._rng_noise = (
            np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(3))
        self._c_on, self._c_off = draw_thresholds(rng_thr, n_pix, cfg.c_on, cfg.c_off,
                                                  cfg.sigma_threshold, cfg.min_threshold)
        self._hot = (choose_hot_pixels(rng_hot, n_pix, cfg.hot_pixel_fraction)
                     if cfg.hot_pixel_rate_hz > 0 else np.zeros(0, np.int64))
        self._lut = log_intensity(np.arange(256, dtype=np.uint8), cfg)
        self._l0 = np.zeros(n_pix, np.float64)
        self._l1 = np.zeros(n_pix, np.float64)
        self._ref = np.zeros(n_pix, np.float64)
        self._last_t = np.full(n_pix, -(1 << 62), np.int64)
        self._buf = np.zeros(1 << 16, EVENT_DTYPE)   # grows by doubling; zeros: padding bytes
        self._t_us: int | None = None
        self.frames_seen = 0

    # -- state, read-only copies ---------------------------------------------------------------
    @property
    def t_us(self) -> int | None:
        """Time of the last accepted frame (None before the first)."""
        return self._t_us

    @property
    def thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel (c_on, c_off), float64 (H, W) copies."""
        shape = (self.height, self.width)
        return self._c_on.reshape(shape).copy(), self._c_off.reshape(shape).copy()

    @property
    def reference(self) -> np.ndarray:
        """Per-pixel reference level, float64 (H, W) copy (zeros before the first frame)."""
        return self._ref.reshape(self.height, self.width).copy()

    @property
    def hot_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) of the hot pixels, in raster order."""
        return self._hot // self.width, self._hot % self.width

    # -- stepping ------------------------------------------------------------------------------
    def _load(self, frame: np.ndarray, t_us: int) -> None:
        """Convert `frame` into self._l1, or raise ValueError (the state stays untouched)."""
        where = f"frame {self.frames_seen} (t_us={t_us})"
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width):
            raise ValueError(f"{where}: shape {frame.shape}, expected "
                             f"({self.height}, {self.width})")
        l1 = self._l1.reshape(frame.shape)
        if frame.dtype == np.uint8:
            np.take(self._lut, frame, out=l1)
            return
        if frame.dtype.kind != "f":
            raise ValueError(f"{where}: dtype {frame.dtype}, expected uint8 or float")
        _log_into(frame, self.config, l1)
        if not (frame.min() >= 0 and np.isfinite(self._l1).all()):   # NaN fails both
            bad = int(np.argmax(~((frame >= 0) & np.isfinite(l1))))
            y, x = divmod(bad, self.width)
            raise ValueError(f"{where}: intensity {frame[y, x]} at x={x} y={y} "
                             f"(must be finite and >= 0)")

    def step(self, frame: np.ndarray, t_us: int) -> np.ndarray:
        """Feed the frame rendered at t_us; returns the events in (previous t_us, t_us]."""
        if int(t_us) != t_us:
            raise ValueError(f"frame {self.frames_seen}: t_us must be an integer, got {t_us}")
        t_us = int(t_us)
        if self._t_us is not None and t_us <= self._t_us:
            raise ValueError(f"frame {self.frames_seen} (t_us={t_us}): time must increase "
                             f"(previous frame at t_us={self._t_us})")
        self._load(frame, t_us)
        self.frames_seen += 1
        if self._t_us is None:
            self._l0[:] = self._l1
            self._ref[:] = self._l1
            self._t_us = t_us
            return np.empty(0, EVENT_DTYPE)
        t0 = self._t_us
        cfg = self.config
        if cfg.ba_rate_hz > 0 or len(self._hot):
            noise = draw_noise(self._rng_noise, t0, t_us, self._l1.shape[0], cfg.ba_rate_hz,
                               self._hot, cfg.hot_pixel_rate_hz)
        else:
            noise = _EMPTY_NOISE
        n_pix = self._l1.shape[0]
        n, pixel, j = 0, 0, 0
        while True:
            n, pixel, j = _emit_kernel(self._l1, self._l0, self._ref, self._c_on, self._c_off,
                                       self._last_t, self.width, t0, t_us,
                                       int(cfg.refractory_us), noise[0], noise[1], noise[2],
                                       self._buf, pixel, j, n)
            if pixel == n_pix:
                break
            grown = np.zeros(2 * len(self._buf), EVENT_DTYPE)    # zeros: padding defined
            grown[:n] = self._buf[:n]
            self._buf = grown
        self._t_us = t_us
        return _sorted_by_time(self._buf[:n], t0, t_us)


def _counted(items, bar):
    """Yield from `items`, counting each on the progress `bar` (closed at the end)."""
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def simulate(frames: Iterable[np.ndarray], times_us: Iterable[int],
             config: SimConfig | None = None, seed: int = 0,
             progress: bool = False) -> np.ndarray:
    """All events of a frame sequence (an (N, H, W) array or an iterable of (H, W) frames)."""
    sim = None
    chunks = []
    pairs = zip(frames, times_us, strict=True)
    if progress:
        from evstream.progress import progress as progress_bar
        bar = progress_bar(unit="frame", desc="simulate")
        pairs = _counted(pairs, bar)
    for frame, t_us in pairs:
        if sim is None:
            frame = np.asarray(frame)
            if frame.ndim != 2:
                raise ValueError(f"frame 0: shape {frame.shape}, expected (H, W)")
            sim = EventSimulator(frame.shape[0], frame.shape[1], config, seed)
        events = sim.step(frame, t_us)
        if len(events):
            chunks.append(events)
    # np.concatenate would promote EVENT_DTYPE to a packed 13-byte dtype (numpy >= 1.23 drops
    # padding when promoting structured dtypes): concatenate into an EVENT_DTYPE array instead.
    out = np.zeros(sum(len(c) for c in chunks), EVENT_DTYPE)
    if chunks:
        np.concatenate(chunks, out=out)
    return out
