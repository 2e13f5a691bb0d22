"""N-MNIST / N-Caltech101 `.bin` reader/writer: real files, round trips, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import random_events
from evstream.errors import BadEventsError, SourceError
from evstream.sources import open_source
from evstream.sources.atis import AtisBinSource, open_atis_bin, write_atis_bin
from evstream.types import make_events

# name: (events, ON, OFF, first t, last t)  from MANIFEST.md
REAL = {
    "nmnist_tonic_sample.bin": (4_325, 2_145, 2_180, 654, 311_175),
    "nmnist_03263_aertb.bin": (5_999, 2_948, 3_051, 520, 303_458),
}


def read_all(src) -> np.ndarray:
    with src:
        return np.concatenate(list(src))


def raw_bin(x, y, p, t) -> bytes:
    rec = np.empty((len(x), 5), np.uint8)
    t = np.asarray(t, np.int64)
    rec[:, 0], rec[:, 1] = x, y
    rec[:, 2] = (np.asarray(p) << 7) | ((t >> 16) & 0x7F)
    rec[:, 3], rec[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return rec.tobytes()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_nmnist_matches_manifest(realdata, name):
    n, on, off, t0, t1 = REAL[name]
    path = realdata / "atis_bin" / name
    src = open_source(path)
    assert isinstance(src, AtisBinSource)
    assert (src.width, src.height) == (34, 34)
    assert "inferred 34x34" in src.resolution_note and "--width/--height" in src.resolution_note
    ev = read_all(src)
    assert len(ev) == n == src.stats.events
    assert int((ev["p"] == 1).sum()) == on and int((ev["p"] == 0).sum()) == off
    assert (int(ev["t"][0]), int(ev["t"][-1])) == (t0, t1)
    assert np.all(np.diff(ev["t"]) >= 0)
    assert src.truncated_note == "" and src.overflow_markers == 0 and src.wraps == 0
    # the 40-bit layout, decoded independently
    raw = np.frombuffer(path.read_bytes(), np.uint8).reshape(-1, 5).astype(np.int64)
    assert np.array_equal(ev["x"], raw[:, 0]) and np.array_equal(ev["y"], raw[:, 1])
    assert np.array_equal(ev["p"], raw[:, 2] >> 7)
    assert np.array_equal(ev["t"], ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4])


def test_resolution_from_options_has_no_note(realdata):
    src = open_source(realdata / "atis_bin" / "nmnist_tonic_sample.bin", width=34, height=34)
    assert src.resolution_note == ""
    assert len(read_all(src)) == 4_325


def test_round_trip(tmp_path):
    ev = random_events(50_000, width=240, height=180, t0=17, duration_us=3_000_000)
    ev = ev[ev["y"] != 240]
    path = tmp_path / "rt.bin"
    assert write_atis_bin(path, ev) == len(ev)
    src = open_source(path, width=240, height=180, chunk_events=7_777)
    out = read_all(src)
    assert np.array_equal(out, ev)
    assert src.stats.packets == -(-len(ev) // 7_777)


def test_23_bit_wrap_is_unwrapped(tmp_path):
    # 20 s of events, steps below 2^22 us: the 23-bit field wraps twice
    t = np.arange(0, 20_000_000, 3_000)
    ev = make_events(t, t % 34, (t // 34) % 34, t % 2)
    path = tmp_path / "long.bin"
    write_atis_bin(path, ev)
    src = open_source(path, width=34, height=34)
    out = read_all(src)
    assert np.array_equal(out, ev) and src.wraps == 2


def test_overflow_marker_records_are_skipped(tmp_path, caplog):
    path = tmp_path / "m.bin"
    # the marker's time field (0) must not read as a 23-bit wrap after t = 5 s
    t = [5_000_010, 0, 5_000_030, 5_000_040]
    path.write_bytes(raw_bin([1, 0, 2, 3], [1, 240, 2, 3], [1, 0, 0, 1], t))
    with caplog.at_level(logging.WARNING):
        src = open_source(path)
        out = read_all(src)
    assert out["t"].tolist() == [5_000_010, 5_000_030, 5_000_040]
    assert src.overflow_markers == 1 and src.wraps == 0
    assert (src.width, src.height) == (4, 4)          # the marker's y is not a pixel
    assert any("y=240" in r.message for r in caplog.records)


def test_truncated_tail_is_noted(tmp_path, caplog):
    ev = random_events(1_000, width=34, height=34)
    path = tmp_path / "t.bin"
    write_atis_bin(path, ev)
    with open(path, "ab") as f:
        f.write(b"\x05\x06")
    with caplog.at_level(logging.WARNING):
        src = open_source(path)
        out = read_all(src)
    assert np.array_equal(out, ev)
    assert src.truncated_note.startswith("2 trailing bytes at byte offset 5000")
    assert any("truncated" in r.message for r in caplog.records)


def test_empty_and_too_short(tmp_path):
    path = tmp_path / "e.bin"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="file is empty"):
        open_source(path)
    with pytest.raises(SourceError, match="file is empty"):
        open_atis_bin(path)
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(SourceError, match="no complete 5-byte ATIS event"):
        open_source(path)


def test_garbage_gives_one_line_error_with_offset(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "g.bin"
    path.write_bytes(rng.integers(0, 256, 50_000, np.uint8).tobytes())
    with pytest.raises(BadEventsError, match=r"byte offset \d+") as e:
        read_all(open_source(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_time_going_backwards(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(raw_bin([1, 2, 3, 4], [1, 2, 3, 4], [1, 1, 0, 0], [100, 200, 150, 300]))
    with pytest.raises(BadEventsError, match="at byte offset 10: time goes backwards at event"):
        read_all(open_source(path))
    src = open_source(path, bad_events="drop")
    assert read_all(src)["t"].tolist() == [100, 200, 300]
    assert src.stats.dropped_out_of_order == 1


def test_events_outside_declared_sensor(realdata):
    path = realdata / "atis_bin" / "nmnist_03263_aertb.bin"
    with pytest.raises(BadEventsError, match=r"at byte offset \d+: event at t=\d+ us has x=\d+, "
                                             r"y=\d+, outside the 20x20"):
        read_all(open_source(path, width=20, height=20))
    src = open_source(path, width=20, height=20, bad_events="drop")
    out = read_all(src)
    assert out["x"].max() < 20 and out["y"].max() < 20
    assert len(out) + src.stats.dropped_outside_sensor == 5_999


def test_writer_rejects_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="8-bit"):
        write_atis_bin(tmp_path / "x.bin", random_events(10, width=300, height=10, seed=2))
    with pytest.raises(ValueError, match="reserved"):
        write_atis_bin(tmp_path / "x.bin", make_events([1], [1], [240], [1]))
    with pytest.raises(ValueError, match="first timestamp"):
        write_atis_bin(tmp_path / "x.bin", make_events([2**23], [1], [1], [1]))
