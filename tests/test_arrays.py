""".npy / .npz / .h5 event arrays: round trips, layouts and aliases, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import random_events
from evstream.errors import BadEventsError, SourceError
from evstream.sources import open_source
from evstream.sources.arrays import ArraySource, write_h5, write_npz
from evstream.types import EVENT_DTYPE


def read_all(src) -> np.ndarray:
    with src:
        return np.concatenate([np.zeros(0, EVENT_DTYPE), *src])


@pytest.fixture
def ev():
    return random_events(30_000, width=346, height=260, t0=1_700_000_000_000_000,
                         duration_us=2_500_000, seed=4)


# -- round trips ---------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path, ev):
    path = tmp_path / "a.npz"
    write_npz(path, ev, 346, 260)
    src = open_source(path)
    assert isinstance(src, ArraySource)
    assert (src.width, src.height, src.resolution_note) == (346, 260, "")
    assert np.array_equal(read_all(src), ev)


def test_h5_round_trip_dsec_layout(tmp_path, ev):
    path = tmp_path / "a.h5"
    write_h5(path, ev, 346, 260)
    with h5py.File(path) as f:
        assert sorted(f) == ["events", "ms_to_idx", "t_offset"]
        assert f["events/t"].dtype == np.uint32 and f["events/p"].dtype == np.uint8
        t_offset = int(f["t_offset"][()])
        rel = f["events/t"][:].astype(np.int64)
        idx = f["ms_to_idx"][:]
    assert t_offset == ev["t"][0]
    # DSEC: ms_to_idx[ms] is the first event at or after ms milliseconds
    for ms in (0, 1, 777, len(idx) - 1):
        i = int(idx[ms])
        assert rel[i] >= ms * 1000 and (i == 0 or rel[i - 1] < ms * 1000)
    src = open_source(path, chunk_events=4_096)
    sizes = [len(e) for e in src]
    assert max(sizes) == 4_096 and sum(sizes) == len(ev)
    src = open_source(path, chunk_events=4_096)
    assert np.array_equal(read_all(src), ev)
    assert src.describe()["t_offset_us"] == t_offset and src.describe()["ms_to_idx"]


def test_hdf5_suffix_and_empty_events(tmp_path):
    path = tmp_path / "empty.hdf5"
    write_h5(path, np.zeros(0, EVENT_DTYPE), 64, 48)
    src = open_source(path)
    assert (src.width, src.height) == (64, 48) and len(read_all(src)) == 0


# -- layouts and aliases -------------------------------------------------------------------------

def test_npy_structured_with_aliases(tmp_path):
    arr = np.zeros(5, [("timestamp", "<f8"), ("x", "<i4"), ("y", "<i4"), ("polarity", "<i1")])
    arr["timestamp"] = [0.5, 0.5000015, 0.6, 0.7, 1.25]          # seconds
    arr["x"] = [0, 1, 2, 3, 4]
    arr["y"] = [4, 3, 2, 1, 0]
    arr["polarity"] = [-1, 1, 1, -1, 1]
    path = tmp_path / "s.npy"
    np.save(path, arr)
    src = open_source(path)
    out = read_all(src)
    assert out["t"].tolist() == [500_000, 500_002, 600_000, 700_000, 1_250_000]
    assert out["p"].tolist() == [0, 1, 1, 0, 1]
    assert "seconds" in src.time_note
    assert (src.width, src.height) == (5, 5) and "inferred 5x5" in src.resolution_note


def test_time_unit_option(tmp_path):
    path = tmp_path / "ms.npz"
    np.savez(path, ts=np.array([1.5, 2.0, 2.25]), x=[1, 2, 3], y=[1, 1, 1], pol=[True, False, True])
    out = read_all(open_source(path, time_unit="ms", width=4, height=4))
    assert out["t"].tolist() == [1_500, 2_000, 2_250] and out["p"].tolist() == [1, 0, 1]
    with pytest.raises(SourceError, match="time_unit must be one of"):
        open_source(path, time_unit="fortnights")


def test_npz_with_structured_member_and_sensor_size(tmp_path, ev):
    path = tmp_path / "st.npz"
    np.savez(path, events=ev, sensor_size=np.array([346, 260, 2]))
    src = open_source(path)
    assert (src.width, src.height) == (346, 260)
    assert np.array_equal(read_all(src), ev)


def test_h5_top_level_datasets_and_attrs(tmp_path, ev):
    path = tmp_path / "top.h5"
    with h5py.File(path, "w") as f:
        f.attrs["sensor_size"] = [346, 260]
        f["t"], f["x"], f["y"] = ev["t"], ev["x"], ev["y"]
        f["p"] = np.where(ev["p"] > 0, 1, -1).astype(np.int8)
    src = open_source(path)
    assert (src.width, src.height) == (346, 260)
    assert np.array_equal(read_all(src), ev)


def test_h5_compound_dataset(tmp_path, ev):
    path = tmp_path / "comp.h5"
    arr = np.zeros(len(ev), [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    for k in "txy":
        arr[k] = ev[k]
    arr["p"] = ev["p"] > 0
    with h5py.File(path, "w") as f:
        f["events"] = arr
        f.attrs["width"], f.attrs["height"] = 346, 260
    assert np.array_equal(read_all(open_source(path, chunk_events=1_000)), ev)


def test_options_override_file_resolution(tmp_path, ev):
    path = tmp_path / "o.npz"
    write_npz(path, ev, 346, 260)
    src = open_source(path, width=400, height=300)
    assert (src.width, src.height) == (400, 300)
    assert "from options" in src.resolution_note and "346x260" in src.resolution_note


# -- bad events ----------------------------------------------------------------------------------

def test_out_of_order_npz(tmp_path):
    path = tmp_path / "ooo.npz"
    np.savez(path, t=[10, 20, 15, 30, 5, 40], x=[0] * 6, y=[0] * 6, p=[1] * 6, width=2, height=2)
    with pytest.raises(BadEventsError, match="at event index 2: time goes backwards") as e:
        read_all(open_source(path))
    assert "\n" not in str(e.value)
    src = open_source(path, bad_events="drop")
    assert read_all(src)["t"].tolist() == [10, 20, 30, 40]
    assert src.stats.dropped_out_of_order == 2 and src.stats.events == 4


def test_events_outside_declared_sensor(tmp_path):
    path = tmp_path / "out.npz"
    np.savez(path, t=[1, 2, 3, 4], x=[0, 9, -1, 3], y=[0, 1, 1, 1], p=[0, 1, 0, 1],
             width=8, height=8)
    with pytest.raises(BadEventsError, match=r"at event index 1: event at t=2 us has x=9, y=1, "
                                              r"outside the 8x8"):
        read_all(open_source(path))
    src = open_source(path, bad_events="drop")
    assert read_all(src)["x"].tolist() == [0, 3]               # x=9 and x=-1 are both outside
    assert src.stats.dropped_outside_sensor == 2


# -- bad input -----------------------------------------------------------------------------------

def test_missing_fields_list_what_is_there(tmp_path):
    npz = tmp_path / "m.npz"
    np.savez(npz, t=[1, 2], x=[1, 2], y=[1, 2])
    with pytest.raises(SourceError, match=r"no p field .*the archive holds: t int64\[2\]") as e:
        open_source(npz)
    assert "\n" not in str(e.value)
    npy = tmp_path / "m.npy"
    np.save(npy, np.zeros(3, [("t", "<i8"), ("u", "<u2"), ("v", "<u2"), ("p", "i1")]))
    with pytest.raises(SourceError, match=r"no x, y field.*fields t, u, v, p"):
        open_source(npy)
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f["events/t"] = [1, 2]
        f["events/x"] = [1, 2]
    with pytest.raises(SourceError, match=r"no y, p field.*holds: events/t int64\[2\], events/x"):
        open_source(h5)


def test_mismatched_lengths(tmp_path):
    path = tmp_path / "len.npz"
    np.savez(path, t=[1, 2, 3], x=[1, 2], y=[1, 2, 3], p=[1, 1, 1])
    with pytest.raises(SourceError, match=r"differ in length \(t has 3, x has 2"):
        open_source(path)
    h5 = tmp_path / "len.h5"
    with h5py.File(h5, "w") as f:
        for k, n in zip("txyp", (4, 4, 3, 4)):
            f[f"events/{k}"] = np.arange(n)
    with pytest.raises(SourceError, match=r"events/y has 3"):
        open_source(h5)


def test_plain_array_and_fractional_coordinates(tmp_path):
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros((10, 4)))
    with pytest.raises(SourceError, match=r"plain float64 array of shape \(10, 4\)"):
        open_source(npy)
    npz = tmp_path / "frac.npz"
    np.savez(npz, t=[1, 2], x=[1.0, 2.5], y=[1.0, 1.0], p=[1, 0], width=4, height=4)
    with pytest.raises(SourceError, match=r"x at event index 1 is 2.5"):
        read_all(open_source(npz))


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".h5"])
def test_garbage_and_empty_files(tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4_000, np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"not a readable") as e:
        open_source(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="file is empty"):
        open_source(path)


def test_truncated_npy(tmp_path, ev):
    path = tmp_path / "cut.npy"
    np.save(path, ev)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceError, match="not a readable .npy file"):
        open_source(path)
