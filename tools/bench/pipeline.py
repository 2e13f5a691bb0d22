"""Benchmark: the whole streaming pipeline (source -> ring -> windows -> voxel -> zmq -> sink).

1. Lossless replay at --speed max of an N-event .aedat4 file (default 10 M, DAVIS346 geometry,
   uniform random pixels at RATE Mev/s of source time): events/s delivered inside voxel windows
   (B = 5, 50 ms), against dv-processing's raw decode of the same file measured in the same run
   (MonoCameraRecording.getNextEventBatch() + .numpy()). Target: >= 0.7 of the reference.
2. Live replay in real time (--speed 1) of DAVIS-rate streams, 2 and 12 M events/s, from .aedat4
   files: p50/p99/max latency from window end (the wall time the closing events entered the
   ring) to delivery at the consumer, and drops. Targets: p99 <= 5 ms; no drops at 12 Mev/s.

Process start-up and kernel loading are outside the timed part: rates use the streaming time
(from the launcher's `start` to the end). Everything runs on this machine's cores (2 here),
shared by the source, window, sink and launcher processes.

    .venv/bin/python tools/bench/pipeline.py [--events 10000000] [--live-seconds 3] [--repeat 2]
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


def write_file(path: str, n: int, rate_hz: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with Aedat4Writer(path, width=WIDTH, height=HEIGHT, camera="bench") as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            ev = np.zeros(m, EVENT_DTYPE)
            ev["t"] = ((start + np.arange(m)) * (1e6 / rate_hz)).astype(np.int64)
            ev["x"] = rng.integers(0, WIDTH, m)
            ev["y"] = rng.integers(0, HEIGHT, m)
            ev["p"] = rng.integers(0, 2, m)
            w.write_events(ev)


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


def pipeline(path: str, lossless: bool, speed) -> dict:
    cfg = PipelineConfig(source=SourceConfig(spec=path, speed=speed),
                         window=WindowConfig(window_us=50_000, num_bins=5),
                         lossless=lossless, telemetry_interval_s=0)
    res = run_pipeline(cfg)
    if res.exit_code:
        raise SystemExit(f"pipeline failed: {res.error}")
    return res.summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--live-seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--live-rates", default="2e6,12e6")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="evstream-bench-") as tmp:
        big = os.path.join(tmp, "big.aedat4")
        write_file(big, args.events, 5e6)
        print(f"## Lossless replay at --speed max, {args.events:,} events (346x260, B=5, 50 ms)\n")
        print("| run | events delivered | streaming s | M ev/s | dv raw decode M ev/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for i in range(args.repeat):
            n_ref, t_ref = dv_decode(big)
            s = pipeline(big, lossless=True, speed=None)
            assert s["events_out"] == args.events == n_ref, (s["events_out"], n_ref)
            rate = s["events_out"] / s["stream_s"] / 1e6
            ref = n_ref / t_ref / 1e6
            print(f"| {i + 1} | {s['events_out']:,} | {s['stream_s']:.2f} | {rate:.1f} | "
                  f"{ref:.1f} | {rate / ref:.2f} |")
        os.unlink(big)

        print(f"\n## Live replay in real time ({args.live_seconds:g} s of events)\n")
        print("| rate | windows | dropped windows | dropped events | latency p50 ms | p99 ms | "
              "max ms | window stage p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for rate in [float(r) for r in args.live_rates.split(",")]:
            path = os.path.join(tmp, f"live_{rate:g}.aedat4")
            write_file(path, int(rate * args.live_seconds), rate)
            s = pipeline(path, lossless=False, speed=1.0)
            lat, wl = s["latency_ms"], s["window_latency_ms"]
            print(f"| {rate / 1e6:g} M ev/s | {s['windows']} | {s['dropped_windows']} | "
                  f"{s['dropped_events']} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
                  f"{lat['max']:.2f} | {wl['p99']:.2f} |")
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
