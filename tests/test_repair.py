"""`evstream repair`: real recordings cut mid-packet, with a damaged packet or packet header, or
never finished, are repaired into files dv-processing reads; what is kept is checked against
dv's own reading of the intact file's packets, and what is lost against the intact file's
packet table. Also the one-line errors of info/replay that point to it."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from conftest import run_cli
from conftest import run_evstream as evstream
from evstream.sources.aedat4_check import read_layout
from evstream.sources.aedat4_repair import (_table_rows, file_data_table, lz4_stored, salvage,
                                            write_repaired)
from evstream.types import EVENT_DTYPE

dv = pytest.importorskip("dv_processing")

DAVIS = "davis346_aestream_davis.aedat4"        # events, frames, IMU, triggers; 40 packets
FILES = ("davis346_aestream_davis.aedat4", "dvxplorer-lite_tonic_sample.aedat4",
         "davis346_wheel_2024_11_26_11_34_19_crop100x100.aedat4",
         "davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4")


def dv_read(path):
    """Everything dv-processing reads from path: events, frame times, IMU and trigger times,
    and its time range."""
    rec = dv.io.MonoCameraRecording(str(path))
    names = rec.getStreamNames()
    ev, frames, imu, trig = [], [], [], []
    while "events" in names and (s := rec.getNextEventBatch()) is not None:
        if len(s):
            ev.append(s.numpy().view(EVENT_DTYPE).copy())
    while "frames" in names and (f := rec.getNextFrame()) is not None:
        frames.append((f.timestamp, f.image.sum()))
    while "imu" in names and (b := rec.getNextImuBatch()) is not None:
        imu += [(i.timestamp, i.accelerometerX) for i in b]
    while "triggers" in names and (b := rec.getNextTriggerBatch()) is not None:
        trig += [(t.timestamp, int(t.type)) for t in b]
    events = np.concatenate(ev, dtype=EVENT_DTYPE) if ev else np.zeros(0, EVENT_DTYPE)
    return events, frames, imu, trig, tuple(rec.getTimeRange())


def unfinished(data: bytes, lay, end: int) -> bytes:
    """data[:end] with the header's packet-table position set to -1: what a recorder killed
    at byte `end` leaves (and what dv reads without a table)."""
    head = bytearray(data[:lay.data_start])
    at = head.find(struct.pack("<q", lay.table_pos))
    head[at:at + 8] = struct.pack("<q", -1)
    return bytes(head) + data[lay.data_start:end]


@pytest.fixture
def davis(realdata):
    path = realdata / "aedat4" / DAVIS
    return path, path.read_bytes(), read_layout(str(path))


@pytest.mark.parametrize("name", FILES)
def test_intact_files_come_back_whole_with_dv_s_own_packet_table(realdata, tmp_path, name):
    """The table written for the kept packets equals, entry for entry, the one dv-processing
    wrote (elements, first/last time stamps per packet), and dv reads the copy as the original."""
    src = realdata / "aedat4" / name
    salv = salvage(str(src))
    rows = _table_rows(str(src), read_layout(str(src)))
    assert salv.table == "intact" and not salv.damage
    assert np.array_equal(salv.offsets, rows[:, 0]) and np.array_equal(salv.stream_ids, rows[:, 1])
    assert np.array_equal(salv.meta, rows[:, 2:])
    out = tmp_path / "copy.aedat4"
    write_repaired(salv, str(out))
    a, b = dv_read(src), dv_read(out)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert salv.report()["packets_lost"] == 0 and salv.report()["bytes_lost"] == 0


def test_a_file_cut_mid_packet(davis, tmp_path, capsys):
    """Cut in the middle of an events packet: info and replay say one line naming repair;
    repair keeps exactly the complete packets before the cut (what dv reads from them)."""
    path, data, lay = davis
    k = 22                                              # an events packet of 63,133 bytes
    assert lay.streams[int(lay.stream_ids[k])].name == "events"
    cut_at = int(lay.offsets[k]) + int(lay.sizes[k]) // 2
    cut = tmp_path / "cut.aedat4"
    cut.write_bytes(data[:cut_at])
    want = tmp_path / "want.aedat4"                     # the first k packets, as dv reads them
    want.write_bytes(unfinished(data, lay, int(lay.offsets[k]) - 8))

    code, out, err = run_cli(capsys, "info", cut)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"inside packet {k}" in err and f"`evstream repair {cut} OUT.aedat4` recovers the " \
        f"{k} complete packets before the cut" in err
    r = evstream("replay", cut, "--no-model", "--no-viewer", "--speed", "max")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "evstream repair" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

    fixed = tmp_path / "fixed.aedat4"
    code, out, err = run_cli(capsys, "repair", cut, fixed, "--json")
    assert code == 0, err
    d = json.loads(out)
    got, ref = dv_read(fixed), dv_read(want)
    assert d["packets_kept"] == k and d["table"] == "cut off" and d["packets_lost"] is None
    assert (d["events"], d["frames"], d["imu"], d["triggers"]) == \
        (len(ref[0]), len(ref[1]), len(ref[2]), len(ref[3])) == (65_914, 2, 70, 8)
    assert np.array_equal(got[0], ref[0]) and got[1:4] == ref[1:4]
    assert (d["events_t_start_us"], d["events_t_end_us"]) == \
        (int(ref[0]["t"][0]), int(ref[0]["t"][-1]))
    assert d["damaged"] == [{"byte": int(lay.offsets[k]) - 8, "bytes": cut_at - lay.offsets[k] + 8,
                             "what": f"packet of events cut short ({cut_at - lay.offsets[k]} "
                                     f"of its {lay.sizes[k]} bytes)"}]
    assert d["bytes_lost"] == cut_at - lay.offsets[k] + 8
    # the repaired file is a finished one: table, and every reader opens it
    assert read_layout(str(fixed)).table_pos > 0
    code, out, err = run_cli(capsys, "info", fixed, "--json")
    assert code == 0 and json.loads(out)["events"] == 65_914, err
    # the human line
    code, out, err = run_cli(capsys, "repair", cut, fixed, "--force")
    assert code == 0 and len(out.splitlines()) == 1, err
    assert f"kept {k} packets (65,914 events, 2 frames, 70 IMU samples, 8 triggers" in out
    assert "packet of events cut short" in out and "packet table was cut off" in out


def test_a_damaged_packet_in_the_middle_is_skipped(davis, tmp_path, capsys):
    """A broken LZ4 frame in packet 30: every other packet is kept; what is lost is exactly
    packet 30's elements (from the input's table); info names repair before it."""
    path, data, lay = davis
    k = 30
    rows = _table_rows(str(path), lay)
    bad = bytearray(data)
    bad[int(lay.offsets[k]) + 12] ^= 0xFF
    damaged = tmp_path / "damaged.aedat4"
    damaged.write_bytes(bytes(bad))
    code, _, err = run_cli(capsys, "info", damaged, "--bad-events", "error")
    assert code == 2 and f"corrupt packet {k}" in err and "evstream repair" in err, err

    fixed = tmp_path / "fixed.aedat4"
    code, out, err = run_cli(capsys, "repair", damaged, fixed, "--json")
    assert code == 0, err
    d = json.loads(out)
    name = lay.streams[int(lay.stream_ids[k])].name
    lost = dict.fromkeys(("events", "frames", "imu", "triggers"), 0)
    lost[name] = int(rows[k, 2])
    assert d["packets_kept"] == len(lay.offsets) - 1 and d["packets_lost"] == 1
    assert d["lost"] == lost and (d["lost_t_start_us"], d["lost_t_end_us"]) == tuple(rows[k, 3:])
    assert [x["byte"] for x in d["damaged"]] == [int(lay.offsets[k]) - 8]
    assert d["damaged"][0]["bytes"] == lay.sizes[k] + 8 and name in d["damaged"][0]["what"]
    # dv reads the original minus that packet
    orig, got = dv_read(path), dv_read(fixed)
    if name == "events":
        ev_rows = rows[rows[:, 1] == lay.stream_ids[k]]
        i = int(np.flatnonzero(ev_rows[:, 0] == lay.offsets[k])[0])
        first = int(ev_rows[:i, 2].sum())
        want = np.concatenate([orig[0][:first], orig[0][first + int(rows[k, 2]):]])
        assert np.array_equal(got[0], want) and got[1:4] == orig[1:4]
    else:
        assert np.array_equal(got[0], orig[0])
    assert d["events"] == len(got[0])


def test_a_damaged_packet_header_and_a_zeroed_stretch(davis, tmp_path):
    """The walk finds the next packet after a header whose size is garbage, and after bytes
    zeroed across two packets; the input's table says exactly which packets went."""
    path, data, lay = davis
    k = 20
    bad = bytearray(data)
    bad[int(lay.offsets[k]) - 4:int(lay.offsets[k])] = struct.pack("<i", 123_456_789)
    p = tmp_path / "size.aedat4"
    p.write_bytes(bytes(bad))
    s = salvage(str(p)).report()
    assert s["packets_kept"] == len(lay.offsets) - 1 and s["packets_lost"] == 1
    assert "damaged header" in s["damaged"][0]["what"]

    zero = bytearray(data)
    start, end = int(lay.offsets[k]) - 8, int(lay.offsets[k + 1]) + 10
    zero[start:end] = bytes(end - start)
    p = tmp_path / "zero.aedat4"
    p.write_bytes(bytes(zero))
    salv = salvage(str(p))
    s = salv.report()
    assert s["packets_kept"] == len(lay.offsets) - 2 and s["packets_lost"] == 2
    assert s["damaged"][0]["byte"] == start and "not a packet header" in s["damaged"][0]["what"]
    assert s["damaged"][0]["bytes"] == int(lay.offsets[k + 2]) - 8 - start
    out = tmp_path / "zero_fixed.aedat4"
    write_repaired(salv, str(out))
    assert len(dv_read(out)[0]) == s["events"]


def test_an_unfinished_recording_cut_mid_packet(davis, tmp_path, capsys):
    """What a killed recorder leaves (no table, a packet cut short at the end) is readable as it
    is; repair finishes it with the same content."""
    path, data, lay = davis
    k = 25
    p = tmp_path / "killed.aedat4"
    p.write_bytes(unfinished(data, lay, int(lay.offsets[k] + lay.sizes[k] // 2)))
    code, out, err = run_cli(capsys, "info", p, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["details"]["finished"] is False
    assert info["details"]["tail_bytes"] == 8 + lay.sizes[k] // 2
    code, out, err = run_cli(capsys, "info", p)
    assert "not finished" in out and f"the last {8 + lay.sizes[k] // 2:,} bytes" in out
    fixed = tmp_path / "fixed.aedat4"
    code, out, err = run_cli(capsys, "repair", p, fixed, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["table"] == "none" and d["packets_kept"] == k and d["events"] == info["events"]
    assert np.array_equal(dv_read(p)[0], dv_read(fixed)[0])


def test_uncompressed_files_resync_on_the_type_identifier(tmp_path):
    """Compression NONE (the writer's scratch format): a packet whose flatbuffer is damaged is
    skipped and the walk finds the next one by its "EVTS" identifier."""
    from conftest import random_events
    from evstream.sources.writer import _ScratchConverter

    conv = _ScratchConverter(346, 260)
    ev = random_events(3 * 65_536, duration_us=1_000_000)
    list(conv.stores(ev))                    # writes the scratch file: 3 packets, no table
    data = bytearray(open(conv.path, "rb").read())
    conv.close()
    src = tmp_path / "plain.aedat4"
    src.write_bytes(bytes(data))
    lay = read_layout(str(src))
    assert lay.compression == 0 and len(lay.offsets) == 3
    data[int(lay.offsets[1]) + 8:int(lay.offsets[1]) + 12] = b"XXXX"   # its identifier
    src.write_bytes(bytes(data))
    salv = salvage(str(src))
    assert len(salv.offsets) == 2 and salv.damage[0].byte == int(lay.offsets[1]) - 8
    out = tmp_path / "fixed.aedat4"
    write_repaired(salv, str(out))
    got = dv_read(out)[0]
    assert np.array_equal(got, np.concatenate([ev[:65_536], ev[2 * 65_536:]]))


def test_table_helpers_round_trip():
    """The FileDataTable built here reads back through the same parser as dv's tables, and
    the stored LZ4 frame decodes (more than one 64 KiB block)."""
    from evstream.sources.lz4_check import _lz4_frame

    rows = [(100 + 48 * i, i % 3, 40, i, 10 * i, 10 * i + 5) for i in range(2000)]
    fdt = file_data_table(rows)
    frame = np.frombuffer(lz4_stored(fdt), np.uint8)
    n = _lz4_frame(frame, 0, len(frame), np.zeros(0, np.uint8))
    out = np.zeros(n, np.uint8)
    _lz4_frame(frame, 0, len(frame), out)
    assert n == len(fdt) > 1 << 16 and out.tobytes() == fdt


def test_bad_input_is_one_line_exit_2(davis, tmp_path, capsys):
    path, data, lay = davis
    text = tmp_path / "notes.aedat4"
    text.write_text("hello\n")
    header_only = tmp_path / "header.aedat4"
    header_only.write_bytes(unfinished(data, lay, lay.data_start))
    half_header = tmp_path / "half.aedat4"
    half_header.write_bytes(data[:lay.data_start // 2])
    from evstream.sources.writer import io_header

    xml = lay.info_xml.encode()
    zstd = tmp_path / "zstd.aedat4"
    h = io_header(xml, 3, -1)
    zstd.write_bytes(b"#!AER-DAT4.0\r\n" + struct.pack("<i", len(h)) + h)
    exists = tmp_path / "exists.aedat4"
    exists.write_bytes(b"x")
    good = tmp_path / "out.aedat4"
    for args, needle in (((tmp_path / "nope.aedat4", good), "no such file"),
                         ((text, good), "not an AEDAT 4.0 file"),
                         ((half_header, good), "header"),
                         ((header_only, good), "no intact packet"),
                         ((zstd, good), "ZSTD"),
                         ((path, tmp_path / "out.raw"), "must end in .aedat4"),
                         ((path, path), "is the input"),
                         ((path, exists), "exists; give --force"),
                         ((path, tmp_path / "no" / "out.aedat4"), "does not exist"),
                         ((path, tmp_path / ("x" * 300 + ".aedat4")), "cannot write")):
        code, out, err = run_cli(capsys, "repair", *args)
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert needle in err, (needle, err)
    assert sorted(os.listdir(tmp_path)) == ["exists.aedat4", "half.aedat4", "header.aedat4",
                                            "notes.aedat4", "zstd.aedat4"]
    r = evstream("repair", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout
    assert "evstream repair cut.aedat4 fixed.aedat4" in r.stdout
