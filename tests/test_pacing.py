"""Replay pacing: exact schedules with a fake clock on real recordings, one real-time run."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from evstream.commands.common import add_replay_args, add_source_args, open_from_args
from evstream.errors import EvstreamError
from evstream.sources import open_source
from evstream.sources.base import EventSource
from evstream.sources.pacing import PacedSource, paced, slice_packet
from evstream.types import Packet, concat_events, make_events

WHEEL = "davis346_wheel_2024_11_26_11_34_19_crop100x100.aedat4"      # ONE packet, 3.446 s
WHEEL_FIRST, WHEEL_LAST, WHEEL_N = 1732617259261877, 1732617262707538, 137_177
SMALL = "davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4"        # ONE packet, 1.581 s
SMALL_N = 46_402
DAVIS = "davis346_aestream_davis.aedat4"


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.sleeps.append(dt)
        self.now += dt


def cat(pkts):
    return concat_events([p.events for p in pkts])


@pytest.fixture
def wheel(realdata):
    return str(realdata / "aedat4" / WHEEL)


def test_real_time_follows_timestamps_inside_one_huge_packet(wheel):
    raw = list(open_source(wheel).packets())
    assert len(raw) == 1                              # the whole file is one packet
    fc = FakeClock()
    src = paced(open_source(wheel), speed=1.0, clock=fc.clock, sleep=fc.sleep)
    start = fc.now
    released = []
    for pkt in src.packets():
        released.append((fc.now, pkt))
    ev = cat(p for _, p in released)
    assert np.array_equal(ev, cat(raw))               # same events, same order
    assert len(released) > 2500                       # ~1 ms slices of a 3.4 s packet
    for wall, pkt in released:
        t = pkt.events["t"]
        assert t[-1] - t[0] < 1000                    # each slice spans under 1 ms
        # released exactly when the wall clock reaches its newest event
        assert wall - start == pytest.approx((t[-1] - WHEEL_FIRST) / 1e6, abs=1e-9)
    assert fc.now - start == pytest.approx((WHEEL_LAST - WHEEL_FIRST) / 1e6, abs=1e-9)
    assert src.pacing_lag_us == {"n": len(released), "mean": 0.0, "max": 0, "p50": 0, "p99": 0}
    assert src.stats.events == WHEEL_N and not src.live


@pytest.mark.parametrize("speed, factor", [(2.0, 0.5), ("4", 0.25), (0.5, 2.0)])
def test_speed_factor(wheel, speed, factor):
    fc = FakeClock()
    src = paced(open_source(wheel), speed=speed, clock=fc.clock, sleep=fc.sleep)
    n = sum(len(ev) for ev in src)
    assert n == WHEEL_N
    assert fc.now - 100.0 == pytest.approx((WHEEL_LAST - WHEEL_FIRST) / 1e6 * factor, abs=1e-9)


def test_max_speed_never_waits(wheel):
    fc = FakeClock()
    src = paced(open_source(wheel), speed="max", clock=fc.clock, sleep=fc.sleep)
    pkts = list(src.packets())
    assert len(pkts) == 1 and len(pkts[0].events) == WHEEL_N and fc.sleeps == []


def test_start_end_relative_to_first_event(wheel):
    fc = FakeClock()
    src = paced(open_source(wheel), speed=1.0, start_s=1.0, end_s=2.25, clock=fc.clock,
                sleep=fc.sleep)
    ev = cat(list(src.packets()))
    full = cat(list(open_source(wheel).packets()))
    lo, hi = WHEEL_FIRST + 1_000_000, WHEEL_FIRST + 2_250_000
    want = full[(full["t"] >= lo) & (full["t"] < hi)]
    assert len(want) > 10_000 and np.array_equal(ev, want)
    # the clock starts at the first event played, so the replay takes the span played
    assert fc.now - 100.0 == pytest.approx((want["t"][-1] - want["t"][0]) / 1e6, abs=1e-9)


def test_loop_keeps_time_monotonic(realdata):
    path = str(realdata / "aedat4" / SMALL)
    opened = []

    def reopen():
        opened.append(1)
        return open_source(path)

    src = paced(reopen(), speed="max", loop=True, reopen=reopen)
    pkts = []
    for pkt in src.packets():
        pkts.append(pkt)
        if len(pkts) == 3:
            break
    src.close()
    assert [len(p.events) for p in pkts] == [SMALL_N] * 3
    span = int(pkts[0].events["t"][-1] - pkts[0].events["t"][0]) + 1
    for k in (1, 2):
        assert np.array_equal(pkts[k].events["t"], pkts[0].events["t"] + k * span)
        assert np.array_equal(pkts[k].events[["x", "y", "p"]], pkts[0].events[["x", "y", "p"]])
        assert pkts[k].events["t"][0] > pkts[k - 1].events["t"][-1]
    assert src.loops == 2 and len(opened) == 3


def test_loop_with_window_and_real_time_schedule(realdata):
    path = str(realdata / "aedat4" / SMALL)
    fc = FakeClock()
    src = paced(open_source(path), speed=1.0, loop=True, start_s=0.5, end_s=0.6,
                clock=fc.clock, sleep=fc.sleep, reopen=lambda: open_source(path))
    got = []
    for ev in src:
        got.append(ev)
        if src.loops == 3:
            break
    ev = concat_events(got)
    assert np.all(np.diff(ev["t"]) >= 0)
    # three passes over a 0.1 s window played back to back: about 0.3 s of wall time
    assert 0.29 < fc.now - 100.0 < 0.31


def test_lag_is_measured_when_the_consumer_is_slow(wheel):
    fc = FakeClock()
    src = paced(open_source(wheel), speed=1.0, end_s=0.2, clock=fc.clock, sleep=fc.sleep)
    for i, _ in enumerate(src.packets()):
        if i == 10:
            fc.now += 0.050                     # the consumer stalls 50 ms once
    lag = src.pacing_lag_us
    assert 45_000 <= lag["max"] <= 50_000       # the next slice went out late ...
    assert lag["p50"] == 0                      # ... most were on time (caught up)
    assert lag["n"] > 100 and lag["mean"] > 0


def test_frames_imu_triggers_are_paced_too(realdata):
    fc = FakeClock()
    src = paced(open_source(str(realdata / "aedat4" / DAVIS)), clock=fc.clock, sleep=fc.sleep)
    pkts = list(src.packets())
    # MANIFEST: 117,667 events, 3 frames, 130 IMU samples, 15 triggers
    assert sum(len(p.events) for p in pkts) == 117_667
    assert sum(len(p.frames) for p in pkts) == 3
    assert sum(len(p.imu) for p in pkts) == 130
    assert sum(len(p.triggers) for p in pkts) == 15
    assert src.stats.frames == 3 and src.stats.imu == 130


def test_slice_packet_spreads_every_item():
    ev = make_events([0, 10, 999, 1000, 2500, 2501], [1] * 6, [1] * 6, [1] * 6)
    imu = np.zeros(3, dtype=Packet().imu.dtype)
    imu["t"] = [5, 1500, 2600]
    parts = list(slice_packet(Packet(events=ev, imu=imu), base_us=0))
    assert [due for due, _ in parts] == [999, 1500, 2600]
    assert [p.events["t"].tolist() for _, p in parts] == [[0, 10, 999], [1000], [2500, 2501]]
    assert [p.imu["t"].tolist() for _, p in parts] == [[5], [1500], [2600]]


def test_real_time_run_with_real_clock():
    src = paced(open_source("synthetic:?rate=2e5&duration=0.3&seed=3"), speed=1.0)
    t0 = time.monotonic()
    n = sum(len(ev) for ev in src)
    took = time.monotonic() - t0
    assert n == 60_000
    assert 0.29 < took < 1.0                 # 0.3 s of source time; generous for busy machines
    assert src.pacing_lag_us["p50"] < 20_000


def test_bad_arguments():
    src = open_source("synthetic:?duration=1")
    for bad in (0, -1, "fast", "0"):
        with pytest.raises(EvstreamError, match="--speed"):
            paced(src, speed=bad)
    with pytest.raises(EvstreamError, match="--end 1.0 must be after --start 2.0"):
        paced(src, start_s=2.0, end_s=1.0)
    with pytest.raises(ValueError, match="reopen"):
        paced(src, loop=True)
    with pytest.raises(EvstreamError, match="not live sources"):
        paced(open_source("synthetic:"), speed=1.0)


def _parse(argv):
    p = argparse.ArgumentParser(prog="evstream replay", exit_on_error=False)
    add_source_args(p)
    add_replay_args(p)
    return p.parse_args(argv)


def test_cli_replay_options(wheel):
    src = open_from_args(_parse([wheel, "--speed", "max", "--start", "1", "--end", "2",
                                 "--refractory-us", "1000"]))
    assert isinstance(src, PacedSource) and src.speed is None
    ev = cat(list(src.packets()))
    assert ev["t"][0] >= WHEEL_FIRST + 1_000_000 and ev["t"][-1] < WHEEL_FIRST + 2_000_000
    assert src.stats.filtered > 0               # the inner source's filter counts come through
    looped = open_from_args(_parse([wheel, "--speed", "max", "--loop", "--end", "0.1"]))
    n = 0
    for ev in looped:
        n += 1
        if looped.loops == 2:
            break
    assert looped.loops == 2
    assert not isinstance(open_from_args(_parse([wheel]), pace=False), PacedSource)
    with pytest.raises(EvstreamError, match="--end 1.0 must be after --start 2.0"):
        open_from_args(_parse([wheel, "--start", "2", "--end", "1"]))
    with pytest.raises(EvstreamError, match="replay options are for recordings"):
        open_from_args(_parse(["synthetic:", "--loop"]))
    with pytest.raises(EvstreamError, match="is a camera setting"):
        open_from_args(_parse([wheel, "--no-aps"]))


@pytest.mark.parametrize("argv", [["--speed", "0"], ["--speed", "fast"], ["--start", "-1"],
                                  ["--end", "nan"], ["--ba-filter-us", "0"], ["--roi", "1,2"],
                                  ["--polarity", "both"], ["--exposure-us", "-3"]])
def test_cli_rejects_nonsense_in_one_line(argv, capsys):
    from evstream.cli import _Parser

    p = _Parser(prog="evstream replay")
    add_source_args(p)
    add_replay_args(p)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["x.aedat4"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and argv[0] in err


class _SmallPackets(EventSource):
    """A real recording's events cut into packets of `size` events (a DAVIS file's shape)."""

    live = False

    def __init__(self, events, size):
        super().__init__()
        self.events, self.size = events, size
        self.name, self.camera, self.width, self.height = "small", "test", 346, 260
        self.resolution_note = ""

    def _read(self):
        for i in range(0, len(self.events), self.size):
            yield Packet(events=self.events[i:i + self.size])


def test_small_packets_of_one_slice_go_out_as_one_packet(wheel):
    """A file of 10-event packets (~4 a millisecond here) is released once per 1 ms slice of
    source time, each release at the slice's newest event, with every event in order."""
    ev = cat(open_source(wheel).packets())
    fc = FakeClock()
    src = paced(_SmallPackets(ev, 10), speed=1.0, clock=fc.clock, sleep=fc.sleep)
    start, base = fc.now, int(ev["t"][0])
    released = [(fc.now, p) for p in src.packets()]
    assert np.array_equal(cat(p for _, p in released), ev)
    slices = (ev["t"] - base) // 1000
    assert len(released) == len(np.unique(slices))           # one release per slice
    for wall, pkt in released:
        t = pkt.events["t"]
        assert len(np.unique((t - base) // 1000)) == 1
        assert wall - start == pytest.approx((int(t[-1]) - base) / 1e6, abs=1e-9)
