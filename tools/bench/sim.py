"""Throughput of evstream.sim's ESIM simulator on a moving textured scene.

    .venv/bin/python tools/bench/sim.py [--frames 2000] [--fps 1000] [--speeds 100,400,1600]

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
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
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
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)                          # one core: the estimate is per process

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
