"""The shared-memory event ring: contents, overrun accounting, lossless waiting, dead readers,
cleanup of /dev/shm on every exit path, and the CPython attach bug it works around.

Everything that crosses processes uses real `spawn` processes; synchronisation is by queues and
events with timeouts, never by sleeping.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evstream.stream import shm
from evstream.stream.ring import EventRing
from evstream.types import EVENT_DTYPE

CTX = mp.get_context("spawn")
TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[1]


def seq_events(start: int, n: int) -> np.ndarray:
    """Events whose every field is a function of the sequence number, so torn data shows."""
    s = np.arange(start, start + n, dtype=np.int64)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = s
    ev["x"] = s % 346
    ev["y"] = (s // 346) % 260
    ev["p"] = s % 2
    return ev


def check_consistent(ev: np.ndarray) -> None:
    s = ev["t"]
    assert np.array_equal(ev["x"], s % 346), "torn event: x does not match t"
    assert np.array_equal(ev["y"], (s // 346) % 260), "torn event: y does not match t"
    assert np.array_equal(ev["p"], s % 2), "torn event: p does not match t"


def exists(name: str) -> bool:
    return os.path.exists(shm.shm_path(name))


def park() -> None:
    """Wait to be signalled or killed (the test ends us; this is not synchronisation)."""
    time.sleep(60)


# -- child processes -------------------------------------------------------------------------

def _writer_proc(name, policy, n, chunk_max, first, phase_q, go, seed):
    """Write events 0..n-1 in random chunk sizes; pause after `first` events until `go`."""
    ring = EventRing.attach(name)
    w = ring.writer(policy)
    rng = np.random.default_rng(seed)
    ev = seq_events(0, n)
    done = 0
    paused = first is None
    while done < n:
        if not paused and done >= first:
            phase_q.put(("paused", done))
            assert go.wait(TIMEOUT)
            paused = True
        k = int(rng.integers(1, chunk_max + 1))
        if not paused:
            k = min(k, first - done)
        k = min(k, n - done)
        wrote = w.write(ev[done:done + k], timeout=TIMEOUT)
        assert wrote == k, (wrote, k)
        done += k
    written = w.written
    w.close_stream()
    ring.close()
    phase_q.put(("done", written))


def _idle_reader_proc(name, q):
    ring = EventRing.attach(name)
    r = ring.reader()
    q.put(r.slot)
    park()


def _idle_writer_proc(name, q, n):
    ring = EventRing.attach(name)
    w = ring.writer("live")
    w.write(seq_events(0, n))
    q.put(w.written)
    park()


def _owner_proc(mode, conn):
    """Announces the ring's name on a pipe: Connection.send is one write with no lock and no
    feeder thread, so the test's signal cannot land inside a multiprocessing.Queue's put (a
    KeyboardInterrupt there can leave the queue's lock held and hang the exit)."""
    q = SimpleNamespace(put=conn.send)
    if mode == "with":
        with EventRing.create(4096) as ring:
            ring.writer().write(seq_events(0, 100))
            q.put(ring.name)
            park()
    elif mode == "finally":
        ring = EventRing.create(4096)
        try:
            q.put(ring.name)
            park()
        finally:
            ring.close()
            ring.unlink()
    elif mode == "reading":                     # interrupted inside a blocking read
        with EventRing.create(4096) as ring:
            r = ring.reader()
            q.put(ring.name)
            r.read(timeout=None)
    elif mode == "normal":
        with EventRing.create(4096) as ring:
            ring.writer().write(seq_events(0, 100))
            q.put(ring.name)


def _attach_and_exit_proc(name, q):
    ring = EventRing.attach(name)
    r = ring.reader()
    q.put(len(r.read(timeout=0)))
    ring.close()


def _latency_writer_proc(name, n_writes, period_s, ready, go, q):
    ring = EventRing.attach(name)
    w = ring.writer("live")
    ready.set()
    assert go.wait(TIMEOUT)
    next_t = time.perf_counter()
    for i in range(n_writes):
        next_t += period_s
        while time.perf_counter() < next_t:   # pacing the load, not synchronising
            pass
        w.write(seq_events(i * 10, 10))
    w.close_stream()
    ring.close()
    q.put("done")


# -- single process ----------------------------------------------------------------------------

def test_roundtrip_wraparound_and_copies():
    with EventRing.create(1000) as ring:
        w, r = ring.writer(), ring.reader()
        got = []
        rng = np.random.default_rng(1)
        seq = 0
        for _ in range(200):                    # 200 writes of up to 37 events: wraps ~4 times
            k = int(rng.integers(0, 38))
            assert w.write(seq_events(seq, k)) == k
            seq += k
            out = r.read(timeout=0)
            assert out.dtype == EVENT_DTYPE and out.flags.c_contiguous
            got.append(out)
        got = np.concatenate(got)
        assert np.array_equal(got, seq_events(0, seq))
        assert r.lost == 0 and w.written == seq
        # a read returns a copy: overwriting the ring later does not change it
        w.write(seq_events(seq, 10))
        out = r.read(timeout=0)
        w.write(seq_events(10_000, 1000))
        assert np.array_equal(out, seq_events(seq, 10))


def test_max_events_and_empty_and_end_of_stream():
    with EventRing.create(100) as ring:
        w, r = ring.writer(), ring.reader()
        assert len(r.read(timeout=0)) == 0
        w.write(seq_events(0, 50))
        a = r.read(max_events=20, timeout=0)
        b = r.read(max_events=1000, timeout=0)
        assert np.array_equal(np.concatenate([a, b]), seq_events(0, 50))
        assert r.lag() == 0
        w.write(seq_events(50, 5))
        w.close_stream()
        assert np.array_equal(r.read(timeout=0), seq_events(50, 5))   # drains before the end
        assert r.read(timeout=0) is None
        assert r.read(timeout=0) is None
        with pytest.raises(RuntimeError, match="already closed"):
            ring.writer()


def test_read_into_a_callers_array():
    with EventRing.create(100) as ring:
        w, r = ring.writer(), ring.reader()
        w.write(seq_events(0, 90))
        room = np.zeros(40, EVENT_DTYPE)
        a = r.read(timeout=0, out=room)                      # at most len(out) events
        assert len(a) == 40 and np.shares_memory(a, room)
        assert np.array_equal(a, seq_events(0, 40))
        b = r.read(timeout=0, max_events=7, out=np.zeros(40, EVENT_DTYPE))
        assert np.array_equal(b, seq_events(40, 7))
        w.write(seq_events(90, 50))                          # wraps around the ring
        c = r.read(timeout=0, out=np.zeros(200, EVENT_DTYPE))
        assert np.array_equal(c, seq_events(47, 93))
        for bad in (np.zeros(0, EVENT_DTYPE), np.zeros(4, np.int64), np.zeros(8, EVENT_DTYPE)[::2],
                    np.zeros((2, 2), EVENT_DTYPE)):
            with pytest.raises(ValueError, match="out must be"):
                r.read(timeout=0, out=bad)


def test_idle_reader_sleeps_on_the_futex_and_wakes_at_once():
    """A reader with nothing to read blocks (no CPU) and returns as soon as a write commits;
    a write from another process wakes it too (the cross-process case is in the latency test)."""
    import threading

    from evstream.stream import ring as ring_mod

    if ring_mod._syscall is None:
        pytest.skip("no futex on this platform: readers poll with a sleeping back-off")
    with EventRing.create(1000) as ring:
        w, r = ring.writer(), ring.reader()
        cpu0, t0 = time.process_time(), time.monotonic()
        assert len(r.read(timeout=0.3)) == 0                  # nothing comes: waits it out
        idle_cpu, waited = time.process_time() - cpu0, time.monotonic() - t0
        assert waited >= 0.3 and idle_cpu < 0.1, (waited, idle_cpu)
        woke = []

        def write_later():
            time.sleep(0.05)
            woke.append(time.monotonic())
            w.write(seq_events(0, 3))

        th = threading.Thread(target=write_later)
        th.start()
        got = r.read(timeout=5)
        delay = time.monotonic() - woke[0]
        th.join()
        assert np.array_equal(got, seq_events(0, 3))
        assert delay < 0.05                                   # not the 100 ms wait cap
        th = threading.Thread(target=lambda: (time.sleep(0.05), w.close_stream()))
        th.start()
        t0 = time.monotonic()
        assert r.read(timeout=5) is None and time.monotonic() - t0 < 1
        th.join()


def test_without_futexes_waits_are_sleeps(monkeypatch):
    from evstream.stream import ring as ring_mod

    monkeypatch.setattr(ring_mod, "_syscall", None)
    with EventRing.create(10) as ring:
        w, r = ring.writer("lossless"), ring.reader()
        t0 = time.monotonic()
        assert len(r.read(timeout=0.05)) == 0 and time.monotonic() - t0 >= 0.05
        assert w.write(seq_events(0, 10)) == 10
        t0 = time.monotonic()
        assert w.write(seq_events(10, 5), timeout=0.05) == 0      # full: waits it out
        assert time.monotonic() - t0 >= 0.05
        assert np.array_equal(r.read(timeout=0), seq_events(0, 10))
        assert w.write(seq_events(10, 5), timeout=1) == 5


def test_write_validation():
    with EventRing.create(10) as ring:
        w = ring.writer()
        with pytest.raises(TypeError):
            w.write(np.zeros(3, np.int64))
        with pytest.raises(TypeError):
            w.write(seq_events(0, 4).reshape(2, 2))
        with pytest.raises(ValueError):
            ring.writer("sometimes")
        with pytest.raises(ValueError):
            ring.reader().read(max_events=0)


def test_fill_the_ring_lossless():
    with EventRing.create(1000) as ring:
        w, r = ring.writer("lossless"), ring.reader()
        assert w.write(seq_events(0, 1000), timeout=0) == 1000       # exactly full
        assert w.write(seq_events(1000, 5), timeout=0) == 0          # no room, no wait
        t0 = time.monotonic()
        assert w.write(seq_events(1000, 5), timeout=0.05) == 0       # waits, then gives up
        assert time.monotonic() - t0 >= 0.05
        assert len(r.read(max_events=300, timeout=0)) == 300
        assert w.write(seq_events(1000, 500), timeout=0) == 300      # exactly what was freed
        out = r.read(timeout=0)
        assert np.array_equal(out, seq_events(300, 1000))
        assert r.lost == 0


def test_lossless_writer_never_laps_a_reader_that_came_later():
    """The writer looks at the reader slots only when the positions it last saw leave too
    little room; a reader that joined since starts at the commit, so it is never lapped."""
    with EventRing.create(1000) as ring:
        w, first = ring.writer("lossless"), ring.reader()
        assert w.write(seq_events(0, 400), timeout=0) == 400          # looked: first at 0
        assert len(first.read(timeout=0)) == 400
        assert w.write(seq_events(400, 400), timeout=0) == 400        # room known: no look
        late = ring.reader()                                          # joins at 800
        assert len(first.read(timeout=0)) == 400
        # room for 1000 past the late reader, not past the position last seen (0)
        assert w.write(seq_events(800, 1500), timeout=0) == 1000
        assert len(first.read(timeout=0)) == 1000
        assert w.write(seq_events(1800, 5), timeout=0) == 0           # the late one holds it
        assert np.array_equal(late.read(timeout=0), seq_events(800, 1000))
        assert late.lost == 0
        assert w.write(seq_events(1800, 2000), timeout=0) == 1000


def test_live_write_larger_than_ring_and_lapped_reader():
    with EventRing.create(1000) as ring:
        w, r = ring.writer("live"), ring.reader()
        assert w.write(seq_events(0, 2500)) == 2500
        out = r.read(timeout=0)
        assert np.array_equal(out, seq_events(1500, 1000))          # the newest capacity events
        assert r.lost == 1500
        w.write(seq_events(2500, 3000))                              # lap the reader again
        w.write(seq_events(5500, 10))
        out = r.read(timeout=0)
        assert r.lost + 1000 + len(out) == w.written
        assert np.array_equal(out, seq_events(4510, 1000))


@pytest.mark.parametrize("into", [False, True])
def test_overwrite_during_copy_is_cut_and_counted(into):
    """The seqlock re-check, made deterministic: the writer laps the reader in the middle of
    its copy (and the copy came out torn); the reader drops exactly the overwritten part, also
    when it reads into a caller's array."""
    with EventRing.create(100) as ring:
        w, r = ring.writer("live"), ring.reader()
        w.write(seq_events(0, 100))
        real_copy = ring._copy_out

        def torn_copy(start, end, dst=None):
            out = real_copy(start, end, dst)
            w.write(seq_events(100, 30))        # overwrites the slots of events 0..29
            out[:30]["x"] = 9999                 # as a copy racing that write may see them
            return out

        ring._copy_out = torn_copy
        room = np.zeros(150, EVENT_DTYPE)
        out = r.read(timeout=0, out=room if into else None)
        ring._copy_out = real_copy
        if into:                                 # a view of the caller's array, cut in front
            assert np.shares_memory(out, room) and out.ctypes.data == room[30:].ctypes.data
        assert np.array_equal(out, seq_events(30, 70))
        assert r.lost == 30
        assert np.array_equal(r.read(timeout=0), seq_events(100, 30))


def test_reader_slots_exhaust_and_reuse():
    with EventRing.create(10, max_readers=2) as ring:
        a, b = ring.reader(), ring.reader()
        with pytest.raises(RuntimeError, match="reader slots"):
            ring.reader()
        a.close()
        c = ring.reader()
        assert c.slot == a.slot
        assert [row["slot"] for row in ring.info()["readers"]] == sorted([b.slot, c.slot])


def test_single_writer_enforced():
    with EventRing.create(10) as ring:
        w = ring.writer()
        with pytest.raises(RuntimeError, match="already has a writer"):
            EventRing.attach(ring.name).writer()
        w.close()                              # gives up the role without ending the stream
        w2 = ring.writer()
        w2.write(seq_events(0, 3))
        assert ring.info()["written"] == 3


def test_attach_errors():
    with pytest.raises(FileNotFoundError, match="no shared memory segment"):
        EventRing.attach("evstream_does_not_exist_123")
    plain = SharedMemory(create=True, size=8192)
    try:
        with pytest.raises(ValueError, match="not an evstream event ring"):
            EventRing.attach(plain.name.lstrip("/"))
    finally:
        plain.close()
        plain.unlink()


def test_fence_compiles_and_runs():
    fence = shm.compile_fence()   # used on weakly ordered CPUs; on x86-64 the ring needs none
    fence()


# -- across processes --------------------------------------------------------------------------

def test_live_overrun_accounting_across_processes():
    """A slow reader in live mode: written == read + lost, and what was read is exactly the
    written events it did not lose, in order, never torn."""
    n, cap = 2_000_000, 4096
    with EventRing.create(cap) as ring:
        r = ring.reader()                      # joins before the first write
        q, go = CTX.Queue(), CTX.Event()
        p = CTX.Process(target=_writer_proc, args=(ring.name, "live", n, 700, 3 * cap, q, go, 7))
        p.start()
        try:
            # phase 1: the writer laps the idle reader (certain loss); phase 2: both run freely
            assert q.get(timeout=TIMEOUT) == ("paused", 3 * cap)
            go.set()
            parts = []
            sizes = [64, None, 1000]       # long copies give the writer time to overwrite them
            while (out := r.read(max_events=sizes[len(parts) % 3], timeout=TIMEOUT)) is not None:
                parts.append(out)
            kind, written = q.get(timeout=TIMEOUT)
            p.join(TIMEOUT)
        finally:
            if p.is_alive():
                p.kill()
        got = np.concatenate(parts)
        assert kind == "done" and written == n and p.exitcode == 0
        assert len(got) + r.lost == written
        assert r.lost >= 2 * cap
        check_consistent(got)
        t = got["t"]
        assert np.all(np.diff(t) > 0) and t[0] >= 0 and t[-1] == n - 1   # an ordered subsequence
        assert ring.info()["readers"][0]["lost"] == r.lost


def test_lossless_slow_reader_gets_everything():
    n, cap = 200_000, 1000
    with EventRing.create(cap) as ring:
        r = ring.reader()
        q, go = CTX.Queue(), CTX.Event()
        p = CTX.Process(target=_writer_proc, args=(ring.name, "lossless", n, 600, None, q, go, 3))
        p.start()
        try:
            parts = []
            while (out := r.read(max_events=97, timeout=TIMEOUT)) is not None:
                parts.append(out)
            kind, written = q.get(timeout=TIMEOUT)
            p.join(TIMEOUT)
        finally:
            if p.is_alive():
                p.kill()
        assert kind == "done" and written == n and p.exitcode == 0
        assert r.lost == 0
        assert np.array_equal(np.concatenate(parts), seq_events(0, n))


def test_lossless_writer_survives_killed_reader():
    cap = 1000
    with EventRing.create(cap) as ring:
        w = ring.writer("lossless")
        live_reader = ring.reader()
        q = CTX.Queue()
        p = CTX.Process(target=_idle_reader_proc, args=(ring.name, q))
        p.start()
        try:
            slot = q.get(timeout=TIMEOUT)
            assert w.write(seq_events(0, cap), timeout=TIMEOUT) == cap
            assert len(live_reader.read(timeout=0)) == cap
            # the idle (alive) reader holds the writer back: the timeout is honoured
            assert w.write(seq_events(cap, 10), timeout=0.02) == 0
            row = next(x for x in w.readers() if x["slot"] == slot)
            assert row["alive"] and row["pid"] == p.pid and row["lag"] == cap
            os.kill(p.pid, signal.SIGKILL)
            p.join(TIMEOUT)
        finally:
            if p.is_alive():
                p.kill()
        # the dead reader no longer stalls the writer; the live reader still gets everything
        t0 = time.monotonic()
        got = []
        for i in range(5):
            assert w.write(seq_events(cap + i * 800, 800), timeout=TIMEOUT) == 800
            got.append(live_reader.read(timeout=0))
        assert time.monotonic() - t0 < 5
        assert np.array_equal(np.concatenate(got), seq_events(cap, 4000))
        assert not next(x for x in w.readers() if x["slot"] == slot)["alive"]
        # its slot can be claimed again, and the new reader is waited for
        again = [ring.reader() for _ in range(ring.max_readers - 1)]
        assert slot in [x.slot for x in again]


def test_writer_killed_and_replaced():
    with EventRing.create(1000) as ring:
        r = ring.reader()
        q = CTX.Queue()
        p = CTX.Process(target=_idle_writer_proc, args=(ring.name, q, 300))
        p.start()
        try:
            assert q.get(timeout=TIMEOUT) == 300
            assert r.writer_alive()
            with pytest.raises(RuntimeError, match="already has a writer"):
                ring.writer()
            os.kill(p.pid, signal.SIGKILL)
            p.join(TIMEOUT)
        finally:
            if p.is_alive():
                p.kill()
        assert not r.writer_alive()
        w = ring.writer()                      # a restarted stage takes over the stream
        w.write(seq_events(300, 50))
        assert np.array_equal(r.read(timeout=0), seq_events(0, 350))


def test_cross_process_latency():
    """Write -> read-return latency across processes (printed; the bound is loose for CI)."""
    with EventRing.create(1 << 16) as ring:
        r = ring.reader()
        ready, go, q = CTX.Event(), CTX.Event(), CTX.Queue()
        p = CTX.Process(target=_latency_writer_proc, args=(ring.name, 2000, 0.0005, ready, go, q))
        p.start()
        try:
            assert ready.wait(TIMEOUT)
            go.set()
            lat_us = []
            while (out := r.read(timeout=TIMEOUT)) is not None:
                if len(out):
                    lat_us.append((time.monotonic_ns() - r.last_write_wall_ns) / 1000)
            assert q.get(timeout=TIMEOUT) == "done"
            p.join(TIMEOUT)
        finally:
            if p.is_alive():
                p.kill()
        lat = np.array(lat_us)
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"ring latency over {len(lat)} reads: p50 {p50:.0f} us, p99 {p99:.0f} us, "
              f"max {lat.max():.0f} us")
        assert r.lost == 0
        assert (lat > 0).all()
        assert p50 < 2000


# -- write_checked: the source's time-order and bounds check, fused into the copy ---------------

def _read_all(r) -> np.ndarray:
    parts = []
    while len(got := r.read(timeout=0)):
        parts.append(got)
    return np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


@pytest.mark.parametrize("policy", ["live", "lossless"])
def test_write_checked_publishes_good_events_across_the_wrap(policy):
    with EventRing.create(1000) as ring:
        w, r = ring.writer(policy), ring.reader()
        sent = []
        for start, n in ((0, 700), (700, 600), (1300, 999)):   # the 2nd and 3rd wrap around
            ev = seq_events(start, n)
            last = start - 1 if start else np.iinfo(np.int64).min
            assert w.write_checked(ev, last, 346, 260) == (n, False)
            sent.append(ev)
            got = _read_all(r)
            np.testing.assert_array_equal(got, ev)
        assert w.written == 2299


@pytest.mark.parametrize("policy", ["live", "lossless"])
@pytest.mark.parametrize("bad_at, field, value", [
    (0, "t", 1), (1, "t", 1), (450, "t", 400), (899, "t", 1),   # this much older than before
    (0, "x", 346), (300, "x", 65535), (650, "y", 260), (899, "y", 300)])   # outside 346x260
def test_write_checked_stops_at_the_first_bad_event(policy, bad_at, field, value):
    """Only the good prefix is published, also when the bad event lies past the wrap; the
    next write goes on from there and the reader never sees the bad event."""
    with EventRing.create(1000) as ring:
        w, r = ring.writer(policy), ring.reader()
        assert w.write_checked(seq_events(0, 600), -1, 346, 260) == (600, False)
        assert len(_read_all(r)) == 600
        ev = seq_events(600, 900)                       # slots 600..999, then 0..499
        if field == "t":                                # (before ev[0]: last_t = 599)
            ev["t"][bad_at] = 599 + bad_at - value
        else:
            ev[field][bad_at] = value
        written, bad = w.write_checked(ev, 599, 346, 260)
        assert (written, bad) == (bad_at, True)
        assert w.written == 600 + bad_at
        got = _read_all(r)
        np.testing.assert_array_equal(got, ev[:bad_at])
        # the rest, once fixed, follows seamlessly
        rest = seq_events(600 + bad_at, 900 - bad_at)
        last = 599 + bad_at
        assert w.write_checked(rest, last, 346, 260) == (900 - bad_at, False)
        np.testing.assert_array_equal(_read_all(r), rest)
        assert r.lost == 0


def test_write_checked_live_write_larger_than_the_ring_checks_what_it_drops():
    with EventRing.create(100) as ring:
        w, r = ring.writer("live"), ring.reader()
        ev = seq_events(0, 250)
        ev[50]["t"] = 3                                 # in the part a live ring would drop
        assert w.write_checked(ev, -1, 346, 260) == (50, True)
        np.testing.assert_array_equal(_read_all(r), ev[:50])
        good = seq_events(0, 250)
        assert w.write_checked(good[50:], 49, 346, 260) == (200, False)
        got = _read_all(r)                              # the newest 100 (the rest lapped)
        np.testing.assert_array_equal(got, good[150:])
        assert r.lost == 100


def test_write_checked_lossless_timeout_is_not_a_bad_event():
    with EventRing.create(100) as ring:
        w, r = ring.writer("lossless"), ring.reader()
        assert w.write_checked(seq_events(0, 150), -1, 346, 260, timeout=0.01) == (100, False)
        assert len(_read_all(r)) == 100
        assert w.write_checked(seq_events(100, 50), 99, 346, 260, timeout=0.01) == (50, False)


# -- pages ---------------------------------------------------------------------------------------

def test_a_ring_larger_than_dev_shm_fails_at_creation():
    """The pages are reserved when the ring is made: no SIGBUS in a writer later, no leftovers."""
    before = {n for n in os.listdir("/dev/shm")}
    free = shutil.disk_usage("/dev/shm").free
    with pytest.raises(OSError) as err:
        EventRing.create(2 * free // EVENT_DTYPE.itemsize + (1 << 20))
    assert err.value.errno == errno.ENOSPC
    assert {n for n in os.listdir("/dev/shm")} == before


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_roles_map_their_pages_up_front():
    """A writer and a reader (each on its own mapping, as in two processes) fault the ring's
    pages in when they take their role, so the first pass through the ring takes no page
    faults (a 16 MiB ring is 4096 pages)."""
    cap = 1 << 20
    with EventRing.create(cap) as ring:
        other = EventRing.attach(ring.name)
        try:
            w = ring.writer("live")
            r = other.reader()
            ev = np.zeros(cap // 4, EVENT_DTYPE)
            ev["t"] = np.arange(len(ev))
            out = ev.copy()                     # (its own pages faulted in now)
            before = _minor_faults()
            for _ in range(4):
                w.write(ev)
                assert len(r.read(out=out)) == len(ev)
            assert _minor_faults() - before < 64
        finally:
            other.close()
    # what the check above would see without it: a fresh mapping faults on its first pass
    with EventRing.create(cap) as ring:
        other = EventRing.attach(ring.name)
        try:
            before = _minor_faults()
            other._words[::256] = 1
            assert _minor_faults() - before >= cap * 16 // 4096 // 2
        finally:
            other.close()


# -- /dev/shm cleanup --------------------------------------------------------------------------

@pytest.mark.parametrize("mode,sig", [("normal", None), ("with", signal.SIGINT),
                                      ("finally", signal.SIGINT), ("with", signal.SIGTERM),
                                      ("reading", signal.SIGINT), ("reading", signal.SIGTERM)])
def test_owner_unlinks_on_exit(mode, sig):
    recv_end, send_end = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_owner_proc, args=(mode, send_end))
    p.start()
    try:
        assert recv_end.poll(TIMEOUT), "the owner never announced its ring"
        name = recv_end.recv()
        if sig is not None:
            assert exists(name)
            os.kill(p.pid, sig)
        p.join(TIMEOUT)
    finally:
        if p.is_alive():
            p.kill()
    assert p.exitcode is not None and p.exitcode >= 0, "died by the signal: no finally ran"
    if sig == signal.SIGTERM:
        assert p.exitcode == 128 + signal.SIGTERM
    assert not exists(name)


def test_crashed_stages_owner_still_unlinks():
    with EventRing.create(1000) as ring:
        name = ring.name
        # one queue per process: a process killed inside a queue's lock would jam a shared one
        qs = [CTX.Queue() for _ in range(3)]
        procs = [CTX.Process(target=_idle_writer_proc, args=(name, qs[0], 10)),
                 CTX.Process(target=_idle_reader_proc, args=(name, qs[1])),
                 CTX.Process(target=_attach_and_exit_proc, args=(name, qs[2]))]
        try:
            for p in procs[:2]:
                p.start()
            assert qs[0].get(timeout=TIMEOUT) == 10
            assert qs[1].get(timeout=TIMEOUT) in range(ring.max_readers)
            for p in procs[:2]:
                os.kill(p.pid, signal.SIGKILL)
            for p in procs[:2]:
                p.join(TIMEOUT)
            assert [p.exitcode for p in procs[:2]] == [-signal.SIGKILL] * 2
            # a stage that attaches and exits normally does not take the ring with it either
            procs[2].start()
            assert qs[2].get(timeout=TIMEOUT) == 0
            procs[2].join(TIMEOUT)
            assert procs[2].exitcode == 0
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
        assert exists(name)
    assert not exists(name)


def _run_python(code: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """A fresh interpreter (its own resource tracker). With output captured, `run` returns only
    when every holder of the pipes, the tracker included, has exited: no waiting needed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_cpython_attach_bug_and_workaround():
    """CPython 3.11 (to 3.13 by default): a process that merely attaches with
    SharedMemory(name=...) unlinks the segment when it exits. EventRing.attach does not."""
    plain = SharedMemory(create=True, size=4096)
    name = plain.name.lstrip("/")
    try:
        res = _run_python(f"""
            from multiprocessing.shared_memory import SharedMemory
            SharedMemory(name={name!r}).close()
        """)
        assert res.returncode == 0, res.stderr
        assert not exists(name), "the bug is gone: shm._attach_untracked can be simplified"
        assert "leaked shared_memory" in res.stderr
    finally:
        plain.close()
        resource_tracker.unregister(plain._name, "shared_memory")   # it is already gone

    with EventRing.create(100) as ring:
        res = _run_python(f"""
            from evstream.stream.ring import EventRing
            ring = EventRing.attach({ring.name!r})
            r = ring.reader()
            r.read(timeout=0)
            ring.close()
        """)
        assert res.returncode == 0, res.stderr
        assert exists(ring.name)
        assert "leaked" not in res.stderr


def test_owner_killed_its_resource_tracker_unlinks():
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from evstream.stream.ring import EventRing
            ring = EventRing.create(100)
            print(ring.name, flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        name = proc.stdout.readline().strip()
        assert name and exists(name)
        proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)   # returns once the tracker has exited too
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not exists(name), err


def test_exit_on_sigterm_keeps_an_application_handler():
    def mine(signum, frame):
        pass

    before = signal.getsignal(signal.SIGTERM)
    old = signal.signal(signal.SIGTERM, mine)
    try:
        with EventRing.create(10):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)
    if before == signal.SIG_DFL:
        with EventRing.create(10):
            assert signal.getsignal(signal.SIGTERM) is shm._sigterm_to_exit
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_writer_loads_its_copy_kernel_when_it_takes_its_role():
    """The checked copy kernel is loaded (from Numba's cache) when the writer is made, for
    writable and read-only events, not at the first write: there it cost the pipeline's
    source 3-4.5 ms inside the stream. Run in a fresh process, where nothing loaded it yet."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from evstream.stream import ring as ring_mod
        from evstream.stream.ring import EventRing
        from evstream.types import EVENT_DTYPE
        r = EventRing.create(1 << 12)
        try:
            # making the ring (all the launcher does with it) loads no Numba
            before = "numba" in sys.modules
            w = r.writer("lossless")
            after = {str(s[0]) for s in ring_mod._copy_checked.signatures}
            ev = np.zeros(3, EVENT_DTYPE)
            w.write_checked(ev, 0, 4, 4)
            ev.flags.writeable = False
            w.write_checked(ev, 0, 4, 4)
            used = {str(s[0]) for s in ring_mod._copy_checked.signatures}
            print(before, len(after), used <= after)
            w.close()
        finally:
            r.close()
            r.unlink()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "2", "True"]
