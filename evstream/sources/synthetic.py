"""Deterministic synthetic scenes: `synthetic:?seed=1&rate=2e6&width=346&height=260&duration=5`.

Bright shapes (discs and bars) move over a dark background, bouncing off the sensor borders.
Events come from their edges: ON where an edge advances (dark -> bright), OFF where it recedes,
with the edge chosen in proportion to how fast it sweeps pixels (|normal . velocity| x length),
plus a small fraction of uniform background noise. Positions are exact functions of time
(reflection off the walls is computed in closed form, then held for 100 us sub-steps, in which a
shape moves a fraction of a pixel), so any packet can be generated alone.

Contract:
- Same options and seed -> identical packets, event for event (the kernel's splitmix64 generator
  is seeded per packet from (seed, packet index); no global random state is touched).
- `rate` events per second of source time, exactly: packet k holds
  floor(rate * t_end) - floor(rate * t_start) events, spread evenly over its packet_us; times
  are int64 microseconds from `t0_us`, sorted, inside the width x height sensor.
- `duration` (seconds) makes the source finite (live=False; pace it with sources.pacing);
  without it the source is infinite and live, and paces itself to the wall clock
  (`realtime=0` turns that off, for benchmarks).
- `frame_rate` > 0 adds APS-like frames: uint8 renders of the shapes at t = k / frame_rate.
- Generation is one numba kernel per packet: well above 12 M events/s on one core (see
  tests/test_synthetic.py for the measured figure).

Options (query string or keyword): seed, rate, width, height, duration, shapes, frame_rate,
noise (fraction of noise events, 0..1), packet_us, realtime, t0_us.
"""

from __future__ import annotations

import math
import time
from typing import Iterator
from urllib.parse import parse_qsl

import numba
import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_scheme
from evstream.sources.base import EventSource
from evstream.types import EVENT_DTYPE, Frame, Packet

DISC, BAR = 0, 1
BACKGROUND, FOREGROUND = 40, 200     # frame grey levels


@numba.njit(cache=True, inline="always")
def _reflect(p0, v, t_s, lo, hi):
    """Position and direction (+1/-1) of a point bouncing between lo and hi."""
    span = hi - lo
    if span <= 0.0:
        return lo, 1.0
    s = (p0 - lo) + v * t_s
    m = s % (2.0 * span)
    if m < 0.0:
        m += 2.0 * span
    if m <= span:
        return lo + m, 1.0
    return lo + 2.0 * span - m, -1.0


@numba.njit(cache=True)
def _shape_state(shapes, k, t_s, width, height):
    kind, x0, y0, vx, vy, a, b = (shapes[k, 0], shapes[k, 1], shapes[k, 2], shapes[k, 3],
                                  shapes[k, 4], shapes[k, 5], shapes[k, 6])
    ex = a
    ey = a if kind == DISC else b
    cx, dx = _reflect(x0, vx, t_s, ex, width - ex)
    cy, dy = _reflect(y0, vy, t_s, ey, height - ey)
    return cx, cy, vx * dx, vy * dy


SUBSTEP_US = 100     # shapes move at most ~0.2 px per sub-step: positions are held per sub-step


@numba.njit(cache=True, inline="always")
def _next(state):
    """splitmix64: (new state, 64 random bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _unit(bits):
    """Top 53 bits -> float in [0, 1)."""
    return float(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, nogil=True)
def _generate(t0_us, dt_us, n, seed, shapes, cum_weight, noise, width, height):
    t = np.empty(n, np.int64)
    x = np.empty(n, np.uint16)
    y = np.empty(n, np.uint16)
    p = np.empty(n, np.int8)
    n_shapes = shapes.shape[0]
    total = cum_weight[n_shapes - 1] if n_shapes else 0.0
    # shape centre, unit velocity and edge split per sub-step
    n_sub = (dt_us + SUBSTEP_US - 1) // SUBSTEP_US
    state = np.empty((max(n_sub, 1), max(n_shapes, 1), 5))
    for j in range(n_sub):
        ts = (t0_us + j * SUBSTEP_US + SUBSTEP_US // 2) * 1e-6
        for k in range(n_shapes):
            cx, cy, ux, uy = _shape_state(shapes, k, ts, width, height)
            norm = math.hypot(ux, uy)
            if norm == 0.0:
                norm = 1.0
            a = shapes[k, 5]
            b = shapes[k, 6]
            wx = 2.0 * b * abs(ux)
            wy = 2.0 * a * abs(uy)
            state[j, k, 0] = cx
            state[j, k, 1] = cy
            state[j, k, 2] = ux / norm
            state[j, k, 3] = uy / norm
            state[j, k, 4] = wx / (wx + wy) if wx + wy > 0.0 else 0.5
    rng = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(1)
    for i in range(n):
        ti = t0_us + (i * dt_us) // n
        t[i] = ti
        rng, bits = _next(rng)
        if n_shapes == 0 or total <= 0.0 or _unit(bits) < noise:
            rng, bits = _next(rng)
            x[i] = (bits >> np.uint64(32)) % np.uint64(width)
            y[i] = (bits & np.uint64(0xFFFFFFFF)) % np.uint64(height)
            p[i] = (bits >> np.uint64(20)) & np.uint64(1)
            continue
        rng, bits = _next(rng)
        r = _unit(bits) * total
        k = 0
        while k < n_shapes - 1 and cum_weight[k] < r:
            k += 1
        j = (ti - t0_us) // SUBSTEP_US
        cx = state[j, k, 0]
        cy = state[j, k, 1]
        c = state[j, k, 2]
        s = state[j, k, 3]
        rng, bits = _next(rng)
        u1 = float((bits >> np.uint64(40)) & np.uint64(0xFFFFFF)) * (1.0 / 16777216.0)
        u2 = float((bits >> np.uint64(16)) & np.uint64(0xFFFFFF)) * (1.0 / 16777216.0)
        leading = (bits & np.uint64(1)) == np.uint64(1)
        rng, bits = _next(rng)
        jx = float((bits >> np.uint64(40)) & np.uint64(0xFFFFFF)) * (1.0 / 16777216.0) - 0.5
        jy = float((bits >> np.uint64(16)) & np.uint64(0xFFFFFF)) * (1.0 / 16777216.0) - 0.5
        a = shapes[k, 5]
        if shapes[k, 0] == DISC:
            # edge points with density |cos(angle to velocity)|, the edge's sweep rate:
            # sin(angle) uniform in [-1, 1]
            sa = 2.0 * u1 - 1.0
            ca = math.sqrt(1.0 - sa * sa)
            if not leading:
                ca = -ca
            px = cx + a * (c * ca - s * sa)
            py = cy + a * (s * ca + c * sa)
        else:
            b = shapes[k, 6]
            if u1 < state[j, k, 4]:
                side = 1.0 if c >= 0.0 else -1.0
                px = cx + (side if leading else -side) * a
                py = cy + (2.0 * u2 - 1.0) * b
            else:
                side = 1.0 if s >= 0.0 else -1.0
                py = cy + (side if leading else -side) * b
                px = cx + (2.0 * u2 - 1.0) * a
        xi = int(math.floor(px + jx))
        yi = int(math.floor(py + jy))
        x[i] = min(max(xi, 0), width - 1)
        y[i] = min(max(yi, 0), height - 1)
        p[i] = 1 if leading else 0
    return t, x, y, p


def make_shapes(seed: int, count: int, width: int, height: int) -> np.ndarray:
    """(count, 7) float64: kind, x0, y0, vx, vy, a, b (disc radius a; bar half-sizes a, b)."""
    rng = np.random.default_rng([seed, 0x5EED])
    small = min(width, height)
    out = np.zeros((count, 7), dtype=np.float64)
    for k in range(count):
        kind = DISC if k % 2 == 0 else BAR
        if kind == DISC:
            a = b = rng.uniform(0.06, 0.16) * small
        else:
            a, b = rng.uniform(0.02, 0.05) * small, rng.uniform(0.15, 0.3) * small
            if rng.random() < 0.5:
                a, b = b, a
        a = max(min(a, width / 2 - 1), 1.0)
        b = max(min(b, height / 2 - 1), 1.0)
        if kind == DISC:
            a = b = min(a, b)
        speed = rng.uniform(0.3, 1.5) * small           # pixels per second
        angle = rng.uniform(0, 2 * np.pi)
        out[k] = (kind, rng.uniform(a, width - a), rng.uniform(b, height - b),
                  speed * np.cos(angle), speed * np.sin(angle), a, b)
    return out


def _edge_weights(shapes: np.ndarray) -> np.ndarray:
    speed_x, speed_y = np.abs(shapes[:, 3]), np.abs(shapes[:, 4])
    disc = 2 * 2 * shapes[:, 5] * np.hypot(speed_x, speed_y)
    bar = 2 * (2 * shapes[:, 6] * speed_x + 2 * shapes[:, 5] * speed_y)
    return np.cumsum(np.where(shapes[:, 0] == DISC, disc, bar))


def render_frame(shapes: np.ndarray, t_us: int, width: int, height: int) -> np.ndarray:
    """uint8 (H, W) image of the shapes at time t_us."""
    img = np.full((height, width), BACKGROUND, dtype=np.uint8)
    ys, xs = np.ogrid[:height, :width]
    for k in range(len(shapes)):
        cx, cy, _, _ = _shape_state(shapes, k, t_us * 1e-6, width, height)
        a, b = shapes[k, 5], shapes[k, 6]
        if shapes[k, 0] == DISC:
            mask = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= a * a
        else:
            mask = (np.abs(xs + 0.5 - cx) <= a) & (np.abs(ys + 0.5 - cy) <= b)
        img[mask] = FOREGROUND
    return img


class SyntheticSource(EventSource):
    def __init__(self, *, seed: int = 1, rate: float = 2e6, width: int = 346, height: int = 260,
                 duration: float | None = None, shapes: int = 4, frame_rate: float = 0.0,
                 noise: float = 0.01, packet_us: int = 1000, realtime: bool | None = None,
                 t0_us: int = 0, bad_events: str | None = None, filters=None, name: str = ""):
        self.name = name or "synthetic:"
        if width < 4 or height < 4 or width > 65535 or height > 65535:
            raise SourceError(f"{self.name}: sensor {width}x{height} must be 4..65535 each way")
        if rate < 0 or not math.isfinite(rate):
            raise SourceError(f"{self.name}: rate {rate} must be >= 0 events/s")
        if duration is not None and not duration > 0:
            raise SourceError(f"{self.name}: duration {duration} must be > 0 seconds")
        if shapes < 0 or frame_rate < 0 or not 0 <= noise <= 1 or packet_us < 1:
            raise SourceError(f"{self.name}: need shapes >= 0, frame_rate >= 0, 0 <= noise <= 1 "
                              f"and packet_us >= 1")
        self.width, self.height = int(width), int(height)
        self.seed, self.rate, self.duration = int(seed), float(rate), duration
        self.frame_rate, self.noise = float(frame_rate), float(noise)
        self.packet_us = int(packet_us)
        self.t0_us = int(t0_us)
        self.live = duration is None
        self.realtime = self.live if realtime is None else bool(realtime)
        self.camera = f"synthetic (seed {self.seed}, {shapes} shapes)"
        self.shapes = make_shapes(self.seed, int(shapes), self.width, self.height)
        self._cum_weight = _edge_weights(self.shapes)
        self._closed = False
        super().__init__(bad_events=bad_events, filters=filters)

    @property
    def end_us(self) -> int | None:
        return None if self.duration is None else self.t0_us + int(round(self.duration * 1e6))

    def packet(self, k: int) -> Packet:
        """Packet k on its own (deterministic; what iteration yields k-th)."""
        start_rel = k * self.packet_us
        end_rel = start_rel + self.packet_us
        if self.duration is not None:
            end_rel = min(end_rel, int(round(self.duration * 1e6)))
        n = (int(math.floor(self.rate * end_rel / 1e6))
             - int(math.floor(self.rate * start_rel / 1e6)))
        seed = (self.seed * 0x9E3779B1 + k * 0x85EBCA77 + 0x632BE5AB) & 0xFFFFFFFF
        t, x, y, p = _generate(self.t0_us + start_rel, end_rel - start_rel, n, seed, self.shapes,
                               self._cum_weight, self.noise, self.width, self.height)
        ev = np.empty(n, dtype=EVENT_DTYPE)
        ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
        pkt = Packet(events=ev)
        if self.frame_rate > 0:
            period = 1e6 / self.frame_rate
            first = math.ceil(start_rel / period)
            j = first
            while j * period < end_rel:
                rel = int(round(j * period))
                if rel >= start_rel:
                    t_us = self.t0_us + rel
                    pkt.frames.append(Frame(t_us=t_us, exposure_us=int(period // 2),
                                            image=render_frame(self.shapes, t_us, self.width,
                                                               self.height)))
                j += 1
        return pkt

    def _read(self) -> Iterator[Packet]:
        wall0 = time.monotonic()
        k = 0
        total_rel = None if self.duration is None else int(round(self.duration * 1e6))
        while not self._closed:
            if total_rel is not None and k * self.packet_us >= total_rel:
                return
            pkt = self.packet(k)
            k += 1
            if self.realtime:
                due = wall0 + k * self.packet_us / 1e6
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield pkt

    def close(self) -> None:
        self._closed = True


_INT_OPTIONS = ("seed", "width", "height", "shapes", "packet_us", "t0_us")
_FLOAT_OPTIONS = ("rate", "duration", "frame_rate", "noise")


def parse_synthetic_spec(spec: str) -> dict:
    query = spec.split(":", 1)[1] if ":" in spec else spec
    query = query.lstrip("?")
    out = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        k = k.replace("-", "_")
        try:
            if k in _INT_OPTIONS:
                out[k] = int(float(v)) if "e" in v.lower() else int(v)
            elif k in _FLOAT_OPTIONS:
                out[k] = float(v)
            elif k == "realtime":
                if v.lower() not in ("0", "1", "true", "false", "on", "off"):
                    raise ValueError(v)
                out[k] = v.lower() in ("1", "true", "on")
            else:
                raise SourceError(f"{spec}: unknown option {k!r} (known: "
                                  f"{', '.join(_INT_OPTIONS + _FLOAT_OPTIONS + ('realtime',))})")
        except ValueError:
            raise SourceError(f"{spec}: option {k}={v!r} is not a valid value") from None
    return out


def open_synthetic(spec: str, *, width=None, height=None, bad_events=None, filters=None,
                   seed=None, rate=None, duration=None, shapes=None, frame_rate=None, noise=None,
                   packet_us=None, realtime=None, t0_us=None) -> SyntheticSource:
    options = parse_synthetic_spec(spec)
    given = dict(width=width, height=height, seed=seed, rate=rate, duration=duration,
                 shapes=shapes, frame_rate=frame_rate, noise=noise, packet_us=packet_us,
                 realtime=realtime, t0_us=t0_us)
    options.update({k: v for k, v in given.items() if v is not None})   # flags win
    return SyntheticSource(bad_events=bad_events, filters=filters, name=spec, **options)


register_scheme("synthetic", open_synthetic)
