"""Virtual frames -> events, APS frames and labels: the time stepping shared by every world.

    for out in run_world(world, sim, frame_times_us, exposure_us, t_end_us, aps=..., gain=...,
                         rng=..., step=StepConfig()):
        out.events (EVENT_DTYPE, sorted), out.frame (evstream.types.Frame or None),
        out.labels (uint8 (H, W) or None)

A world is any object with `render(t_us, labels: bool) -> (radiance float32 (H, W), labels
uint8 (H, W) or None)`: linear radiance at time t_us, a pure function of t_us (no state that
depends on which times were asked before), and labels when asked.

APS frame k is centred on frame_times_us[k]: its exposure window is [t_k - e/2, t_k - e/2 + e]
(e = exposure_us, integer halves rounded down), and its labels are rendered at exactly t_k, the
frame's timestamp. Windows must lie inside (0, t_end_us] and must not overlap.

Virtual time grid (ESIM's adaptive sampling, Rebecq et al. 2018, in spirit). The simulator
interpolates log intensity linearly between virtual frames, so a step must be short enough that
the scene's log intensity changes by little in it. After each step the driver measures
|dL| = |log(I_new + eps) - log(I_old + eps)| at every pixel (a strided subsample would miss
thin moving edges and let the step size oscillate), takes its `percentile`, and sizes the
next step so that this change would be `target_dlog`:
    dt = clip(target_dlog * dt_last / p(|dL|), 1 / max_virtual_fps, 1 / min_virtual_fps)
(a slow scene runs at min_virtual_fps, fast motion up to max_virtual_fps; with the defaults and
25 fps APS frames of 10 ms exposure a slow scene takes 8 steps per frame interval: 3 in the
exposure, 5 outside). Inside an exposure window the step is also at most e / exposure_steps, so
the exposure integral (trapezoid rule over the virtual frames) sees the motion as a blur rather
than a few ghosts. Every window edge and every frame time is hit exactly: the way to the next
one is cut into round(gap / step) equal steps, so a step stays within 2/3 .. 3/2 of its chosen
size. The first step is the shortest allowed.
Everything is deterministic: the grid depends only on the rendered radiance.

Output order: one `StepOutput` per APS frame, yielded as soon as its exposure window closes,
with the events since the previous output (so the events of an output end at the window's end,
after the frame's timestamp), then one last output with the events up to t_end_us and no frame.
The APS frames of one run share one sensor: its fixed pattern (camera.sensor_offsets) is drawn
from `rng` once, before the first frame's noise.
`DriverStats` counts virtual frames and the CPU time (this process, all threads) spent
rendering and simulating.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from evstream.sim.camera import ApsConfig, aps_image, sensor_offsets
from evstream.sim.esim import EventSimulator
from evstream.types import Frame, concat_events


@dataclass(frozen=True)
class StepConfig:
    max_virtual_fps: float = 1000.0   # shortest virtual step is 1 / this
    min_virtual_fps: float = 150.0    # longest virtual step is 1 / this
    target_dlog: float = 0.3          # aim for this change of L per step at the percentile pixel
    percentile: float = 99.5          # of |dL| over the pixels
    exposure_steps: int = 3           # at least this many steps inside each exposure window

    def __post_init__(self) -> None:
        if not (0 < self.min_virtual_fps <= self.max_virtual_fps):
            raise ValueError(f"StepConfig: need 0 < min_virtual_fps <= max_virtual_fps, got "
                             f"{self.min_virtual_fps}, {self.max_virtual_fps}")
        if not (self.target_dlog > 0 and 0 < self.percentile <= 100 and self.exposure_steps >= 1):
            raise ValueError(f"bad StepConfig {self}")


@dataclass
class StepOutput:
    events: np.ndarray
    frame: Frame | None = None
    labels: np.ndarray | None = None


@dataclass
class DriverStats:
    virtual_frames: int = 0
    events: int = 0
    render_s: float = 0.0
    sim_s: float = 0.0
    aps_s: float = 0.0


def exposure_windows(frame_times_us, exposure_us: int, t_end_us: int) -> list[tuple[int, int]]:
    """[(start, end)] of each frame's exposure; checks they fit and do not overlap."""
    windows = []
    for k, t in enumerate(frame_times_us):
        a = int(t) - exposure_us // 2
        b = a + exposure_us
        if a <= 0 or b > t_end_us or (windows and a <= windows[-1][1]):
            raise ValueError(f"frame {k} at t={t} us: exposure window [{a}, {b}] must lie in "
                             f"(0, {t_end_us}] and after the previous one")
        windows.append((a, b))
    return windows


def run_world(world, sim: EventSimulator, frame_times_us, exposure_us: int, t_end_us: int, *,
              aps: ApsConfig, gain: float, rng: np.random.Generator,
              step: StepConfig = StepConfig(),
              stats: DriverStats | None = None) -> Iterator[StepOutput]:
    frame_times = [int(t) for t in frame_times_us]
    windows = exposure_windows(frame_times, int(exposure_us), int(t_end_us))
    required = sorted({t for w, c in zip(windows, frame_times) for t in (w[0], c, w[1])}
                      | {int(t_end_us)})
    stats = stats if stats is not None else DriverStats()
    dt_min = max(1, int(round(1e6 / step.max_virtual_fps)))
    dt_max = max(dt_min, int(round(1e6 / step.min_virtual_fps)))
    dt_exp = max(1, exposure_us // step.exposure_steps)
    eps = float(sim.config.eps) if sim.config.lin_log_threshold == 0 else \
        float(sim.config.lin_log_threshold)
    clock = time.process_time        # the renderer may run on several threads

    def render(t_us: int, want: bool):
        c0 = clock()
        out = world.render(t_us, want)
        stats.render_s += clock() - c0
        return out

    def simulate(rad, t_us):
        c0 = clock()
        ev = sim.step(rad, t_us)
        stats.sim_s += clock() - c0
        stats.virtual_frames += 1
        stats.events += len(ev)
        return ev

    t = 0
    rad_prev, _ = render(0, False)
    simulate(rad_prev, 0)
    offsets = sensor_offsets(rad_prev.shape, aps, rng)     # the sequence's fixed pattern
    log_prev = np.log(rad_prev + np.float32(eps))
    dt = dt_min
    k = 0                          # next frame
    acc = None                     # exposure integral of frame k (radiance * us)
    labels_k = None
    pending: list[np.ndarray] = []
    ri = 0
    while t < t_end_us:
        while required[ri] <= t:
            ri += 1
        target = required[ri]
        inside = k < len(windows) and windows[k][0] <= t < windows[k][1]
        limit = min(dt_max, dt_exp) if inside else dt_max
        step_us = min(max(dt, dt_min), limit)
        steps_left = max(1, int(round((target - t) / step_us)))
        t_next = t + (target - t) // steps_left     # equal steps onto the next required time
        want = k < len(frame_times) and t_next == frame_times[k]
        rad, lab = render(t_next, want)
        ev = simulate(rad, t_next)
        if len(ev):
            pending.append(ev)
        if inside:
            if acc is None:
                acc = np.zeros_like(rad)
            acc += np.float32(0.5 * (t_next - t)) * (rad + rad_prev)
        if want:
            labels_k = lab
        log_now = np.log(rad + np.float32(eps))
        change = np.abs(log_now - log_prev).ravel()
        kth = min(len(change) - 1, int(math.ceil(step.percentile / 100 * len(change))) - 1)
        p = float(np.partition(change, max(kth, 0))[max(kth, 0)]) if len(change) else 0.0
        dt = int(step.target_dlog * (t_next - t) / p) if p > 0 else dt_max
        if k < len(windows) and t_next == windows[k][1]:
            c0 = clock()
            mean = acc / np.float32(exposure_us) if acc is not None else rad
            image = aps_image(mean, exposure_us, gain, aps, rng, offsets=offsets)
            stats.aps_s += clock() - c0
            yield StepOutput(concat_events(pending), Frame(frame_times[k], image, exposure_us),
                             labels_k)
            pending, acc, labels_k = [], None, None
            k += 1
        t, rad_prev, log_prev = t_next, rad, log_now
    yield StepOutput(concat_events(pending))
