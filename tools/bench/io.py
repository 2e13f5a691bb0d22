"""Benchmark: decode throughput of every evstream reader, against dv-processing's own read loop.

One run writes the same N events (default 10 M; uniform random pixels on a DAVIS346 sensor,
sorted timestamps at 1 M events/s) in every format an encoder exists for, into a temp folder:

  aedat4      evstream.sources.writer.Aedat4Writer (LZ4, dv-processing's writer), one file per
              --packet-events size (default 1,000 and 10,000 events a packet, as DAVIS
              recordings hold; each file timed against dv-processing's decode of itself)
  aedat2      evstream.sources.aedat2.write_aedat2
  evt2, evt3  evstream.sources.prophesee.write_evt2 / write_evt3 (.raw)
  dat         evstream.sources.prophesee.write_dat
  atis        evstream.sources.atis.write_atis_bin (34x34 pixels: the format's own limit)
  npz, h5     evstream.sources.arrays.write_npz / write_h5

(an encoder that does not exist yet is skipped with a note), then times
`for ev in open_source(path): ...` over each file, best of --repeat runs, and checks the count.
The reference, timed in the same run on the same .aedat4 file, is dv-processing's raw decode:
MonoCameraRecording.getNextEventBatch() + .numpy() until the end. The table gives M events/s
and the ratio to that reference (the target for the aedat4 row: >= 0.9).

--write adds the table of ways to get numpy events into an .aedat4 file with dv-processing 2.0.4
(the numbers quoted in evstream/sources/writer.py).

    evstream bench io [--events 10000000] [--repeat 3] [--packet-events 1000,10000] [--write]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evstream.sources import open_source  # noqa: E402
from evstream.sources.writer import Aedat4Writer  # noqa: E402
from evstream.types import EVENT_DTYPE  # noqa: E402

WIDTH, HEIGHT = 346, 260
RATE_HZ = 1_000_000


def make_events(n: int, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, max(1, n * 1_000_000 // RATE_HZ), n))
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def write_aedat4(path, ev, width, height, packet_events=1 << 20):
    step = max(packet_events, (1_000_000 // packet_events) * packet_events)
    with Aedat4Writer(path, width=width, height=height, camera="bench", atomic=True,
                      packet_events=packet_events) as w:
        for i in range(0, len(ev), step):
            w.write_events(ev[i:i + step])
            w.end_packet()


# (name, file name, "module:function" or a callable, needs 34x34 events)
FORMATS = [
    ("aedat4", "bench.aedat4", write_aedat4, False),
    ("aedat2", "bench.aedat", "evstream.sources.aedat2:write_aedat2", False),
    ("evt2", "bench_evt2.raw", "evstream.sources.prophesee:write_evt2", False),
    ("evt3", "bench_evt3.raw", "evstream.sources.prophesee:write_evt3", False),
    ("dat", "bench_td.dat", "evstream.sources.prophesee:write_dat", False),
    ("atis", "bench.bin", "evstream.sources.atis:write_atis_bin", True),
    ("npz", "bench.npz", "evstream.sources.arrays:write_npz", False),
    ("h5", "bench.h5", "evstream.sources.arrays:write_h5", False),
]


def _encoder(spec):
    if callable(spec):
        return spec
    mod, fn = spec.split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        return None


def time_best(fn, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def dv_reference(path: str) -> int:
    import dv_processing as dv

    rec = dv.io.MonoCameraRecording(path)
    n = 0
    while (store := rec.getNextEventBatch()) is not None:
        n += len(store.numpy())
    return n


def evstream_decode(path: str, options: dict) -> int:
    n = 0
    with open_source(path, **options) as src:
        for ev in src:
            n += len(ev)
    return n


def decode_table(n_events: int, repeat: int, folder: str,
                 packet_sizes: tuple[int, ...] = (1000, 10_000)) -> str:
    ev = make_events(n_events)
    ev34 = make_events(n_events, 34, 34)
    rows, notes = [], []
    for name, fname, spec, small in FORMATS:
        enc = _encoder(spec)
        if enc is None:
            notes.append(f"{name}: no encoder ({spec}) in this checkout; skipped")
            continue
        path = os.path.join(folder, fname)
        w, h = (34, 34) if small else (WIDTH, HEIGHT)
        t0 = time.perf_counter()
        try:
            if name == "atis":
                enc(path, ev34)
            elif name == "aedat2":
                enc(path, ev, w, h, chip="DAVIS346")
            else:
                enc(path, ev34 if small else ev, w, h)
        except Exception as e:  # noqa: BLE001 - an encoder failing is a note, not a crash
            notes.append(f"{name}: encoder failed: {e}")
            continue
        t_write = time.perf_counter() - t0
        options = {"width": w, "height": h} if name in ("atis", "dat") else {}
        if name == "aedat4":
            continue        # one file per packet size, timed below against the reference
        try:
            dt, n = time_best(lambda p=path, o=options: evstream_decode(p, o), repeat)
        except Exception as e:  # noqa: BLE001 - a reader failing is a row, not a crash
            notes.append(f"{name}: reader failed: {e}")
            continue
        if n != n_events:
            notes.append(f"{name}: read {n} events, expected {n_events}")
        rows.append((name, path, os.path.getsize(path), dt, n, t_write))
    # .aedat4 in the packet sizes users have: the reference and our reader alternate, so both
    # see the same machine state; the other formats' ratios are to the first size's reference
    out = ["| reader | file size | decode M ev/s | ratio to dv-processing | write s |",
           "|---|---:|---:|---:|---:|"]
    first_ref = None
    for size in packet_sizes:
        path = os.path.join(folder, f"bench_{size}.aedat4")
        t0 = time.perf_counter()
        write_aedat4(path, ev, WIDTH, HEIGHT, packet_events=size)
        t_write = time.perf_counter() - t0
        ref_dt = ours_dt = float("inf")
        for _ in range(repeat):
            dt, ref_n = time_best(lambda: dv_reference(path), 1)
            ref_dt = min(ref_dt, dt)
            dt, n = time_best(lambda: evstream_decode(path, {}), 1)
            ours_dt = min(ours_dt, dt)
        assert ref_n == n_events and n == n_events, (ref_n, n)
        first_ref = first_ref or ref_dt
        mb = os.path.getsize(path) / 1e6
        out.append(f"| dv-processing MonoCameraRecording + numpy() (reference, .aedat4, "
                   f"{size:,}-event packets) | {mb:.1f} MB | {ref_n / ref_dt / 1e6:.1f} | 1.00 | |")
        out.append(f"| evstream aedat4, {size:,}-event packets | {mb:.1f} MB | "
                   f"{n / ours_dt / 1e6:.1f} | {ref_dt / ours_dt:.2f} | {t_write:.1f} |")
        os.unlink(path)
    for name, path, size, dt, n, t_write in rows:
        out.append(f"| evstream {name} | {size / 1e6:.1f} MB | {n / dt / 1e6:.1f} | "
                   f"{first_ref / dt:.2f} | {t_write:.1f} |")
    out += [""] + [f"- {s}" for s in notes]
    return "\n".join(out)


def write_table(n_events: int, folder: str) -> str:
    """numpy -> .aedat4 paths with dv-processing 2.0.4, end to end (LZ4)."""
    import dv_processing as dv

    from evstream.sources.writer import _ScratchConverter

    ev = make_events(n_events)
    small = ev[:min(len(ev), 500_000)]
    path = os.path.join(folder, "w.aedat4")
    cfg = lambda: dv.io.MonoCameraWriter.EventOnlyConfig("bench", (WIDTH, HEIGHT))  # noqa: E731
    rows = []

    def per_event(name, build, events):
        t0 = time.perf_counter()
        store_or_packet = build(events)
        t_conv = time.perf_counter() - t0
        w = dv.io.MonoCameraWriter(path, cfg())
        (w.writeEventPacket if isinstance(store_or_packet, dv.EventPacket) else w.writeEvents)(
            store_or_packet)
        del w
        rows.append((name, len(events), t_conv, time.perf_counter() - t0))

    def push4(e):
        s = dv.EventStore()
        for t, x, y, p in zip(e["t"].tolist(), e["x"].tolist(), e["y"].tolist(),
                              (e["p"] > 0).tolist()):
            s.push_back(t, x, y, p)
        return s

    def push_tuple(e):
        s = dv.EventStore()
        pb = s.push_back
        for tup in zip(e["t"].tolist(), e["x"].tolist(), e["y"].tolist(), (e["p"] > 0).tolist()):
            pb(tup)
        return s

    def event_vector(e):
        E = dv.Event
        return dv.EventPacket(dv.EventPacket.EventVector(
            [E(t, x, y, p) for t, x, y, p in zip(e["t"].tolist(), e["x"].tolist(),
                                                 e["y"].tolist(), (e["p"] > 0).tolist())]))

    per_event("EventStore.push_back(t, x, y, p) loop", push4, small)
    per_event("EventStore.push_back((t, x, y, p)) loop", push_tuple, small)
    per_event("EventPacket(EventVector([dv.Event...]))", event_vector, small)

    conv = _ScratchConverter(WIDTH, HEIGHT)
    t0 = time.perf_counter()
    stores = list(conv.stores(ev))
    t_conv = time.perf_counter() - t0
    w = dv.io.MonoCameraWriter(path, cfg())
    t1 = time.perf_counter()
    for s in stores:
        w.writeEvents(s)
    del w
    t_write = time.perf_counter() - t1
    conv.close()
    rows.append(("scratch uncompressed AEDAT4 -> dv reader (evstream)", len(ev), t_conv,
                 t_conv + t_write))
    rows.append(("dv EventStores straight from a dv source (writer only)", len(ev), t_write,
                 t_write))
    t0 = time.perf_counter()
    write_aedat4(path, ev, WIDTH, HEIGHT)
    rows.append(("Aedat4Writer.write_events (all of it, atomic)", len(ev),
                 float("nan"), time.perf_counter() - t0))
    out = ["| numpy -> .aedat4 path | events | conversion M ev/s | end to end M ev/s |",
           "|---|---:|---:|---:|"]
    for name, n, t_conv, t_all in rows:
        conv_s = "-" if t_conv != t_conv else f"{n / t_conv / 1e6:.2f}"
        out.append(f"| {name} | {n:,} | {conv_s} | {n / t_all / 1e6:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--packet-events", default="1000,10000",
                   help="comma-separated packet sizes of the .aedat4 files (default 1000,10000: "
                        "what DAVIS recordings hold; 1048576 for the old 1 Mi-event packets)")
    p.add_argument("--write", action="store_true", help="also time the numpy -> aedat4 paths")
    args = p.parse_args(argv)
    try:
        sizes = tuple(int(x) for x in args.packet_events.split(",") if x.strip())
        assert sizes and min(sizes) > 0
    except (ValueError, AssertionError):
        p.error(f"--packet-events {args.packet_events!r}: positive counts, comma-separated")
    import dv_processing as dv

    print(f"# I/O benchmark: {args.events:,} events, best of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, dv-processing {dv.__version__}\n")
    with tempfile.TemporaryDirectory(prefix="evstream-bench-io-") as folder:
        print(decode_table(args.events, args.repeat, folder, sizes))
        if args.write:
            print()
            print(write_table(args.events, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
