"""`evstream info`: the real .aedat4 files through the CLI (JSON keys other checks rely on), other
formats through the same generic path, bad input (one stderr line, exit 2), the peak-rate bins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from conftest import run_evstream as evstream
from evstream.commands.info import PeakRate

# MANIFEST.md: events, ON, OFF, frames, IMU, triggers, camera, width, height, first, last event
AEDAT4 = {
    "davis346_aestream_davis.aedat4":
        (117_667, 72_363, 45_304, 3, 130, 15, "DAVIS346_00000104", 346, 260,
         1633953690975950, 1633953691105949),
    "dvxplorer-lite_tonic_sample.aedat4":
        (111_954, 55_023, 56_931, 0, 475, 0, "DVXplorer_DXB00010", 320, 240,
         1605537493718345, 1605537494308262),
    "davis346_wheel_2024_11_26_11_34_19_crop100x100.aedat4":
        (137_177, 75_545, 61_632, 0, 0, 0, "DAVIS346_00000305", 346, 260,
         1732617259261877, 1732617262707538),
    "davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4":
        (46_402, 26_243, 20_159, 0, 0, 0, "DAVIS346_00000305", 346, 260,
         1732617333465004, 1732617335045631),
}


@pytest.mark.parametrize("name", list(AEDAT4))
def test_info_json_on_real_aedat4(realdata, name, capsys):
    path = realdata / "aedat4" / name
    code, out, err = run_cli(capsys, "info", path, "--json")
    assert code == 0, err
    d = json.loads(out)
    n, on, off, nf, ni, nt, camera, w, h, t0, t1 = AEDAT4[name]
    assert {k: d[k] for k in ("camera", "width", "height", "events", "frames", "imu",
                              "triggers", "t_start_us", "t_end_us")} == dict(
        camera=camera, width=w, height=h, events=n, frames=nf, imu=ni, triggers=nt,
        t_start_us=t0, t_end_us=t1)
    assert (d["on"], d["off"], d["bytes"]) == (on, off, path.stat().st_size)
    assert d["duration_s"] == pytest.approx((t1 - t0) / 1e6)
    assert d["mean_rate_hz"] == pytest.approx(n / ((t1 - t0) / 1e6))
    assert d["mean_rate_hz"] <= d["peak_rate_hz"] and d["peak_bin_us"] == 10_000
    assert d["dropped_out_of_order"] == d["dropped_outside_sensor"] == 0
    assert d["resolution_note"] == "" and "events" in d["streams"]


def test_info_subprocess_json_and_text(realdata):
    path = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    r = evstream("info", path, "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout)["events"] == 117_667
    r = evstream("info", path)
    assert r.returncode == 0 and r.stderr == ""
    text = r.stdout
    for needle in ("DAVIS346_00000104", "346x260", "events, frames, imu, triggers",
                   "117,667  (ON 72,363 / OFF 45,304)", "10 ms bins", "anomalies   none",
                   "1,191,471 bytes"):
        assert needle in text, text


def test_info_other_formats_through_the_same_path(realdata, capsys):
    """Generic over EventSource: whatever other readers exist in this checkout."""
    cases = [("prophesee/gen3_evt2_sample.raw", 539_481, 1_317_888, 1_367_888),
             ("atis_bin/nmnist_tonic_sample.bin", 4_325, 654, 311_175),
             ("aedat2/edvs128_DVS128-2017-03-21-short.aedat", 130_114, None, None)]
    ran = 0
    for rel, n, t0, t1 in cases:
        code, out, err = run_cli(capsys, "info", realdata / rel, "--json")
        if code == 2 and "unknown recording format" in err:
            continue                     # that reader is not in this checkout yet
        assert code == 0, err
        d = json.loads(out)
        assert d["events"] == n
        if t0 is not None:
            assert (d["t_start_us"], d["t_end_us"]) == (t0, t1)
        ran += 1
    if not ran:
        pytest.skip("no other reader registered yet")


def _bad_inputs(realdata, tmp: Path) -> dict[str, Path]:
    data = (realdata / "aedat4" / "davis346_aestream_davis.aedat4").read_bytes()
    text = tmp / "text.aedat4"
    text.write_text("this is a text file, not a recording\n" * 20)
    empty = tmp / "empty.aedat4"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.aedat4"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    corrupt = bytearray(data)
    mid = 80_804 + 8 + 12                # inside the LZ4 data of an events packet
    corrupt[mid: mid + 16] = bytes(b ^ 0x5A for b in corrupt[mid: mid + 16])
    corrupted = tmp / "corrupted.aedat4"
    corrupted.write_bytes(bytes(corrupt))
    unknown = tmp / "events.xyz"
    unknown.write_bytes(b"\x00" * 64)
    return {"missing": tmp / "missing.aedat4", "empty": empty, "text": text,
            "truncated": truncated, "corrupted": corrupted, "unknown suffix": unknown}


def test_info_bad_input_is_one_line_exit_2(realdata, tmp_path):
    for what, path in _bad_inputs(realdata, tmp_path).items():
        r = evstream("info", path, timeout=60)
        lines = r.stderr.splitlines()
        assert r.returncode == 2, (what, r.returncode, r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr, (what, r.stderr)
        assert str(path) in lines[0] and r.stdout == "", (what, r.stderr)


def test_info_refuses_a_live_source():
    r = evstream("info", "synthetic:")
    assert r.returncode == 2 and "live source" in r.stderr and len(r.stderr.splitlines()) == 1


def test_peak_rate_matches_brute_force():
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(1_000_003, 1_250_000, 50_000) ** 1).astype(np.int64)
    t[1000:1400] = t[1000]                                   # a burst
    brute = np.bincount((t - t[0]) // 10_000).max()
    for cuts in ([], [17], [1000, 1200, 1201, 30_000], list(range(0, 50_000, 777))):
        pr = PeakRate()
        for part in np.split(t, cuts):
            pr.add(part)
        assert pr.result() == brute
    one = PeakRate()
    one.add(np.array([5], np.int64))
    assert one.result() == 1
