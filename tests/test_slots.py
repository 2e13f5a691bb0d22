"""Shared-memory window slots (evstream/stream/slots.py) and their wire form (wire.py `slot`):
round trips, the seqlock (a reused slot is never read torn), lossless waiting and a consumer
that dies, bad references, and real processes on real ipc sockets."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import zmq

from evstream.stream import slots as slots_mod
from evstream.stream import wire
from evstream.stream.slots import SlotWriter, StaleSlot, WindowSlots

SHAPE = (3, 20, 30)
NBYTES = int(np.prod(SHAPE)) * 4


@pytest.fixture
def seg():
    s = WindowSlots.create(4, NBYTES)
    yield s
    s.close()
    s.unlink()


def _fill(writer: SlotWriter, value: float) -> dict:
    i = writer.acquire(timeout=1.0)
    writer.array(i, SHAPE)[:] = value
    return writer.publish(i)


def _read(ref: dict) -> np.ndarray:
    return slots_mod.read_slot(ref, np.dtype(np.float32), SHAPE)


def test_round_trip_and_layout(seg):
    assert seg.slot_bytes % 4096 == 0 and seg.slot_bytes >= NBYTES and seg.n_slots == 4
    assert os.path.exists(f"/dev/shm/{seg.name}") and seg.name.startswith("evstream_")
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=False)
    refs = [_fill(w, float(k)) for k in range(3)]
    assert [r["index"] for r in refs] == [0, 1, 2] and all(r["gen"] == 2 for r in refs)
    for k, ref in enumerate(refs):
        a = _read(ref)
        assert a.shape == SHAPE and a.dtype == np.float32 and np.all(a == k)
    a = _read(refs[0])          # a private copy: later writes do not change it
    _fill(w, 9.0), _fill(w, 9.0)          # slots 3 and 0 (round robin)
    assert np.all(a == 0)


def test_live_writer_reuses_the_oldest_slot_and_a_stale_read_is_refused(seg):
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=False)
    first = _fill(w, 1.0)
    for k in range(4):                    # laps the 4 slots: slot 0 is written again
        _fill(w, 2.0 + k)
    with pytest.raises(StaleSlot):
        _read(first)
    # mid-write (odd generation) a reader is refused too, never handed a half-written tensor
    i = w.acquire(timeout=0)
    assert i == 1
    with pytest.raises(StaleSlot):
        slots_mod.read_slot({"name": seg.name, "index": 1, "gen": 4}, np.dtype(np.float32), SHAPE)
    w.discard(i)


def test_lossless_writer_waits_for_the_reader(seg):
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=True)
    refs = [_fill(w, float(k)) for k in range(4)]
    t0 = time.monotonic()
    assert w.acquire(timeout=0.05) is None              # every slot holds an unread window
    assert time.monotonic() - t0 >= 0.05
    assert np.all(_read(refs[0]) == 0)                   # reading slot 0 frees it
    assert w.acquire(timeout=0) == 0
    w.discard(0)
    assert np.all(_read(refs[1]) == 1)


def test_lossless_wait_ends_when_the_consumer_dies(seg):
    """A consumer holds a lock while it lives; a lossless writer waiting for windows it will
    never read (it was killed) reclaims them instead of waiting forever."""
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=True)
    for k in range(4):
        _fill(w, float(k))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_consumer_that_hangs, args=(seg.name, ready))
    p.start()
    try:
        assert ready.wait(30)
        assert w.acquire(timeout=0.1) is None            # alive: the writer keeps waiting
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert w.acquire(timeout=5.0) is not None
        assert w.reclaimed == 4
    finally:
        if p.is_alive():
            p.kill()


def _consumer_that_hangs(name, ready):
    slots_mod.prepare_consumer(name)
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("ref, what", [
    ({"name": "evstream_no_such_segment_w", "index": 0, "gen": 2}, "no shared memory"),
    ({"name": "psm_12345", "index": 0, "gen": 2}, "not an evstream window slot"),
    ({"name": "../etc/passwd", "index": 0, "gen": 2}, "not an evstream window slot"),
])
def test_bad_references_are_malformed_not_fatal(ref, what):
    stats = wire.WireStats()
    msg = wire.Message(b"w", {"buffers": [{"dtype": "<f4", "shape": list(SHAPE)}],
                              "meta": {}}, [], slot=ref)
    assert not wire.resolve(msg, stats)
    assert stats.malformed == 1 and what in stats.last_error


def test_out_of_range_references_are_malformed(seg):
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=False)
    ref = _fill(w, 1.0)
    stats = wire.WireStats()
    for bad_ref, shape in ((dict(ref, index=4), SHAPE), (dict(ref, index=-1), SHAPE),
                           (ref, (3, 200, 300))):
        msg = wire.Message(b"w", {"buffers": [{"dtype": "<f4", "shape": list(shape)}],
                                  "meta": {}}, [], slot=bad_ref)
        assert not wire.resolve(msg, stats)
    assert stats.malformed == 3 and "outside window slots" in stats.last_error


def test_not_a_slot_segment_is_refused():
    from evstream.stream.ring import EventRing

    ring = EventRing.create(1024, name=f"evstream_{os.getpid()}_notslots")
    try:
        with pytest.raises(ValueError, match="not evstream window slots"):
            WindowSlots.attach(ring.name)
    finally:
        ring.close()
        ring.unlink()


# -- real processes over ipc ---------------------------------------------------------------------

def _sender(url, name, n, lossless, period_s):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(url)
    w = SlotWriter(WindowSlots.attach(name), lossless)
    for k in range(n):
        i = w.acquire(timeout=None)
        w.array(i, SHAPE)[:] = k
        ref = w.publish(i)
        wire.send(sock, b"window", {"kind": "window", "seq": k, "meta": {"events": 10}},
                  [w.array(i, SHAPE)], slot=ref)
        if period_s:
            time.sleep(period_s)
    wire.send(sock, b"window", {"kind": "control", "meta": {"eos": True}}, [])
    sock.close(linger=5000)
    ctx.term()


@pytest.mark.parametrize("lossless", [True, False], ids=["lossless", "live"])
def test_cross_process_every_window_intact(tmp_path, seg, lossless):
    """A sender process publishes 200 windows (window k filled with k) through 4 slots while
    this process reads slowly. Lossless: all 200 arrive, in order. Live: the sender never
    waits, so some are overwritten and counted; every window that does arrive is whole."""
    url = wire.ipc_endpoint(tmp_path / "w")
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.bind(url)
    slots_mod.prepare_consumer(seg.name)
    n = 200
    p = mp.get_context("spawn").Process(target=_sender, args=(url, seg.name, n, lossless, 0))
    p.start()
    stats = wire.WireStats()
    seqs = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the end of stream never came"
            before = stats.overwritten
            msgs, stale = wire.drain(pull, stats, lossless=True, first_timeout_ms=20_000)
            assert msgs or stats.overwritten > before, "nothing arrived"
            done = False
            for m in msgs:
                if m.header["kind"] == "control":
                    done = True
                    continue
                k = m.header["seq"]
                a = m.arrays[0]
                assert a.shape == SHAPE and np.all(a == k), f"window {k} torn or wrong"
                seqs.append(k)
                time.sleep(0.002)            # a slow consumer
            if done:
                break
        p.join(10)
        assert p.exitcode == 0
    finally:
        pull.close()
        if p.is_alive():
            p.kill()
    assert seqs == sorted(seqs)
    if lossless:
        assert seqs == list(range(n)) and stats.overwritten == 0
    else:
        assert stats.overwritten > 0 and len(seqs) + stats.overwritten == n
        assert stats.overwritten_events == 10 * stats.overwritten


def test_zero_copy_view_is_checked_after_use(seg):
    """resolve(copy=False) hands out a view into the slot; finish() says whether the window
    was still intact when the consumer was done (a live writer may have reused the slot)."""
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=True)
    stats = wire.WireStats()

    def message(ref):
        return wire.Message(b"w", {"buffers": [{"dtype": "<f4", "shape": list(SHAPE)}],
                                   "meta": {"events": 5}}, [], slot=ref)

    m = message(_fill(w, 3.0))
    assert wire.resolve(m, stats, copy=False) and m.slot is not None
    view = m.arrays[0]
    assert not view.flags.writeable and not view.flags.owndata and np.all(view == 3)
    assert wire.finish(m, stats) and stats.overwritten == 0
    # released: a lossless writer may take every slot again without waiting
    for _ in range(3):
        _fill(w, 0.0)
    i = w.acquire(timeout=0)
    assert i is not None
    w.discard(i)

    live = SlotWriter(WindowSlots.attach(seg.name), lossless=False)
    m = message(_fill(live, 4.0))
    assert wire.resolve(m, stats, copy=False)
    for k in range(4):                                   # laps the slots while "in use"
        _fill(live, 9.0)
    assert not wire.finish(m, stats)
    assert (stats.overwritten, stats.overwritten_events) == (1, 5)


def test_lossless_writer_reuses_the_lowest_free_slot(seg):
    """A lossless writer whose consumer keeps up cycles through the same slot (cache-warm); a
    consumer that holds windows back makes it move on, and once every slot is published it
    waits for the oldest. A live writer always goes round robin."""
    w = SlotWriter(WindowSlots.attach(seg.name), lossless=True)
    used = []
    for k in range(6):                              # each window read before the next
        ref = _fill(w, float(k))
        used.append(ref["index"])
        assert np.all(_read(ref) == k)
    assert used == [0] * 6
    held = [_fill(w, 1.0) for _ in range(4)]        # nobody reads: 0, 1, 2, 3
    assert [r["index"] for r in held] == [0, 1, 2, 3]
    assert w.acquire(timeout=0) is None             # all published, none released
    _read(held[2])                                  # a later one released first: taken
    assert w.acquire(timeout=0) == 2
    w.discard(2)
    w.acquire(timeout=0)                            # (2 again) all four held or published
    import threading
    t = threading.Timer(0.05, lambda: _read(held[1]))
    t.start()                                       # released while the writer waits: taken,
    assert w.acquire(timeout=2.0) == 1              # though the round robin is at slot 3
    t.join()

    live = SlotWriter(WindowSlots.attach(seg.name), lossless=False)
    order = []
    for _ in range(5):
        ref = _fill(live, 0.0)
        order.append(ref["index"])
        _read(ref)
    assert order[1:] == [(order[0] + k) % 4 for k in range(1, 5)]


def _minor_faults() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_writer_and_consumer_map_every_slot_up_front():
    """The launcher writes the pages once at create(); the window stage (SlotWriter) and the
    consumer (prepare_consumer) map them when they start, so filling and reading every slot
    afterwards takes no page faults. 8 slots of a 346x260 voxel grid, B = 5: 3,520 pages."""
    shape = (5, 260, 346)
    nbytes = int(np.prod(shape)) * 4
    pages = 8 * (-(-nbytes // 4096))
    owner = WindowSlots.create(8, nbytes)
    try:
        # pages the launcher wrote are mapped 16 to a fault (only reserved: one each)
        probe = WindowSlots.attach(owner.name)
        before = _minor_faults()
        probe.map_all()
        assert _minor_faults() - before < pages // 4
        probe.close()
        writer = SlotWriter(WindowSlots.attach(owner.name), lossless=False)
        slots_mod.prepare_consumer(owner.name)
        before = _minor_faults()
        refs = []
        for k in range(8):
            i = writer.acquire(timeout=1.0)
            writer.array(i, shape)[:] = float(k)
            refs.append(writer.publish(i))
        for k, ref in enumerate(refs):
            view = slots_mod.read_slot(ref, np.dtype(np.float32), shape, copy=False)
            assert float(view[-1, -1, -1]) == float(k)
            slots_mod.release_slot(ref)
        assert _minor_faults() - before < 64
        # without it: a fresh mapping of the same slots faults on every page it writes
        fresh = WindowSlots.attach(owner.name)
        try:
            before = _minor_faults()
            for i in range(8):
                fresh.data(i, nbytes)[::4096] = 1
            assert _minor_faults() - before >= pages // 2
        finally:
            fresh.close()
        writer.slots.close()
    finally:
        for name in list(slots_mod._attached):
            slots_mod._attached.pop(name).close()
        owner.close()
        owner.unlink()
