"""Benchmark: the whole streaming pipeline (source -> ring -> windows -> voxel -> zmq -> sink).

Files are shaped like the ones users have: packets of --packet-events events (default 1,000 and
10,000: a DAVIS346 or DVXplorer writes a few hundred to a few thousand events a packet, a live
camera a packet every millisecond or so), and `real`: the packet structure and events of the
real recordings in ../shared/realdata/aedat4 (DAVIS346 and DVXplorer Lite), looped, shifted in
time, to --events events. `1048576` gives the old, flattering 1 Mi-event packets.

1. Lossless replay at --speed max of an N-event .aedat4 file (default 10 M, DAVIS346
   geometry, uniform random pixels at 1 M ev/s of source time, or the real events): events/s
   delivered inside voxel windows (B = 5, 50 ms) against dv-processing's raw decode of the same
   file in the same run (MonoCameraRecording.getNextEventBatch() + .numpy()). Target: >= 0.7.
   Then the same replay as a user runs it, `evstream replay FILE --no-model --speed max
   --lossless --json` in a fresh process: the whole command's wall time next to its
   `stream_s`, the summary's `startup_s` split (slowest stage: boot / imports / setup), and
   the end-to-end ratio to dv's decode (target: the command within 0.5 s of `stream_s`).
0. The ring alone (`ring_reader_cost`): a writer process commits 12,000 events every 1 ms, a
   reader reads them: latency from commit to the read's return, and the reader's CPU per second.
2. Live replay in real time (--speed 1) of DAVIS-rate streams, 2 and 12 M events/s, from .aedat4
   files in packets of the first --packet-events size: p50/p99/max latency from window end
   (the wall time the closing events entered the ring) to delivery at the consumer, and drops.
   Targets: p99 <= 5 ms; no drops at 12 Mev/s.

Rates use the streaming time (from the launcher's `start` to the end); the whole-command row
adds everything else. Everything runs on this machine's cores (2 here), shared by the source,
window, sink and launcher processes. The live table also shows how many windows took the window
stage's incremental fast path (their voxel grid built while they were open, see
represent/voxel.py), the source's pacing lag (how late its releases were: a source that cannot
keep up shows here first) and the load average at the start of each run, since other work on
the machine moves these numbers. The lossless table adds each process's CPU time while
streaming (`cpu_stream_s`), which is where a 2-core machine's budget goes, and the source
process's own work measured alone (`source_alone`: read, gather, check while writing into a
ring nobody reads, as the stage does), the ceiling of this design with a free core for every
other stage. `--live-rates ""` skips the live runs, `--ring-seconds 0` the ring-only run.
`--transport zmq` sends the tensors inside the zmq messages instead of shared-memory window
slots (an A/B of the two transports).

    evstream bench pipeline [--events 10000000] [--packet-events 1000,10000,real]
        [--live-seconds 3] [--repeat 2] [--live-repeat 1] [--transport auto|zmq]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evstream.config import PipelineConfig, SourceConfig, WindowConfig  # noqa: E402
from evstream.pipeline import run_pipeline  # noqa: E402
from evstream.sources.writer import Aedat4Writer  # noqa: E402
from evstream.types import EVENT_DTYPE  # noqa: E402

WIDTH, HEIGHT = 346, 260


def write_file(path: str, n: int, rate_hz: float, seed: int = 0,
               packet_events: int = 1 << 20) -> None:
    """n uniform random events at rate_hz of source time, in packets of packet_events."""
    rng = np.random.default_rng(seed)
    chunk = max(packet_events, (1_000_000 // packet_events) * packet_events)
    with Aedat4Writer(path, width=WIDTH, height=HEIGHT, camera="bench", atomic=True,
                      packet_events=packet_events) as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            ev = np.zeros(m, EVENT_DTYPE)
            ev["t"] = ((start + np.arange(m)) * (1e6 / rate_hz)).astype(np.int64)
            ev["x"] = rng.integers(0, WIDTH, m)
            ev["y"] = rng.integers(0, HEIGHT, m)
            ev["p"] = rng.integers(0, 2, m)
            w.write_events(ev)
            w.end_packet()


REAL_FILES = ("davis346_aestream_davis.aedat4", "dvxplorer-lite_tonic_sample.aedat4")


def real_packets() -> list[np.ndarray]:
    """The event packets of the real DAVIS346 / DVXplorer Lite recordings, as read (their
    own packet boundaries), one file after the other from time 0."""
    import dv_processing as dv

    folder = ROOT.parent / "shared" / "realdata" / "aedat4"
    out, start = [], 0
    for name in REAL_FILES:
        rec = dv.io.MonoCameraRecording(str(folder / name))
        t0 = None
        while (b := rec.getNextEventBatch()) is not None:
            if len(b):
                ev = b.numpy().view(EVENT_DTYPE).copy()
                t0 = int(ev["t"][0]) if t0 is None else t0
                ev["t"] += start - t0
                out.append(ev)
        if out:
            start = int(out[-1]["t"][-1]) + 1
    if not out:
        raise SystemExit(f"no real recordings in {folder}")
    return out


def write_real(path: str, n: int) -> int:
    """The real recordings' packets, looped (each pass shifted after the last) to n events.
    -> the median packet size."""
    packets = real_packets()
    sizes = []
    with Aedat4Writer(path, width=WIDTH, height=HEIGHT, camera="bench", atomic=True) as w:
        shift, done = 0, 0
        while done < n:
            last = 0
            for ev in packets:
                part = ev[:n - done].copy()
                part["t"] += shift
                w.write_events(part)
                w.end_packet()
                sizes.append(len(part))
                done += len(part)
                last = int(part["t"][-1])
                if done >= n:
                    break
            shift = last + 1
    return int(np.median(sizes))


def dv_decode(path: str) -> tuple[int, float]:
    import dv_processing as dv

    t0 = time.perf_counter()
    rec = dv.io.MonoCameraRecording(path)
    n = 0
    while True:
        b = rec.getNextEventBatch()
        if b is None:
            break
        n += len(b.numpy())
    return n, time.perf_counter() - t0


def source_alone(path: str) -> float:
    """Seconds for the source process's own work on `path`, in this process with the rest of
    the machine idle: open (not timed), read every packet, check its events while writing them
    into a live ring nobody reads (so it never waits), as the source stage does. The ceiling
    of the pipeline's lossless rate on a machine with a free core for every other stage."""
    from evstream.config import SourceConfig
    from evstream.stages.source import _Batcher, open_configured_source, unpaced, write_checked
    from evstream.stream.ring import EventRing

    src = open_configured_source(SourceConfig(spec=path, speed=None))
    ring = EventRing.create(1 << 22)
    writer = ring.writer("live")
    try:
        src.warm_up()
        # as the source stage does it: small packets gathered, the check fused into the ring
        # write where it can be
        fused = src.can_defer_check
        put = ((lambda ev: write_checked(writer, src, ev, lambda: False)) if fused
               else writer.write)
        batch = _Batcher(put) if unpaced(src) else None
        t0 = time.perf_counter()
        for pkt in src.packets(check=not fused):
            if batch is not None:
                batch.add(pkt.events)
            elif len(pkt.events):
                put(pkt.events)
        if batch is not None:
            batch.flush()
        return time.perf_counter() - t0
    finally:
        src.close()
        writer.close()
        ring.close()
        ring.unlink()


def _ring_writer(name: str, ready, go, n_writes: int, period_s: float, batch: int) -> None:
    from evstream.stream.ring import EventRing

    ring = EventRing.attach(name)
    w = ring.writer("live")
    ev = np.zeros(batch, EVENT_DTYPE)
    ready.set()
    go.wait()
    due = time.monotonic()
    for _ in range(n_writes):
        due += period_s
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        w.write(ev)
    w.close_stream()
    ring.close()


def ring_reader_cost(seconds: float, period_s: float = 0.001, batch: int = 12_000) -> dict:
    """The ring alone, as the window stage uses it in a 12 M ev/s live replay: a writer process
    commits `batch` events every `period_s`; this process reads them (read(timeout=5 ms), a
    fresh array each time). -> write-to-read-return latency percentiles (us) and the reader's
    CPU seconds per second (what waiting between writes costs)."""
    import multiprocessing as mp

    from evstream.stream.ring import EventRing

    ctx = mp.get_context("spawn")
    n_writes = max(1, int(seconds / period_s))
    with EventRing.create(1 << 22) as ring:
        reader = ring.reader()
        ready, go = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_ring_writer, args=(ring.name, ready, go, n_writes, period_s, batch))
        p.start()
        try:
            if not ready.wait(60):
                raise SystemExit("ring writer did not start")
            go.set()
            cpu0, wall0 = time.process_time(), time.monotonic()
            lat_us = []
            while (out := reader.read(timeout=0.005)) is not None:
                if len(out):
                    lat_us.append((time.monotonic_ns() - reader.last_write_wall_ns) / 1000)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        finally:
            p.join(10)
            if p.is_alive():
                p.kill()
        reader.close()
    lat = np.array(lat_us)
    return {"reads": len(lat), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
            "cpu_per_s": cpu / wall, "lost": reader.lost}


def pipeline(path: str, lossless: bool, speed, transport: str = "auto") -> dict:
    cfg = PipelineConfig(source=SourceConfig(spec=path, speed=speed),
                         window=WindowConfig(window_us=50_000, num_bins=5),
                         lossless=lossless, telemetry_interval_s=0, window_transport=transport)
    res = run_pipeline(cfg)
    if res.exit_code:
        raise SystemExit(f"pipeline failed: {res.error}")
    return res.summary


def command(path: str) -> dict:
    """`evstream replay PATH --no-model --speed max --lossless --json` as a user runs it, in a
    fresh process: -> wall seconds of the whole command and its summary."""
    import json
    import subprocess

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "evstream", "replay", path, "--no-model",
                        "--speed", "max", "--lossless", "--json"],
                       capture_output=True, text=True, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"evstream replay failed: {r.stderr.strip()}")
    return {"wall_s": wall, "summary": json.loads(r.stdout)}


def _slowest_stage(startup: dict) -> str:
    stages = startup.get("stages") or {}
    if not stages:
        return "-"
    name, t = max(stages.items(), key=lambda kv: sum(kv[1].values()))
    return f"{name} {t['boot']:.2f} / {t['imports']:.2f} / {t['setup']:.2f}"


def make_file(path: str, shape: str, n: int, rate_hz: float) -> str:
    """Write the benchmark file for a --packet-events entry -> its label."""
    if shape == "real":
        median = write_real(path, n)
        return f"real packets (median {median:,})"
    size = int(shape)
    write_file(path, n, rate_hz, packet_events=size)
    return f"{size:,}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--packet-events", default="1000,10000",
                    help="comma-separated packet sizes of the files, or `real` (default "
                         "1000,10000)")
    ap.add_argument("--live-seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--live-rates", default="2e6,12e6")
    ap.add_argument("--live-repeat", type=int, default=1, help="live runs per rate")
    ap.add_argument("--ring-seconds", type=float, default=2.0,
                    help="length of the ring-only run (0: skip it)")
    ap.add_argument("--transport", choices=("auto", "zmq"), default="auto",
                    help="window transport (auto: shared-memory slots; zmq: tensors in messages)")
    args = ap.parse_args(argv)
    shapes = [x.strip() for x in args.packet_events.split(",") if x.strip()]
    for x in shapes:
        if x != "real" and not (x.isdigit() and int(x) > 0):
            ap.error(f"--packet-events: {x!r} is neither a positive count nor `real`")

    if args.ring_seconds > 0:
        print("## Ring alone: 12,000-event writes every 1 ms (12 M ev/s), one reader process\n")
        print("| run | load avg | reads | latency p50 us | p99 us | max us | reader CPU s per s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for i in range(args.repeat):
            load = os.getloadavg()[0]
            r = ring_reader_cost(args.ring_seconds)
            print(f"| {i + 1} | {load:.1f} | {r['reads']} | {r['p50']:.0f} | {r['p99']:.0f} | "
                  f"{r['max']:.0f} | {r['cpu_per_s']:.2f} |")
        print()

    with tempfile.TemporaryDirectory(prefix="evstream-bench-") as tmp:
        print(f"## Lossless replay at --speed max, {args.events:,} events (346x260, B=5, 50 ms)\n")
        print("| packet events | run | load avg | streaming s | M ev/s | dv decode s | ratio | "
              "source alone M ev/s (ratio) | CPU s while streaming: source / window / sink |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        whole = []
        for shape in shapes:
            big = os.path.join(tmp, "big.aedat4")
            label = make_file(big, shape, args.events, 1e6)
            for i in range(args.repeat):
                load = os.getloadavg()[0]
                n_ref, t_ref = dv_decode(big)
                alone = n_ref / source_alone(big) / 1e6
                s = pipeline(big, lossless=True, speed=None, transport=args.transport)
                assert s["events_out"] == args.events == n_ref, (s["events_out"], n_ref)
                rate = s["events_out"] / s["stream_s"] / 1e6
                ref = n_ref / t_ref / 1e6
                cpu = " / ".join(f"{s['stages'].get(k, {}).get('cpu_stream_s', 0):.3f}"
                                 for k in ("source", "window", "sink"))
                print(f"| {label} | {i + 1} | {load:.1f} | {s['stream_s']:.2f} | {rate:.1f} | "
                      f"{t_ref:.2f} | {rate / ref:.2f} | {alone:.1f} ({alone / ref:.2f}) | "
                      f"{cpu} |")
                load = os.getloadavg()[0]
                n_ref, t_ref = dv_decode(big)
                c = command(big)
                whole.append((label, i + 1, load, c, t_ref))
            os.unlink(big)

        print("\n## The whole command: `evstream replay FILE --no-model --speed max --lossless`\n")
        print("| packet events | run | load avg | command wall s | stream_s | around the stream s "
              "| slowest stage's start-up s: boot / imports / setup | teardown s | dv decode s "
              "| end-to-end ratio |")
        print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for label, i, load, c, t_ref in whole:
            sm = c["summary"]
            st = sm.get("startup_s", {})
            print(f"| {label} | {i} | {load:.1f} | {c['wall_s']:.2f} | {sm['stream_s']:.2f} | "
                  f"{c['wall_s'] - sm['stream_s']:.2f} | {_slowest_stage(st)} | "
                  f"{st.get('teardown', 0):.2f} | {t_ref:.2f} | {t_ref / c['wall_s']:.2f} |")

        live_shape = shapes[0] if shapes else "1000"
        print(f"\n## Live replay in real time ({args.live_seconds:g} s of events, packets: "
              f"{live_shape})\n")
        print("| rate | run | load avg | windows | fast path | dropped windows | dropped events | "
              "latency p50 ms | p99 ms | max ms | window stage p50 / p99 ms | "
              "source pacing lag p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for rate in [float(r) for r in args.live_rates.split(",") if r.strip()]:
            path = os.path.join(tmp, f"live_{rate:g}.aedat4")
            if live_shape == "real":
                write_real(path, int(rate * args.live_seconds))   # (the files' own rate)
            else:
                write_file(path, int(rate * args.live_seconds), rate,
                           packet_events=int(live_shape))
            for i in range(args.live_repeat):
                load = os.getloadavg()[0]
                s = pipeline(path, lossless=False, speed=1.0, transport=args.transport)
                lat, wl = s["latency_ms"], s["window_latency_ms"]
                stages = s.get("stages", {})
                fast = stages.get("window", {}).get("counters", {}).get("repr_fast", 0)
                lag = stages.get("source", {}).get("pacing_lag_us", {}).get("p99", 0) / 1000
                print(f"| {rate / 1e6:g} M ev/s | {i + 1} | {load:.1f} | {s['windows']} | {fast} | "
                      f"{s['dropped_windows']} | {s['dropped_events']} | {lat['p50']:.2f} | "
                      f"{lat['p99']:.2f} | {lat['max']:.2f} | {wl['p50']:.2f} / {wl['p99']:.2f} | "
                      f"{lag:.1f} |")
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
