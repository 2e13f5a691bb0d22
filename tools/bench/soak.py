"""Benchmark: a long live run (soak). Not a test: it takes minutes and wants an idle machine.

The synthetic source (`synthetic:`, DAVIS346 geometry) plays RATE events/s in real time for
MINUTES, through the whole pipeline (source -> ring -> voxel windows, B = 5, 50 ms -> sink), once
in lossless mode and once in live mode. It reports:
- the event accounting: events the source made (rate x duration, exactly), events delivered
  inside windows, events the pipeline counted as dropped (live mode: ring overrun, windows
  dropped on their way, events later than their window's deadline), and the difference, which
  must be 0 in both modes (lossless: nothing dropped; live: every drop counted);
- the resident memory (VmRSS from /proc) of every stage process and of the launcher, sampled
  every SAMPLE seconds: at the end of the first minute, at the end, the maximum, and the growth
  from the first minute to the end (target: under 5 %);
- the latency from window end to delivery (p50 / p99 / max) and the load average at the start.

    .venv/bin/python tools/bench/soak.py [--minutes 10] [--rate 12e6] [--modes lossless,live]
        [--sample 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evstream.config import PipelineConfig, SourceConfig, WindowConfig  # noqa: E402
from evstream.pipeline import run_pipeline  # noqa: E402


def rss_kib(pid: int) -> int | None:
    """VmRSS of `pid` in KiB, None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Sampler:
    """Samples the RSS of the pipeline's processes (launcher = this process) every `every_s`."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.pids: dict[str, int] = {"launcher": os.getpid()}
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def started(self, info: dict) -> None:
        self.pids.update(info["pids"])
        self.t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            row = {name: rss_kib(pid) for name, pid in self.pids.items()}
            self.samples.append((time.monotonic() - self.t0, {k: v for k, v in row.items()
                                                              if v is not None}))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def report(self, settle_s: float = 60.0) -> dict:
        """Per process: RSS (MiB) at `settle_s` (the first sample at or after it), at the last
        sample, the maximum, and the growth from the first to the last in percent."""
        out = {}
        for name in self.pids:
            series = [(t, row[name]) for t, row in self.samples if name in row]
            if not series:
                continue
            after = [v for t, v in series if t >= settle_s] or [series[-1][1]]
            first, last = after[0], after[-1]
            out[name] = {"mib_at_settle": round(first / 1024, 1),
                         "mib_end": round(last / 1024, 1),
                         "mib_max": round(max(v for _, v in series) / 1024, 1),
                         "growth_pct": round(100.0 * (last - first) / first, 2) if first else None,
                         "samples": len(series)}
        return out


def soak(minutes: float, rate: float, lossless: bool, sample_s: float) -> dict:
    seconds = minutes * 60.0
    spec = f"synthetic:?seed=1&rate={int(rate)}&duration={seconds:g}&width=346&height=260"
    cfg = PipelineConfig(source=SourceConfig(spec=spec, speed=1.0),
                         window=WindowConfig(window_us=50_000, num_bins=5),
                         lossless=lossless, telemetry_interval_s=0)
    sampler = Sampler(sample_s)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        res = run_pipeline(cfg, on_started=sampler.started)
    finally:
        sampler.stop()
    wall = time.monotonic() - t0
    if res.exit_code:
        raise SystemExit(f"pipeline failed: {res.error}")
    s = res.summary
    made = int(rate * seconds)
    # every event the source made is delivered inside a window, or counted where it was lost:
    # before windowing (ring overrun), in a window dropped on its way (newest wins), or late
    dropped = (s.get("dropped_events", 0) + s.get("dropped_window_events", 0)
               + s.get("late_events", 0))
    counted = s["events_out"] + dropped
    return {"mode": "lossless" if lossless else "live", "minutes": minutes, "rate": rate,
            "load_avg_start": round(load, 2), "wall_s": round(wall, 1),
            "stream_s": round(s["stream_s"], 1), "events_made": made,
            "events_delivered": s["events_out"], "events_dropped": dropped,
            "windows": s["windows"], "dropped_windows": s.get("dropped_windows", 0),
            "unaccounted": made - counted, "latency_ms": s.get("latency_ms", {}),
            "rss": sampler.report(settle_s=min(60.0, seconds / 2))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=12e6, help="events per second")
    ap.add_argument("--modes", default="lossless,live")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)

    results = [soak(args.minutes, args.rate, mode == "lossless", args.sample)
               for mode in args.modes.split(",") if mode.strip()]
    print(f"## Soak: {args.rate / 1e6:g} M ev/s for {args.minutes:g} min (synthetic DAVIS346, "
          f"B=5, 50 ms windows, sink)\n")
    print("| mode | load avg | events made | delivered | dropped (counted) | unaccounted | "
          "windows | dropped windows | latency p50 / p99 / max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        lat = r["latency_ms"]
        print(f"| {r['mode']} | {r['load_avg_start']:.1f} | {r['events_made']:,} | "
              f"{r['events_delivered']:,} | {r['events_dropped']:,} | {r['unaccounted']:,} | "
              f"{r['windows']:,} | {r['dropped_windows']:,} | {lat.get('p50', 0):.2f} / "
              f"{lat.get('p99', 0):.2f} / {lat.get('max', 0):.2f} |")
    print("\nResident memory (MiB): after the first minute -> at the end (max), growth\n")
    print("| mode | " + " | ".join(("launcher", "source", "window", "sink")) + " |")
    print("|---|---|---|---|---|")
    for r in results:
        cells = []
        for name in ("launcher", "source", "window", "sink"):
            m = r["rss"].get(name)
            cells.append("-" if m is None else f"{m['mib_at_settle']} -> {m['mib_end']} "
                         f"({m['mib_max']}), {m['growth_pct']:+.2f} %")
        print(f"| {r['mode']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
