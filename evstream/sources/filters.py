"""Noise filters for event streams: one `FilterChain` per stream, stateful across batches.

A chain holds up to five filters, applied in this fixed order (cheap, stateless ones first, so
the stateful ones never see events the user asked to drop):

    roi          keep x in [x0, x0+w), y in [y0, y0+h)        (dv.EventRegionFilter)
    polarity     keep only ON (p=1) or only OFF (p=0) events   (dv.EventPolarityFilter)
    hot_pixels   drop every event at listed pixels             (dv.EventMaskFilter)
    refractory   drop an event when the previous event at the same pixel (either polarity,
                 kept or not) is less than refractory_us old   (dv.noise.LowPassFilter)
    background_activity
                 keep an event only when one of its 8 neighbours (not the pixel itself) had an
                 event less than ba_filter_us before it; every event then stamps its own pixel
                 (dv.noise.BackgroundActivityNoiseFilter)

Two entry points, one per kind of source:
- `apply_store(store) -> store`: a dv.EventStore in and out, through dv-processing's own filters
  (the path for dv-based sources, before their numpy conversion; see EventSource.dv_events);
- `apply_events(ev) -> ev`: an EVENT_DTYPE array in and out, through numba kernels with exactly
  the semantics of dv's filters (tests hold the two paths equal on real recordings). dv 2.0.4
  has no numpy -> EventStore constructor (only per-event push_back, ~0.5 us/event), so sending
  numpy events through dv would cap a source near 2 M events/s; the kernels run far faster.
A chain keeps per-pixel state (last timestamps), so it serves ONE stream and one path: using
both paths on the same chain is a programming error and raises RuntimeError.

Both paths follow two dv 2.0.4 quirks on purpose, so that they agree: the per-pixel timestamp
maps start at 0 (so with stream times below the window, the first events count as supported or
as refractory), and the refractory filter stamps the pixel even for events it drops.

`counts` maps each active filter's name to the number of events it removed so far.
Inputs are never modified; the output is a new array (or the input itself when nothing was
removed by any filter).
"""

from __future__ import annotations

import os
from datetime import timedelta

import numba
import numpy as np

from evstream.errors import SourceError
from evstream.types import EVENT_DTYPE

ORDER = ("roi", "polarity", "hot_pixels", "refractory", "background_activity")

# dv.noise.LowPassFilter keeps its cut-off as a period floor(1e6 / f) in float32 microseconds;
# periods above this lose whole microseconds in that round trip, so we refuse them.
MAX_REFRACTORY_US = 1_000_000
MAX_BA_WINDOW_US = 10_000_000


# -- numba kernels (state arrays are the chain's own; event arrays are only read) ---------------

@numba.njit(cache=True, nogil=True)
def _refractory_kernel(t, x, y, last_t, width, period_us):
    n = t.shape[0]
    keep = np.empty(n, dtype=np.bool_)
    for i in range(n):
        k = int(y[i]) * width + int(x[i])
        keep[i] = (t[i] - last_t[k]) >= period_us
        last_t[k] = t[i]
    return keep


@numba.njit(cache=True, nogil=True)
def _background_activity_kernel(t, x, y, last_t, width, height, window_us):
    n = t.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        xi = int(x[i])
        yi = int(y[i])
        ti = t[i]
        ok = False
        for dy in (-1, 0, 1):
            yy = yi + dy
            if yy < 0 or yy >= height:
                continue
            for dx in (-1, 0, 1):
                if dx == 0 and dy == 0:
                    continue
                xx = xi + dx
                if xx < 0 or xx >= width:
                    continue
                if ti - last_t[yy, xx] < window_us:
                    ok = True
                    break
            if ok:
                break
        keep[i] = ok
        last_t[yi, xi] = ti
    return keep


# -- option parsing ---------------------------------------------------------------------------

def parse_pixel_list(text: str, where: str = "--hot-pixels") -> list[tuple[int, int]]:
    """'x,y;x,y' (also newlines / whitespace between pairs, '#' comments) -> [(x, y), ...]."""
    pixels = []
    lines = text.splitlines() or [""]
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0]
        for item in line.replace(";", " ").split():
            parts = item.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                px = (int(parts[0]), int(parts[1]))
            except ValueError:
                loc = f"{where} line {lineno}" if len(lines) > 1 else where
                raise SourceError(f"{loc}: {item!r} is not a pixel 'x,y' "
                                  f"(expected 'x,y;x,y;...')") from None
            if px[0] < 0 or px[1] < 0:
                raise SourceError(f"{where}: pixel {item!r} has a negative coordinate")
            pixels.append(px)
    return pixels


def load_hot_pixels(spec) -> list[tuple[int, int]]:
    """A pixel list 'x,y;x,y', a path to a text file of such pairs, or a sequence of pairs."""
    if not isinstance(spec, str):
        return [(int(a), int(b)) for a, b in spec]
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"{spec}: cannot read hot-pixel list ({e})") from None
        pixels = parse_pixel_list(text, where=spec)
        if not pixels:
            raise SourceError(f"{spec}: hot-pixel file lists no pixels")
        return pixels
    if "," not in spec:
        raise SourceError(f"--hot-pixels {spec}: no such file, and not a pixel list 'x,y;x,y'")
    return parse_pixel_list(spec)


def parse_roi(spec) -> tuple[int, int, int, int]:
    """'x,y,w,h' (or a 4-sequence) -> (x, y, w, h) with w, h > 0."""
    if isinstance(spec, str):
        parts = spec.split(",")
        try:
            if len(parts) != 4:
                raise ValueError
            roi = tuple(int(p) for p in parts)
        except ValueError:
            raise SourceError(f"--roi {spec}: expected four integers x,y,w,h") from None
    else:
        roi = tuple(int(v) for v in spec)
        if len(roi) != 4:
            raise SourceError(f"--roi {spec}: expected four integers x,y,w,h")
    x0, y0, w, h = roi
    if x0 < 0 or y0 < 0 or w <= 0 or h <= 0:
        raise SourceError(f"--roi {x0},{y0},{w},{h}: x and y must be >= 0, w and h > 0")
    return roi


def parse_polarity(spec) -> int:
    """'on'/'off' (or 1/0, True/False) -> 1 or 0."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("on", "1", "+1", "pos", "positive"):
            return 1
        if s in ("off", "0", "-1", "neg", "negative"):
            return 0
        raise SourceError(f"--polarity {spec}: expected 'on' or 'off'")
    return 1 if spec else 0


# -- the chain ----------------------------------------------------------------------------------

class FilterChain:
    """Noise filters for one stream of a width x height sensor (see module docstring)."""

    def __init__(self, width: int, height: int, *, ba_filter_us: int | None = None,
                 refractory_us: int | None = None, hot_pixels=None, roi=None, polarity=None):
        if width <= 0 or height <= 0:
            raise SourceError(f"noise filters need the sensor size, got {width}x{height}")
        self.width = int(width)
        self.height = int(height)
        self.ba_filter_us = self.refractory_us = self.polarity = None
        self.roi = None
        self.hot_pixels: list[tuple[int, int]] = []
        if ba_filter_us is not None:
            self.ba_filter_us = int(ba_filter_us)
            if not 1 <= self.ba_filter_us <= MAX_BA_WINDOW_US:
                raise SourceError(f"--ba-filter-us {ba_filter_us}: expected 1.."
                                  f"{MAX_BA_WINDOW_US} microseconds")
        if refractory_us is not None:
            self.refractory_us = int(refractory_us)
            if not 1 <= self.refractory_us <= MAX_REFRACTORY_US:
                raise SourceError(f"--refractory-us {refractory_us}: expected 1.."
                                  f"{MAX_REFRACTORY_US} microseconds")
        if roi is not None:
            self.roi = parse_roi(roi)
            x0, y0, w, h = self.roi
            if x0 + w > self.width or y0 + h > self.height:
                raise SourceError(f"--roi {x0},{y0},{w},{h}: extends past the "
                                  f"{self.width}x{self.height} sensor")
        if polarity is not None:
            self.polarity = parse_polarity(polarity)
        if hot_pixels is not None:
            self.hot_pixels = load_hot_pixels(hot_pixels)
            for px, py in self.hot_pixels:
                if px >= self.width or py >= self.height:
                    raise SourceError(f"--hot-pixels: pixel {px},{py} is outside the "
                                      f"{self.width}x{self.height} sensor")
        self.names = [n for n in ORDER if self._active(n)]
        self.counts: dict[str, int] = {n: 0 for n in self.names}
        self._mode: str | None = None     # "store" or "events", fixed by the first call
        self._dv: dict | None = None
        self._mask: np.ndarray | None = None
        self._refr_last: np.ndarray | None = None
        self._ba_last: np.ndarray | None = None

    def _active(self, name: str) -> bool:
        return {"roi": self.roi is not None, "polarity": self.polarity is not None,
                "hot_pixels": bool(self.hot_pixels), "refractory": self.refractory_us is not None,
                "background_activity": self.ba_filter_us is not None}[name]

    def __bool__(self) -> bool:
        return bool(self.names)

    def __repr__(self) -> str:
        return f"FilterChain({self.width}x{self.height}, {', '.join(self.names) or 'empty'})"

    @property
    def removed(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> dict:
        return {"roi": self.roi, "polarity": {1: "on", 0: "off"}.get(self.polarity),
                "hot_pixels": len(self.hot_pixels), "refractory_us": self.refractory_us,
                "ba_filter_us": self.ba_filter_us, "removed": dict(self.counts)}

    def _claim(self, mode: str) -> None:
        if self._mode is None:
            self._mode = mode
        elif self._mode != mode:
            raise RuntimeError("a FilterChain keeps per-pixel state for one stream: it cannot "
                               "take both dv EventStores and numpy events")

    def _mask_array(self) -> np.ndarray:
        mask = np.full((self.height, self.width), 255, dtype=np.uint8)
        for px, py in self.hot_pixels:
            mask[py, px] = 0
        return mask

    # -- dv path ----------------------------------------------------------------------------
    def _build_dv(self) -> dict:
        import dv_processing as dv

        size = (self.width, self.height)
        f = {}
        if self.roi is not None:
            f["roi"] = dv.EventRegionFilter(self.roi)
        if self.polarity is not None:
            f["polarity"] = dv.EventPolarityFilter(bool(self.polarity))
        if self.hot_pixels:
            f["hot_pixels"] = dv.EventMaskFilter(self._mask_array())
        if self.refractory_us is not None:
            # dv 2.0.4 has no Python RefractoryPeriodFilter; LowPassFilter is the same filter
            # with period floor(1e6 / f): ask for period + 0.5 so the floor lands on ours.
            f["refractory"] = dv.noise.LowPassFilter(size, 1e6 / (self.refractory_us + 0.5))
        if self.ba_filter_us is not None:
            f["background_activity"] = dv.noise.BackgroundActivityNoiseFilter(
                size, backgroundActivityDuration=timedelta(microseconds=self.ba_filter_us))
        return f

    def apply_store(self, store):
        """dv.EventStore -> dv.EventStore with the filters applied (the input is untouched)."""
        if not self.names or len(store) == 0:
            return store
        self._claim("store")
        if self._dv is None:
            self._dv = self._build_dv()
        for name in self.names:
            flt = self._dv[name]
            n = len(store)
            flt.accept(store)
            store = flt.generateEvents()
            self.counts[name] += n - len(store)
            if len(store) == 0:
                break
        return store

    # -- numpy path -------------------------------------------------------------------------
    def apply_events(self, ev: np.ndarray) -> np.ndarray:
        """EVENT_DTYPE array -> EVENT_DTYPE array with the filters applied (input untouched)."""
        if not self.names or len(ev) == 0:
            return ev
        if ev.dtype != EVENT_DTYPE:
            raise TypeError(f"FilterChain.apply_events takes EVENT_DTYPE, not {ev.dtype}")
        self._claim("events")
        for name in self.names:
            n = len(ev)
            keep = getattr(self, f"_keep_{name}")(ev)
            if not keep.all():
                ev = ev[keep]
            self.counts[name] += n - len(ev)
            if len(ev) == 0:
                break
        return ev

    def _keep_roi(self, ev):
        x0, y0, w, h = self.roi
        x = ev["x"]
        y = ev["y"]
        return (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)

    def _keep_polarity(self, ev):
        return (ev["p"] != 0) == bool(self.polarity)

    def _keep_hot_pixels(self, ev):
        if self._mask is None:
            self._mask = self._mask_array().astype(bool)
        x = ev["x"]
        y = ev["y"]
        inside = (x < self.width) & (y < self.height)
        keep = inside.copy()
        keep[inside] = self._mask[y[inside], x[inside]]
        return keep | ~inside   # events outside the sensor are the source's business

    def _keep_refractory(self, ev):
        if self._refr_last is None:
            self._refr_last = np.zeros(self.width * self.height, dtype=np.int64)
        t, x, y, inside = self._inside(ev)
        keep = np.ones(len(ev), dtype=bool)
        keep[inside] = _refractory_kernel(t, x, y, self._refr_last, self.width,
                                          self.refractory_us)
        return keep

    def _keep_background_activity(self, ev):
        if self._ba_last is None:
            self._ba_last = np.zeros((self.height, self.width), dtype=np.int64)
        t, x, y, inside = self._inside(ev)
        keep = np.ones(len(ev), dtype=bool)
        keep[inside] = _background_activity_kernel(t, x, y, self._ba_last, self.width,
                                                   self.height, self.ba_filter_us)
        return keep

    def _inside(self, ev):
        x = ev["x"]
        y = ev["y"]
        inside = (x < self.width) & (y < self.height)
        if inside.all():
            return (np.ascontiguousarray(ev["t"]), np.ascontiguousarray(x),
                    np.ascontiguousarray(y), slice(None))
        return ev["t"][inside], x[inside], y[inside], inside


def make_filter_chain(width: int, height: int, **options) -> FilterChain | None:
    """FilterChain from options that may be None; None when no filter is asked for."""
    chain = FilterChain(width, height, **{k: v for k, v in options.items() if v is not None})
    return chain if chain else None
