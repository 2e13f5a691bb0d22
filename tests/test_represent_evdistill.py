"""evdistill_rgb: EvDistill's event PNG (R = ON, G = OFF counts over their own maxima, floored to
8 bits, B empty), pinned by hand-computed cases. The registry-driven tests in test_represent.py
run the generic contract (numpy == numba, layouts, bounds, `out`, bad input) on it as well."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_events
from evstream.represent import (evdistill_rgb, evdistill_rgb_numpy, get_representation,
                                histogram)
from evstream.represent.preview import event_image
from evstream.types import EVENT_DTYPE, make_events

BOTH = (evdistill_rgb, evdistill_rgb_numpy)


def k255(levels) -> np.ndarray:
    """8-bit levels as the network reads them after ToTensor: float32(k) / 255."""
    return np.asarray(levels, np.float32) / np.float32(255)


def with_polarity(ev, p_dtype, signed=False):
    out = np.zeros(len(ev), [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", p_dtype)])
    for f in "txy":
        out[f] = ev[f]
    on = ev["p"] > 0
    out["p"] = np.where(on, 1, -1 if signed else 0) if p_dtype != "?" else on
    return out


@pytest.mark.parametrize("fn", BOTH)
def test_worked_example(fn):
    # 2x3 sensor. ON: (x0,y0) twice, (x2,y1) once -> max 2. OFF: (x1,y0) three times, (x0,y1)
    # once -> max 3. R = floor(255 n / m) / 255, G the same, B = 0.
    ev = make_events([0, 1, 2, 3, 4, 5, 6], [0, 0, 2, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0, 1],
                     [1, 1, 1, 0, 0, 0, 0])
    want = np.zeros((3, 2, 3), np.float32)
    want[0, 0, 0] = k255(255)            # 2 of 2
    want[0, 1, 2] = k255(127)            # 1 of 2: 127.5 floors to 127
    want[1, 0, 1] = k255(255)            # 3 of 3
    want[1, 1, 0] = k255(85)             # 1 of 3
    np.testing.assert_array_equal(fn(ev, 2, 3), want)


@pytest.mark.parametrize("fn", BOTH)
def test_levels_are_floored_not_rounded(fn):
    # one plane with max 7: n = 1..7 -> floor(255 n / 7) = 36, 72, 109, 145, 182, 218, 255
    # (rounding would give 36, 73, 109, 146, 182, 219, 255)
    xs, ts = [], []
    for n in range(1, 8):
        xs += [n - 1] * n
    ts = list(range(len(xs)))
    ev = make_events(ts, xs, [0] * len(xs), [1] * len(xs))
    got = fn(ev, 1, 7)
    np.testing.assert_array_equal(got[0, 0], k255([36, 72, 109, 145, 182, 218, 255]))
    assert not got[1:].any()


@pytest.mark.parametrize("fn", BOTH)
def test_each_plane_has_its_own_maximum(fn):
    # the DTL sample picture's levels: ON max 5 -> steps of 51, OFF max 4 -> steps of 63.75
    xs, ps = [], []
    for n in range(1, 6):
        xs += [n - 1] * n
        ps += [1] * n
    for n in range(1, 5):
        xs += [5 + n - 1] * n
        ps += [0] * n
    ev = make_events(list(range(len(xs))), xs, [0] * len(xs), ps)
    got = fn(ev, 1, 9)
    np.testing.assert_array_equal(got[0, 0], k255([51, 102, 153, 204, 255, 0, 0, 0, 0]))
    np.testing.assert_array_equal(got[1, 0], k255([0, 0, 0, 0, 0, 63, 127, 191, 255]))
    assert not got[2].any()


@pytest.mark.parametrize("fn", BOTH)
def test_weak_pixels_vanish_when_the_maximum_exceeds_255(fn):
    ev = make_events(list(range(301)), [0] * 300 + [1], [0] * 301, [1] * 301)
    got = fn(ev, 1, 2)
    np.testing.assert_array_equal(got[0, 0], k255([255, 0]))      # 255 * 1 // 300 = 0


@pytest.mark.parametrize("fn", BOTH)
def test_unquantized_is_histogram_max_with_on_first(fn):
    ev = random_events(4_000, width=17, height=11, seed=3)
    got = fn(ev, 11, 17, quantize=False)
    hm = histogram(ev, 11, 17, normalize=True)
    np.testing.assert_array_equal(got[0], hm[1])
    np.testing.assert_array_equal(got[1], hm[0])
    assert not got[2].any()


@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("n,seed", [(1, 1), (9, 2), (5_000, 3), (200_000, 4)])
def test_numba_equals_numpy_bit_for_bit(quantize, n, seed):
    ev = random_events(n, width=40, height=30, seed=seed)
    fast = evdistill_rgb(ev, 30, 40, quantize=quantize)
    ref = evdistill_rgb_numpy(ev, 30, 40, quantize=quantize)
    np.testing.assert_array_equal(fast, ref)
    assert fast.dtype == np.float32 and fast.shape == (3, 30, 40)


def test_values_are_8_bit_levels_with_a_full_pixel_per_plane():
    ev = random_events(20_000, width=40, height=30, seed=5)
    img = evdistill_rgb(ev, 30, 40)
    k = np.rint(img * 255)
    np.testing.assert_array_equal(img, k255(k))
    assert img[0].max() == 1.0 and img[1].max() == 1.0 and not img[2].any()
    assert img.min() >= 0


@pytest.mark.parametrize("fn", BOTH)
def test_empty_window_and_out_reuse(fn):
    out = np.full((3, 4, 5), 9.0, np.float32)
    got = fn(np.zeros(0, EVENT_DTYPE), 4, 5, out=out)
    assert got is out and not out.any()
    assert not fn(np.zeros(0, EVENT_DTYPE), 4, 5).any()


@pytest.mark.parametrize("fn", BOTH)
def test_only_on_events_leave_green_empty(fn):
    ev = make_events([0, 1, 2], [0, 1, 1], [0, 0, 0], [1, 1, 1])
    got = fn(ev, 1, 2)
    np.testing.assert_array_equal(got[0, 0], k255([127, 255]))
    assert not got[1].any() and not got[2].any()


@pytest.mark.parametrize("fn", BOTH)
@pytest.mark.parametrize("p_dtype,signed", [("?", False), ("i1", False), ("i1", True),
                                            ("u1", False), ("<i4", True)])
def test_polarity_types_and_input_untouched(fn, p_dtype, signed):
    base = random_events(3_000, width=23, height=19, seed=6)
    want = evdistill_rgb_numpy(base, 19, 23)
    ev = with_polarity(base, p_dtype, signed)
    before = ev.tobytes()
    ev.flags.writeable = False
    np.testing.assert_array_equal(fn(ev, 19, 23), want)
    np.testing.assert_array_equal(fn(ev[::2], 19, 23), fn(ev[::2].copy(), 19, 23))
    assert ev.tobytes() == before


def test_registered_for_the_training_config():
    from evstream.distill.config import apply_overrides, preset

    rep = get_representation("evdistill_rgb")
    assert rep.name == "evdistill_rgb" and rep.requires_sorted is False
    assert rep.channels() == 3 and rep.channels(quantize=False) == 3
    cfg = apply_overrides(preset("tiny"), ['data.representation={"name": "evdistill_rgb"}'])
    params = {k: v for k, v in cfg.data.representation.items() if k != "name"}
    assert rep.channels(**params) == 3          # what data_base._setup_representation does
    ev = random_events(100, width=8, height=6, seed=7)
    np.testing.assert_array_equal(rep.compute(ev, 6, 8, **params), evdistill_rgb(ev, 6, 8))


def test_preview_reads_on_from_channel_0():
    ev = make_events([0, 1, 2], [0, 1, 2], [0, 0, 0], [1, 0, 1])
    img = event_image("evdistill_rgb", evdistill_rgb(ev, 1, 4))
    np.testing.assert_array_equal(img, np.array([[1, -1, 1, 0]], np.int8))
