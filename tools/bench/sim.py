"""Throughput of evstream.sim: the ESIM simulator, the driving world, `evstream synth`.

    .venv/bin/python tools/bench/sim.py [--frames 2000] [--fps 1000] [--speeds 100,400,1600]
        [--world-seconds 4] [--dataset-seconds 30 --workers 2] [--skip-simulator]

Part 1, the simulator alone (--frames > 0):

The scene: a fixed random periodic texture (1/f noise, intensity 0.05..1, twice the sensor
size) translated diagonally at `speed` px/s with sub-pixel shifts (cv2.warpAffine, bilinear),
rendered at `fps` virtual frames per second as float32 (or uint8 with --uint8) 346x260 frames.
For each speed the script times rendering and simulation separately (by default in this
thread's CPU time, so other processes on a shared machine do not inflate it; --clock wall for
wall-clock time; the last column is always wall time per frame, bench loop included) and
prints a markdown table: simulated frames/s and events/s (simulator only), the event rate the
scene produces per simulated second, and the estimated time to generate 10 minutes of
simulated recording at `fps` (render + simulate, one process on one core), which a dataset
generator can divide by its number of worker processes.

The simulator config is SimConfig's defaults (C = 0.2, sigma 0.03) plus --ba-rate background
activity; the numbers of a run depend on this machine, so compare rows of one run.

Part 2, the segmentation world (--world-seconds > 0): one 346x260 sequence per motion and
illumination condition generated in this process on one thread (evstream.sim.dataset.
sequence_outputs, the code `evstream synth` runs, without writing), timed in this process's
CPU time: virtual frames per APS frame, render and simulate ms per virtual frame, events/s of
the scene, and simulated seconds per CPU second, with the projected time for 10 minutes of
driving split over --workers processes on as many cores.

Part 3, end to end (--dataset-seconds > 0): `evstream synth seg` itself (generate_dataset, one
sequence per worker, --dataset-seconds each, written as .aedat4 with frames and labels into a
temporary folder): simulated seconds per wall second, the workers' CPU seconds (process time,
writing included) per simulated second, and the projected time for 10 minutes of driving both
at the measured wall rate and from the CPU time on --workers free cores (on a shared machine
the wall rate depends on what else runs; the CPU figure much less).
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numba
import numpy as np
from tqdm import tqdm

from evstream.sim import EventSimulator, SimConfig


def make_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Periodic float32 (height, width) texture in [0.05, 1]: white noise shaped to a 1/f
    amplitude spectrum (natural-image-like), cut off above 1/3 cycle per pixel."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fy, fx)
    gain = np.where((f > 0) & (f < 1 / 3), 1.0 / np.maximum(f, 1e-9), 0.0)
    spectrum = np.fft.rfft2(rng.standard_normal((height, width))) * gain
    tex = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    tex -= tex.min()
    tex /= tex.max()
    return 0.05 + 0.95 * tex


class Translator:
    """Renders the sensor-sized view of a periodic `texture` shifted by (dx, dy) pixels
    (sub-pixel shifts, bilinear; the view wraps around the texture seamlessly)."""

    def __init__(self, texture: np.ndarray, height: int, width: int, uint8: bool = False):
        th, tw = texture.shape
        if th < height + 1 or tw < width + 1:
            raise ValueError("texture must be larger than the sensor by a pixel")
        self.tiled = np.tile(texture, (2, 2))        # any (H+1, W+1) crop without wrapping
        self.shape = (th, tw)
        self.height, self.width, self.uint8 = height, width, uint8

    def render(self, dx: float, dy: float) -> np.ndarray:
        th, tw = self.shape
        fx, fy = math.floor(dx), math.floor(dy)
        x0, y0 = fx % tw, fy % th
        crop = self.tiled[y0:y0 + self.height + 1, x0:x0 + self.width + 1]
        m = np.array([[1.0, 0.0, fx - dx], [0.0, 1.0, fy - dy]], np.float32)
        img = cv2.warpAffine(crop, m, (self.width, self.height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        if self.uint8:
            return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return img


def run_one(speed_px_s: float, frames: int, fps: float, height: int, width: int,
            config: SimConfig, uint8: bool, clock=time.thread_time, seed: int = 0) -> dict:
    scene = Translator(make_texture(2 * height, 2 * width, seed), height, width, uint8)
    frame_us = 1e6 / fps
    warm = EventSimulator(height, width, config, seed)     # JIT compile / cache load, untimed
    for k in range(3):
        warm.step(scene.render(0.3 * k, 0.2 * k), k * 1000)

    sim = EventSimulator(height, width, config, seed)
    render_s = sim_s = 0.0
    n_events = 0
    wall = time.perf_counter()
    for k in tqdm(range(frames + 1), desc=f"{speed_px_s:g} px/s", unit="frame", leave=False):
        t_us = int(round(k * frame_us))
        shift = speed_px_s * t_us * 1e-6
        a = clock()
        img = scene.render(0.8 * shift, 0.6 * shift)
        b = clock()
        n_events += len(sim.step(img, t_us))
        c = clock()
        render_s += b - a
        sim_s += c - b
    wall = time.perf_counter() - wall
    sim_seconds = frames / fps
    per_frame_s = (render_s + sim_s) / frames
    return {
        "speed_px_s": speed_px_s,
        "events": n_events,
        "event_rate_hz": n_events / sim_seconds,
        "sim_fps": frames / sim_s,
        "sim_events_s": n_events / sim_s,
        "render_ms": 1e3 * render_s / frames,
        "sim_ms": 1e3 * sim_s / frames,
        "ten_min_h": per_frame_s * 600 * fps / 3600,
        "wall_ms": 1e3 * wall / frames,
    }


def run_world(seconds: float, conditions: dict, seed: int = 1) -> dict:
    """Generate one seg sequence in this process (no writing); CPU-time breakdown."""
    from evstream.sim.dataset import SynthConfig, sequence_outputs
    from evstream.sim.driver import DriverStats

    cfg = SynthConfig(task="seg", seconds=seconds, seed=seed).resolved()
    entry = {"name": "bench", "split": "train", "seed": seed, "conditions": conditions}
    warm_cfg = SynthConfig(task="seg", seconds=0.08, width=32, height=24).resolved()
    for _ in sequence_outputs(warm_cfg, entry)[2]:      # JIT compile / cache load, untimed
        pass
    stats = DriverStats()
    threads = numba.get_num_threads()
    numba.set_num_threads(1)                   # one core: the renderer's rows run serially
    try:
        cpu = time.process_time()
        wall = time.perf_counter()
        _, _, outputs = sequence_outputs(cfg, entry, stats)
        frames = 0
        for out in tqdm(outputs, total=len(cfg.frame_times_us()) + 1, leave=False,
                        desc=f"{conditions['illumination']}/{conditions['motion']}"):
            frames += out.frame is not None
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    finally:
        numba.set_num_threads(threads)
    return {"conditions": f"{conditions['illumination']}/{conditions['motion']}",
            "frames": frames, "virtual_frames": stats.virtual_frames,
            "per_frame": stats.virtual_frames / max(frames, 1),
            "render_ms": 1e3 * stats.render_s / stats.virtual_frames,
            "sim_ms": 1e3 * stats.sim_s / stats.virtual_frames,
            "event_rate": stats.events / seconds, "cpu_s": cpu, "wall_s": wall,
            "speed": seconds / cpu}


def run_dataset(seconds: float, workers: int, seed: int = 1) -> dict:
    import tempfile

    from evstream.sim.dataset import SynthConfig, generate_dataset

    with tempfile.TemporaryDirectory(prefix="evstream-bench-synth-") as tmp:
        cfg = SynthConfig(task="seg", sequences=workers, seconds=seconds, seed=seed,
                          split=(1.0, 0.0, 0.0))
        return generate_dataset(f"{tmp}/seg", cfg, workers=workers, progress=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames per speed (after the first)")
    ap.add_argument("--fps", type=float, default=1000.0, help="virtual frame rate")
    ap.add_argument("--speeds", default="100,400,1600", help="comma-separated px/s")
    ap.add_argument("--width", type=int, default=346)
    ap.add_argument("--height", type=int, default=260)
    ap.add_argument("--uint8", action="store_true", help="render uint8 frames (table lookup)")
    ap.add_argument("--ba-rate", type=float, default=0.0, help="background activity, Hz/pixel")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time with this thread's CPU time (default: other processes on a "
                         "shared machine do not inflate it) or wall-clock time")
    ap.add_argument("--skip-simulator", action="store_true", help="skip part 1")
    ap.add_argument("--world-seconds", type=float, default=4.0,
                    help="seconds of driving per condition in part 2 (0 = skip)")
    ap.add_argument("--dataset-seconds", type=float, default=0.0,
                    help="seconds per sequence in part 3, `evstream synth` end to end "
                         "(0 = skip, the default)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (parts 2, 3)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)                          # one core: the estimate is per process
    if not args.skip_simulator and args.frames > 0:
        simulator_table(args)
    if args.world_seconds > 0:
        world_table(args)
    if args.dataset_seconds > 0:
        dataset_table(args)


def world_table(args) -> None:
    rows = [run_world(args.world_seconds, {"illumination": ill, "motion": mot})
            for ill, mot in (("normal", "slow"), ("normal", "fast"), ("low", "fast"),
                             ("over", "fast"))]
    print(f"\nDriving world (seg), 346x260, {args.world_seconds:g} s of driving per row, "
          f"APS 25 fps; CPU time, one thread; 10 min projected on {args.workers} "
          f"worker(s)\n")
    print("| condition | virtual frames / APS frame | render ms / vframe | simulate ms / "
          "vframe | scene ev/s | simulated s per CPU s | 10 min of driving takes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        minutes = 600 / r["speed"] / args.workers / 60
        print(f"| {r['conditions']} | {r['per_frame']:.1f} | {r['render_ms']:.2f} | "
              f"{r['sim_ms']:.2f} | {r['event_rate'] / 1e6:.2f} M | {r['speed']:.3f} | "
              f"{minutes:.0f} min |")


def dataset_table(args) -> None:
    s = run_dataset(args.dataset_seconds, args.workers)
    rate = s["simulated_s_per_wall_s"]
    print(f"\n`evstream synth seg` end to end: {s['sequences']} sequence(s) x "
          f"{args.dataset_seconds:g} s on {args.workers} worker(s), wall-clock time\n")
    cpu_per_s = s["cpu_s"] / s["simulated_s"]
    print("| sequences | simulated s | wall s | simulated s per wall s | events | frames | "
          "virtual frames | MB written | worker CPU s per simulated s | 10 min of driving "
          "takes (wall rate) | (CPU, on free cores) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {s['sequences']} | {s['simulated_s']:g} | {s['wall_s']:.1f} | {rate:.3f} | "
          f"{s['events']:,} | {s['frames']:,} | {s['virtual_frames']:,} | "
          f"{s['bytes'] / 1e6:.1f} | {cpu_per_s:.2f} | {600 / rate / 60:.0f} min | "
          f"{600 * cpu_per_s / args.workers / 60:.0f} min |")


def simulator_table(args) -> None:
    config = SimConfig(ba_rate_hz=args.ba_rate)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    rows = [run_one(float(s), args.frames, args.fps, args.height, args.width, config,
                    args.uint8, clock) for s in args.speeds.split(",")]
    kind = "uint8" if args.uint8 else "float32"
    print(f"\nESIM simulator, {args.width}x{args.height} {kind} frames at {args.fps:g} virtual "
          f"fps, {args.frames} frames per row, C = {config.c_on}, sigma = "
          f"{config.sigma_threshold}, BA {args.ba_rate:g} Hz; {args.clock} time\n")
    print("| speed px/s | events | scene ev/s (sim time) | sim frames/s | sim events/s "
          "| render ms/frame | sim ms/frame | 10 min sim. takes | wall ms/frame |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['speed_px_s']:g} | {r['events']:,} | {r['event_rate_hz'] / 1e6:.2f} M "
              f"| {r['sim_fps']:,.0f} | {r['sim_events_s'] / 1e6:.2f} M | {r['render_ms']:.3f} "
              f"| {r['sim_ms']:.3f} | {r['ten_min_h'] * 60:.0f} min | {r['wall_ms']:.3f} |")


if __name__ == "__main__":
    main()
