"""Benchmark: end to end with the model, window end -> prediction drawn, on this machine.

For each model: a live replay in real time (--speed 1) of a synthetic recording (RECORDING:
346x260, 200 k events/s, 2.5 s, written to a temporary .aedat4 first) through source -> ring -> window -> voxel ->
zmq -> worker -> zmq -> viewer (headless, drawing every newest prediction into an MP4), then a
lossless replay at --speed max for throughput. Per-stage breakdown from the stages' telemetry:

    window     window end -> window sent (windowing + voxel grid + send)     window stage
    h2d        host tensor staging (CPU: copy into the pinned/staging buffer) worker
    forward    the network                                                    worker
    d2h        back to host + argmax / confidence at sensor size              worker
    worker     window end -> prediction sent (includes queueing, transport)   worker
    drawn      window end -> frame drawn and written                          viewer

Reference in the same run: the model's bare forward pass timed in this process with the same
Predictor (threads as the worker picks them; on CUDA each call is timed from a synchronised
device to the outputs on the host), so `drawn p50 / bare forward p50` is what the pipeline adds
around the network.

The worker's options are the benchmark's: --device (default auto: the first GPU where torch
sees one, else the CPU), --precision, --fp32-math, --compile, --cuda-graphs, --max-batch. The
header names the device that ran (the GPU's name, or the CPU count and threads), so a GPU run
is never labelled as a CPU one.

    .venv/bin/python tools/bench/e2e.py [--models NAME ...] [--device cuda --precision fp16
                                         --cuda-graphs]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evstream.config import (InferConfig, PipelineConfig, SourceConfig,  # noqa: E402
                             ViewerConfig, WindowConfig)
from evstream.pipeline import run_pipeline  # noqa: E402


# 346x260, 200 k events/s, 2.5 s of moving shapes with APS frames at 25 fps
RECORDING = "synthetic:?seed=7&rate=2e5&duration=2.5&frame_rate=25&shapes=4&noise=0.02"


def bare_forward_ms(infer: InferConfig, h: int, w: int, n: int = 20) -> dict:
    import torch

    from evstream.commands.pipeline_args import model_config_for
    from evstream.infer.predictor import Predictor

    cfg = model_config_for(infer.model)
    pred = Predictor.from_infer_config(replace(infer, warmup=3), (h, w))
    pred.prepare((h, w))
    c = cfg["in_channels"]
    x = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)
    cuda = pred.device.type == "cuda"
    ts = []
    for _ in range(n if not cuda else 10 * n):
        if cuda:
            torch.cuda.synchronize(pred.device)
        t = time.perf_counter()
        pred.predict([x])                 # returns once the outputs are on the host
        ts.append((time.perf_counter() - t) * 1e3)
    ts = np.array(ts)
    return {"p50": float(np.percentile(ts, 50)), "p99": float(np.percentile(ts, 99)),
            "threads": pred.info.get("threads"), "info": pred.info}


def device_label(info: dict) -> str:
    """What ran the network: the GPU by name, or the CPU with its torch threads."""
    if info["device"].startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(info["device"]))
        extra = [info["precision"], f"fp32 math {info['fp32_math']}"]
        extra += ["CUDA graphs"] * bool(info.get("cuda_graphs"))
        extra += [info.get("compile_status", "compiled")] * bool(info.get("compile"))
        return f"{name} ({info['device']}, {', '.join(extra)})"
    return f"CPU ({os.cpu_count()} logical CPUs, {info['threads']} torch threads, " \
           f"{info['precision']})"


def run(recording: str, infer: InferConfig, lossless: bool, video: str) -> dict:
    from evstream.commands.pipeline_args import model_config_for

    mc = model_config_for(infer.model)
    rep = mc["representation"]
    cfg = PipelineConfig(
        source=SourceConfig(spec=recording, speed=None if lossless else 1.0),
        window=WindowConfig(window_us=int(mc["window"].get("window_us", 50_000)),
                            representation=rep["name"], num_bins=rep.get("num_bins", 5),
                            normalize=bool(rep.get("normalize"))),
        lossless=lossless, telemetry_interval_s=0, consumer="viewer",
        infer=infer, viewer=ViewerConfig(window=False, video=video))
    res = run_pipeline(cfg)
    if res.exit_code:
        raise SystemExit(f"pipeline failed: {res.error}")
    return res.summary


def pct(d: dict, key: str = "p50") -> float:
    return float(d.get(key, 0.0)) if d else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help="model names/paths (default: the shipped default and 'untrained')")
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    ap.add_argument("--fp32-math", default="ieee", choices=("ieee", "tf32"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--cuda-graphs", action="store_true", help="capture the forward (CUDA)")
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args(argv)
    from evstream.commands.pipeline_args import default_model
    from evstream.commands.record import record
    from evstream.sources import open_source

    models = args.models or list(dict.fromkeys([default_model(), "untrained"]))
    rec = os.path.join(tempfile.mkdtemp(prefix="evstream-bench-"), "e2e.aedat4")
    with open_source(RECORDING) as src:
        record(src, rec)
    print(f"# end to end, recording {RECORDING}")
    print("| model | device | mode | windows | predictions | drawn | dropped windows "
          "| window p50/p99 ms | h2d p50 | forward p50/p99 | d2h p50 | worker p50/p99 "
          "| drawn p50/p99/max ms | bare forward p50 | drawn p50 / bare |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            infer = InferConfig(model=model, device=args.device, precision=args.precision,
                                fp32_math=args.fp32_math, compile=args.compile,
                                cuda_graphs=args.cuda_graphs, max_batch=args.max_batch)
            bare = bare_forward_ms(infer, 260, 346)
            device = device_label(bare["info"])
            for lossless in (False, True):
                s = run(rec, infer, lossless, os.path.join(tmp, "v.mp4"))
                st = s["stages"]
                win = s.get("window_latency_ms", {})
                wk = st.get("worker", {}).get("latency", {})
                lat = s["latency_ms"]
                mode = "lossless max" if lossless else "live 1x"
                print(f"| {s.get('model')} | {device} | {mode} | {s['windows']} "
                      f"| {s.get('predictions', 0)} "
                      f"| {s.get('frames_drawn', 0)} | {s['dropped_windows']} "
                      f"| {pct(win):.1f} / {pct(win, 'p99'):.1f} "
                      f"| {pct(wk.get('h2d_ms', {})):.2f} "
                      f"| {pct(wk.get('infer_ms', {})):.1f} / {pct(wk.get('infer_ms', {}), 'p99'):.1f} "
                      f"| {pct(wk.get('d2h_ms', {})):.2f} "
                      f"| {pct(s.get('worker_latency_ms', {})):.1f} / "
                      f"{pct(s.get('worker_latency_ms', {}), 'p99'):.1f} "
                      f"| {pct(lat):.1f} / {pct(lat, 'p99'):.1f} / {pct(lat, 'max'):.1f} "
                      f"| {bare['p50']:.2f} "
                      f"| {pct(lat) / bare['p50']:.2f} |", flush=True)
                if lossless:
                    rate = s.get("predictions", 0) / s["stream_s"] if s.get("stream_s") else 0
                    print(f"|  |  | throughput | {rate:.1f} predictions/s over "
                          f"{s['stream_s']:.2f} s |||||||||||", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
