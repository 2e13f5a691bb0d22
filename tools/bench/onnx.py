"""Benchmark: torch vs ONNX Runtime, per window, for every shipped student (issue 19).

For each model under models/ (models/README.md: the students and the two baselines) both
backends of the worker are built in this one process (evstream.infer: Predictor and
OnnxPredictor, CPU, the same thread count each, default 1) and timed on the same 346x260
window, batch 1, alternating torch and onnxruntime run by run so that both see the same
background load:

  predict  Predictor.predict([window]) wall time: staging copy, the input geometry (crop /
           resize / pad), the network, softmax + argmax (or top-k) back at sensor size: what the
           worker pays per window
  network  the network alone on the network-size input: model(x) under inference_mode vs
           session.run

p50 and p99 over --runs runs after --warmup, and the ratio torch / onnxruntime (> 1: onnxruntime
faster). The ONNX model is exported in memory (onnx_export.export_onnx, the default exporter)
and checked against torch first; nothing is written. The load average before and after is
printed: on a shared machine it says how much the figures can be trusted.

    .venv/bin/python tools/bench/onnx.py [--runs 100] [--threads 1] [--models a,b] [--json]
    evstream bench onnx --runs 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SENSOR_HW = (260, 346)


def shipped_models() -> list[str]:
    models = ROOT / "models"
    found = sorted(p.parent for p in models.glob("*/model.pt")) \
        + sorted(p.parent for p in models.glob("baselines/*/model.pt"))
    return [str(p.relative_to(models)) for p in found]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def pct(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_model(name: str, runs: int, warmup: int, threads: int) -> dict:
    import torch

    from evstream.infer.onnx_backend import OnnxPredictor
    from evstream.infer.onnx_export import (INPUT_NAME, OUTPUT_NAME, TOLERANCE, check_onnx,
                                            example_input, export_onnx)
    from evstream.infer.predictor import Predictor
    from evstream.nn.checkpoint import MODELS_DIR, load_model
    from evstream.nn.geometry import to_network

    model, cfg = load_model(MODELS_DIR / name)
    t0 = time.perf_counter()
    data = export_onnx(model, cfg, example_input(cfg))
    export_s = time.perf_counter() - t0
    diff = check_onnx(data, model, example_input(cfg))
    if not diff <= TOLERANCE:
        raise SystemExit(f"{name}: the ONNX export differs from torch by {diff:g}")
    tp = Predictor(model, cfg, device="cpu", threads=threads, warmup=warmup, max_batch=1,
                   sensor_hw=SENSOR_HW)
    op = OnnxPredictor(data, cfg, device="cpu", threads=threads, warmup=warmup, max_batch=1,
                       sensor_hw=SENSOR_HW)
    rng = np.random.default_rng(0)
    window = rng.standard_normal((cfg["in_channels"], *SENSOR_HW)).astype(np.float32)
    xn = to_network(window, cfg.get("input") or {})
    xn_np = xn.numpy()
    net, sess = tp.model, op.model.session
    times = {k: [] for k in ("torch_predict", "ort_predict", "torch_network", "ort_network")}
    for i in range(warmup + runs):
        keep = i >= warmup
        # the order alternates so neither backend always runs right after the other
        order = ("torch", "ort") if i % 2 == 0 else ("ort", "torch")
        for who in order:
            p = tp if who == "torch" else op
            t = time.perf_counter()
            p.predict([window])
            dt = time.perf_counter() - t
            if keep:
                times[f"{who}_predict"].append(dt)
        for who in order:
            t = time.perf_counter()
            if who == "torch":
                with torch.inference_mode():
                    net(xn)
            else:
                sess.run([OUTPUT_NAME], {INPUT_NAME: xn_np})
            dt = time.perf_counter() - t
            if keep:
                times[f"{who}_network"].append(dt)
    out = {"model": name, "family": f"{cfg['arch']}/{cfg['backbone']}", "task": cfg["task"],
           "network_input": list(xn.shape), "export_s": round(export_s, 2),
           "max_abs_diff": diff}
    for k, v in times.items():
        out[k + "_p50_ms"], out[k + "_p99_ms"] = pct(v)
    for part in ("predict", "network"):
        for q in ("p50", "p99"):
            out[f"{part}_ratio_{q}"] = out[f"torch_{part}_{q}_ms"] / out[f"ort_{part}_{q}_ms"]
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | family | network input | predict torch p50 / p99 ms | predict ORT p50 / "
             "p99 ms | predict torch/ORT p50 (p99) | network torch p50 / p99 ms | network ORT "
             "p50 / p99 ms | network torch/ORT p50 (p99) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['family']} | {'x'.join(map(str, r['network_input'][1:]))} | "
            f"{r['torch_predict_p50_ms']:.2f} / {r['torch_predict_p99_ms']:.2f} | "
            f"{r['ort_predict_p50_ms']:.2f} / {r['ort_predict_p99_ms']:.2f} | "
            f"{r['predict_ratio_p50']:.2f} ({r['predict_ratio_p99']:.2f}) | "
            f"{r['torch_network_p50_ms']:.2f} / {r['torch_network_p99_ms']:.2f} | "
            f"{r['ort_network_p50_ms']:.2f} / {r['ort_network_p99_ms']:.2f} | "
            f"{r['network_ratio_p50']:.2f} ({r['network_ratio_p99']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="evstream bench onnx", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma list of names under models/ (default: every one)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per backend and part")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each backend")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    import onnxruntime
    import torch

    names = args.models.split(",") if args.models else shipped_models()
    load0 = os.getloadavg()
    rows = []
    for name in names:
        rows.append(bench_model(name, args.runs, args.warmup, args.threads))
        print(f"{name}: predict torch/ORT p50 {rows[-1]['predict_ratio_p50']:.2f}",
              file=sys.stderr)
    load1 = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {args.threads} thread(s) each; batch 1, "
          f"sensor {SENSOR_HW[1]}x{SENSOR_HW[0]}; {args.runs} runs after {args.warmup}; "
          f"load average (1/5/15 min) before {'/'.join(f'{v:.2f}' for v in load0)}, after "
          f"{'/'.join(f'{v:.2f}' for v in load1)}\n")
    print(table(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
