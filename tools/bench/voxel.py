"""Benchmark: voxel grid (346x260, B=5) on one core, ours against its peers, in one run.

Rows: windows of 10k / 100k / 1M / 10M events. Columns, each the best of several runs:

  evstream   evstream.represent.voxel_grid, the Numba kernel, writing into a reused buffer
  numpy      evstream.represent.voxel_grid_numpy: the E2VID formula with np.add.at
  tonic      tonic.transforms.ToVoxelGrid (if installed). Not the same definition: it scales
             tau by B instead of B-1, so the last event (tau = B) is dropped and the upper
             share of every event past tau = B-1 is lost; it returns float64 (B, 1, H, W); it
             has no dT = 0 guard (NaN); and it turns p == 0 into -1 in place (its transform
             copies the events first), which makes every bool polarity +1 and fails on uint8.
  memory     a Numba loop summing the t field over the same records: the bandwidth ceiling of
             any kernel that reads every event once

Events are uniform random pixels with sorted random timestamps over 50 ms (`--events random`,
the cache-hostile case) or the real DAVIS346 recording repeated with shifted timestamps
(`--events real`). One core: NUMBA_NUM_THREADS, OMP/MKL/OpenBLAS threads are set to 1 before
numpy/numba load, the process is pinned to one CPU, and the script checks that no kernel it
times was compiled with parallel=True.

    .venv/bin/python tools/bench/voxel.py [--events random|real] [--sizes 10000,100000,...]
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evstream.represent import voxel as voxel_mod  # noqa: E402
from evstream.represent import voxel_grid, voxel_grid_numpy  # noqa: E402
from evstream.types import EVENT_DTYPE  # noqa: E402

WIDTH, HEIGHT, BINS = 346, 260, 5
REAL = ROOT.parent / "shared" / "realdata" / "aedat4" / "davis346_aestream_davis.aedat4"


@njit(cache=True, nogil=True)
def _sum_t(events):
    total = 0
    for i in range(events.shape[0]):
        total += events[i].t
    return total


def random_events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 50_000, n))
    ev["x"] = rng.integers(0, WIDTH, n)
    ev["y"] = rng.integers(0, HEIGHT, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def real_events(n: int) -> np.ndarray:
    import dv_processing as dv
    rec = dv.io.MonoCameraRecording(str(REAL))
    chunks = []
    while (batch := rec.getNextEventBatch()) is not None:
        chunks.append(batch.numpy().view(EVENT_DTYPE).copy())
    base = np.concatenate(chunks)
    span = int(base["t"][-1] - base["t"][0]) + 1
    reps = -(-n // len(base))
    ev = np.concatenate([base] * reps)[:n]
    ev["t"] += np.repeat(np.arange(reps, dtype=np.int64) * span, len(base))[:n]
    return ev


def best_time(fn, budget_s: float = 2.0, max_reps: int = 15) -> float:
    fn()                                                  # warm-up (compile, page-in)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > budget_s:
            break
    return min(times)


def check_single_core() -> str:
    for kernel in (voxel_mod._voxel_kernel, voxel_mod._normalize_nonzero_kernel, _sum_t):
        if kernel.targetoptions.get("parallel"):
            raise SystemExit(f"{kernel.py_func.__name__} is a parallel kernel")
    pinned = "not pinned"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"pinned to CPU {cpu}"
    return f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, {pinned}, no parallel kernels"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", choices=("random", "real"), default="random")
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--no-tonic", action="store_true", help="skip tonic even if installed")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    tonic_voxel = None
    tonic_version = "not installed"
    if not args.no_tonic:
        try:
            import tonic
            from tonic.transforms import ToVoxelGrid
            tonic_voxel = ToVoxelGrid(sensor_size=(WIDTH, HEIGHT, 2), n_time_bins=BINS)
            tonic_version = tonic.__version__
        except ImportError:
            pass

    cores = check_single_core()
    print(f"# voxel grid {WIDTH}x{HEIGHT}, B={BINS}, {args.events} events; {cores}")
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, numba {numba.__version__}, tonic {tonic_version}")
    print()
    print("| events | evstream ms | evstream Mev/s | numpy ms | numpy Mev/s | tonic ms | "
          "tonic Mev/s | memory pass Mev/s | vs numpy | vs tonic | of memory pass |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = np.zeros((BINS, HEIGHT, WIDTH), np.float32)
    ref = np.zeros_like(out)
    for n in sizes:
        ev = random_events(n) if args.events == "random" else real_events(n)
        ours = best_time(lambda: voxel_grid(ev, BINS, HEIGHT, WIDTH, out=out))
        slow_budget = 0.0 if n >= 5_000_000 else 2.0     # one timed run for the big ones
        numpy_s = best_time(lambda: voxel_grid_numpy(ev, BINS, HEIGHT, WIDTH, out=ref),
                            budget_s=slow_budget)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, n / 1e6))
        mem = best_time(lambda: _sum_t(ev))
        tonic_s = (best_time(lambda: tonic_voxel(ev), budget_s=slow_budget)
                   if tonic_voxel is not None else None)

        def rate(s):
            return f"{n / s / 1e6:.1f}" if s else "-"

        def ms(s):
            return f"{s * 1e3:.2f}" if s else "-"

        print(f"| {n:,} | {ms(ours)} | {rate(ours)} | {ms(numpy_s)} | {rate(numpy_s)} | "
              f"{ms(tonic_s)} | {rate(tonic_s)} | {rate(mem)} | {numpy_s / ours:.0f}x | "
              f"{f'{tonic_s / ours:.0f}x' if tonic_s else '-'} | {mem / ours:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
