"""Representations: every Numba kernel equals its numpy reference, and both follow the contract.

The registry drives the generic tests: each registered representation, with each of its
`test_params`, is checked on random input and on edge cases (empty, one event, dT = 0, border
pixels, bool/uint8/int8 polarity, other layouts), for input immutability, `out` reuse, and
bad input. Representation-specific tests pin the definitions (E2VID's formula transcribed
independently, channel order, decay values, dv-processing's TimeSurface on a real recording).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import random_events
from evstream.errors import EvstreamError
from evstream.represent import (NEVER_US, get_representation, histogram, histogram_numpy,
                                last_timestamps, last_timestamps_numpy, list_representations,
                                register_representation, time_surface, time_surface_numpy,
                                voxel_grid, voxel_grid_numpy)
from evstream.types import EVENT_DTYPE, concat_events, make_events

H, W = 26, 34          # small sensor: dense voxels, fast tests
RTOL = ATOL = 1e-5     # float32 rounding, see voxel.py / timesurface.py

CASES = [(name, params) for name in list_representations()
         for params in get_representation(name).test_params]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p in CASES]


def both(name, params, events, height=H, width=W):
    rep = get_representation(name)
    fast = rep.compute(events, height, width, **params)
    ref = rep.compute_numpy(events, height, width, **params)
    assert fast.dtype == np.float32 and ref.dtype == np.float32
    assert fast.shape == ref.shape == (rep.channels(**params), height, width)
    return fast, ref


def assert_same(fast, ref):
    np.testing.assert_allclose(fast, ref, rtol=RTOL, atol=ATOL)


def relayout(ev, p_dtype=None, xy_dtype=None, packed_order=False):
    """The same events in another structured dtype (field order, types, extra fields)."""
    fields = [("t", "<i8"), ("x", xy_dtype or "<u2"), ("y", xy_dtype or "<u2"),
              ("p", p_dtype or "i1")]
    if packed_order:
        fields = [("p", fields[3][1]), ("extra", "<f4"), ("y", fields[2][1]),
                  ("x", fields[1][1]), ("t", "<i8")]
    out = np.zeros(len(ev), dtype=fields)
    for f in "txy":
        out[f] = ev[f]
    out["p"] = ev["p"] > 0
    return out


# ---------------------------------------------------------------------------------------------
# registry

def test_registry_lists_the_representations():
    assert {"voxel", "histogram", "histogram_max", "timesurface"} <= set(list_representations())
    for name in list_representations():
        assert get_representation(name).name == name


def test_unknown_representation_is_a_one_line_user_error():
    with pytest.raises(EvstreamError) as err:
        get_representation("voxels")
    assert "voxels" in str(err.value) and "voxel" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        get_representation("nope")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        @register_representation("voxel")
        class Again:
            requires_sorted = False

            def channels(self):
                return 1

            def compute(self, events, height, width, out=None):
                return out

            compute_numpy = compute


# ---------------------------------------------------------------------------------------------
# every registered representation

@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("n,seed", [(1, 1), (7, 2), (5_000, 3), (40_000, 4)])
def test_numba_equals_numpy_on_random_events(name, params, n, seed):
    ev = random_events(n, width=W, height=H, t0=123_456, duration_us=50_000, seed=seed)
    assert_same(*both(name, params, ev))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_empty_window_gives_zeros(name, params):
    fast, ref = both(name, params, np.zeros(0, EVENT_DTYPE))
    assert not fast.any() and not ref.any()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_all_events_at_one_timestamp(name, params):
    ev = random_events(500, width=W, height=H, seed=5)
    ev["t"] = 77
    fast, ref = both(name, params, ev)
    assert_same(fast, ref)
    assert np.isfinite(fast).all()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_border_pixels(name, params):
    ev = make_events([10, 20, 30, 40, 40], [W - 1, 0, W - 1, 0, W - 1], [H - 1, H - 1, 0, 0, 0],
                     [1, 0, 1, 1, 1])
    fast, ref = both(name, params, ev)
    assert_same(fast, ref)
    touched = np.abs(fast).sum(axis=0) != 0
    assert touched[H - 1, W - 1] and touched[0, W - 1] and touched[H - 1, 0]


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("layout", [
    {"p_dtype": "?"}, {"p_dtype": "u1"}, {"p_dtype": "i1"},
    {"xy_dtype": "<i4"}, {"xy_dtype": "<i8", "p_dtype": "?"},
    {"packed_order": True}, {"packed_order": True, "p_dtype": "?"},
], ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_other_layouts_give_the_same_result(name, params, layout):
    ev = random_events(3_000, width=W, height=H, seed=6)
    base = get_representation(name).compute(ev, H, W, **params)
    other = relayout(ev, **layout)
    fast, ref = both(name, params, other)
    np.testing.assert_array_equal(fast, base)
    assert_same(fast, ref)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_minus_one_plus_one_polarity_and_strided_views(name, params):
    ev = random_events(6_000, width=W, height=H, seed=7)
    signed = relayout(ev, p_dtype="i1")
    signed["p"] = np.where(ev["p"] > 0, 1, -1)
    rep = get_representation(name)
    np.testing.assert_array_equal(rep.compute(signed, H, W, **params),
                                  rep.compute(ev, H, W, **params))
    view = ev[::3]                                       # non-contiguous input
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(rep.compute(view, H, W, **params),
                                  rep.compute(view.copy(), H, W, **params))
    assert_same(*both(name, params, view))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_input_is_never_modified(name, params):
    for p_dtype in ("i1", "?", "u1"):
        ev = relayout(random_events(2_000, width=W, height=H, seed=8), p_dtype=p_dtype)
        before = ev.tobytes()
        ev.flags.writeable = False            # a write attempt would raise, not only differ
        both(name, params, ev)
        assert ev.tobytes() == before


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_out_is_zeroed_filled_and_returned(name, params):
    rep = get_representation(name)
    shape = (rep.channels(**params), H, W)
    ev1 = random_events(3_000, width=W, height=H, seed=9)
    ev2 = random_events(50, width=W, height=H, seed=10)
    out = np.full(shape, 7.0, np.float32)
    for compute in (rep.compute, rep.compute_numpy):
        for ev in (ev1, ev2, ev1[:0]):
            got = compute(ev, H, W, out=out, **params)
            assert got is out
            np.testing.assert_array_equal(out, compute(ev, H, W, **params))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("bad", ["shape", "dtype", "fortran", "readonly", "list"])
def test_bad_out_is_refused(name, params, bad):
    rep = get_representation(name)
    shape = (rep.channels(**params), H, W)
    out = {"shape": lambda: np.zeros((shape[0], H, W + 1), np.float32),
           "dtype": lambda: np.zeros(shape, np.float64),
           "fortran": lambda: np.zeros(shape, np.float32, order="F"),
           "readonly": lambda: np.zeros(shape, np.float32),
           "list": lambda: [[0.0]]}[bad]()
    if bad == "readonly":
        out.flags.writeable = False
    ev = random_events(10, width=W, height=H)
    for compute in (rep.compute, rep.compute_numpy):
        with pytest.raises(ValueError):
            compute(ev, H, W, out=out, **params)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("where", ["x=W", "y=H", "x=-1", "y=-1", "first", "last"])
def test_events_outside_the_sensor_raise(name, params, where):
    ev = relayout(random_events(100, width=W, height=H, seed=11), xy_dtype="<i4")
    i = {"first": 0, "last": 99}.get(where, 50)
    if where in ("x=W", "first"):
        ev["x"][i] = W
    elif where in ("y=H", "last"):
        ev["y"][i] = H
    elif where == "x=-1":
        ev["x"][i] = -1
    else:
        ev["y"][i] = -1
    rep = get_representation(name)
    guard = np.zeros((rep.channels(**params) + 2, H, W), np.float32)
    out = guard[1:-1]                                     # a write past the end would show here
    for compute in (rep.compute, rep.compute_numpy):
        with pytest.raises(ValueError, match=f"event {i} .*outside the {W}x{H} sensor"):
            compute(ev, H, W, out=out, **params)
    assert not guard[0].any() and not guard[-1].any()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_unsorted_events(name, params):
    ev = random_events(1_000, width=W, height=H, seed=12)
    ev["t"][500], ev["t"][501] = ev["t"][501] + 10, ev["t"][500]
    rep = get_representation(name)
    if rep.requires_sorted:
        for compute in (rep.compute, rep.compute_numpy):
            with pytest.raises(ValueError, match="not sorted"):
                compute(ev, H, W, **params)
    else:
        assert_same(*both(name, params, ev))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_events_without_the_fields_are_refused(name, params):
    rep = get_representation(name)
    for bad in (np.zeros((5, 4)), np.zeros(5, [("t", "<i8"), ("x", "<u2"), ("y", "<u2")]),
                np.zeros(5, [("t", "<f8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")]),
                np.zeros(5, [("t", "<i8"), ("x", "<f4"), ("y", "<u2"), ("p", "i1")])):
        for compute in (rep.compute, rep.compute_numpy):
            with pytest.raises(ValueError):
                compute(bad, H, W, **params)


# ---------------------------------------------------------------------------------------------
# voxel grid

def e2vid_transcription(ev, num_bins, height, width):
    """E2VID's events_to_voxel_grid as its README states it, on an (N, 4) float64 array
    [t, x, y, p] (written here from the definition, independently of voxel.py)."""
    rows = np.stack([ev["t"].astype(np.float64), ev["x"], ev["y"], ev["p"]], axis=1)
    grid = np.zeros(num_bins * height * width, np.float32)
    first, last = rows[0, 0], rows[-1, 0]
    span = (last - first) or 1.0
    rows[:, 0] = (num_bins - 1) * (rows[:, 0] - first) / span
    pol = rows[:, 3].copy()
    pol[pol == 0] = -1
    whole = rows[:, 0].astype(int)
    part = rows[:, 0] - whole
    flat_pix = rows[:, 1].astype(int) + rows[:, 2].astype(int) * width
    keep = whole < num_bins
    np.add.at(grid, flat_pix[keep] + whole[keep] * height * width, (pol * (1 - part))[keep])
    keep = whole + 1 < num_bins
    np.add.at(grid, flat_pix[keep] + (whole[keep] + 1) * height * width, (pol * part)[keep])
    return grid.reshape(num_bins, height, width)


@pytest.mark.parametrize("num_bins", [1, 2, 5, 9])
@pytest.mark.parametrize("seed", [0, 1])
def test_voxel_matches_e2vid_definition(num_bins, seed):
    # t relative to the start so float64 rows hold timestamps exactly, as in E2VID's inputs
    ev = random_events(20_000, width=W, height=H, t0=1_000, duration_us=30_000, seed=seed)
    expected = e2vid_transcription(ev, num_bins, H, W)
    np.testing.assert_allclose(voxel_grid_numpy(ev, num_bins, H, W), expected, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(voxel_grid(ev, num_bins, H, W), expected, rtol=RTOL, atol=ATOL)


def test_voxel_worked_example():
    # B = 3, t_first = 100, t_last = 300: tau = (t - 100) / 100
    ev = make_events([100, 150, 250, 300], [0, 1, 1, 2], [0, 0, 0, 1], [1, 0, 1, 1])
    v = voxel_grid(ev, 3, 2, 3)
    expected = np.zeros((3, 2, 3), np.float32)
    expected[0, 0, 0] = 1.0                         # tau 0: all in bin 0
    expected[0, 0, 1] += -0.5                       # tau 0.5, OFF
    expected[1, 0, 1] += -0.5
    expected[1, 0, 1] += 0.5                        # tau 1.5, ON
    expected[2, 0, 1] += 0.5
    expected[2, 1, 2] = 1.0                         # tau 2 = B-1: all in the last bin
    np.testing.assert_array_equal(v, expected)
    np.testing.assert_array_equal(voxel_grid_numpy(ev, 3, 2, 3), expected)


def test_voxel_weights_sum_to_net_polarity():
    ev = random_events(10_000, width=W, height=H, seed=13)
    net = np.zeros((H, W))
    np.add.at(net, (ev["y"], ev["x"]), np.where(ev["p"] > 0, 1.0, -1.0))
    for b in (1, 4, 7):
        np.testing.assert_allclose(voxel_grid(ev, b, H, W).sum(axis=0), net, atol=1e-4)


def test_voxel_one_event_and_zero_span():
    one = make_events([5], [3], [4], [0])
    v = voxel_grid(one, 5, H, W)
    assert v[0, 4, 3] == -1.0 and np.count_nonzero(v) == 1      # dT = 0 -> 1: tau 0
    same_t = make_events([9, 9, 9], [1, 1, 2], [1, 1, 2], [1, 1, 0])
    v = voxel_grid(same_t, 4, H, W)
    assert v[0, 1, 1] == 2.0 and v[0, 2, 2] == -1.0 and np.count_nonzero(v) == 2


def test_voxel_long_window():
    # dT > 2**24 us takes the kernel's exact-lower-weight path: no weight rounds to 0
    ev = random_events(3_000, width=W, height=H, duration_us=3_000_000_000, seed=14)
    ev["t"][1] = ev["t"][0] + 1                 # frac = 4e-10: lower weight rounds to 1,
    ev["t"][-2] = ev["t"][-1] - 1               # frac = 1 - 4e-10: upper weight rounds to 1
    for b in (2, 5):
        fast, ref = voxel_grid(ev, b, H, W), voxel_grid_numpy(ev, b, H, W)
        assert_same(fast, ref)
        e2vid = e2vid_transcription(ev, b, H, W)
        np.testing.assert_array_equal(fast != 0, e2vid != 0)
        np.testing.assert_array_equal(ref != 0, e2vid != 0)


def test_voxel_normalised_support_does_not_depend_on_summation_order():
    # At pixel (0, 0) bin 2 the exact sum is 2/10 + 8/10 - 1 = 0 (case found by a search);
    # the reference's float32 summation order leaves a residue of ~1e-8 there, the kernel's
    # leaves 0. Other pixels give the statistics some spread.
    ev = make_events([0, 3, 6, 9, 9, 10, 10], [0, 0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 1, 0, 0],
                     [0, 1, 1, 1, 0, 0, 1])
    raw_fast, raw_ref = voxel_grid(ev, 3, 2, 2), voxel_grid_numpy(ev, 3, 2, 2)
    assert raw_fast[2, 0, 0] == 0 and 0 < abs(raw_ref[2, 0, 0]) < 1e-7
    assert_same(raw_fast, raw_ref)
    from evstream.represent.voxel import normalize_nonzero_numpy
    naive = normalize_nonzero_numpy(raw_ref.copy())               # E2VID's plain != 0 test
    assert abs(naive[2, 0, 0]) > 0.1                              # the residue became a value
    fast = voxel_grid(ev, 3, 2, 2, normalize=True)
    ref = voxel_grid_numpy(ev, 3, 2, 2, normalize=True)
    assert fast[2, 0, 0] == 0 and ref[2, 0, 0] == 0
    np.testing.assert_array_equal(fast != 0, ref != 0)
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-6)


def test_voxel_normalisation_statistics():
    ev = random_events(8_000, width=W, height=H, seed=15)
    raw = voxel_grid(ev, 5, H, W)
    for fn in (voxel_grid, voxel_grid_numpy):
        v = fn(ev, 5, H, W, normalize=True)
        np.testing.assert_array_equal(v != 0, raw != 0)
        nz = v[v != 0].astype(np.float64)
        assert abs(nz.mean()) < 1e-5 and abs(nz.std(ddof=1) - 1.0) < 1e-5


@pytest.mark.parametrize("fn", [voxel_grid, voxel_grid_numpy])
def test_voxel_normalisation_without_spread_stays_finite(fn):
    one = make_events([5], [3], [4], [1])                       # one non-zero voxel: std undefined
    assert not fn(one, 1, H, W, normalize=True).any()
    flat = make_events([5, 5, 5], [1, 2, 3], [1, 1, 1], [1, 1, 1])   # all equal: std 0
    v = fn(flat, 2, H, W, normalize=True)
    assert np.isfinite(v).all() and not v.any()
    two = make_events([5, 6], [1, 2], [1, 1], [1, 0])           # +1 and -1: mean 0, std sqrt(2)
    v = fn(two, 1, H, W, normalize=True)
    np.testing.assert_allclose([v[0, 1, 1], v[0, 1, 2]], [1 / np.sqrt(2), -1 / np.sqrt(2)],
                               rtol=1e-6)


def test_voxel_rejects_bad_bins_and_size():
    ev = random_events(10, width=W, height=H)
    for fn in (voxel_grid, voxel_grid_numpy):
        with pytest.raises(ValueError, match="num_bins"):
            fn(ev, 0, H, W)
        with pytest.raises(ValueError, match="positive"):
            fn(ev, 5, 0, W)


def test_voxel_is_much_faster_than_the_reference():
    ev = random_events(300_000, seed=16)
    out = np.zeros((5, 260, 346), np.float32)

    def best(fn, reps):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    voxel_grid(ev, 5, 260, 346, out=out)
    fast = best(lambda: voxel_grid(ev, 5, 260, 346, out=out), 7)
    slow = best(lambda: voxel_grid_numpy(ev, 5, 260, 346, out=out), 2)
    assert slow / fast > 5, f"numba {fast * 1e3:.2f} ms vs numpy {slow * 1e3:.2f} ms"


def test_kernels_load_from_the_numba_cache_in_a_new_process():
    code = ("import numpy as np, sys; sys.path.insert(0, 'tests');"
            "from conftest import random_events;"
            "from evstream.represent import voxel_grid, histogram, time_surface;"
            "from evstream.represent.voxel import _voxel_kernel;"
            "ev = random_events(100);"
            "voxel_grid(ev, 5, 260, 346); histogram(ev, 260, 346); time_surface(ev, 260, 346);"
            "s = _voxel_kernel.stats; print(sum(s.cache_hits.values()), "
            "sum(s.cache_misses.values()))")
    root = Path(__file__).resolve().parents[1]
    runs = [subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    hits, misses = map(int, runs[1].stdout.split())
    assert hits >= 1 and misses == 0


# ---------------------------------------------------------------------------------------------
# histogram

def test_histogram_channels_are_off_then_on():
    ev = make_events([1, 2, 3, 4], [0, 0, 5, 5], [0, 0, 2, 2], [1, 1, 0, 1])
    for fn in (histogram, histogram_numpy):
        h = fn(ev, H, W)
        assert h[1, 0, 0] == 2 and h[0, 0, 0] == 0
        assert h[0, 2, 5] == 1 and h[1, 2, 5] == 1
        assert h.sum() == 4


def test_histogram_max_normalisation():
    ev = make_events([1, 2, 3, 4], [0, 0, 0, 7], [0, 0, 0, 3], [1, 1, 1, 1])
    for fn in (histogram, histogram_numpy):
        h = fn(ev, H, W, normalize=True)
        assert h[1, 0, 0] == 1.0 and h[1, 3, 7] == np.float32(1 / 3)
        assert not h[0].any()                                   # no OFF events: stays 0
    ev = random_events(20_000, width=W, height=H, seed=17)
    h = histogram(ev, H, W, normalize=True)
    assert h[0].max() == 1.0 and h[1].max() == 1.0
    np.testing.assert_array_equal(h, histogram_numpy(ev, H, W, normalize=True))


def test_histogram_counts_every_event():
    ev = random_events(50_000, width=W, height=H, seed=18)
    h = histogram(ev, H, W)
    assert h[1].sum() == np.count_nonzero(ev["p"]) and h.sum() == len(ev)


# ---------------------------------------------------------------------------------------------
# time surface

def test_time_surface_values():
    ev = make_events([0, 1_000, 3_000, 4_000], [1, 1, 2, 3], [1, 1, 1, 1], [1, 1, 0, 1])
    for fn in (time_surface, time_surface_numpy):
        s = fn(ev, H, W, tau_us=1_000)
        np.testing.assert_allclose(s[1, 1, 1], np.exp(-3.0), rtol=1e-6)     # newest at (1,1)
        np.testing.assert_allclose(s[0, 1, 2], np.exp(-1.0), rtol=1e-6)
        assert s[1, 1, 3] == 1.0 and s[0, 1, 1] == 0 and np.count_nonzero(s) == 3
        s = fn(ev, H, W, tau_us=1_000, t_ref_us=6_000)                       # window end
        np.testing.assert_allclose(s[1, 1, 3], np.exp(-2.0), rtol=1e-6)
        with pytest.raises(ValueError, match="earlier than the last event"):
            fn(ev, H, W, t_ref_us=3_999)
        with pytest.raises(ValueError, match="tau_us"):
            fn(ev, H, W, tau_us=0)


@pytest.mark.parametrize("t_ref_offset", [0, 1, 25_000, 10_000_000])
def test_time_surface_numba_equals_numpy_with_t_ref(t_ref_offset):
    ev = random_events(30_000, width=W, height=H, t0=5_000, seed=19)
    t_ref = int(ev["t"][-1]) + t_ref_offset
    for tau in (1_000, 50_000):
        fast = time_surface(ev, H, W, tau_us=tau, t_ref_us=t_ref)
        ref = time_surface_numpy(ev, H, W, tau_us=tau, t_ref_us=t_ref)
        np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=0)


def test_last_timestamps_numba_equals_numpy():
    ev = random_events(30_000, width=W, height=H, seed=20)
    fast = last_timestamps(ev, H, W)
    np.testing.assert_array_equal(fast, last_timestamps_numpy(ev, H, W))
    assert fast.dtype == np.int64 and fast.max() == ev["t"].max()
    out = np.zeros((2, H, W), np.int64)
    assert last_timestamps(ev[:10], H, W, out=out) is out
    assert (out == NEVER_US).sum() >= 2 * H * W - 10


def test_last_timestamps_equal_dv_time_surface_on_a_real_recording(realdata):
    dv = pytest.importorskip("dv_processing")
    path = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    rec = dv.io.MonoCameraRecording(str(path))
    width, height = rec.getEventResolution()
    surface = dv.TimeSurface(rec.getEventResolution())
    chunks = []
    while (batch := rec.getNextEventBatch()) is not None:
        surface.accept(batch)
        chunks.append(batch.numpy().view(EVENT_DTYPE).copy())
    ev = np.concatenate(chunks)
    assert len(ev) == 117_667 and (width, height) == (346, 260)       # MANIFEST.md
    ours = last_timestamps(ev, height, width)
    newest = ours.max(axis=0)
    newest[newest == NEVER_US] = 0                                  # dv starts from zeros
    theirs = np.array([[surface.at(y, x) for x in range(width)] for y in range(height)],
                      dtype=np.int64)
    np.testing.assert_array_equal(newest, theirs)
    assert (theirs != 0).sum() > 10_000                             # a real, busy map
    np.testing.assert_array_equal(ours, last_timestamps_numpy(ev, height, width))
    # and the decayed surface is exp(-age/tau) of exactly that map
    s = time_surface(ev, height, width, tau_us=30_000)
    t_ref = int(ev["t"][-1])
    seen = ours != NEVER_US
    np.testing.assert_allclose(s[seen], np.exp(-(t_ref - ours[seen]) / 30_000), rtol=1e-6)
    assert not s[~seen].any()


# ---------------------------------------------------------------------------------------------
# Incremental voxel grid (VoxelAccumulator): always exactly voxel_grid, bit for bit

def bits(grid):
    return grid.view(np.uint32)


def stream_voxels(events, window_us, chunks, num_bins, height, width, normalize=False):
    """Drive a Windower and the accumulator the way the window stage does (finish the ready
    windows, then add the open window's events); -> [(window, grid, exact)]."""
    from evstream.represent.voxel import VoxelAccumulator
    from evstream.stream.window import Window, WindowSpec, Windower

    win = Windower(WindowSpec(window_us=window_us), reuse_buffers=True)
    acc = VoxelAccumulator(num_bins, height, width, normalize=normalize)
    out, current = [], None

    def close(windows):
        nonlocal current
        for w in windows:
            if current == w.index:
                grid, exact = acc.finish(w.events)
                current = None
            else:
                grid, exact = voxel_grid(w.events, num_bins, height, width, normalize), None
            # reuse_buffers: a window's events are valid until the next push, so keep a copy
            w = Window(w.index, w.t0_us, w.t1_us, w.events.copy())
            out.append((w, grid.copy(), exact,
                        voxel_grid(w.events, num_bins, height, width, normalize)))

    for lo, hi in zip(chunks[:-1], chunks[1:]):
        close(win.push(events[lo:hi]))
        ow = win.open_window()
        if ow is not None and len(ow.events):
            if current != ow.index:
                acc.begin(np.full((num_bins, height, width), np.nan, np.float32),
                          t_last_guess_us=ow.t1_us - 1)
                current = ow.index
            acc.update(ow.events)
    close(win.finish())
    return out


@pytest.mark.parametrize("num_bins", [1, 2, 5, 9])
@pytest.mark.parametrize("normalize", [False, True])
def test_accumulated_voxels_are_bit_identical_on_dense_random_streams(num_bins, normalize):
    rng = np.random.default_rng(num_bins)
    ev = random_events(60_000, width=W, height=H, t0=7, duration_us=40_000, seed=num_bins)
    ev["t"][rng.choice(len(ev), 200)] = 9_999   # some windows end exactly at their end - 1
    ev = np.sort(ev, order="t", kind="stable")
    chunks = [0, *np.sort(rng.choice(np.arange(1, len(ev)), 300, replace=False)), len(ev)]
    res = stream_voxels(ev, 1_000, chunks, num_bins, H, W, normalize)
    assert sum(len(w.events) for w, *_ in res) == len(ev)
    fast = [exact for _, _, exact, _ in res if exact]
    assert len(fast) >= len(res) // 2          # the fast path is what this test is about
    for w, grid, exact, ref in res:
        assert np.array_equal(bits(grid), bits(ref)), (w.index, exact)
    for w, grid, exact, _ in res[::7]:          # and the reference agrees as usual
        assert_same(grid, voxel_grid_numpy(w.events, num_bins, H, W, normalize))


def test_accumulated_voxels_are_bit_identical_on_real_recordings(realdata):
    from evstream.sources import open_source

    hits = 0
    for name, window_us in (("davis346_aestream_davis.aedat4", 2_000),
                            ("dvxplorer-lite_tonic_sample.aedat4", 5_000)):
        src = open_source(str(realdata / "aedat4" / name))
        with src:
            packets = [p.events for p in src.packets() if len(p.events)]
            height, width = src.height, src.width
        ev = concat_events(packets)
        sizes = np.random.default_rng(1).integers(1, 3_000, len(ev) // 500)
        chunks = sorted({0, len(ev), *np.minimum(np.cumsum(sizes), len(ev)).tolist()})
        res = stream_voxels(ev, window_us, chunks, 5, height, width)
        for w, grid, exact, ref in res:
            assert np.array_equal(bits(grid), bits(ref)), (name, w.index, exact)
        hits += sum(1 for *_, exact, _ in res if exact)
        assert any(exact is False for *_, exact, _ in res)      # misses recompute
    assert hits >= 10


def test_accumulator_guess_miss_long_span_and_errors():
    from evstream.represent.voxel import VoxelAccumulator

    acc = VoxelAccumulator(3, H, W)
    out = np.empty((3, H, W), np.float32)
    ev = random_events(5_000, width=W, height=H, duration_us=3_000_000_000, seed=3)
    ev["t"][-1] = 3_000_000_000 - 1              # dT > 2**24: the exact-lower-weight path
    for guess, want in ((3_000_000_000 - 1, True), (3_000_000_000, False)):
        acc.begin(out, t_last_guess_us=guess)
        for k in (1, 100, 4_000):
            acc.update(ev[:k])
        grid, exact = acc.finish(ev)
        assert grid is out and exact is want
        assert np.array_equal(bits(grid), bits(voxel_grid(ev, 3, H, W)))
    acc.begin(out, t_last_guess_us=10)           # empty window: zeros, like voxel_grid
    assert acc.finish(ev[:0])[0].any() == False  # noqa: E712
    bad = ev.copy()
    bad["x"][2_000] = W
    acc.begin(out, t_last_guess_us=int(bad["t"][-1]))
    acc.update(bad[:3_000])
    with pytest.raises(ValueError, match="event 2000 .* outside the 34x26 sensor"):
        acc.finish(bad)
    unsorted = ev.copy()
    unsorted["t"][10] = unsorted["t"][11] + 1
    acc.begin(out, t_last_guess_us=int(unsorted["t"][-1]))
    acc.update(unsorted)
    with pytest.raises(ValueError, match="not sorted"):
        acc.finish(unsorted)
    with pytest.raises(ValueError, match="before begin"):
        acc.update(ev)
