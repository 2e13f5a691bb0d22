"""The checks of tools/gpu_check (the list, the tolerances and why: docs/gpu.md).

Each check is a function ctx -> dict {"summary": one line, "metrics": {...}, "tolerance": ...}
registered with @check(name, needs); it raises Skip(reason) when it cannot run here and any
other exception (Failed for a value out of tolerance) when it fails. `needs` is "gpu" (a CUDA
device), "gpus2" (two of them) or "" (runs anywhere: on a machine without a GPU these are the
checks that run). Checks share what is costly through ctx (the dataset, the trained run, the
export, the recordings, the full-size student and its CPU reference), each made on first use.

Rehearsal (ctx.rehearse, `tools/gpu_check --rehearse`): the GPU checks' code runs on the CPU
with a tiny student at 64x48, bf16 where CUDA would use fp16, dynamo's eager backend instead of
inductor and no CUDA graphs. Its numbers say nothing about a GPU; it finds errors in this
script before device time is spent on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# relative error of the logits = max |got - ref| / max |ref| (ref: CPU fp32), and the share of
# pixels whose label (argmax) is the same; measured on the untrained ResNet-18 DeepLabv3+ whose
# class margins are small, so label agreement is a lower bound of what a trained model shows
TOLERANCE = {
    "fp32": {"max_rel": 1e-4, "agree": 0.999},   # other kernels, other summation order only
    "tf32": {"max_rel": 1e-2, "agree": 0.99},    # 10-bit mantissa inside products
    "fp16": {"max_rel": 1e-2, "agree": 0.99},    # 10-bit mantissa, fp16 activations
    "bf16": {"max_rel": 5e-2, "agree": 0.97},    # 7-bit mantissa (CPU bf16: 1.4e-2 / 99.4 %)
}
GRAPHS_AGREE = 0.9999          # CUDA graph replay vs the same kernels launched eagerly
COMPILE_AGREE = 0.99           # inductor's fused kernels vs eager, both fp16
EXPORT_REL = {"cpu": 1e-5, "cuda": 1e-4}     # TorchScript reload vs the state dict
RESUME_REL_CUDA = 1e-2         # CUDA kernels are not bit-reproducible run to run
LATENCY_GOAL_P99_MS = 10.0     # full-size student, window end -> prediction, one GPU
SENSOR_HW = (260, 346)         # DAVIS346


class Skip(Exception):
    """The check cannot run here (the reason is reported)."""


class Failed(Exception):
    """A value outside its tolerance (the message is the report's line)."""


@dataclass
class Check:
    name: str
    needs: str            # "", "gpu" or "gpus2"
    slow_on_cpu: bool     # skipped on CPU with --quick
    title: str
    run: object


CHECKS: list[Check] = []


def check(name: str, needs: str = "", title: str = "", slow_on_cpu: bool = False):
    def register(fn):
        CHECKS.append(Check(name, needs, slow_on_cpu, title or (fn.__doc__ or "").split("\n")[0],
                            fn))
        return fn
    return register


# -- the shared context --------------------------------------------------------------------------

@dataclass
class Ctx:
    work: Path
    quick: bool
    cuda: bool
    rehearse: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda:0" if self.cuda else "cpu"

    @property
    def gpu(self) -> torch.device:
        """The device of the GPU checks (the CPU in a rehearsal)."""
        return torch.device("cuda", 0) if self.cuda else torch.device("cpu")

    @property
    def sensor_hw(self) -> tuple[int, int]:
        return (48, 64) if self.rehearse else SENSOR_HW

    @property
    def half(self) -> str:
        """fp16, or bf16 in a rehearsal (the CPU predictor has no fp16)."""
        return "fp16" if self.cuda else "bf16"

    def bf16_ok(self) -> bool:
        return torch.cuda.is_bf16_supported() if self.cuda else True

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def evstream(self, *args, timeout: float = 300, env: dict | None = None,
                 fresh: bool = False) -> tuple[int, str, str]:
        """`evstream ARGS`: in this process with --quick (no interpreter start-up: the test),
        else, or when `fresh`, as a child process (a crash or CUDA error there cannot take the
        check down; a pipeline's launcher may fork its stages, which it must not do from a
        process whose torch has started threads)."""
        args = [str(a) for a in args]
        if self.quick and env is None and not fresh:
            from evstream.cli import main

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(args)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
            return code, out.getvalue(), err.getvalue()
        r = subprocess.run([sys.executable, "-m", "evstream", *args], cwd=ROOT, text=True,
                           capture_output=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return r.returncode, r.stdout, r.stderr

    def evstream_json(self, *args, timeout: float = 300, fresh: bool = False) -> dict:
        code, out, err = self.evstream(*args, "--json", timeout=timeout, fresh=fresh)
        if code != 0:
            raise Failed(f"evstream {args[0]} exited {code}: {_tail(err)}")
        return json.loads(out.strip().splitlines()[-1])

    def once(self, key: str, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _tail(text: str, n: int = 3) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:])[-600:] or "(no output)"


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _stats(values) -> dict:
    return {"count": len(values), "p50": round(_pct(values, 50), 3),
            "p90": round(_pct(values, 90), 3), "p99": round(_pct(values, 99), 3),
            "max": round(float(np.max(values)), 3)}


# -- data: a small labelled world written in `evstream synth`'s layout ----------------------------

CLASSES = ["flat", "background", "object"]
COLORS = [[128, 64, 128], [70, 70, 70], [220, 220, 0]]


def _write_sequence(folder: Path, seed: int, width: int, height: int, seconds: float,
                    frame_rate: float = 25.0) -> dict:
    """A road (the lower quarter), a background, and a box gliding sideways; events where the
    box's left and right edges pass (ON ahead, OFF behind), a grey APS frame and a label map at
    every frame time."""
    from evstream.sources.writer import Aedat4Writer
    from evstream.types import EVENT_DTYPE, Frame

    rng = np.random.default_rng(seed)
    box_w, box_h = width // 4 + seed % 5, height // 4
    top = int(rng.integers(height // 8, height // 2))
    speed = width * (0.5 + 0.25 * (seed % 3))              # pixels per second
    start = float(rng.integers(0, width - box_w))

    def left(t_us):
        return int(start + speed * t_us / 1e6) % (width - box_w)

    def labels_at(t_us) -> np.ndarray:
        lab = np.ones((height, width), np.uint8)
        lab[height * 3 // 4:] = 0
        x = left(t_us)
        lab[top:top + box_h, x:x + box_w] = 2
        return lab

    step_us, per_edge = 1000, 16
    end_us = int(seconds * 1e6)
    chunks = []
    for t in range(0, end_us, step_us):
        x = left(t)
        n = 2 * per_edge
        e = np.zeros(n, EVENT_DTYPE)
        e["t"] = t + np.sort(rng.integers(0, step_us, n))
        e["x"] = np.r_[np.full(per_edge, min(x + box_w, width - 1)), np.full(per_edge, x)]
        e["y"] = rng.integers(top, top + box_h, n)
        e["p"] = np.r_[np.ones(per_edge), np.zeros(per_edge)]
        chunks.append(e[np.argsort(e["t"], kind="stable")])
    events = np.concatenate(chunks).view(EVENT_DTYPE)
    times = np.arange(1, int(seconds * frame_rate) + 1, dtype=np.int64) * int(1e6 / frame_rate)
    times = times[times < end_us]
    grey = np.array([70, 140, 230], np.float32)
    maps = []
    with Aedat4Writer(folder / "events.aedat4", width=width, height=height, frames=True) as w:
        w.write_events(events)
        for t in times:
            lab = labels_at(int(t))
            maps.append(lab)
            img = np.clip(grey[lab] + rng.normal(0, 6, lab.shape), 0, 255).astype(np.uint8)
            w.write_frame(Frame(int(t), img, 4000))
    np.savez(folder / "labels.npz", t_us=times, labels=np.stack(maps))
    return {"name": folder.name, "seed": seed, "events": int(len(events)),
            "frames": int(len(times)), "t_end_us": int(events["t"][-1]),
            "conditions": {"illumination": "normal", "motion": "slow"}}


def make_dataset(root: Path, width: int, height: int, train: int, val: int,
                 seconds: float) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    seqs, splits = [], {"train": [], "val": []}
    for k in range(train + val):
        split = "train" if k < train else "val"
        folder = root / f"seq_{k:04d}"
        folder.mkdir()
        seqs.append({**_write_sequence(folder, k, width, height, seconds), "split": split})
        splits[split].append(folder.name)
    (root / "manifest.json").write_text(json.dumps({
        "format": "evstream-synth", "version": 1, "task": "seg", "width": width,
        "height": height, "classes": CLASSES, "colors": COLORS, "seed": 0, "seconds": seconds,
        "frame_rate": 25, "generator": {"writer": "tools/gpu_checks.py"}, "splits": splits,
        "sequences": seqs}))
    return root


def dataset(ctx: Ctx) -> Path:
    if ctx.quick:
        return ctx.once("data", lambda: make_dataset(ctx.work / "data", 64, 48, 3, 1, 0.4))
    return ctx.once("data", lambda: make_dataset(ctx.work / "data", 128, 96, 10, 2, 1.2))


def recording(ctx: Ctx, name: str, seconds: float, rate: float) -> Path:
    def make():
        path = ctx.work / f"{name}.aedat4"
        spec = (f"synthetic:?seed=7&rate={rate:g}&duration={seconds:g}&shapes=4"
                f"&width={SENSOR_HW[1]}&height={SENSOR_HW[0]}")
        code, _, err = ctx.evstream("record", path, spec, "-q", "--force")
        if code:
            raise Failed(f"evstream record failed: {_tail(err)}")
        return path
    return ctx.once(f"rec:{name}", make)


# -- networks and windows ------------------------------------------------------------------------

def sensor_windows(n: int, hw=SENSOR_HW, seed: int = 7) -> list[np.ndarray]:
    """n voxel windows (5 bins, normalised) of a synthetic scene: the worker's real input."""
    import itertools

    import evstream

    spec = f"synthetic:?seed={seed}&rate=3e5&duration=2&shapes=5&width={hw[1]}&height={hw[0]}"
    return [x for _, _, x in itertools.islice(
        evstream.windows(spec, window_ms=50, bins=5, normalize=True), 2, 2 + n)]


def full_student(ctx: Ctx):
    """The full-size student: ResNet-18 DeepLabv3+ at 346x260 (evstream's "untrained" model:
    seeded weights, the shipped student's architecture and geometry); in a rehearsal the tiny
    one at 64x48."""
    from evstream.nn.checkpoint import default_config, load_model
    from evstream.nn.registry import build_model

    if not ctx.rehearse:
        return load_model("untrained", device="cpu")
    cfg = default_config(backbone="tiny", input={"height": 48, "width": 64, "crop": None,
                                                 "resize": None, "pad_multiple": 16})
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def _logits(model, cfg, windows, device, dtype=None) -> torch.Tensor:
    from evstream.nn.geometry import to_network

    x = to_network(np.stack(windows), cfg["input"]).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        out = model(x)
    return out.float().cpu()


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict:
    err = (got - ref).abs()
    return {"max_rel": float(err.max() / ref.abs().max()),
            "mean_rel": float(err.mean() / ref.abs().mean()),
            "agree": float((got.argmax(1) == ref.argmax(1)).float().mean())}


def label_agreement(a: list[dict], b: list[dict]) -> tuple[float, int]:
    same = np.mean([np.mean(x["labels"] == y["labels"]) for x, y in zip(a, b)])
    conf = max(int(np.abs(x["confidence"].astype(int) - y["confidence"].astype(int)).max())
               for x, y in zip(a, b))
    return float(same), conf


def cpu_reference(ctx: Ctx):
    """(model, cfg, windows, CPU fp32 logits, CPU Predictor results) of the full-size student."""
    def make():
        from evstream.infer.predictor import Predictor

        model, cfg = full_student(ctx)
        windows = sensor_windows(2, ctx.sensor_hw)
        ref = _logits(model, cfg, windows, torch.device("cpu"))
        p = Predictor(model, cfg, device="cpu", precision="fp32", warmup=1, max_batch=2,
                      sensor_hw=ctx.sensor_hw)
        return model, cfg, windows, ref, p.predict(windows)
    return ctx.once("cpu_reference", make)


def _need_cuda(ctx: Ctx) -> None:
    if not ctx.cuda and not ctx.rehearse:
        raise Skip("no CUDA device")


# -- the checks -----------------------------------------------------------------------------------

@check("environment", title="what runs here: Python, torch, CUDA, the GPU, torch's fp32 math")
def environment(ctx: Ctx) -> dict:
    import numba

    from evstream.infer.fp32_math import current_fp32_math

    m = {"python": sys.version.split()[0], "torch": torch.__version__,
         "cuda": torch.version.cuda, "numpy": np.__version__, "numba": numba.__version__,
         "torch_default_fp32_math": current_fp32_math(),
         "evstream_commit": _git_commit()}
    try:
        import dv_processing as dv
        m["dv_processing"] = getattr(dv, "__version__", "?")
    except ImportError as e:
        m["dv_processing"] = f"missing ({e})"
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        m.update(gpu=p.name, gpus=torch.cuda.device_count(),
                 capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                 cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    what = m.get("gpu", "no GPU")
    return {"summary": f"{what}; torch {m['torch']} (CUDA {m['cuda']}), Python {m['python']}; "
                       f"torch's own fp32 math here: {m['torch_default_fp32_math']}",
            "metrics": m}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _precision(ctx: Ctx, mode: str) -> dict:
    from evstream.infer.fp32_math import set_fp32_math
    from evstream.infer.predictor import Predictor

    _need_cuda(ctx)
    model, cfg, windows, ref, ref_pred = cpu_reference(ctx)
    if mode == "fp16" and not ctx.cuda:
        raise Skip("rehearsal: no fp16 on CPU")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
    if mode == "bf16" and not ctx.bf16_ok():
        raise Skip("this GPU has no bfloat16")
    dev = ctx.gpu
    set_fp32_math("tf32" if mode == "tf32" else "ieee")
    gpu_model = _clone(model).to(dev).to(memory_format=torch.channels_last)
    m = compare(ref, _logits(gpu_model, cfg, windows, dev, dtype))
    p = Predictor(_clone(model), cfg, device=str(dev),
                  precision="fp32" if dtype is None else mode,
                  fp32_math="tf32" if mode == "tf32" else "ieee", warmup=1, max_batch=2,
                  sensor_hw=ctx.sensor_hw)
    agree, conf = label_agreement(p.predict(windows), ref_pred)
    m.update(predictor_label_agreement=agree, predictor_confidence_max_diff=conf,
             predictor_info={k: p.info[k] for k in ("precision", "fp32_math", "device")})
    tol = TOLERANCE[mode]
    line = (f"{dev.type.upper()} {mode} vs CPU fp32: logits max rel {m['max_rel']:.2e} "
            f"(<= {tol['max_rel']:g}), "
            f"labels {100 * m['agree']:.3f} % (>= {100 * tol['agree']:g} %), predictor labels "
            f"{100 * agree:.3f} %")
    if m["max_rel"] > tol["max_rel"] or min(m["agree"], agree) < tol["agree"]:
        raise Failed(line)
    return {"summary": line, "metrics": m, "tolerance": tol}


def _clone(model):
    import copy

    return copy.deepcopy(model)


@check("fp32", "gpu", "CUDA strict fp32 (TF32 off) equals CPU fp32 within tolerance")
def fp32(ctx):
    return _precision(ctx, "fp32")


@check("tf32", "gpu", "CUDA fp32 with TF32 math (the choice --fp32-math tf32) vs CPU fp32")
def tf32(ctx):
    return _precision(ctx, "tf32")


@check("fp16", "gpu", "CUDA fp16 autocast vs CPU fp32")
def fp16(ctx):
    return _precision(ctx, "fp16")


@check("bf16", "gpu", "CUDA bf16 autocast vs CPU fp32")
def bf16(ctx):
    return _precision(ctx, "bf16")


@check("cpu_bf16", title="CPU bf16 autocast vs CPU fp32 (the tiny student: CPU bf16 is slow)")
def cpu_bf16(ctx):
    from evstream.nn.checkpoint import default_config
    from evstream.nn.registry import build_model

    cfg = default_config(backbone="tiny", input={"height": 48, "width": 64, "crop": None,
                                                 "resize": None, "pad_multiple": 16})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    windows = sensor_windows(2, hw=(48, 64))
    cpu = torch.device("cpu")
    m = compare(_logits(model, cfg, windows, cpu), _logits(model, cfg, windows, cpu,
                                                           torch.bfloat16))
    tol = TOLERANCE["bf16"]
    line = (f"bf16 vs fp32 on CPU: logits max rel {m['max_rel']:.2e} (<= {tol['max_rel']:g}), "
            f"labels {100 * m['agree']:.2f} % (>= {100 * tol['agree']:g} %)")
    if m["max_rel"] > tol["max_rel"] or m["agree"] < tol["agree"]:
        raise Failed(line)
    return {"summary": line, "metrics": m, "tolerance": tol}


@check("cuda_graphs", "gpu", "CUDA graph replay equals the eager forward (fp16, batch 1-4)")
def cuda_graphs(ctx):
    from evstream.infer.predictor import Predictor

    _need_cuda(ctx)
    model, cfg, windows, _, _ = cpu_reference(ctx)
    batch = (windows * 2)[:4]
    kw = dict(device=str(ctx.gpu), precision=ctx.half, max_batch=4, sensor_hw=ctx.sensor_hw)
    eager = Predictor(_clone(model), cfg, **kw)
    graphs = Predictor(_clone(model), cfg, cuda_graphs=ctx.cuda, **kw)
    worst_agree, worst_conf = 1.0, 0
    for n in range(1, 5):
        agree, conf = label_agreement(graphs.predict(batch[:n]), eager.predict(batch[:n]))
        worst_agree, worst_conf = min(worst_agree, agree), max(worst_conf, conf)
    line = (f"graphs vs eager, batches 1-4: labels {100 * worst_agree:.4f} % (>= "
            f"{100 * GRAPHS_AGREE:g} %), confidence max diff {worst_conf} (<= 1)")
    if worst_agree < GRAPHS_AGREE or worst_conf > 1:
        raise Failed(line)
    return {"summary": line, "metrics": {"agree": worst_agree, "confidence_max_diff": worst_conf},
            "tolerance": {"agree": GRAPHS_AGREE, "confidence": 1}}


@check("compile", "gpu", "torch.compile (inductor) on CUDA: warm-ups at two sizes stay compiled, "
       "outputs match eager")
def compile_cuda(ctx):
    from evstream.infer.predictor import Predictor

    _need_cuda(ctx)
    model, cfg, windows, _, _ = cpu_reference(ctx)
    t0 = time.perf_counter()
    # batch 1 only: each shape costs inductor tens of seconds (the limit itself, 2 sizes x 8
    # batch sizes, is compile_cpu's check)
    kw = dict(device=str(ctx.gpu), precision=ctx.half, max_batch=1)
    guess = (240, 320) if ctx.cuda else (32, 48)
    p = Predictor(_clone(model), cfg, compile=True if ctx.cuda else "eager", sensor_hw=guess,
                  **kw)                                     # the worker's guess, then the sensor
    first = p.info["compile_status"]
    p.prepare(ctx.sensor_hw)
    second = p.info["compile_status"]
    compile_s = time.perf_counter() - t0
    eager = Predictor(_clone(model), cfg, sensor_hw=ctx.sensor_hw, **kw)
    agree, conf = label_agreement(p.predict(windows), eager.predict(windows))
    times = []
    for _ in range(30):
        t = time.perf_counter()
        p.predict(windows[:1])
        times.append((time.perf_counter() - t) * 1e3)
    m = {"status_first": first, "status_second": second, "compile_s": round(compile_s, 1),
         "agree": agree, "confidence_max_diff": conf, "predict_ms": _stats(times)}
    line = (f"{second}; {compile_s:.0f} s to compile 2 sizes; labels vs eager "
            f"{100 * agree:.3f} % (>= {100 * COMPILE_AGREE:g} %); predict p50 "
            f"{m['predict_ms']['p50']:.2f} ms")
    if not (first.startswith("compiled") and second.startswith("compiled")) or \
            agree < COMPILE_AGREE:
        raise Failed(line if second.startswith("compiled") else f"{first} / {second}")
    return {"summary": line, "metrics": m, "tolerance": {"agree": COMPILE_AGREE}}


@check("compile_cpu", title="torch.compile warm-ups at two sensor sizes stay compiled (dynamo, "
       "eager backend, CPU; the recompile-limit fix)")
def compile_cpu(ctx):
    import torch._dynamo as dynamo
    from torch import nn

    from evstream.infer.predictor import Predictor

    net = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    cfg = {"name": "two-conv", "task": "segmentation", "in_channels": 5, "num_classes": 3,
           "input": {"crop": None, "resize": None, "pad_multiple": 1}}
    from torch._dynamo.utils import counters

    before = int(counters["stats"]["unique_graphs"])
    limit = dynamo.config.recompile_limit if hasattr(dynamo.config, "recompile_limit") \
        else dynamo.config.cache_size_limit
    p = Predictor(net, cfg, device="cpu", threads=1, compile="eager", max_batch=5,
                  sensor_hw=(24, 32))
    p.prepare((30, 40))
    graphs = int(counters["stats"]["unique_graphs"]) - before
    status = p.info["compile_status"]
    line = (f"{status}; {graphs} graphs compiled for 2 sizes x 5 batch sizes (dynamo's default "
            f"limit was {limit})")
    if not status.startswith("compiled") or graphs < 10:
        raise Failed(line)
    return {"summary": line, "metrics": {"status": status, "graphs": graphs,
                                         "default_limit": limit}}


@check("worker_latency", "gpu", "the worker's Predictor on the full-size student: per-window "
       "latency percentiles, synchronised")
def worker_latency(ctx):
    from evstream.infer.predictor import Predictor

    _need_cuda(ctx)
    model, cfg, _, _, _ = cpu_reference(ctx)
    windows = sensor_windows(20, ctx.sensor_hw)
    out = {}
    for name, kw in (("fp16+graphs", {"precision": ctx.half, "cuda_graphs": ctx.cuda}),
                     ("fp16", {"precision": ctx.half}), ("bf16", {"precision": "bf16"}),
                     ("fp32 ieee", {"precision": "fp32"})):
        if name == "bf16" and not ctx.bf16_ok():
            continue
        p = Predictor(_clone(model), cfg, device=str(ctx.gpu), max_batch=1,
                      sensor_hw=ctx.sensor_hw, **kw)
        wall, fwd = [], []
        for i in range(220 if ctx.cuda else 30):
            w = windows[i % len(windows)]
            ctx.sync()
            t = time.perf_counter()
            r = p.predict([w])           # returns once the outputs are on the host
            wall.append((time.perf_counter() - t) * 1e3)
            fwd.append(r[0]["timing_ms"]["forward"])
        out[name] = {"predict_ms": _stats(wall[10:]), "forward_ms_cuda_events": _stats(fwd[10:])}
        del p
    best = out["fp16+graphs"]["predict_ms"]
    return {"summary": "predict() wall p50/p99 ms: " + ", ".join(
        f"{k} {v['predict_ms']['p50']:.2f}/{v['predict_ms']['p99']:.2f}" for k, v in out.items())
        + f" (best: fp16+graphs p99 {best['p99']:.2f})", "metrics": out}


def _loss_rows(run: Path, stage: int, student_terms: bool = False) -> list[float]:
    """The logged total loss of a stage, or (student_terms) the sum of its CE and pixel-KD
    terms: stage 2's total also holds BMR's reconstruction and consistency terms, which may rise
    while E2A is still learning to draw; the terms that train the student's output may not."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("stage") == stage and "loss" in r]
    if not student_terms:
        return [r["loss"] for r in rows]
    return [sum(v for k, v in r.items() if k == "ce" or k.startswith("pixel_kd")) for r in rows]


def _falls(losses: list[float]) -> tuple[bool, float, float]:
    k = max(1, len(losses) // 3)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    return all(map(math.isfinite, losses)) and last < first, first, last


def trained_run(ctx: Ctx) -> Path:
    """The train check's run (both stages), made by it or on demand."""
    if "run" not in ctx.cache:
        if ctx.cache.get("failed:train"):
            raise Skip("needs the train check's run, and that check failed")
        train(ctx)
    return ctx.cache["run"]


@check("train", title="stage 1 and stage 2 training (AMP on a GPU: --amp auto), loss falling "
       "(stage 2: the CE and pixel-KD terms that train the student)")
def train(ctx):
    data = dataset(ctx)
    run = ctx.work / "run"
    if not ctx.cuda:                     # the tiny preset: the CPU runs it in seconds
        its = 10 if ctx.quick else 30
        args = ["--preset", "tiny", "--threads", "1"] + _sets(
            stage1__iterations=its, stage2__iterations=its, stage1__batch_size=4,
            stage2__batch_size=4, stage1__log_every=2, stage2__log_every=2)
    else:                                # the shipped CPU student's preset, a few hundred steps
        args = ["--preset", "cpu"] + _sets(
            stage1__iterations=200, stage2__iterations=200, stage1__log_every=10,
            stage2__log_every=10, stage1__eval_batches=4, stage2__eval_batches=4,
            data__num_workers=4)
    t0 = time.perf_counter()
    s = ctx.evstream_json("train", *args, "--data", data, "--out", run, "--device", ctx.device,
                          "--no-progress", timeout=600)
    seconds = time.perf_counter() - t0
    ctx.cache["run"] = run
    m = {"amp": s.get("amp"), "fp32_math": s.get("fp32_math"), "device": s["device"],
         "seconds": round(seconds, 1)}
    parts, ok = [], True
    for stage in (1, 2):
        falls, first, last = _falls(_loss_rows(run, stage, student_terms=stage == 2))
        _, total_first, total_last = _falls(_loss_rows(run, stage))
        st = s["stages"][str(stage)]
        m[f"stage{stage}"] = {"iterations": st["iterations"], "loss_first": first,
                              "loss_last": last, "total_first": total_first,
                              "total_last": total_last, "samples_per_s": st.get("samples_per_s"),
                              "val_miou": (st.get("val") or {}).get("miou")}
        what = "loss" if stage == 1 else f"CE + pixel KD (total {total_first:.1f} -> " \
                                         f"{total_last:.1f})"
        parts.append(f"stage {stage}: {st['iterations']} it, {what} {first:.3f} -> {last:.3f} "
                     f"({st.get('samples_per_s') or 0:.0f} samples/s)")
        ok &= falls
    want_amp = "bf16" if ctx.cuda and torch.cuda.is_bf16_supported() else \
        ("fp16" if ctx.cuda else "off")
    line = f"on {s['device']}, amp {s.get('amp')}: " + "; ".join(parts)
    if not ok or s.get("amp") != want_amp:
        raise Failed(line + ("" if ok else " (loss not falling)"))
    return {"summary": line, "metrics": m}


def _sets(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += ["--set", f"{k.replace('__', '.')}={v}"]
    return out


@check("train_fp16", "gpu", "stage 1 with --amp fp16 (autocast + GradScaler), loss falling")
def train_fp16(ctx):
    _need_cuda(ctx)
    run = ctx.work / "run_fp16"
    its = 120 if ctx.cuda else 10
    s = ctx.evstream_json("train", "--preset", "cpu", "--stage", "1", "--data", dataset(ctx),
                          "--out", run, "--device", ctx.device, "--amp", ctx.half,
                          "--no-progress", *_sets(stage1__iterations=its, stage1__log_every=2,
                                                  stage1__ckpt_every=its // 2,
                                                  stage1__eval_batches=2), timeout=600)
    falls, first, last = _falls(_loss_rows(run, 1))
    state = torch.load(run / "teacher" / "state.pt", map_location="cpu", weights_only=True)
    scaler = state["extra"].get("scaler") or {}
    line = (f"amp {s.get('amp')}: loss {first:.3f} -> {last:.3f}; GradScaler scale "
            f"{scaler.get('scale')} saved with the state")
    if not falls or s.get("amp") != ctx.half or (ctx.cuda and not scaler):
        raise Failed(line)
    return {"summary": line, "metrics": {"loss_first": first, "loss_last": last,
                                         "scaler": scaler}}


@check("resume", slow_on_cpu=True, title="a stage-2 run killed after a checkpoint and resumed "
       "ends where the uninterrupted run ends (CPU: bit for bit; CUDA: within tolerance)")
def resume(ctx):
    run = trained_run(ctx)
    teacher = run / "teacher" / "model.pt"
    its, at = (30, 15) if ctx.cuda else (12, 6)
    args = ["--preset", "cpu" if ctx.cuda else "tiny", "--stage", "2", "--teacher", teacher,
            "--data", dataset(ctx), "--device", ctx.device, "--amp", "off", "--threads", "1",
            *_sets(stage2__iterations=its, stage2__ckpt_every=at, stage2__log_every=2,
                   stage2__eval_batches=2)]
    ref = ctx.work / "resume_ref"
    code, _, err = ctx.evstream("train", *args, "--out", ref, "--no-progress", timeout=600)
    if code:
        raise Failed(f"reference run failed: {_tail(err)}")
    killed = ctx.work / "resume_killed"
    proc = subprocess.Popen([sys.executable, "-m", "evstream", "train", *map(str, args),
                             "--out", str(killed), "--no-progress"], cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        needle = f"stage 2: checkpoint at iteration {at} "
        for line in proc.stderr:
            if needle in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    if (killed / "student" / "model.pt").exists():
        raise Failed("the run finished before it could be killed")
    code, _, err = ctx.evstream("train", *args, "--out", killed, "--resume", "--no-progress",
                                timeout=600)
    if code:
        raise Failed(f"--resume failed: {_tail(err)}")
    a = torch.load(ref / "student" / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "student" / "model.pt", map_location="cpu", weights_only=True)
    a, b = a["state_dict"], b["state_dict"]
    floats = [k for k in a if a[k].is_floating_point()]
    rel = max(float((a[k] - b[k]).abs().max() / max(float(a[k].abs().max()), 1e-12))
              for k in floats)
    exact = all(torch.equal(a[k], b[k]) for k in a)
    if ctx.cuda:
        ok, want = rel <= RESUME_REL_CUDA, f"<= {RESUME_REL_CUDA:g}"
    else:
        ok, want = exact, "bit for bit"
    line = (f"killed at iteration {at} of {its} and resumed: weights equal bit for bit: {exact}; "
            f"max relative difference {rel:.2e} ({want})")
    if not ok:
        raise Failed(line)
    return {"summary": line, "metrics": {"exact": exact, "max_rel": rel}}


@check("ddp", slow_on_cpu=True, title="DDP over a real process group under torchrun (nccl + "
       "SyncBatchNorm on CUDA, gloo on CPU) equals one process (tools/ddp_check.py)")
def ddp(ctx):
    n = min(2, torch.cuda.device_count()) if ctx.cuda else 2
    out = ctx.work / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n), str(ROOT / "tools" / "ddp_check.py"), "--out", str(out), "--device",
           "cuda" if ctx.cuda else "cpu"]
    if not ctx.cuda:
        cmd += ["--size", "48x64"]
    r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not out.exists():
        raise Failed(f"torchrun exited {r.returncode}: {_tail(r.stderr)}")
    res = json.loads(out.read_text())
    line = (f"{res['backend']}, {res['world_size']} rank(s), {res['batchnorm']}"
            f"{' (gathered over ranks)' if res['sync_bn_gathered'] else ''}: ranks identical "
            f"(max diff {res['max_param_diff_between_ranks']:g}), vs one process max rel "
            f"{res['max_param_rel_diff_vs_one_process']:.2e} (<= {res['tolerance']:g})")
    if ctx.cuda and res["world_size"] == 1:
        line += "; one GPU: SyncBatchNorm's all-gather needs 2 ranks and did not run"
    if not res["passed"]:
        raise Failed(line)
    return {"summary": line, "metrics": res, "tolerance": res["tolerance"]}


@check("ddp_train", "gpus2", "evstream train under torchrun on 2 GPUs (nccl, SyncBatchNorm)")
def ddp_train(ctx):
    if torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    run = ctx.work / "run_ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "evstream", "train", "--preset", "cpu",
                        "--data", str(dataset(ctx)), "--out", str(run), "--device", "cuda",
                        "--no-progress", "--json",
                        *_sets(stage1__iterations=60, stage2__iterations=60,
                               stage1__eval_batches=2, stage2__eval_batches=2)],
                       cwd=ROOT, text=True, capture_output=True, timeout=600)
    if r.returncode:
        raise Failed(f"torchrun train exited {r.returncode}: {_tail(r.stderr)}")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    ok = s["world_size"] == 2 and all(_falls(_loss_rows(run, st, st == 2))[0] for st in (1, 2))
    line = f"world size {s['world_size']} on {s['device']}, amp {s.get('amp')}, loss falling: {ok}"
    if not ok:
        raise Failed(line)
    return {"summary": line, "metrics": {"world_size": s["world_size"]}}


def exported(ctx: Ctx) -> Path:
    def make():
        out = ctx.work / "export"
        s = ctx.evstream_json("export", trained_run(ctx), "--out", out)
        ctx.cache["export_summary"] = s
        return out
    return ctx.once("export", make)


@check("export", title="evstream export, then the TorchScript and the checkpoint reloaded on the "
       "device agree")
def export(ctx):
    from evstream.infer.fp32_math import set_fp32_math
    from evstream.nn.checkpoint import load_model
    from evstream.nn.geometry import to_network

    out = exported(ctx)
    dev = torch.device(ctx.device)
    if ctx.cuda:
        set_fp32_math("ieee")
    model, cfg = load_model(out / "model.pt", device=dev)
    ts = torch.jit.load(str(out / "model.ts"), map_location=dev)
    x = to_network(np.stack(sensor_windows(2)), cfg["input"]).to(dev)
    with torch.inference_mode():
        a, b = model.eval()(x).float(), ts(x).float()
    rel = float((a - b).abs().max() / a.abs().max())
    tol = EXPORT_REL["cuda" if ctx.cuda else "cpu"]
    line = (f"model.pt and model.ts on {dev}: max rel difference {rel:.2e} (<= {tol:g}); "
            f"export's own check {ctx.cache.get('export_summary', {}).get('check')}")
    if rel > tol:
        raise Failed(line)
    return {"summary": line, "metrics": {"max_rel": rel, "input": list(x.shape)},
            "tolerance": tol}


@check("replay", title="evstream replay FILE --device D --lossless: one prediction per window")
def replay(ctx):
    rec = recording(ctx, "replay", 0.6 if ctx.quick else 3.0, 2e5)
    s = ctx.evstream_json("replay", rec, "--model", exported(ctx), "--device", ctx.device,
                          "--lossless", "--speed", "max", "--no-window", "--status-every", "0",
                          fresh=True)
    windows, preds = s.get("windows", 0), s.get("predictions", 0)
    line = (f"{rec.name} on {s.get('device')}: {windows} windows, {preds} predictions, "
            f"{s.get('dropped_windows')} dropped")
    if not windows or preds != windows or s.get("dropped_windows") or \
            not str(s.get("device", "")).startswith(ctx.device.split(":")[0]):
        raise Failed(line)
    return {"summary": line, "metrics": {k: s.get(k) for k in (
        "windows", "predictions", "dropped_windows", "device", "model", "infer_ms",
        "worker_latency_ms", "latency_ms", "stream_s")}}


@check("student_latency", "gpu", "full-size student (ResNet-18 DeepLabv3+, 346x260) live on the "
       "GPU: window end -> prediction p50/p99, goal p99 <= 10 ms")
def student_latency(ctx):
    _need_cuda(ctx)
    rec = recording(ctx, "latency", 6.0 if ctx.cuda else 1.0, 3e5)
    runs = {}
    for name, extra in (("fp16+graphs", ["--precision", "fp16", "--cuda-graphs"]),
                        ("fp16", ["--precision", "fp16"])):
        if not ctx.cuda:
            extra = ["--precision", "fp32"]            # a rehearsal: the same run on the CPU
        s = ctx.evstream_json("replay", rec, "--model", "untrained", "--device", ctx.device,
                              *extra, "--speed", "1", "--stride-ms", "10", "--no-window",
                              "--status-every", "0")
        runs[name] = {k: s.get(k) for k in ("windows", "predictions", "dropped_windows",
                                            "latency_ms", "worker_latency_ms", "infer_ms",
                                            "window_latency_ms", "model", "device")}
    best = runs["fp16+graphs"]
    lat = best.get("latency_ms") or best.get("worker_latency_ms") or {}
    p50, p99 = lat.get("p50", float("nan")), lat.get("p99", float("nan"))
    met = p99 <= LATENCY_GOAL_P99_MS
    line = (f"fp16 + CUDA graphs: window end -> prediction delivered p50 {p50:.2f} ms, p99 "
            f"{p99:.2f} ms over {lat.get('count')} windows (goal p99 <= "
            f"{LATENCY_GOAL_P99_MS:g} ms: {'met' if met else 'MISSED'}); eager fp16 p99 "
            f"{(runs['fp16'].get('latency_ms') or {}).get('p99', float('nan')):.2f} ms")
    if not met and ctx.cuda:
        raise Failed(line)
    return {"summary": line, "metrics": runs, "tolerance": {"p99_ms": LATENCY_GOAL_P99_MS}}
