"""`evstream convert` and the streaming writers (sources/writers.py): real recordings through
every writer and read back by evstream's own readers, --verify passing and catching a writer
that loses or changes one event, bounded memory (the most events a writer holds), the DSEC
layout (and compressed HDF5 through hdf5plugin), streamed files equal to the whole-array
writers', `record` into other formats, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from conftest import run_evstream as evstream
from evstream.commands.convert import EventDigest, convert
from evstream.errors import EvstreamError
from evstream.sources import open_source, writers
from evstream.types import IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet, concat_events

DAVIS = ("aedat4", "davis346_aestream_davis.aedat4")      # events, 3 frames, 130 IMU, 15 triggers
WHEEL = ("aedat4", "davis346_wheel_2024_11_26_11_35_33_crop50x50.aedat4")   # ONE 46k packet
EVT2 = ("prophesee", "gen3_evt2_sample.raw")              # 640x480
PEDESTRIANS = ("prophesee", "gen41_evt3_pedestrians.raw")  # 1280x720, 5,000 events
DVS128 = ("aedat2", "edvs128_DVS128-2017-03-21-short.aedat")
NMNIST = ("atis_bin", "nmnist_tonic_sample.bin")


def everything(path, **options):
    with open_source(path, **options) as src:
        packets = list(src.packets())
        geometry = (src.width, src.height)
    return (concat_events(p.events for p in packets), [f for p in packets for f in p.frames],
            sum(len(p.imu) for p in packets), np.concatenate([p.triggers for p in packets]),
            geometry)


def shifted(ev, shift):
    out = ev.copy()
    out["t"] -= shift
    return out


def run_convert(src_path, out, fmt=None, **kw):
    f = writers.resolve(str(out), fmt)
    with open_source(src_path) as src:
        return convert(src, str(out), f, check=True, **kw)


# -- every writer, from real files ------------------------------------------------------------

@pytest.mark.parametrize("name,fmt,carried", [
    ("a.aedat4", None, ("frames", "imu", "triggers")),
    ("a.raw", None, ()), ("a.raw", "evt2", ()), ("a.dat", None, ()),
    ("a.aedat", None, ("frames", "imu")), ("a.npy", None, ()), ("a.npz", None, ()),
    ("a.h5", None, ())])
def test_davis346_into_every_format(realdata, tmp_path, name, fmt, carried):
    """A DAVIS346 recording (frames, IMU, triggers; times since 1970) into each format: read
    back by evstream's reader it holds the same events (shifted to start at 0 where the format
    cannot hold 1970-based times), the side streams the format carries, and the summary names
    every stream dropped, with its count."""
    src = realdata.joinpath(*DAVIS)
    s = run_convert(src, tmp_path / name, fmt)
    ev, frames, n_imu, trig, _ = everything(src)
    got, got_frames, got_imu, got_trig, geometry = everything(
        tmp_path / name, **({} if writers.resolve(name, fmt).stores_geometry else
                            {"width": 346, "height": 260}))
    assert s["verify"]["ok"], s["verify"]
    limited = writers.resolve(name, fmt).time_limit_us is not None
    assert s["t_shift_us"] == (int(ev["t"][0]) if limited else 0)
    assert np.array_equal(got, shifted(ev, s["t_shift_us"]))
    assert geometry == (346, 260) and s["events"] == len(ev) == 117_667
    want = {"frames": len(frames), "imu": n_imu, "triggers": len(trig)}
    for k, n in want.items():
        held = k in carried
        assert s[k] == (n if held else 0)
        assert (k in s["dropped"]) == (not held) and (held or s["dropped"][k]["n"] == n)
    if "frames" in carried:
        assert [f.t_us - s["t_shift_us"] for f in frames] == [f.t_us for f in got_frames]
        assert all(np.array_equal(f.image, g.image) for f, g in zip(frames, got_frames))
    if name == "a.aedat":   # its 15 triggers are APS frame/exposure signals: no jAER word
        assert s["dropped"]["triggers"]["n"] == 15 and "1/2/3" in s["dropped"]["triggers"]["why"]
    assert sorted(os.listdir(tmp_path)) == [name]           # no temporaries left


@pytest.mark.parametrize("name,fmt", [("p.raw", "evt2"), ("p.raw", "evt3"), ("p.dat", None),
                                      ("p.aedat", None), ("p.npz", None), ("p.h5", None),
                                      ("p.aedat4", None)])
def test_prophesee_raw_into_every_format_with_a_time_range(realdata, tmp_path, name, fmt):
    """Prophesee EVT 2.0 (Gen3 VGA, 640x480: jAER's Davis640 for AEDAT 2.0) cut with
    --start/--end: items with first + start <= t < first + end, times kept."""
    src = realdata.joinpath(*EVT2)
    s = run_convert(src, tmp_path / name, fmt, start_s=0.01, end_s=0.02)
    ev = everything(src)[0]
    t0 = int(ev["t"][0])
    want = ev[(ev["t"] >= t0 + 10_000) & (ev["t"] < t0 + 20_000)]
    got, *_, geometry = everything(tmp_path / name)
    assert s["verify"]["ok"] and s["t_shift_us"] == 0
    assert len(want) > 50_000 and np.array_equal(got, want) and geometry == (640, 480)


def test_atis_bin_writer_from_real_files(realdata, tmp_path):
    """.bin: an N-MNIST file copies byte for byte; a DVS128 recording (times from 113 s, so
    shifted to start at 0) fits its 8-bit fields and reads back with its width/height."""
    src = realdata.joinpath(*NMNIST)
    s = run_convert(src, tmp_path / "n.bin")
    assert s["verify"]["ok"] and s["t_shift_us"] == 0
    assert (tmp_path / "n.bin").read_bytes() == src.read_bytes()

    src = realdata.joinpath(*DVS128)
    s = run_convert(src, tmp_path / "d.bin")
    ev = everything(src)[0]
    assert s["verify"]["ok"] and s["t_shift_us"] == int(ev["t"][0]) > 1 << 23
    assert np.array_equal(everything(tmp_path / "d.bin", width=128, height=128)[0],
                          shifted(ev, s["t_shift_us"]))


def test_formats_back_into_aedat4_and_prophesee(realdata, tmp_path):
    """The other direction: EVT 3.0 -> DAT -> AEDAT 4.0 -> npz -> EVT 3.0 keeps every event."""
    src = realdata.joinpath(*PEDESTRIANS)
    ev = everything(src)[0]
    prev = src
    for name in ("1.dat", "2.aedat4", "3.npz", "4.h5", "5.raw"):
        s = run_convert(prev, tmp_path / name)
        assert s["verify"]["ok"] and s["events"] == 5_000, (name, s["verify"])
        prev = tmp_path / name
    got, *_, geometry = everything(prev)
    assert np.array_equal(got, ev) and geometry == (1280, 720)


# -- --verify ----------------------------------------------------------------------------------

class _LosesOne:
    """A writer that drops the 100th event it is given (a damaged output)."""

    def write(self, packet):
        n = self.counts["events"]
        ev = packet.events
        if n <= 100 < n + len(ev):
            packet = Packet(np.delete(ev, 100 - n), packet.frames, packet.imu, packet.triggers)
        super().write(packet)


class _FlipsOne:
    """A writer that turns the polarity of the 100th event (same count, same times)."""

    def write(self, packet):
        n = self.counts["events"]
        ev = packet.events
        if n <= 100 < n + len(ev):
            ev = ev.copy()
            ev["p"][100 - n] ^= 1
            packet = Packet(ev, packet.frames, packet.imu, packet.triggers)
        super().write(packet)


@pytest.mark.parametrize("fmt,module,cls,tamper,needle", [
    ("evt3", "prophesee", "RawWriter", _LosesOne, "5,000 written, 4,999 read"),
    ("h5", "arrays", "H5Writer", _FlipsOne, "sum_p, blake2b: 5,000 written, 5,000 read")])
def test_verify_catches_a_damaged_output(realdata, tmp_path, capsys, monkeypatch, fmt, module,
                                         cls, tamper, needle):
    import importlib

    base = getattr(importlib.import_module(f"evstream.sources.{module}"), cls)
    bad = type(f"Bad{cls}", (tamper, base), {})
    kw = {"evt": "3.0"} if fmt == "evt3" else {}
    tampered = dataclasses.replace(writers.FORMATS[fmt], factory=lambda p, **o: bad(p, **kw, **o))
    monkeypatch.setitem(writers.FORMATS, fmt, tampered)
    out = tmp_path / ("o.raw" if fmt == "evt3" else "o.h5")
    src = realdata.joinpath(*PEDESTRIANS)
    code, stdout, err = run_cli(capsys, "convert", src, out, "--verify", "--json", "-q")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("evstream convert: error: verify failed: ") and needle in err, err
    v = json.loads(stdout)["verify"]
    assert v["ok"] is False and v["written"]["events"] == 5_000 and out.exists()
    monkeypatch.undo()                            # the real writer passes the same check
    code, stdout, err = run_cli(capsys, "convert", src, out, "--verify", "--json", "-q",
                                "--force")
    assert code == 0 and json.loads(stdout)["verify"]["ok"] is True, err


def test_event_digest_is_exact_and_order_sensitive(events_factory):
    ev = events_factory(1000, seed=2)
    a, b, c = EventDigest(), EventDigest(), EventDigest()
    a.update(ev)
    b.update(ev[:300]), b.update(ev[300:])            # any split: the same digest
    swapped = ev.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    c.update(swapped)                                  # same sums, another order
    assert a.as_dict() == b.as_dict()
    da, dc = a.as_dict(), c.as_dict()
    assert da["blake2b"] != dc["blake2b"] and {k: v for k, v in da.items() if k != "blake2b"} \
        == {k: v for k, v in dc.items() if k != "blake2b"}


# -- bounded memory -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["w.h5", "w.raw", "w.npz", "w.aedat"])
def test_writers_hold_bounded_events(realdata, tmp_path, name):
    """The wheel recording is ONE packet of 46,402 events: handed over in pieces of 1,000 (and
    an HDF5 buffer of 1,000), no writer ever holds more than 2,000 events; handed over whole,
    it holds the whole packet (so the measure is real)."""
    src = realdata.joinpath(*WHEEL)
    opts = {"writer_options": {"chunk_events": 1000}} if name.endswith(".h5") else {}
    s = run_convert(src, tmp_path / name, packet_events=1000, **opts)
    assert s["verify"]["ok"] and s["events"] == 46_402
    assert 0 < s["peak_buffered_events"] <= 2000
    s = run_convert(src, tmp_path / ("big" + name), **opts)
    assert s["peak_buffered_events"] >= 46_402


# -- the formats' own layouts -------------------------------------------------------------------

def test_h5_is_dsec_layout_with_ms_to_idx_and_t_offset(tmp_path, events_factory):
    import h5py

    ev = events_factory(20_000, 640, 480, t0=5_000_123, duration_us=300_000, seed=5)
    path = tmp_path / "d.h5"
    with writers.open_writer(path, writers.FORMATS["h5"], width=640, height=480,
                             chunk_events=3_000) as w:
        for i in range(0, len(ev), 1_700):
            w.write(Packet(ev[i:i + 1_700]))
    assert w.peak_buffered < 3_000 + 1_700
    with h5py.File(path) as f:
        t = f["events/t"]
        assert t.dtype == np.uint32 and t.chunks == (3_000,) and t.maxshape == (None,)
        assert [f[f"events/{k}"].dtype for k in "xyp"] == [np.uint16, np.uint16, np.uint8]
        assert int(f["t_offset"][()]) == int(ev["t"][0])
        rel = ev["t"] - int(ev["t"][0])
        want = np.searchsorted(rel, np.arange(int(rel[-1]) // 1000 + 1) * 1000, "left")
        assert np.array_equal(f["ms_to_idx"][:], want)         # DSEC: first event at >= ms
        assert (f.attrs["width"], f.attrs["height"]) == (640, 480)
    assert np.array_equal(everything(path)[0], ev)


def test_h5_widens_t_past_32_bits(tmp_path, events_factory):
    import h5py

    ev = concat_events([events_factory(3000, t0=0, seed=1),
                        events_factory(3000, t0=(1 << 32) + 7, seed=2)])
    path = tmp_path / "long.h5"
    with writers.open_writer(path, writers.FORMATS["h5"], width=346, height=260,
                             chunk_events=1000) as w:
        for i in range(0, len(ev), 1000):
            w.write(Packet(ev[i:i + 1000]))
    with h5py.File(path) as f:
        assert f["events/t"].dtype == np.int64 and f["events/t"].chunks == (1000,)
    assert np.array_equal(everything(path)[0], ev)


@pytest.mark.parametrize("compression,filter_id", [("zstd", 32015), ("blosc", 32001)])
def test_compressed_h5_reads_through_hdf5plugin(tmp_path, events_factory, compression,
                                                filter_id):
    """DSEC's files are compressed with filters only hdf5plugin provides: a file made with
    h5py + hdf5plugin directly, and one from H5Writer, both read back exactly."""
    import h5py
    import hdf5plugin

    ev = events_factory(10_000, seed=7)
    direct = tmp_path / "direct.h5"
    filt = hdf5plugin.Zstd() if compression == "zstd" else hdf5plugin.Blosc(cname="zstd")
    with h5py.File(direct, "w") as f:
        for k, dt in (("t", np.int64), ("x", np.uint16), ("y", np.uint16), ("p", np.uint8)):
            f.create_dataset(f"events/{k}", data=ev[k].astype(dt), chunks=(4096,), **filt)
    path = tmp_path / "w.h5"
    with writers.open_writer(path, writers.FORMATS["h5"], width=346, height=260,
                             compression=compression) as w:
        w.write(Packet(ev))
    for p in (direct, path):
        with h5py.File(p) as f:
            assert filter_id in f["events/x"]._filters or str(filter_id) in f["events/x"]._filters
        assert np.array_equal(everything(p, width=346, height=260)[0], ev)


def test_npz_and_npy_are_numpy_files(tmp_path, events_factory):
    ev = events_factory(5000, seed=8)
    for name, options in (("a.npz", {}), ("c.npz", {"compress": True}), ("a.npy", {})):
        with writers.open_writer(tmp_path / name, writers.resolve(name), width=346, height=260,
                                 **options) as w:
            for i in range(0, len(ev), 777):
                w.write(Packet(ev[i:i + 777]))
        if name.endswith(".npy"):
            got = np.load(tmp_path / name)
        else:
            with np.load(tmp_path / name) as z:
                assert sorted(z.files) == ["height", "p", "t", "width", "x", "y"]
                assert (int(z["width"]), int(z["height"])) == (346, 260)
                got = {k: z[k] for k in "txyp"}
        for k in "txyp":
            assert np.array_equal(got[k], ev[k])
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "a.npz", "c.npz"]     # temporaries gone
    assert (tmp_path / "c.npz").stat().st_size < (tmp_path / "a.npz").stat().st_size


def test_streamed_evt_and_aedat2_equal_the_whole_array_writers(tmp_path, events_factory):
    """The streaming encoders carry their state from packet to packet: writing in 97-event
    packets gives the same bytes as one call (EVT with times past the 24-bit counter and
    triggers; AEDAT 2.0 with IMU samples and frames)."""
    from evstream.sources.aedat2 import write_aedat2
    from evstream.sources.prophesee import write_evt2, write_evt3

    ev = concat_events([events_factory(3000, 640, 480, t0=100, duration_us=40_000, seed=3),
                        events_factory(3000, 640, 480, t0=3 << 24, duration_us=9_000, seed=4)])
    t_tr = np.sort(np.random.default_rng(5).integers(0, int(ev["t"][-1]) + 5_000, 40))
    t_tr = t_tr[~np.isin(t_tr, ev["t"])]           # (a tie at a packet edge may order either way)
    tr = np.zeros(len(t_tr), TRIGGER_DTYPE)
    tr["t"], tr["type"] = t_tr, np.where(np.arange(len(t_tr)) % 2, 1, 2)
    for evt, whole in (("2.0", write_evt2), ("3.0", write_evt3)):
        whole(tmp_path / "whole.raw", ev, 640, 480, triggers=tr)
        with writers.open_writer(tmp_path / "parts.raw",
                                 writers.FORMATS["evt2" if evt == "2.0" else "evt3"],
                                 width=640, height=480) as w:
            for i in range(0, len(ev), 97):
                part = ev[i:i + 97]
                lo, hi = (-1 if i == 0 else ev["t"][i - 1]), part["t"][-1]
                w.write(Packet(part, triggers=tr[(tr["t"] > lo) & (tr["t"] <= hi)]))
            w.write(Packet(triggers=tr[tr["t"] > ev["t"][-1]]))
        assert (tmp_path / "parts.raw").read_bytes() == (tmp_path / "whole.raw").read_bytes()
        assert w.counts["triggers"] == w.written["triggers"] == len(tr) > 30

    ev = events_factory(4000, 240, 180, t0=1000, duration_us=200_000, seed=6)
    imu = np.zeros(50, IMU_DTYPE)
    imu["t"] = np.sort(np.random.default_rng(7).integers(1000, 200_000, 50))
    imu["accel"] = 0.5
    frames = [Frame(20_000 + 50_000 * k, np.full((180, 240), 9 * k, np.uint8), 3_000)
              for k in range(3)]
    write_aedat2(tmp_path / "whole.aedat", ev, 240, 180, imu=imu, frames=frames)
    with writers.open_writer(tmp_path / "parts.aedat", writers.FORMATS["aedat2"], width=240,
                             height=180, imu=True, frames=True) as w:
        w.write(Packet(ev[:0], frames, imu))       # side items first: held for the events
        for i in range(0, len(ev), 97):
            w.write(Packet(ev[i:i + 97]))
    assert (tmp_path / "parts.aedat").read_bytes() == (tmp_path / "whole.aedat").read_bytes()


def test_late_side_items_and_trigger_types_are_counted_not_silent(tmp_path, events_factory):
    ev = events_factory(200, 640, 480, t0=10_000, duration_us=10_000, seed=9)
    tr = np.zeros(3, TRIGGER_DTYPE)
    tr["t"], tr["type"] = [5_000, 15_000, 30_000], [1, 6, 2]   # late, no EVT word, held
    with writers.open_writer(tmp_path / "l.raw", writers.FORMATS["evt3"], width=640,
                             height=480) as w:
        w.write(Packet(ev))
        w.write(Packet(triggers=tr))
    assert w.counts["triggers"] == 1 and w.dropped["triggers"] == 2
    assert set(w.drop_reasons) == {"triggers"}
    assert np.array_equal(everything(tmp_path / "l.raw")[3]["t"], [30_000])


# -- record into other formats -------------------------------------------------------------------

def test_record_writes_any_format(tmp_path, capsys):
    spec = "synthetic:?duration=0.2&frame_rate=20&rate=300000&seed=4"
    code, stdout, err = run_cli(capsys, "record", tmp_path / "r.raw", spec, "--max-events",
                                12_345, "--format", "evt2", "--json", "-q")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["format"] == "evt2" and s["events"] == 12_345 and s["frames"] == 0
    assert s["dropped"]["frames"]["n"] >= 1 and "no frames" in s["dropped"]["frames"]["why"]
    want = everything(spec)[0][:12_345]
    assert np.array_equal(everything(tmp_path / "r.raw")[0], want)
    code, stdout, err = run_cli(capsys, "record", tmp_path / "r.npy", spec, "--json", "-q")
    assert code == 0 and list(json.loads(stdout)["dropped"]) == ["frames"], err
    assert np.array_equal(everything(tmp_path / "r.npy", width=346, height=260)[0],
                          everything(spec)[0])


# -- ROS 2 bags ------------------------------------------------------------------------------------

def test_rosbag2_output_is_chosen_by_format_or_mcap_suffix(realdata, tmp_path, capsys):
    """--format rosbag2 (OUT: the bag's folder) or OUT.mcap go to
    sources.rosbag_writer.RosbagWriter: a round trip read back by evstream's bag reader where
    that module exists, else one line saying it is missing."""
    src = realdata.joinpath(*DAVIS)
    try:
        import evstream.sources.rosbag_writer  # noqa: F401
    except ModuleNotFoundError:
        out = tmp_path / "bag"
        code, _, err = run_cli(capsys, "convert", src, out, "--format", "rosbag2", "-q")
        assert code == 2 and err.strip() == (
            f"evstream convert: error: {out}: ROS 2 bag output is not built in this checkout "
            "(evstream.sources.rosbag_writer is missing)")
        assert not out.exists()
        return
    ev = everything(src)[0]
    for out, fmt in ((tmp_path / "bag", ["--format", "rosbag2"]), (tmp_path / "one.mcap", [])):
        code, stdout, err = run_cli(capsys, "convert", src, out, *fmt, "--verify", "--json",
                                    "-q")
        assert code == 0, err
        s = json.loads(stdout)
        assert s["format"] == "rosbag2" and s["verify"]["ok"], s["verify"]
        assert (s["events"], s["frames"], s["imu"]) == (len(ev), 3, 130)
        assert s["dropped"]["triggers"]["n"] == 15           # APS signals: no EVT word
        assert np.array_equal(everything(out)[0], ev)
    assert (tmp_path / "bag").is_dir() and (tmp_path / "one.mcap").is_file()


# -- one-line errors -------------------------------------------------------------------------------

def test_errors_are_one_line(realdata, tmp_path, capsys):
    src = tmp_path / "in.raw"
    src.write_bytes(realdata.joinpath(*PEDESTRIANS).read_bytes())
    (tmp_path / "old.h5").write_bytes(b"old")
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "keep.txt").write_text("mine")
    for args, needle in (
            ((src, tmp_path / "o.txt"), "o.txt: unknown output format (suffix .txt)"),
            ((src, tmp_path / "o.raw", "--format", "evt4"), "--format evt4: unknown output"),
            ((src, tmp_path / "o.h5", "--format", "evt2"), "--format evt2 writes .raw files"),
            ((src, tmp_path / "old.h5"), "old.h5: exists; give --force to replace it"),
            ((src, src, "--force"), "is the input"),
            ((src, tmp_path / "dir.npz"), "dir.npz: is a folder"),
            ((src, tmp_path / "notabag", "--format", "rosbag2", "--force"), "holds no ROS 2 bag"),
            ((src, tmp_path / "o.aedat"), "AEDAT 2.0 is written for jAER's chips"),
            ((src, tmp_path / "o.h5", "--end", "0"), "--end 0.0: must be > 0 seconds"),
            ((src,), "give IN and OUT"),
            (("synthetic:?rate=1000", tmp_path / "o.h5"), "is a live source"),
            ((tmp_path / "nope.raw", tmp_path / "o.h5"), "no such file")):
        code, _, err = run_cli(capsys, "convert", *args, "-q")
        assert code == 2 and len(err.splitlines()) == 1, (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
    assert sorted(os.listdir(tmp_path)) == ["dir.npz", "in.raw", "notabag", "old.h5"]
    assert (tmp_path / "old.h5").read_bytes() == b"old"


def test_events_the_format_cannot_hold_real_cli(realdata, tmp_path):
    """The real entry point: a DAVIS346 into N-MNIST's 8-bit .bin stops at the first event
    that does not fit, one line, exit 2, and leaves no OUT; --help shows examples."""
    r = evstream("convert", realdata.joinpath(*DAVIS), tmp_path / "x.bin", "-q")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "does not fit ATIS .bin's 8-bit x and y" in r.stderr and "x.bin not written" in \
        r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_time_keep_refuses_what_the_format_cannot_hold(realdata, tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", realdata.joinpath(*DAVIS), tmp_path / "k.raw",
                           "--time", "keep", "-q")
    assert code == 2 and len(err.splitlines()) == 1 and "later than EVT 3.0 can hold" in err
    assert os.listdir(tmp_path) == []
    code, out, err = run_cli(capsys, "convert", realdata.joinpath(*NMNIST), tmp_path / "z.h5",
                             "--time", "zero", "--json", "-q")
    assert code == 0 and json.loads(out)["t_start_us"] == 0, err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "convert", "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "--verify" in out
    assert "evstream convert in.aedat4 out.raw" in out


def test_writer_refuses_unsorted_and_outside_events(tmp_path, events_factory):
    ev = events_factory(100, 64, 64, seed=1)
    with writers.open_writer(tmp_path / "u.dat", writers.FORMATS["dat"], width=64,
                             height=64) as w:
        w.write(Packet(ev[50:]))
        with pytest.raises(EvstreamError, match="comes before t="):
            w.write(Packet(ev[:50]))
        bad = ev[-1:].copy()
        bad["x"] = 64
        with pytest.raises(EvstreamError, match="outside the 64x64 sensor"):
            w.write(Packet(bad))
    assert len(everything(tmp_path / "u.dat")[0]) == 50
    with pytest.raises(EvstreamError, match="does not fit EVT 3.0"):
        writers.open_writer(tmp_path / "big.raw", writers.FORMATS["evt3"], width=4096,
                            height=64)
