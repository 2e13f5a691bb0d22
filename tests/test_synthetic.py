"""Synthetic source: deterministic, exact rate, physically sensible polarities, fast."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from evstream.commands.common import add_source_args, open_from_args
from evstream.errors import SourceError
from evstream.sources import open_source
from evstream.sources.synthetic import FOREGROUND, SyntheticSource, _shape_state
from evstream.types import concat_events


def events(src):
    return concat_events(list(src))


def test_same_seed_same_events_and_frames():
    spec = "synthetic:?seed=7&rate=1e6&duration=0.2&frame_rate=50&shapes=5"
    a, b = open_source(spec), open_source(spec)
    pa, pb = list(a.packets()), list(b.packets())
    assert np.array_equal(events(p.events for p in pa), events(p.events for p in pb))
    fa = [f for p in pa for f in p.frames]
    fb = [f for p in pb for f in p.frames]
    assert [f.t_us for f in fa] == [0, 20_000, 40_000, 60_000, 80_000, 100_000, 120_000,
                                    140_000, 160_000, 180_000]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(fa, fb))
    other = events(open_source(spec.replace("seed=7", "seed=8")))
    assert not np.array_equal(other, events(p.events for p in pa))
    # a packet can be made on its own: the same as the k-th one iterated
    src = open_source(spec)
    assert np.array_equal(src.packet(17).events, pa[17].events)


@pytest.mark.parametrize("rate, duration, packet_us", [(2e6, 0.25, 1000), (333_333.3, 0.1, 700),
                                                       (50.0, 1.0, 1000), (0.0, 0.01, 1000)])
def test_rate_is_exact_and_events_are_well_formed(rate, duration, packet_us):
    src = SyntheticSource(rate=rate, duration=duration, packet_us=packet_us, width=200,
                          height=120, t0_us=5_000)
    ev = events(src)
    assert len(ev) == int(rate * duration)
    if len(ev):
        assert ev["t"][0] >= 5_000 and ev["t"][-1] < 5_000 + duration * 1e6
        assert np.all(np.diff(ev["t"]) >= 0)
        assert ev["x"].max() < 200 and ev["y"].max() < 120
        assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
    assert src.stats.dropped_out_of_order == 0 and src.stats.dropped_outside_sensor == 0
    assert not src.live


def test_polarity_follows_the_moving_edges():
    src = SyntheticSource(seed=3, shapes=1, noise=0.0, rate=1e6, duration=0.01)  # one disc
    ev = events(src)
    kind, x0, y0, vx, vy, r, _ = src.shapes[0]
    cx, cy, ux, uy = _shape_state(src.shapes, 0, 0.005, src.width, src.height)
    dx, dy = ev["x"] + 0.5 - cx, ev["y"] + 0.5 - cy
    ahead = dx * ux + dy * uy > 0
    on = ev["p"] == 1
    assert np.mean(ahead == on) > 0.95            # ON on the leading edge, OFF trailing
    dist = np.hypot(dx, dy)
    assert np.mean(np.abs(dist - r) < 3) > 0.95   # on the rim, not inside the disc
    assert 0.45 < on.mean() < 0.55


def test_frames_render_the_shapes():
    src = SyntheticSource(seed=2, shapes=2, duration=0.03, frame_rate=100, rate=1000)
    frames = [f for p in src.packets() for f in p.frames]
    assert [f.t_us for f in frames] == [0, 10_000, 20_000]
    img = frames[0].image
    assert img.shape == (260, 346) and img.dtype == np.uint8
    lit = int((img == FOREGROUND).sum())
    disc = np.pi * src.shapes[0, 5] ** 2
    bar = 4 * src.shapes[1, 5] * src.shapes[1, 6]
    assert 0.8 * max(disc, bar) < lit < 1.2 * (disc + bar)
    assert not np.array_equal(frames[0].image, frames[2].image)     # things move


def test_generates_12_million_events_per_second_faster_than_real_time():
    SyntheticSource(rate=12e6, duration=0.01).packet(0)      # compile (cached on disk)
    best = float("inf")
    for _ in range(3):
        src = SyntheticSource(rate=12e6, duration=0.5, realtime=False)
        t0 = time.perf_counter()
        n = sum(len(ev) for ev in src)
        best = min(best, time.perf_counter() - t0)
    assert n == 6_000_000
    rate = n / best
    print(f"synthetic: {rate / 1e6:.1f} M events/s generated")
    assert rate > 12e6


def test_without_duration_it_is_live_and_keeps_to_the_clock():
    src = open_source("synthetic:?rate=1e5&packet_us=2000")
    assert src.live and src.bad_events == "drop" and src.duration is None
    t0 = time.monotonic()
    it = iter(src)
    n = sum(len(next(it)) for _ in range(25))              # 25 packets = 50 ms of source time
    took = time.monotonic() - t0
    assert n == 5_000
    assert 0.048 < took < 1.0
    src.close()
    assert list(it) == []


def test_spec_options_and_errors():
    src = open_source("synthetic:?seed=4&width=64&height=48&shapes=0&duration=0.01&rate=1e4",
                      width=80)
    assert src.geometry == (80, 48)                        # flags win over the spec
    ev = events(src)
    assert len(ev) == 100 and ev["x"].max() < 80             # no shapes: all noise
    for spec, msg in [("synthetic:?colour=red", "unknown option 'colour'"),
                      ("synthetic:?rate=lots", "rate='lots' is not a valid value"),
                      ("synthetic:?width=2", "must be 4..65535"),
                      ("synthetic:?duration=0", "duration 0.0 must be > 0"),
                      ("synthetic:?noise=2", "0 <= noise <= 1")]:
        with pytest.raises(SourceError, match=msg):
            open_source(spec)


def test_software_filters_on_a_numpy_source():
    p = argparse.ArgumentParser()
    add_source_args(p)
    args = p.parse_args(["synthetic:?duration=0.05&rate=1e6", "--polarity", "on",
                         "--roi", "0,0,173,260"])
    src = open_from_args(args)
    ev = events(src)
    full = events(open_source("synthetic:?duration=0.05&rate=1e6"))
    want = full[(full["p"] == 1) & (full["x"] < 173)]
    assert np.array_equal(ev, want)
    assert src.stats.filtered == len(full) - len(want)
    # roi runs before polarity: each filter counts what it removed itself
    assert src.filters.counts == {"roi": int((full["x"] >= 173).sum()),
                                  "polarity": int(((full["x"] < 173) & (full["p"] == 0)).sum())}
