"""Benchmark: EvDistill training throughput (samples/s) and peak memory per preset.

A small synthetic driving set (346x260, `evstream synth seg`) is generated once; then, for each
preset, `evstream train` runs a few iterations of stage 1 (teacher on images) and of stage 2 in
the paper setting (student + BMR, teacher frozen) and reports the trainer's own samples/s (the
mean over the logged iterations after the first) and the peak resident memory of the training
process. Reference in the same run: the tiny preset, so other presets read as a ratio to it.

The trainer's device and mixed precision are the benchmark's options (--device, default auto:
the first GPU where torch sees one; --amp, default auto: bf16 on a GPU, off on a CPU;
--fp32-math); the header and every row say what ran, as the trainer's summary reports it, so a
GPU run is never labelled as a CPU one. On a GPU the peak resident memory is the host's; the
device's peak is not measured here.

    .venv/bin/python tools/bench/train.py [--presets tiny cpu realtime] [--iterations 20]
                                          [--device cuda --amp bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def evstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evstream", *args], capture_output=True,
                          text=True, cwd=ROOT)


WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def train_once(data: str, out: str, preset: str, iterations: int, threads: int,
               device: str = "auto", amp: str = "auto", fp32_math: str = "ieee") -> dict:
    # a wrapper process whose only child is the trainer: its RUSAGE_CHILDREN peak is the
    # trainer's own peak resident memory
    r = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-m", "evstream", "train",
                        "--preset", preset, "--data", data, "--out", out, "--no-progress",
                        "--json", "--threads", str(threads), "--device", device, "--amp", amp,
                        "--fp32-math", fp32_math,
                 "--set", f"stage1.iterations={iterations}", "--set",
                 f"stage2.iterations={iterations}", "--set", "stage1.log_every=5", "--set",
                 "stage2.log_every=5", "--set", "stage1.eval_every=0", "--set",
                 "stage2.eval_every=0", "--set", "stage1.eval_batches=1",
                 "--set", "stage2.eval_batches=1"], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"train {preset} failed: {r.stderr.strip()[-500:]}")
    peak_mb = int(r.stderr.strip().splitlines()[-1]) / 1024
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rates = {"1": [], "2": []}
    for line in Path(out, "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "samples_per_s" in row and row.get("iteration", 0) > 5:
            rates[str(row["stage"])].append(row["samples_per_s"])
    mean = {k: sum(v) / len(v) if v else float("nan") for k, v in rates.items()}
    return {"stage1": mean["1"], "stage2": mean["2"], "peak_mb": peak_mb,
            "device": summary["device"], "amp": summary.get("amp", "off"),
            "fp32_math": summary.get("fp32_math", "ieee")}


def device_label(res: dict, threads: int) -> str:
    if res["device"].startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(res["device"]))
        return f"{name} ({res['device']}, amp {res['amp']}, fp32 math {res['fp32_math']})"
    return f"CPU ({os.cpu_count()} logical CPUs, {threads} torch threads, amp {res['amp']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu", "realtime"])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    ap.add_argument("--fp32-math", default="ieee", choices=("ieee", "tf32"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "seg")
        r = evstream("synth", "seg", data, "--sequences", "3", "--seconds", "1", "--seed", "5",
                     "--no-progress", "--workers", "2")
        if r.returncode:
            raise SystemExit(f"synth failed: {r.stderr.strip()}")
        print(f"# training throughput, --device {args.device}, {args.iterations} iterations "
              f"per stage, batch 8")
        print("| preset | device | stage 1 samples/s | stage 2 (paper) samples/s "
              "| stage 2 vs tiny | peak RSS MB |")
        print("|---|---|---:|---:|---:|---:|")
        ref = None
        for preset in args.presets:
            res = train_once(data, os.path.join(tmp, preset), preset, args.iterations,
                             args.threads, args.device, args.amp, args.fp32_math)
            ref = ref or res["stage2"]
            print(f"| {preset} | {device_label(res, args.threads)} | {res['stage1']:.2f} "
                  f"| {res['stage2']:.2f} | {res['stage2'] / ref:.3f} | {res['peak_mb']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
