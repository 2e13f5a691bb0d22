"""Per-stage counters, rates and latency percentiles, as JSON snapshots that merge.

    tel = StageTelemetry("window")
    tel.count("events_in", len(ev)); tel.gauge("queue_depth", 3); tel.latency("window_ms", 4.2)
    snap = tel.snapshot()        # plain JSON-serialisable dict, sent to the launcher
    merge([snap_a, snap_b])      # e.g. several workers of one stage
    format_line({"source": s1, "window": s2, "sink": s3})   # the periodic one-line status

Counters only go up (events_in, events_out, windows_in, windows_out, dropped_events,
dropped_windows, ... any name). Every counter also feeds a rate meter: the rate over the last
`rate_window_s` seconds (default 2 s), measured with an injectable monotonic clock in
sub-intervals of a tenth of the window, so the reported rate follows changes within a window
and costs O(1) per count. Gauges are last values (queue_depth, ring_lost_events); merging adds
them. All of a snapshot's numbers are plain ints/floats.

LatencyRecorder: exact for the first EXACT_LIMIT (512) values, then a logarithmic histogram with
buckets [g^i, g^(i+1)), g = 1.02, each reported as its geometric middle g^(i+1/2): every value
at or above MIN_TRACKED (1e-6, in whatever unit is recorded: ms, us) comes back within 1% of
itself (sqrt(1.02) - 1 = 0.995%), and smaller values (zero, or negative from clock trouble) as 0.
Percentiles interpolate linearly between order statistics exactly as numpy's default does, so
they are within 1% of `np.percentile(values, q)` for positive data; min, max, mean and count are
exact. Memory is bounded by the spread of values (about 117 buckets per factor of 10), never by
their number. Recorders merge exactly (bucket counts add), which is how the launcher combines
stages and snapshots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

import numpy as np

GROWTH = 1.02
EXACT_LIMIT = 512
MIN_TRACKED = 1e-6
_LOG_G = math.log(GROWTH)
_ZERO = "z"           # bucket key for values below MIN_TRACKED


def _bucket(v: float) -> int:
    return math.floor(math.log(v) / _LOG_G)


def _bucket_value(i: int) -> float:
    return GROWTH ** (i + 0.5)


class LatencyRecorder:
    """Latency values with bounded memory and <= 1% relative error (see the module comment)."""

    def __init__(self):
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._exact: list[float] | None = []
        self._buckets: dict = {}

    def record(self, value: float) -> None:
        v = float(value)
        if math.isnan(v):
            return
        self.count += 1
        self.total += v
        self.min = min(self.min, v)
        self.max = max(self.max, v)
        if self._exact is not None:
            self._exact.append(v)
            if len(self._exact) > EXACT_LIMIT:
                self._to_histogram()
        else:
            self._add_bucket(v, 1)

    def record_many(self, values) -> None:
        for v in np.asarray(values, dtype=np.float64).ravel():
            self.record(v)

    def _add_bucket(self, v: float, n: int) -> None:
        key = _bucket(v) if v >= MIN_TRACKED else _ZERO
        self._buckets[key] = self._buckets.get(key, 0) + n

    def _to_histogram(self) -> None:
        for v in self._exact:
            self._add_bucket(v, 1)
        self._exact = None

    # -- queries ---------------------------------------------------------------------------------

    def _sorted_items(self) -> list[tuple[float, int]]:
        """(representative value, count) ascending."""
        if self._exact is not None:
            return [(v, 1) for v in sorted(self._exact)]
        items = [(0.0, c) for k, c in self._buckets.items() if k == _ZERO]
        items += sorted((_bucket_value(k), c) for k, c in self._buckets.items() if k != _ZERO)
        return items

    def percentiles(self, qs: Iterable[float]) -> list[float]:
        """Like np.percentile(values, qs) (linear interpolation), within 1% for positive data."""
        qs = list(qs)
        if self.count == 0:
            return [math.nan] * len(qs)
        items = self._sorted_items()
        cum = np.cumsum([c for _, c in items])
        vals = [v for v, _ in items]

        def order_stat(k: int) -> float:          # the k-th smallest value (0-based)
            if k == 0:
                return self.min                   # the extremes are kept exactly
            if k == self.count - 1:
                return self.max
            return vals[int(np.searchsorted(cum, k, side="right"))]

        out = []
        for q in qs:
            if not 0 <= q <= 100:
                raise ValueError(f"percentile must be in [0, 100], got {q}")
            h = (self.count - 1) * q / 100
            lo = math.floor(h)
            a = order_stat(lo)
            b = order_stat(min(lo + 1, self.count - 1))
            est = a + (h - lo) * (b - a)
            out.append(min(max(est, self.min), self.max))
        return out

    def percentile(self, q: float) -> float:
        return self.percentiles([q])[0]

    def summary(self) -> dict:
        """{count, mean, min, p50, p90, p99, max}: NaN-free (zeros when empty)."""
        if self.count == 0:
            return {"count": 0, "mean": 0.0, "min": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0,
                    "max": 0.0}
        p50, p90, p99 = self.percentiles([50, 90, 99])
        return {"count": self.count, "mean": self.total / self.count, "min": self.min,
                "p50": p50, "p90": p90, "p99": p99, "max": self.max}

    # -- snapshots -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-serialisable state (mergeable) plus the summary numbers."""
        d = self.summary()
        d["sum"] = self.total
        if self._exact is not None:
            d["exact"] = list(self._exact)
        else:
            d["buckets"] = {str(k): c for k, c in self._buckets.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LatencyRecorder":
        r = cls()
        r.count = int(d.get("count", 0))
        if r.count == 0:
            return r
        r.total = float(d.get("sum", 0.0))
        r.min, r.max = float(d["min"]), float(d["max"])
        if "exact" in d:
            r._exact = [float(v) for v in d["exact"]]
        else:
            r._exact = None
            r._buckets = {(k if k == _ZERO else int(k)): int(c) for k, c in d["buckets"].items()}
        return r

    def merge(self, other: "LatencyRecorder") -> "LatencyRecorder":
        """Add `other`'s values into this recorder (exact while the total stays small)."""
        if other.count == 0:
            return self
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if self._exact is not None and other._exact is not None \
                and len(self._exact) + len(other._exact) <= EXACT_LIMIT:
            self._exact.extend(other._exact)
            return self
        if self._exact is not None:
            self._to_histogram()
        if other._exact is not None:
            for v in other._exact:
                self._add_bucket(v, 1)
        else:
            for k, c in other._buckets.items():
                self._buckets[k] = self._buckets.get(k, 0) + c
        return self


class RateMeter:
    """Events per second over the last `window_s` seconds of an injectable monotonic clock.

    Counts are kept per tenth of the window; the oldest tenth, which the window only partly
    covers, is weighted by the covered fraction (counts assumed spread evenly inside a tenth).
    Before a whole window has passed since the meter was made, the rate is over that shorter
    time instead.
    """

    SLICES = 10

    def __init__(self, window_s: float = 2.0, clock=time.monotonic):
        if window_s <= 0:
            raise ValueError(f"rate window must be positive, got {window_s}")
        self.window_s = float(window_s)
        self.clock = clock
        self._slice_s = self.window_s / self.SLICES
        self._counts = [0] * (self.SLICES + 1)
        self._t_start = clock()
        self._cur = self._index(self._t_start)     # index of the newest slice

    def _index(self, t: float) -> int:
        return math.floor(t / self._slice_s)

    def _advance(self, t: float) -> int:
        idx = self._index(t)
        if idx > self._cur:
            n = len(self._counts)
            for k in range(self._cur + 1, min(idx, self._cur + n) + 1):
                self._counts[k % n] = 0
            self._cur = idx
        return self._cur

    def add(self, n: float = 1) -> None:
        idx = self._advance(self.clock())
        self._counts[idx % len(self._counts)] += n

    def rate(self) -> float:
        now = self.clock()
        idx = self._advance(now)
        n = len(self._counts)
        oldest = idx - self.SLICES                 # the slice the window starts inside
        if now - self._t_start < self.window_s:
            span = now - self._t_start
            return sum(self._counts) / span if span > 0 else 0.0
        covered = min(max(((oldest + 1) * self._slice_s - (now - self.window_s))
                          / self._slice_s, 0.0), 1.0)
        total = sum(self._counts) - self._counts[oldest % n] * (1.0 - covered)
        return total / self.window_s


class StageTelemetry:
    """Counters, gauges, rates and latencies of one stage (one process)."""

    def __init__(self, stage_name: str, rate_window_s: float = 2.0, clock=time.monotonic):
        self.stage = stage_name
        self.clock = clock
        self.rate_window_s = rate_window_s
        self.t_start = clock()
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, float] = {}
        self._rates: dict[str, RateMeter] = {}
        self.latencies: dict[str, LatencyRecorder] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(n)
        meter = self._rates.get(name)
        if meter is None:
            meter = self._rates[name] = RateMeter(self.rate_window_s, self.clock)
        meter.add(n)

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def latency(self, name: str, value: float) -> None:
        rec = self.latencies.get(name)
        if rec is None:
            rec = self.latencies[name] = LatencyRecorder()
        rec.record(value)

    def rate(self, name: str) -> float:
        meter = self._rates.get(name)
        return meter.rate() if meter else 0.0

    def snapshot(self) -> dict:
        """{stage, uptime_s, counters, rates (per second), gauges, latency: {name: {...}}}."""
        return {
            "stage": self.stage,
            "uptime_s": round(self.clock() - self.t_start, 6),
            "cpu_s": round(time.process_time(), 6),     # this process's CPU time so far
            "counters": dict(self.counters),
            "rates": {name: m.rate() for name, m in self._rates.items()},
            "gauges": {k: _plain(v) for k, v in self.gauges.items()},
            "latency": {name: rec.to_dict() for name, rec in self.latencies.items()},
        }


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _add_dicts(dicts: Iterable[Mapping]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def merge(snapshots: Iterable[Mapping]) -> dict:
    """One snapshot for several: counters, rates and gauges add up, latencies merge exactly,
    uptime is the longest; `stage` is the common name, or the names joined with '+'."""
    snaps = list(snapshots)
    names = []
    for s in snaps:
        if s.get("stage") not in names:
            names.append(s.get("stage"))
    latency: dict[str, LatencyRecorder] = {}
    for s in snaps:
        for name, d in s.get("latency", {}).items():
            latency.setdefault(name, LatencyRecorder()).merge(LatencyRecorder.from_dict(d))
    return {
        "stage": "+".join(str(n) for n in names),
        "uptime_s": max((s.get("uptime_s", 0.0) for s in snaps), default=0.0),
        "counters": _add_dicts(s.get("counters", {}) for s in snaps),
        "rates": _add_dicts(s.get("rates", {}) for s in snaps),
        "gauges": _add_dicts(s.get("gauges", {}) for s in snaps),
        "latency": {name: rec.to_dict() for name, rec in latency.items()},
    }


def merge_latency(snapshots, name: str) -> dict:
    """The summary {count, mean, min, p50, p90, p99, max} of latency `name` across one snapshot
    or several (zeros when none recorded it)."""
    if isinstance(snapshots, Mapping):
        snapshots = [snapshots]
    rec = LatencyRecorder()
    for s in snapshots:
        d = s.get("latency", {}).get(name)
        if d:
            rec.merge(LatencyRecorder.from_dict(d))
    return rec.summary()


# -- the one-line status -------------------------------------------------------------------------

def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _stage_line(snap: Mapping) -> str:
    parts = []
    c, r = snap.get("counters", {}), snap.get("rates", {})
    for name, unit in (("events_in", "ev/s in"), ("events_out", "ev/s out"),
                       ("windows_in", "win/s in"), ("windows_out", "win/s out")):
        if name in c:
            parts.append(f"{_si(r.get(name, 0.0))} {unit}")
    for name in sorted(c):
        if name.startswith("dropped") and c[name]:
            parts.append(f"{name.replace('dropped_', 'drop ')} {_si(c[name])}")
    for name, v in sorted(snap.get("gauges", {}).items()):
        if v:
            parts.append(f"{name} {_si(v)}")
    malformed = snap.get("wire", {}).get("malformed", 0)
    if malformed:
        parts.append(f"malformed msgs {malformed}")
    for name, d in sorted(snap.get("latency", {}).items()):
        if d.get("count"):
            unit = name.rsplit("_", 1)[-1] if "_" in name else ""
            label = name.rsplit("_", 1)[0] if unit in ("ms", "us", "s", "ns") else name
            parts.append(f"{label} p50 {d['p50']:.3g} p99 {d['p99']:.3g} max {d['max']:.3g}"
                         f"{' ' + unit if label != name else ''}")
    return f"{snap.get('stage', '?')}: " + (", ".join(parts) if parts else "idle")


def format_line(snapshots) -> str:
    """One compact line: a single snapshot, or {stage: snapshot} (as the launcher keeps them)."""
    if isinstance(snapshots, Mapping) and "counters" in snapshots:
        return _stage_line(snapshots)
    if isinstance(snapshots, Mapping):
        snapshots = [dict(s, stage=s.get("stage", k)) for k, s in snapshots.items()]
    return " | ".join(_stage_line(s) for s in snapshots)
