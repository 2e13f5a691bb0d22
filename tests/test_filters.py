"""Noise filters: the numba path equals dv-processing's filters on real recordings."""

from __future__ import annotations

import numpy as np
import pytest

dv = pytest.importorskip("dv_processing")

from evstream.errors import SourceError  # noqa: E402
from evstream.sources.filters import FilterChain, make_filter_chain, parse_pixel_list  # noqa: E402
from evstream.types import EVENT_DTYPE, concat_events, make_events  # noqa: E402

AEDAT4 = ["davis346_aestream_davis.aedat4", "dvxplorer-lite_tonic_sample.aedat4",
          "davis346_wheel_2024_11_26_11_34_19_crop100x100.aedat4"]

CASES = {
    "ba2000": dict(ba_filter_us=2000),
    "ba300": dict(ba_filter_us=300),
    "refractory1000": dict(refractory_us=1000),
    "refractory137": dict(refractory_us=137),
    "roi": dict(roi=(100, 50, 200, 150)),
    "polarity_off": dict(polarity="off"),
    "polarity_on": dict(polarity="on"),
    "hot": dict(hot_pixels=[(150, 120), (160, 130), (170, 110), (0, 0)]),
    "all": dict(ba_filter_us=1000, refractory_us=200, roi=(120, 60, 150, 150), polarity="on",
                hot_pixels="150,120;151,121"),
}


def _stores(path):
    rec = dv.io.MonoCameraRecording(str(path))
    out = []
    while (s := rec.getNextEventBatch()) is not None:
        out.append(s)
    return out, rec.getEventResolution()


def _np(store):
    return store.numpy().view(EVENT_DTYPE) if len(store) else np.zeros(0, EVENT_DTYPE)


def _store(ev):
    s = dv.EventStore()
    for t, x, y, p in zip(ev["t"].tolist(), ev["x"].tolist(), ev["y"].tolist(),
                          ev["p"].tolist()):
        s.push_back(t, x, y, bool(p))
    return s


@pytest.fixture(scope="module")
def recordings(realdata):
    return {name: _stores(realdata / "aedat4" / name) for name in AEDAT4}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", AEDAT4)
def test_numpy_path_equals_dv_on_real_data(recordings, name, case):
    stores, (w, h) = recordings[name]
    via_dv = FilterChain(w, h, **CASES[case])
    via_np = FilterChain(w, h, **CASES[case])
    out_dv = concat_events([_np(via_dv.apply_store(s)) for s in stores])
    inputs = [_np(s) for s in stores]
    before = [a.copy() for a in inputs]
    out_np = concat_events([via_np.apply_events(a) for a in inputs])
    assert np.array_equal(out_dv, out_np)
    assert via_dv.counts == via_np.counts
    total = sum(len(s) for s in stores)
    assert via_np.removed == total - len(out_np)
    assert all(np.array_equal(a, b) for a, b in zip(inputs, before)), "input was modified"


def test_filters_really_remove_events_on_real_data(recordings):
    stores, (w, h) = recordings["davis346_aestream_davis.aedat4"]
    chain = FilterChain(w, h, ba_filter_us=2000)
    kept = sum(len(chain.apply_store(s)) for s in stores)
    # MANIFEST: 117,667 events; the BA filter keeps 69,887 of them (dv-processing 2.0.4)
    assert kept == 69_887
    assert chain.counts == {"background_activity": 117_667 - 69_887}
    chain = FilterChain(w, h, polarity="off")
    assert sum(len(chain.apply_store(s)) for s in stores) == 45_304   # MANIFEST p0 count


def test_state_carries_across_batches(recordings):
    """One big batch and many small ones give the same result: the filters keep state."""
    stores, (w, h) = recordings["dvxplorer-lite_tonic_sample.aedat4"]
    ev = concat_events([_np(s) for s in stores])
    whole = FilterChain(w, h, ba_filter_us=1000, refractory_us=500).apply_events(ev)
    chunked = FilterChain(w, h, ba_filter_us=1000, refractory_us=500)
    parts = [chunked.apply_events(ev[i:i + 777]) for i in range(0, len(ev), 777)]
    assert np.array_equal(whole, concat_events(parts))


def test_refractory_semantics_exact():
    # period 1000 us; the pixel is stamped by every event, kept or not (dv's semantics):
    # t0+1200 is 1200 us after the last KEPT event but only 600 after the dropped one
    t0 = 10_000_000
    ev = make_events([t0, t0 + 600, t0 + 1200, t0 + 2200, t0 + 2200, t0 + 3199],
                     [1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1])
    chain = FilterChain(8, 8, refractory_us=1000)
    out = chain.apply_events(ev)
    assert out["t"].tolist() == [t0, t0 + 2200, t0 + 2200]
    assert chain.counts == {"refractory": 3}
    dv_out = FilterChain(8, 8, refractory_us=1000).apply_store(_store(ev))
    assert _np(dv_out)["t"].tolist() == out["t"].tolist()


@pytest.mark.parametrize("period_us", [1, 2, 3, 7, 250, 333, 1000, 1001, 4999, 65537, 999_999,
                                       1_000_000])
def test_dv_lowpass_period_round_trip(period_us):
    """dv.noise.LowPassFilter stores floor(1e6 / f) in float32: our 1e6/(R+0.5) lands on R."""
    t0 = 5_000_000
    ev = make_events([t0, t0 + period_us - 1, t0 + 2 * period_us - 1], [3, 3, 3], [3, 3, 3],
                     [1, 1, 1])
    out = _np(FilterChain(8, 8, refractory_us=period_us).apply_store(_store(ev)))
    assert out["t"].tolist() == [t0, t0 + 2 * period_us - 1]


def test_background_activity_semantics_exact():
    t0 = 1_000_000
    # (5,5) alone: noise; (6,5) 100 us later next to it: supported; (6,5) again: its own
    # pixel does not count, (5,5) is 1100 us old -> noise with a 1000 us window
    ev = make_events([t0, t0 + 100, t0 + 1100, t0 + 1150], [5, 6, 6, 0], [5, 5, 5, 0],
                     [1, 1, 1, 0])
    chain = FilterChain(8, 8, ba_filter_us=1000)
    out = chain.apply_events(ev)
    assert out["t"].tolist() == [t0 + 100]
    assert _np(FilterChain(8, 8, ba_filter_us=1000).apply_store(_store(ev)))["t"].tolist() == \
        [t0 + 100]


def test_empty_and_no_filters():
    chain = FilterChain(10, 10, roi=(0, 0, 5, 5))
    empty = np.zeros(0, EVENT_DTYPE)
    assert chain.apply_events(empty) is empty
    assert make_filter_chain(10, 10, roi=None, polarity=None) is None
    ev = make_events([1, 2], [1, 2], [1, 2], [1, 0])
    assert FilterChain(10, 10).apply_events(ev) is ev


def test_one_chain_one_path():
    chain = FilterChain(10, 10, ba_filter_us=100)
    chain.apply_events(make_events([1], [1], [1], [1]))
    with pytest.raises(RuntimeError, match="one stream"):
        chain.apply_store(_store(make_events([2], [1], [1], [1])))


def test_hot_pixel_file(tmp_path):
    f = tmp_path / "hot.txt"
    f.write_text("# hot pixels of camera 104\n3,4\n5,6  # flickers\n\n7,1;2,2\n")
    chain = FilterChain(10, 10, hot_pixels=str(f))
    assert chain.hot_pixels == [(3, 4), (5, 6), (7, 1), (2, 2)]
    ev = make_events([1, 2, 3, 4], [3, 5, 4, 2], [4, 6, 3, 2], [1, 1, 1, 0])
    assert chain.apply_events(ev)["x"].tolist() == [4]
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2\n3;4\n")
    with pytest.raises(SourceError, match=r"bad.txt line 2: '3' is not a pixel"):
        FilterChain(10, 10, hot_pixels=str(bad))


@pytest.mark.parametrize("options, message", [
    (dict(roi=(300, 0, 100, 10)), "extends past the 346x260 sensor"),
    (dict(roi="1,2,3"), "expected four integers"),
    (dict(roi=(0, 0, 0, 5)), "w and h > 0"),
    (dict(polarity="up"), "expected 'on' or 'off'"),
    (dict(hot_pixels="400,1"), "outside the 346x260 sensor"),
    (dict(hot_pixels="nofile"), "no such file, and not a pixel list"),
    (dict(refractory_us=0), "expected 1..1000000"),
    (dict(refractory_us=2_000_000), "expected 1..1000000"),
    (dict(ba_filter_us=-5), "--ba-filter-us -5"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(SourceError, match=message) as e:
        FilterChain(346, 260, **options)
    assert "\n" not in str(e.value)


def test_pixel_list_parser():
    assert parse_pixel_list("1,2;3,4 5,6") == [(1, 2), (3, 4), (5, 6)]
    with pytest.raises(SourceError):
        parse_pixel_list("1,-2")
