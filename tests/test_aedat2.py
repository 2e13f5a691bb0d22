"""jAER AEDAT 2.0 reader/writer: real recordings against MANIFEST counts, round trips, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import random_events
from evstream.errors import BadEventsError, SourceError
from evstream.sources import open_source
from evstream.sources.aedat2 import (Aedat2Source, is_aedat2, open_aedat2, read_header,
                                     write_aedat2)
from evstream.types import IMU_DTYPE, Frame

# name: (camera, w, h, events, ON, OFF, first t, last t, duration s (MANIFEST), IMU samples)
REAL = {
    "davis240c_IMU_rotDisk.aedat":
        ("DAVIS240C", 240, 180, 374_296, 163_098, 211_198, 341_678, 3_508_437, 3.167, 7_384),
    "davis240c_IMU_translBoxes.aedat":
        ("DAVIS240C", 240, 180, 162_771, 82_944, 79_827, 294_976_755, 297_049_406, 2.073, 4_833),
    # DVS128: jAER's extractor makes raw bit 0 = 0 the ON event, so ON = MANIFEST's "bit0=0"
    "edvs128_DVS128-2017-03-21-short.aedat":
        ("DVS128", 128, 128, 130_114, 74_991, 55_123, 113_476_330, 119_657_829, 6.181, 0),
}


def read_all(src):
    ev, imu, frames, trig = [], [], [], []
    with src:
        for pkt in src.packets():
            ev.append(pkt.events)
            imu.append(pkt.imu)
            frames.extend(pkt.frames)
            trig.append(pkt.triggers)
    return np.concatenate(ev), np.concatenate(imu), frames, np.concatenate(trig)


def header_bytes(chip="eu.seebetter.ini.chips.davis.DAVIS240C", extra=()) -> bytes:
    lines = ["#!AER-DAT2.0", "# Timestamps tick is 1 us", f"# AEChip: {chip}", *extra,
             "#End Of ASCII Header"]
    return ("\r\n".join(lines) + "\r\n").encode()


def records(addr, t) -> bytes:
    rec = np.empty(len(addr), np.dtype([("a", ">u4"), ("t", ">u4")]))
    rec["a"] = np.asarray(addr, np.uint64).astype(np.uint32)
    rec["t"] = np.asarray(t, np.int64) & 0xFFFFFFFF
    return rec.tobytes()


def davis_dvs(x_raw, y_raw, pol):
    return (int(y_raw) << 22) | (int(x_raw) << 12) | (int(pol) << 11)


# -- real recordings -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recording_matches_manifest(realdata, name):
    cam, w, h, n, on, off, t0, t1, dur, n_imu = REAL[name]
    src = open_source(realdata / "aedat2" / name)
    assert isinstance(src, Aedat2Source)
    assert (src.camera, src.width, src.height, src.resolution_note) == (cam, w, h, "")
    ev, imu, frames, trig = read_all(src)
    assert len(ev) == n
    assert int((ev["p"] == 1).sum()) == on and int((ev["p"] == 0).sum()) == off
    assert (int(ev["t"][0]), int(ev["t"][-1])) == (t0, t1)
    assert round((t1 - t0) / 1e6, 3) == dur
    assert np.all(np.diff(ev["t"]) >= 0)
    assert ev["x"].max() < w and ev["y"].max() < h
    assert len(imu) == n_imu == src.stats.imu == src.counts.imu_samples
    assert frames == [] and len(trig) == 0
    assert src.counts.imu_orphans == 0 and src.counts.resets == 0 and src.counts.wraps == 0
    if n_imu:
        assert np.all(np.diff(imu["t"]) >= 0) and t0 <= imu["t"][0] and imu["t"][-1] <= t1
        # the header says 8 g / 1000 deg/s; with jAER's 4 g fallback |a| would read ~2 g
        g = np.linalg.norm(imu["accel"], axis=1)
        assert 0.98 < float(g.mean()) < 1.04
        assert 20 < float(imu["temperature"].mean()) < 40
        assert src.describe()["imu_scale"].startswith("8 g, 1000 deg/s")


def test_translboxes_is_cut_mid_imu_sample(realdata, caplog):
    path = realdata / "aedat2" / "davis240c_IMU_translBoxes.aedat"
    with caplog.at_level(logging.WARNING):
        src = open_source(path)
        ev, imu, _, _ = read_all(src)
    # 196,608 records: the last 6 are an IMU sample missing its gyro z word
    assert src.counts.records == 196_608
    assert "6 of 7 words" in src.truncated_note
    assert f"byte offset {path.stat().st_size - 6 * 8}" in src.truncated_note
    assert any("truncated" in r.message for r in caplog.records)
    assert len(ev) + 7 * len(imu) + 6 == 196_608
    # upright camera: jAER's accel y is about -1 g (IMUSample.getAccelY)
    assert -1.05 < float(imu["accel"][:, 1].mean()) < -0.95


def test_rotdisk_has_no_truncation(realdata):
    src = open_source(realdata / "aedat2" / "davis240c_IMU_rotDisk.aedat")
    ev, imu, _, _ = read_all(src)
    assert src.truncated_note == ""
    assert len(ev) + 7 * len(imu) == 425_984


def test_dvs128_matches_manifest_address_formula(realdata):
    path = realdata / "aedat2" / "edvs128_DVS128-2017-03-21-short.aedat"
    src = open_source(path)
    ev, _, _, _ = read_all(src)
    with open(path, "rb") as f:
        off = read_header(f, str(path)).data_offset
    raw = np.frombuffer(path.read_bytes()[off:], np.dtype([("a", ">u4"), ("t", ">u4")]))
    a = raw["a"].astype(np.int64)
    assert np.array_equal(ev["x"], 127 - ((a >> 1) & 0x7F))
    assert np.array_equal(ev["y"], 127 - ((a >> 8) & 0x7F))
    assert np.array_equal(ev["p"], 1 - (a & 1))
    assert np.array_equal(ev["t"], raw["t"])


def test_davis_orientation_is_jaer_flipped_and_flip_y_option(realdata):
    path = realdata / "aedat2" / "davis240c_IMU_rotDisk.aedat"
    ev, _, _, _ = read_all(open_source(path))
    ev_raw_y, _, _, _ = read_all(open_source(path, flip_y=False))
    with open(path, "rb") as f:
        off = read_header(f, str(path)).data_offset
    raw = np.frombuffer(path.read_bytes()[off:], np.dtype([("a", ">u4"), ("t", ">u4")]))
    a = raw["a"][(raw["a"] >> 31) == 0].astype(np.int64)
    assert np.array_equal(ev["x"], 239 - ((a >> 12) & 0x3FF))      # jAER: x = sx1 - x_raw
    assert np.array_equal(ev["y"], 179 - ((a >> 22) & 0x1FF))      # bottom-left -> top-left
    assert np.array_equal(ev_raw_y["y"], (a >> 22) & 0x1FF)
    assert np.array_equal(ev_raw_y["x"], ev["x"])


def test_small_chunks_give_identical_output(realdata):
    # 4,099 records per chunk splits many 7-word IMU samples across chunk boundaries
    path = realdata / "aedat2" / "davis240c_IMU_translBoxes.aedat"
    ev1, imu1, _, _ = read_all(open_source(path))
    src = open_source(path, chunk_records=4_099)
    sizes = []
    with src:
        ev2, imu2 = [], []
        for pkt in src.packets():
            sizes.append(len(pkt.events))
            ev2.append(pkt.events)
            imu2.append(pkt.imu)
    assert max(sizes) <= 4_099 + 6 and len(sizes) == -(-196_608 // 4_099)
    assert np.array_equal(np.concatenate(ev2), ev1)
    assert np.array_equal(np.concatenate(imu2), imu1)
    assert "6 of 7 words" in src.truncated_note


# -- round trips ---------------------------------------------------------------------------------

def lsb_imu(n, t0, accel_lsb=4096.0, gyro_lsb=32.8, seed=1):
    """IMU samples whose values sit exactly on the quantisation grid."""
    rng = np.random.default_rng(seed)
    imu = np.zeros(n, IMU_DTYPE)
    imu["t"] = t0 + np.arange(n) * 1000
    imu["accel"] = rng.integers(-30000, 30000, (n, 3)) / accel_lsb
    imu["gyro"] = rng.integers(-30000, 30000, (n, 3)) / gyro_lsb
    imu["temperature"] = rng.integers(-3000, 3000, n) / 340.0 + 35.0
    return imu


@pytest.mark.parametrize("chip,w,h", [("DAVIS240C", 240, 180), ("DAVIS346", 346, 260),
                                      ("DVS128", 128, 128), ("DAVIS128", 128, 128)])
def test_write_read_round_trip_events(tmp_path, chip, w, h):
    ev = random_events(20_000, width=w, height=h, t0=123_456, duration_us=2_000_000)
    path = tmp_path / "rt.aedat"
    assert write_aedat2(path, ev, w, h, chip=chip) == len(ev)
    assert is_aedat2(path)
    src = open_source(path)
    assert (src.width, src.height, src.resolution_note) == (w, h, "")
    out, imu, frames, trig = read_all(src)
    assert np.array_equal(out, ev)
    assert len(imu) == 0 and frames == [] and len(trig) == 0


def test_write_read_round_trip_imu_and_frames(tmp_path):
    ev = random_events(5_000, width=240, height=180, t0=1_000, duration_us=200_000)
    imu = lsb_imu(150, t0=2_000)
    rng = np.random.default_rng(3)
    frames = [Frame(t_us=10_000 + 60_000 * k, image=rng.integers(0, 256, (180, 240), np.uint8),
                    exposure_us=4_000 + k) for k in range(3)]
    path = tmp_path / "rt.aedat2"                      # the .aedat2 suffix is registered too
    n = write_aedat2(path, ev, 240, 180, imu=imu, frames=frames)
    assert n == len(ev) + 7 * len(imu) + 3 * 2 * 240 * 180
    src = open_source(path, chunk_records=50_000)      # frames straddle chunk boundaries
    out, imu_out, fr_out, _ = read_all(src)
    assert np.array_equal(out, ev)
    assert np.array_equal(imu_out, imu)
    assert len(fr_out) == 3 and src.counts.aps_incomplete == 0
    for a, b in zip(fr_out, frames):
        assert (a.t_us, a.exposure_us) == (b.t_us, b.exposure_us)
        assert np.array_equal(a.image, b.image)
    assert src.truncated_note == ""


def test_imu_scale_from_header(tmp_path):
    imu = lsb_imu(20, t0=0, accel_lsb=16384.0, gyro_lsb=131.0)
    path = tmp_path / "s.aedat"
    write_aedat2(path, random_events(10, 240, 180), 240, 180, imu=imu, accel_g=2, gyro_dps=250)
    src = open_source(path)
    assert src.header.accel_g == 2 and src.header.gyro_dps == 250
    _, out, _, _ = read_all(src)
    assert np.array_equal(out, imu)


def test_time_wrap_round_trip(tmp_path):
    ev = random_events(10_000, width=240, height=180, t0=2**32 - 5_000, duration_us=10_000)
    path = tmp_path / "wrap.aedat"
    write_aedat2(path, ev, 240, 180)
    src = open_source(path)
    out, _, _, _ = read_all(src)
    assert np.array_equal(out, ev) and out["t"][-1] > 2**32
    assert src.counts.wraps == 1


def test_timestamp_reset_continues_time(tmp_path):
    t = [5_000_000, 5_000_010, 12, 20, 50]
    addr = [davis_dvs(i, i, 1) for i in range(5)]
    path = tmp_path / "reset.aedat"
    path.write_bytes(header_bytes() + records(addr, t))
    src = open_source(path)
    ev, _, _, trig = read_all(src)
    assert ev["t"].tolist() == [5_000_000, 5_000_010, 5_000_010, 5_000_018, 5_000_048]
    assert src.counts.resets == 1
    assert trig.tolist() == [(5_000_010, 0)]               # dv TriggerType.TIMESTAMP_RESET


def test_external_input_events_become_triggers(tmp_path):
    addr = [davis_dvs(1, 1, 0), 0x400 + 3, 0x400 + 2, davis_dvs(2, 2, 1), 0x400 + 4]
    path = tmp_path / "ext.aedat"
    path.write_bytes(header_bytes() + records(addr, [10, 20, 30, 40, 50]))
    ev, _, _, trig = read_all(open_source(path))
    assert len(ev) == 2
    assert trig.tolist() == [(20, 1), (30, 2), (50, 3)]     # rising, falling, pulse


def aps_words(xr, yr, rc, adc):
    return (1 << 31) | (int(yr) << 22) | (int(xr) << 12) | (int(rc) << 10) | int(adc)


def test_rolling_shutter_frame_and_mid_frame_start(tmp_path):
    w, h = 240, 180
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (h, w), np.uint8)
    addr, t = [], []
    # a partial frame first (the file starts mid-readout): signals of the last 10 columns
    for xr in range(w - 10, w):
        for yr in range(h):
            addr.append(aps_words(xr, yr, 1, 500))
            t.append(100)
    # rolling shutter: column c reset, then column c-3 signal read
    for c in range(w + 3):
        if c < w:
            for yr in range(h):
                addr.append(aps_words(c, yr, 0, 1023))
                t.append(1_000 + c)
        if c >= 3:
            for yr in range(h):
                v = int(img[h - 1 - yr, c - 3]) << 2
                addr.append(aps_words(c - 3, yr, 1, 1023 - v))
                t.append(1_000 + c)
    path = tmp_path / "aps.aedat"
    path.write_bytes(header_bytes() + records(addr, t))
    src = open_source(path)
    _, _, frames, _ = read_all(src)
    assert len(frames) == 1
    assert np.array_equal(frames[0].image, img)
    assert frames[0].t_us == 1_000 and frames[0].exposure_us == 3   # first reset -> first signal
    assert src.counts.aps_ignored == 10 * h and src.counts.aps_incomplete == 0


def test_global_shutter_exposure_starts_at_last_reset(tmp_path):
    w, h = 240, 180
    addr, t = [], []
    for rc, t0 in ((0, 1_000), (1, 9_000)):          # all resets, then all signal reads
        for c in range(w):
            for yr in range(h):
                addr.append(aps_words(c, yr, rc, 1023 if rc == 0 else 1023 - 4 * (c % 256)))
                t.append(t0 + c)
    path = tmp_path / "gs.aedat"
    path.write_bytes(header_bytes() + records(addr, t))
    _, _, frames, _ = read_all(open_source(path))
    assert len(frames) == 1
    assert frames[0].t_us == 1_000 + w - 1 and frames[0].exposure_us == 9_000 - (1_000 + w - 1)
    assert np.array_equal(frames[0].image[0], np.arange(w) % 256)


def test_incomplete_last_frame_is_noted(tmp_path):
    frames = [Frame(t_us=100, image=np.full((180, 240), 7, np.uint8), exposure_us=50)]
    path = tmp_path / "cut.aedat"
    write_aedat2(path, random_events(0), 240, 180, frames=frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8 * 1000])            # drop the last 1000 signal reads
    src = open_source(path)
    _, _, fr, _ = read_all(src)
    assert fr == [] and "last APS frame is incomplete" in src.truncated_note
    assert src.counts.aps_incomplete == 1


# -- options and resolution ----------------------------------------------------------------------

def test_width_height_override_is_noted(tmp_path):
    path = tmp_path / "o.aedat"
    write_aedat2(path, random_events(100, 240, 180), 240, 180)
    src = open_source(path, width=300, height=200)
    assert (src.width, src.height) == (300, 200)
    assert "from options" in src.resolution_note and "240x180" in src.resolution_note


def test_unknown_chip_infers_resolution(tmp_path):
    addr = [davis_dvs(x, y, 1) for x, y in [(0, 0), (99, 49), (10, 20)]]
    path = tmp_path / "u.aedat"
    path.write_bytes(header_bytes("org.example.SomeSensor") + records(addr, [1, 2, 3]))
    src = open_source(path)
    assert (src.width, src.height) == (100, 50) and src.layout == "davis"
    assert "inferred 100x50" in src.resolution_note
    ev, _, _, _ = read_all(src)
    assert ev[["x", "y"]].tolist() == [(99, 49), (0, 0), (89, 29)]


def test_events_outside_declared_sensor(tmp_path):
    addr = [davis_dvs(10, 10, 1), davis_dvs(250, 10, 1), davis_dvs(11, 10, 0)]   # x_raw 250 > 239
    path = tmp_path / "out.aedat"
    data = header_bytes() + records(addr, [1, 2, 3])
    path.write_bytes(data)
    with pytest.raises(BadEventsError, match=r"at byte offset \d+ \(address 0x028fa800\): "
                                              r"event at t=2 us .*outside the 240x180") as e:
        read_all(open_source(path))
    assert f"byte offset {len(data) - 16}" in str(e.value) and "\n" not in str(e.value)
    src = open_source(path, bad_events="drop")
    ev, _, _, _ = read_all(src)
    assert len(ev) == 2 and src.stats.dropped_outside_sensor == 1


def test_time_going_backwards(tmp_path):
    addr = [davis_dvs(i, i, 1) for i in range(4)]
    path = tmp_path / "back.aedat"
    data = header_bytes() + records(addr, [100, 200, 150, 300])
    path.write_bytes(data)
    with pytest.raises(BadEventsError, match=r"at byte offset \d+ .*: time goes backwards") as e:
        read_all(open_source(path))
    assert f"byte offset {len(data) - 16}" in str(e.value)
    src = open_source(path, bad_events="drop")
    ev, _, _, _ = read_all(src)
    assert ev["t"].tolist() == [100, 200, 300] and src.stats.dropped_out_of_order == 1


# -- bad input -----------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    path = tmp_path / "e.aedat"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="file is empty"):
        open_source(path)
    with pytest.raises(SourceError, match="#!AER-DAT"):
        open_aedat2(path)
    assert not is_aedat2(path) and not is_aedat2(tmp_path / "missing.aedat")


def test_wrong_magic(tmp_path):
    path = tmp_path / "m.aedat"
    path.write_bytes(b"#!AER-DATA? no\r\n" + b"\x00" * 64)
    with pytest.raises(SourceError, match="version"):
        open_source(path)
    path.write_bytes(b"hello world, not a recording" + b"\x00" * 64)
    with pytest.raises(SourceError, match="not a jAER AEDAT file") as e:
        open_source(path)
    assert "\n" not in str(e.value)


def test_aedat3_is_refused(tmp_path):
    path = tmp_path / "v3.aedat"
    path.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n" + b"\x00" * 64)
    with pytest.raises(SourceError, match="AEDAT 3.1 is not jAER AEDAT 2.0"):
        open_source(path)


def test_aedat4_named_aedat_is_refused_with_a_hint(realdata, tmp_path):
    path = tmp_path / "wheel.aedat"
    src_file = realdata / "aedat4" / "davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4"
    path.write_bytes(src_file.read_bytes())
    with pytest.raises(SourceError, match=r"is AEDAT 4.0, not jAER AEDAT 2.0; rename it to"):
        open_source(path)


def test_aedat1_records(tmp_path):
    # AEDAT 1.0: int16 address + int32 timestamp, DVS128 layout
    rec = np.zeros(3, np.dtype([("a", ">u2"), ("t", ">u4")]))
    rec["a"] = [(5 << 8) | (7 << 1) | 0, (6 << 8) | (8 << 1) | 1, 0x8000]
    rec["t"] = [10, 20, 30]
    path = tmp_path / "old.aedat"
    path.write_bytes(b"#!AER-DAT1.0\r\n# AEChip: ch.unizh.ini.caviar.chip.retina.Tmpdiff128\r\n"
                     + rec.tobytes())
    ev, _, _, trig = read_all(open_source(path))
    assert ev.tolist() == [(10, 120, 122, 1), (20, 119, 121, 0)]
    assert trig.tolist() == [(30, 2)]


def test_header_without_data(tmp_path):
    path = tmp_path / "h.aedat"
    hb = header_bytes()
    path.write_bytes(hb)
    with pytest.raises(SourceError, match=f"header only.*byte offset {len(hb)}"):
        open_source(path)


def test_partial_trailing_record(tmp_path, caplog):
    ev = random_events(1_000, width=240, height=180)
    path = tmp_path / "p.aedat"
    write_aedat2(path, ev, 240, 180)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")
    with caplog.at_level(logging.WARNING):
        src = open_source(path)
        out, _, _, _ = read_all(src)
    assert np.array_equal(out, ev)
    assert f"3 trailing bytes at byte offset {size}" in src.truncated_note


def test_garbage_records_give_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "g.aedat"
    path.write_bytes(header_bytes() + rng.integers(0, 256, 80_000, np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"byte offset \d+") as e:
        read_all(open_source(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_binary_line_starting_with_hash_ends_the_header(tmp_path):
    # the first record's address starts with 0x23 ('#'): it must be read as data
    addr = [0x23_40_50_00 & 0x7FFFF800, davis_dvs(3, 3, 1)]
    path = tmp_path / "hash.aedat"
    hb = ("\r\n".join(["#!AER-DAT2.0", "# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C"])
          + "\r\n").encode()
    path.write_bytes(hb + records(addr, [0x0A, 0x0B]))     # timestamp bytes hold a '\n'
    src = open_source(path)
    assert src.header.data_offset == len(hb)
    ev, _, _, _ = read_all(src)
    assert len(ev) == 2


def test_writer_rejects_bad_arguments(tmp_path):
    ev = random_events(10, 240, 180)
    with pytest.raises(ValueError, match="240x180"):
        write_aedat2(tmp_path / "x.aedat", ev, 346, 260, chip="DAVIS240C")
    with pytest.raises(ValueError, match="unknown chip"):
        write_aedat2(tmp_path / "x.aedat", ev, 240, 180, chip="ATIS")
    with pytest.raises(ValueError, match="no IMU"):
        write_aedat2(tmp_path / "x.aedat", random_events(10, 128, 128), 128, 128, chip="DVS128",
                     imu=lsb_imu(2, 0))
