"""Time and count windows: definitions, incremental == offline for any batch split, deadlines
(advance), end of stream, memory bound, the view/copy contract, and reuse_buffers (windows
valid until the next push, no allocation in steady state)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import random_events
from evstream.stream.window import Window, WindowSpec, Windower, windows_offline
from evstream.types import EVENT_DTYPE, make_events


def events_at(times_us, seed=0):
    rng = np.random.default_rng(seed)
    n = len(times_us)
    return make_events(times_us, rng.integers(0, 346, n), rng.integers(0, 260, n),
                       rng.integers(0, 2, n))


def bursty_events(n=3_000, seed=0):
    """Sorted events with bursts, repeated timestamps and long silent gaps."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 0, 1, 7, 40, 300, 90_000], size=n, p=[.2, .2, .2, .2, .1, .09, .01])
    return events_at(1_000_000 + np.cumsum(gaps), seed)


def summary(windows):
    return [(w.index, w.t0_us, w.t1_us, *(w.events[f].tolist() for f in "txyp"))
            for w in windows]


def stream(events, spec, batches, t0_us=None, advance=False):
    win = Windower(spec, t0_us=t0_us)
    out = []
    bounds = np.cumsum([0, *batches])
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        out += win.push(events[lo:hi])
        if advance and hi < len(events):
            # a promise the stream keeps: nothing earlier than the next event will come
            out += win.advance(int(events["t"][hi]))
    out += win.finish()
    return out, win


def splits(n, rng):
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(40, n - 1), replace=False))
    return {
        "one batch": [n],
        "one event each": [1] * n,
        "random": np.diff([0, *cuts, n]).tolist(),
        "with empty batches": [0, *np.diff([0, *cuts[:10], n]).tolist(), 0],
    }


SPECS = [
    WindowSpec(),
    WindowSpec(window_us=10_000),
    WindowSpec(window_us=10_000, stride_us=3_000),       # overlap
    WindowSpec(window_us=2_000, stride_us=7_000),        # gaps
    WindowSpec(window_us=370, stride_us=110),
    WindowSpec(mode="count", count=100),
    WindowSpec(mode="count", count=100, stride_count=30),
    WindowSpec(mode="count", count=20, stride_count=75),
    WindowSpec(mode="count", count=1),
]


# ---------------------------------------------------------------------------------------------
# definitions

def test_spec_defaults_and_validation():
    spec = WindowSpec()
    assert (spec.mode, spec.window_us, spec.stride, spec.length) == ("time", 50_000, 50_000,
                                                                     50_000)
    assert WindowSpec(mode="count", count=7).stride == 7
    for bad in ({"mode": "frames"}, {"window_us": 0}, {"stride_us": -5}, {"count": 0},
                {"window_us": 2.5}, {"stride_count": 0}):
        with pytest.raises(ValueError):
            WindowSpec(**bad)


def test_time_windows_are_half_open_and_anchored_at_the_first_event():
    ev = events_at([100, 120, 149, 150, 151, 260])
    ws = windows_offline(ev, WindowSpec(window_us=50))
    assert [(w.index, w.t0_us, w.t1_us) for w in ws] == [(0, 100, 150), (1, 150, 200),
                                                          (2, 200, 250), (3, 250, 300)]
    assert [list(w.events["t"]) for w in ws] == [[100, 120, 149], [150, 151], [], [260]]
    assert isinstance(ws[2], Window) and ws[2].events.dtype == EVENT_DTYPE   # empty is valid


def test_overlap_gaps_and_t0_alignment():
    ev = events_at([0, 5, 10, 15, 20, 25])
    ws = windows_offline(ev, WindowSpec(window_us=10, stride_us=5))
    assert [list(w.events["t"]) for w in ws] == [[0, 5], [5, 10], [10, 15], [15, 20], [20, 25],
                                                  [25]]
    ws = windows_offline(ev, WindowSpec(window_us=4, stride_us=10))
    assert [(w.t0_us, list(w.events["t"])) for w in ws] == [(0, [0]), (10, [10]), (20, [20])]
    ws = windows_offline(ev, WindowSpec(window_us=10), t0_us=-3)
    assert [(w.t0_us, list(w.events["t"])) for w in ws] == [(-3, [0, 5]), (7, [10, 15]),
                                                             (17, [20, 25])]
    ws = windows_offline(ev, WindowSpec(window_us=10), t0_us=12)        # earlier events: none
    assert [(w.index, w.t0_us, list(w.events["t"])) for w in ws] == [(0, 12, [15, 20]),
                                                                      (1, 22, [25])]


def test_count_windows():
    ev = events_at([3, 3, 4, 9, 12, 20, 21])
    ws = windows_offline(ev, WindowSpec(mode="count", count=3))
    assert [(w.t0_us, w.t1_us, len(w.events)) for w in ws] == [(3, 5, 3), (9, 21, 3),
                                                               (21, 22, 1)]
    ws = windows_offline(ev, WindowSpec(mode="count", count=3, stride_count=2))
    assert [list(w.events["t"]) for w in ws] == [[3, 3, 4], [4, 9, 12], [12, 20, 21], [21]]
    ws = windows_offline(ev, WindowSpec(mode="count", count=2, stride_count=4))
    assert [list(w.events["t"]) for w in ws] == [[3, 3], [12, 20]]


def test_nothing_in_nothing_out():
    empty = np.zeros(0, EVENT_DTYPE)
    for spec in SPECS:
        assert windows_offline(empty, spec) == []
        win = Windower(spec)
        assert win.push(empty) == [] and win.finish() == []


# ---------------------------------------------------------------------------------------------
# incremental == offline

SPLIT_CASES = [(spec, t0) for spec in SPECS
               for t0 in ([None, 990_000, 1_004_321] if spec.mode == "time" else [None])]


@pytest.mark.parametrize("spec,t0_us", SPLIT_CASES,
                         ids=[f"{s.mode}-{s.length}-{s.stride}-t0={t0}" for s, t0 in SPLIT_CASES])
def test_any_batch_split_gives_the_offline_windows(spec, t0_us):
    ev = bursty_events(2_000, seed=3)
    rng = np.random.default_rng(4)
    expected = summary(windows_offline(ev, spec, t0_us=t0_us))
    assert len(expected) >= 5
    for name, batches in splits(len(ev), rng).items():
        for advance in (False, True):
            got, win = stream(ev, spec, batches, t0_us=t0_us, advance=advance)
            assert summary(got) == expected, (name, advance)
            assert win.late_events == 0 and win.events_in == len(ev)


def test_real_recording_windows(realdata):
    dv = pytest.importorskip("dv_processing")
    rec = dv.io.MonoCameraRecording(str(realdata / "aedat4" / "davis346_aestream_davis.aedat4"))
    batches = []
    while (b := rec.getNextEventBatch()) is not None:
        batches.append(b.numpy().view(EVENT_DTYPE).copy())
    ev = np.concatenate(batches)
    ws = windows_offline(ev, WindowSpec())
    # MANIFEST.md: 117,667 events from ...690975950 to ...691105949 (0.130 s): 3 windows
    assert [w.t0_us for w in ws] == [1633953690975950 + k * 50_000 for k in range(3)]
    assert sum(len(w.events) for w in ws) == 117_667
    win = Windower(WindowSpec())
    got = [w for b in batches for w in win.push(b)]
    assert len(got) == 2                                  # the third is still open
    got += win.finish()
    assert summary(got) == summary(ws)


# ---------------------------------------------------------------------------------------------
# emission timing, deadlines, end of stream

def test_a_window_closes_only_when_a_later_event_arrives():
    win = Windower(WindowSpec(window_us=100))
    assert win.push(events_at([0, 50, 99])) == []
    assert win.push(events_at([99])) == []                # t=99 may still be followed by 99
    ws = win.push(events_at([100]))
    assert [(w.t0_us, len(w.events)) for w in ws] == [(0, 4)]
    ws = win.push(events_at([450]))                       # a silent gap: empty windows
    assert [(w.t0_us, len(w.events)) for w in ws] == [(100, 1), (200, 0), (300, 0)]
    assert [(w.t0_us, len(w.events)) for w in win.finish()] == [(400, 1)]
    assert win.finish() == []
    with pytest.raises(ValueError, match="after finish"):
        win.push(events_at([500]))


def test_advance_emits_windows_in_a_silent_scene():
    win = Windower(WindowSpec(window_us=50_000))
    assert win.advance(1_000_000) == []                   # nothing anchors the windows yet
    assert win.push(events_at([10, 20_000])) == []
    assert win.advance(49_999) == []
    ws = win.advance(50_010)                              # deadline passed: [10, 50010) closes
    assert [(w.t0_us, w.t1_us, len(w.events)) for w in ws] == [(10, 50_010, 2)]
    ws = win.advance(200_010)
    assert [(w.t0_us, len(w.events)) for w in ws] == [(50_010, 0), (100_010, 0),
                                                      (150_010, 0)]
    assert win.advance(100) == []                         # watermarks never go back
    # a late event (below the watermark) is counted, and still joins the open window
    ws = win.push(events_at([200_005, 210_000, 260_000]))
    assert win.late_events == 1
    assert [(w.t0_us, list(w.events["t"])) for w in ws] == [(200_010, [210_000])]
    assert [list(w.events["t"]) for w in win.finish()] == [[260_000]]


def test_advance_with_an_explicit_anchor_and_no_events():
    win = Windower(WindowSpec(window_us=10), t0_us=100)
    ws = win.advance(135)
    assert [(w.index, w.t0_us, len(w.events)) for w in ws] == [(0, 100, 0), (1, 110, 0),
                                                               (2, 120, 0)]
    assert win.finish() == []


def test_count_windows_ignore_advance_and_finish_with_partials():
    win = Windower(WindowSpec(mode="count", count=4, stride_count=2))
    assert win.push(events_at([1, 2, 3])) == []
    assert win.advance(10**12) == []
    ws = win.push(events_at([4, 5]))
    assert [list(w.events["t"]) for w in ws] == [[1, 2, 3, 4]]
    assert [list(w.events["t"]) for w in win.finish()] == [[3, 4, 5], [5]]


def test_bad_input():
    win = Windower(WindowSpec())
    win.push(events_at([10, 20]))
    with pytest.raises(ValueError, match="back in time"):
        win.push(events_at([15]))
    other = np.zeros(1, [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    other["t"] = 30
    with pytest.raises(ValueError, match="dtype"):
        win.push(other)


# ---------------------------------------------------------------------------------------------
# memory and views

def test_memory_stays_bounded():
    spec = WindowSpec(window_us=50_000, stride_us=25_000)
    win = Windower(spec)
    ev = random_events(400_000, duration_us=10_000_000, seed=5)      # 40 events per ms
    per_window = 50_000 * 40 / 1000
    batch = 1_000
    peak = 0
    n_windows = 0
    for lo in range(0, len(ev), batch):
        n_windows += len(win.push(ev[lo:lo + batch]))
        peak = max(peak, win.buffered_events)
        assert win.buffered_events <= 1.3 * per_window + batch
        assert len(win._buf.arr) <= 2 * (1.3 * per_window + 2 * batch) + 4096
    n_windows += len(win.finish())
    assert n_windows == len(windows_offline(ev, spec))
    assert peak > per_window / 2


def test_views_are_read_only_and_never_change():
    ev = bursty_events(30_000, seed=6)
    spec = WindowSpec(window_us=5_000, stride_us=2_000)
    win = Windower(spec)
    held = []
    buffers = set()
    for lo in range(0, len(ev), 97):
        batch = ev[lo:lo + 97].copy()
        for w in win.push(batch):
            held.append((w, w.events.copy()))
        batch["x"] = 0                                    # the caller reuses its array
        buffers.add(id(win._buf.arr))
    held += [(w, w.events.copy()) for w in win.finish()]
    assert len(held) > 500 and len(buffers) > 3           # the buffer did move on
    for w, snapshot in held:                              # after buffer growth and compaction
        assert not w.events.flags.writeable
        np.testing.assert_array_equal(w.events, snapshot)
    assert summary([w for w, _ in held]) == summary(windows_offline(ev, spec))


# ---------------------------------------------------------------------------------------------
# reuse_buffers=True: windows valid until the next push, no allocation in steady state

def stream_consuming(events, spec, batches, t0_us=None, advance=False):
    """stream() with reuse_buffers=True, copying each window's events out as soon as it is
    emitted (all that mode promises). Also counts how the buffer moved: compactions into the
    spare array, and moves into a freshly allocated (larger) one."""
    win = Windower(spec, t0_us=t0_us, reuse_buffers=True)
    out = []
    into_spare = into_new = 0
    arr = spare = None
    bounds = np.cumsum([0, *batches])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out += summary(win.push(events[lo:hi]))
        if win._buf.arr is not arr:
            if arr is not None:
                if win._buf.arr is spare:
                    into_spare += 1
                else:
                    into_new += 1
            arr, spare = win._buf.arr, win._buf.spare
        if advance and hi < len(events):
            out += summary(win.advance(int(events["t"][hi])))
    out += summary(win.finish())
    return out, win, into_spare, into_new


REUSE_CASES = [(WindowSpec(window_us=5_000, stride_us=2_000), None),
               (WindowSpec(window_us=200_000, stride_us=50_000), 990_000),
               (WindowSpec(mode="count", count=1000, stride_count=300), None),
               (WindowSpec(mode="count", count=50, stride_count=700), None)]


@pytest.mark.parametrize("spec,t0_us", REUSE_CASES,
                         ids=[f"{s.mode}-{s.length}-{s.stride}-t0={t0}" for s, t0 in REUSE_CASES])
def test_reused_buffers_consumed_at_once_give_the_offline_windows(spec, t0_us):
    ev = bursty_events(30_000, seed=9)
    n = len(ev)
    expected = summary(windows_offline(ev, spec, t0_us=t0_us))
    cases = splits(n, np.random.default_rng(10))
    ramp = [int(16 * 1.5 ** k) for k in range(16)]         # each batch larger: the buffer grows
    cases["growing batches"] = [*ramp, n - sum(ramp)]
    cases["steady batches"] = [97] * (n // 97) + [n % 97]
    into_spare = into_new = 0
    for name, batches in cases.items():
        for advance in (False, True):
            got, win, spare, new = stream_consuming(ev, spec, batches, t0_us, advance)
            assert got == expected, (name, advance)
            assert win.late_events == 0 and win.events_in == n
            into_spare += spare
            into_new += new
    # the splits did exercise both paths, many times: compaction into the spare array and
    # growth into a fresh one
    assert into_spare >= 25 and into_new >= 10, (into_spare, into_new)


@pytest.mark.parametrize("reuse", [True, False])
def test_reused_buffers_stop_allocating_in_steady_state(reuse):
    """After warm-up, pushes at a steady rate only alternate between the same two arrays and
    allocate nothing buffer-sized (tracemalloc sees numpy's data allocations). Without
    reuse_buffers every compaction allocates: the same measurement fails."""
    spec = WindowSpec(window_us=50_000, stride_us=25_000)
    win = Windower(spec, reuse_buffers=reuse)
    ev = random_events(800_000, duration_us=20_000_000, seed=8)      # 40 events per ms
    batches = [ev[lo:lo + 1_000] for lo in range(0, len(ev), 1_000)]
    for b in batches[:250]:                               # warm-up: the buffers reach their size
        win.push(b)
    seen = [win._buf.arr, win._buf.spare]      # kept alive, so identities are not recycled
    buffer_bytes = win._buf.arr.nbytes
    moves = new_arrays = n_windows = 0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for b in batches[250:]:
            prev = win._buf.arr
            for w in win.push(b):
                n_windows += 1
                assert len(w.events) > 1_500              # consumed here, before the next push
            moves += win._buf.arr is not prev
            if not any(win._buf.arr is a for a in seen):
                seen.append(win._buf.arr)
                new_arrays += 1
        peak_bytes = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert n_windows > 200 and moves > 50                 # the buffer did compact, often
    if reuse:
        # the two arrays alternate; a new peak in window size may grow them once (two arrays)
        assert new_arrays <= 2, new_arrays
        assert peak_bytes < 4 * buffer_bytes, (peak_bytes, buffer_bytes)
    else:
        assert new_arrays > 50 and peak_bytes > buffer_bytes


def test_offline_windows_are_views_into_the_input():
    ev = random_events(10_000, duration_us=200_000, seed=7)
    for spec in (WindowSpec(), WindowSpec(mode="count", count=999)):
        ws = windows_offline(ev, spec)
        assert all(np.shares_memory(w.events, ev) for w in ws if len(w.events))
        assert all(not w.events.flags.writeable for w in ws)
        assert sum(len(w.events) for w in ws) == len(ev)


def test_open_window_is_a_growing_prefix_of_the_emitted_window():
    ev = bursty_events(4_000, seed=5)
    spec = WindowSpec(window_us=5_000, stride_us=3_000)
    assert Windower(spec).open_window() is None                     # not anchored yet
    assert Windower(WindowSpec(mode="count", count=10)).open_window() is None
    win = Windower(spec, reuse_buffers=True)
    seen: dict[int, np.ndarray] = {}
    emitted = []
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(ev)), 300, replace=False))
    for lo, hi in zip([0, *cuts], [*cuts, len(ev)]):
        for w in win.push(ev[lo:hi]):
            if w.index in seen:                # what was open is a prefix of what closed
                assert np.array_equal(w.events[:len(seen[w.index])], seen[w.index])
            emitted.append((w.index, w.events.copy()))
        ow = win.open_window()
        assert ow.index == win.next_index and not ow.events.flags.writeable
        assert ow.t1_us - ow.t0_us == 5_000
        assert ((ow.events["t"] >= ow.t0_us) & (ow.events["t"] < ow.t1_us)).all()
        if ow.index in seen:
            assert len(ow.events) >= len(seen[ow.index])
        seen[ow.index] = ow.events.copy()
    win.finish()
    assert win.open_window() is None
    offline = windows_offline(ev, spec)
    assert [i for i, _ in emitted] == [w.index for w in offline[:len(emitted)]]


@pytest.mark.parametrize("spec", [WindowSpec(window_us=10_000),
                                  WindowSpec(window_us=10_000, stride_us=3_000),
                                  WindowSpec(window_us=2_000, stride_us=7_000),
                                  WindowSpec(mode="count", count=100, stride_count=30)])
@pytest.mark.parametrize("reuse", [False, True])
def test_push_reserved_equals_push(spec, reuse):
    """Writing batches into reserve()'s room (also not at its start, as a ring read cut in
    front leaves them) gives exactly the windows of push / windows_offline."""
    ev = bursty_events(3_000, seed=4)
    rng = np.random.default_rng(1)
    win = Windower(spec, reuse_buffers=reuse)
    got = []
    cuts = np.sort(rng.choice(np.arange(1, len(ev)), 60, replace=False))
    for lo, hi in zip([0, *cuts], [*cuts, len(ev)]):
        n = hi - lo
        shift = int(rng.integers(0, 3))
        room = win.reserve(n + shift + int(rng.integers(0, 50)))
        assert room.flags.writeable and room.dtype == EVENT_DTYPE
        room[shift:shift + n] = ev[lo:hi]
        got += [(w.index, w.t0_us, w.t1_us, w.events.copy())
                for w in win.push_reserved(room[shift:shift + n])]
    got += [(w.index, w.t0_us, w.t1_us, w.events.copy()) for w in win.finish()]
    want = windows_offline(ev, spec)
    assert [g[:3] for g in got] == [(w.index, w.t0_us, w.t1_us) for w in want]
    assert all(np.array_equal(g[3], w.events) for g, w in zip(got, want))
    assert win.events_in == len(ev)
    with pytest.raises(ValueError, match="reserve"):
        win.reserve(10)                                     # after finish


def test_push_reserved_refuses_foreign_arrays_and_keeps_checks():
    win = Windower(WindowSpec(window_us=1_000))
    ev = events_at([10, 20, 30])
    with pytest.raises(ValueError, match="room given by reserve"):
        win.push_reserved(ev)                               # not the windower's memory
    room = win.reserve(8)
    room[:3] = ev
    assert win.push_reserved(room[:3]) == []
    room = win.reserve(8)
    room[:2] = events_at([5, 6])
    with pytest.raises(ValueError, match="back in time"):
        win.push_reserved(room[:2])
    assert win.buffered_events == 3                         # nothing of the bad batch kept


@pytest.mark.parametrize("reuse", [False, True])
def test_preallocated_buffers_give_the_same_windows(reuse):
    ev = bursty_events(3_000, seed=6)
    spec = WindowSpec(window_us=10_000)
    win = Windower(spec, reuse_buffers=reuse, capacity_events=256)   # small: it must grow too
    assert win._buf.arr is not None and len(win._buf.arr) == 256
    got = []
    for lo in range(0, len(ev), 97):
        got += [(w.index, w.events.copy()) for w in win.push(ev[lo:lo + 97])]
    got += [(w.index, w.events.copy()) for w in win.finish()]
    want = windows_offline(ev, spec)
    assert [g[0] for g in got] == [w.index for w in want]
    assert all(np.array_equal(g[1], w.events) for g, w in zip(got, want))
    # a stream of another dtype drops the preallocated EVENT_DTYPE buffer
    other = np.zeros(len(ev), [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1"),
                               ("extra", "<f4")])
    for f in "txyp":
        other[f] = ev[f]
    win = Windower(spec, reuse_buffers=reuse, capacity_events=4096)
    out = win.push(other) + win.finish()
    assert [len(w.events) for w in out] == [len(w.events) for w in want]
    assert all(w.events.dtype == other.dtype for w in out)
