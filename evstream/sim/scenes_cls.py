"""The object-recognition world: one textured shape on a cluttered background, seen through
saccades (N-Caltech101 in spirit: Orchard et al. 2015 moved an ATIS in front of a monitor
showing Caltech101 images, three saccades of ~100 ms each along a triangle).

    world = ClsWorld(width, height, duration_s, conditions, seed, label, ClsSceneConfig())
    radiance, _ = world.render(t_us)          # float32 (H, W); no per-pixel labels

Default resolution 128x128 (small enough to train a classifier on a CPU; N-Caltech101's
ATIS geometry is 240x180, which `--width 240 --height 180` gives).

Classes (CLS_CLASSES): disc, ring, triangle, square, cross, star, crescent, hexagon, arrow,
lshape. The shape is what defines the class; everything else is drawn at random so a model
has to look at the silhouette:
- size 35-65 % of the shorter image side, any rotation, aspect 0.75-1.33, centre jittered by
  up to 10 % of the image;
- fill: solid, stripes (any angle and period), checker, dots or fractal noise, brighter or
  darker than the background (mean contrast >= 0.15 in albedo);
- background: 1/f noise plus clutter (thin lines and small blobs of random albedo).
The image is drawn once at 4x and area-averaged (anti-aliased edges) on a canvas larger than
the view by the saccade amplitude; each virtual frame is a sub-pixel translation of it
(cv2.warpAffine, bilinear). Motion: three minimum-jerk saccades along a triangle of random
orientation, each a third of the sequence, amplitude `saccade_fraction` x width x MOTION
multiplier (slow 0.5, fast 1.4). Illumination scales the radiance (camera.ILLUMINATION; this
world has no sky, so "hdr" is only its dark part: a night scene).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from evstream.sim.camera import ILLUMINATION, MOTION
from evstream.sim.render import fractal_noise, min_jerk

CLS_CLASSES = ["disc", "ring", "triangle", "square", "cross", "star", "crescent", "hexagon",
               "arrow", "lshape"]
CLS_COLORS = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
              [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]]
SS = 4


@dataclass(frozen=True)
class ClsSceneConfig:
    saccade_fraction: float = 0.06      # saccade length / image width (x MOTION multiplier)
    size_min: float = 0.35              # object size / shorter image side
    size_max: float = 0.65
    clutter: int = 12                   # background lines and blobs
    margin_fraction: float = 0.15       # canvas margin around the view / image width

    def __post_init__(self) -> None:
        if not (0 < self.size_min <= self.size_max <= 1 and self.saccade_fraction >= 0):
            raise ValueError(f"bad ClsSceneConfig {self}")


def _polygon(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) of a class shape in unit coordinates (about [-1, 1]^2); cv2.fillPoly fills
    them with the even-odd rule, so a second outline inside the first cuts a hole. (The
    crescent is not a polygon here: see _crescent_mask.)"""
    def circle(r, n=96, cx=0.0, cy=0.0):
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)

    if name == "disc":
        return [circle(1.0)]
    if name == "ring":
        return [circle(1.0), circle(rng.uniform(0.45, 0.68))]
    if name == "triangle":
        a = np.deg2rad([90, 210, 330])
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * 0.8]
    if name == "cross":
        w = rng.uniform(0.28, 0.42)
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                          [-w, w], [-1, w], [-1, -w], [-w, -w]], np.float64)]
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if name == "hexagon":
        a = np.arange(6) * np.pi / 3
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if name == "arrow":
        s, h = rng.uniform(0.22, 0.32), rng.uniform(0.55, 0.7)
        return [np.array([[-1, -s], [1 - h, -s], [1 - h, -0.7], [1, 0], [1 - h, 0.7],
                          [1 - h, s], [-1, s]], np.float64)]
    if name == "lshape":
        w = rng.uniform(0.5, 0.75)
        return [np.array([[-1, -1], [1, -1], [1, -1 + w], [-1 + w, -1 + w], [-1 + w, 1],
                          [-1, 1]], np.float64)]
    raise ValueError(f"unknown class {name!r}")


def _crescent_mask(rng, canvas_shape, centre, radius, aspect, angle, scale_ss) -> np.ndarray:
    """Crescents are drawn as a disc minus a shifted disc (exact, no outline tracing)."""
    h, w = canvas_shape
    mask = np.zeros((h, w), np.uint8)
    shift = rng.uniform(0.35, 0.55)
    c = (int(centre[0] * scale_ss * 16), int(centre[1] * scale_ss * 16))
    axes = (int(radius * scale_ss * 16), int(radius * aspect * scale_ss * 16))
    cv2.ellipse(mask, c, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_8, shift=4)
    off = (centre[0] + shift * radius * math.cos(angle),
           centre[1] + shift * radius * math.sin(angle))
    c2 = (int(off[0] * scale_ss * 16), int(off[1] * scale_ss * 16))
    axes2 = (int(0.9 * radius * scale_ss * 16), int(0.9 * radius * aspect * scale_ss * 16))
    cv2.ellipse(mask, c2, axes2, math.degrees(angle), 0, 360, 0, -1, cv2.LINE_8, shift=4)
    return mask


def _pattern(rng: np.random.Generator, h: int, w: int, mean: float, contrast: float):
    """A fill pattern (float32 (h, w)) around `mean` with amplitude `contrast`."""
    kind = int(rng.integers(0, 5))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        p = np.zeros((h, w), np.float32)
    elif kind == 1:                                             # stripes
        phi, period = rng.uniform(0, np.pi), rng.uniform(0.06, 0.2) * w
        p = np.tanh(3 * np.sin(2 * np.pi * (x * math.cos(phi) + y * math.sin(phi)) / period))
    elif kind == 2:                                             # checker
        period = rng.uniform(0.08, 0.25) * w
        p = (np.tanh(3 * np.sin(2 * np.pi * x / period))
             * np.tanh(3 * np.sin(2 * np.pi * y / period)))
    elif kind == 3:                                             # dots
        period = rng.uniform(0.08, 0.2) * w
        u = (x % period) / period - 0.5
        v = (y % period) / period - 0.5
        p = np.clip((0.3 - np.hypot(u, v)) * 20, -1, 1)
    else:                                                       # fractal noise
        p = 2 * fractal_noise(h, w, rng, beta=1.2) - 1
    return np.clip(mean + contrast * p, 0.02, 1.0).astype(np.float32)


class ClsWorld:
    """One classification sample; `render(t_us, labels)` is a pure function of t_us."""

    def __init__(self, width: int, height: int, duration_s: float, conditions: dict,
                 seed: int, label: int, config: ClsSceneConfig = ClsSceneConfig()) -> None:
        if not 0 <= label < len(CLS_CLASSES):
            raise ValueError(f"label {label} outside 0..{len(CLS_CLASSES) - 1}")
        self.width, self.height = int(width), int(height)
        self.label = int(label)
        self.config = cfg = config
        self.duration_s = float(duration_s)
        self.illum = ILLUMINATION[conditions["illumination"]]["radiance_scale"]
        rng = np.random.default_rng(int(seed))
        motion = MOTION[conditions["motion"]]
        self.amplitude_px = cfg.saccade_fraction * self.width * motion
        self.margin = int(math.ceil(self.amplitude_px + cfg.margin_fraction * self.width)) + 2
        self.theta = float(rng.uniform(0, 2 * np.pi))
        self.canvas = self._draw(rng)
        self._m = np.zeros((2, 3), np.float32)
        self._m[0, 0] = self._m[1, 1] = 1.0

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        hc, wc = self.height + 2 * self.margin, self.width + 2 * self.margin
        hs, ws = hc * SS, wc * SS
        bg_mean = float(rng.uniform(0.15, 0.85))
        bg = bg_mean * (0.75 + 0.5 * fractal_noise(hc, wc, rng, beta=1.3))
        bg = cv2.resize(bg, (ws, hs), interpolation=cv2.INTER_LINEAR)
        for _ in range(cfg.clutter):
            value = float(np.clip(bg_mean + rng.uniform(-0.3, 0.3), 0.02, 1))
            if rng.random() < 0.5:
                p0 = (int(rng.uniform(0, ws)), int(rng.uniform(0, hs)))
                p1 = (int(rng.uniform(0, ws)), int(rng.uniform(0, hs)))
                cv2.line(bg, p0, p1, value, max(1, int(rng.uniform(0.5, 2.0) * SS)))
            else:
                centre = (int(rng.uniform(0, ws)), int(rng.uniform(0, hs)))
                r = int(rng.uniform(0.02, 0.06) * ws)
                cv2.ellipse(bg, centre, (r, int(r * rng.uniform(0.4, 1.0))),
                            rng.uniform(0, 180), 0, 360, value, -1)
        # the object
        side = min(self.width, self.height)
        radius = 0.5 * side * rng.uniform(cfg.size_min, cfg.size_max)
        aspect = float(rng.uniform(0.75, 1.33))
        angle = float(rng.uniform(0, 2 * np.pi))
        centre = (self.margin + self.width / 2 + rng.uniform(-0.1, 0.1) * self.width,
                  self.margin + self.height / 2 + rng.uniform(-0.1, 0.1) * self.height)
        name = CLS_CLASSES[self.label]
        if name == "crescent":
            mask = _crescent_mask(rng, (hs, ws), centre, radius, aspect, angle, SS)
        else:
            mask = np.zeros((hs, ws), np.uint8)
            rot = np.array([[math.cos(angle), -math.sin(angle)],
                            [math.sin(angle), math.cos(angle)]])
            polys = []
            for outline in _polygon(name, rng):
                pts = (outline * [radius, radius * aspect]) @ rot.T + centre
                polys.append(np.round(pts * SS * 16).astype(np.int32))
            cv2.fillPoly(mask, polys, 255, cv2.LINE_8, shift=4)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        fg_mean = float(np.clip(bg_mean + sign * rng.uniform(0.15, 0.5), 0.05, 0.95))
        if abs(fg_mean - bg_mean) < 0.15:
            fg_mean = float(np.clip(bg_mean - sign * 0.3, 0.05, 0.95))
        fill = _pattern(rng, hs, ws, fg_mean, rng.uniform(0.05, 0.25))
        m = mask.astype(np.float32) / 255.0
        img = bg * (1 - m) + fill * m
        return cv2.resize(img, (wc, hc), interpolation=cv2.INTER_AREA).astype(np.float32)

    def offset(self, t_s: float) -> tuple[float, float]:
        """Camera offset (px) at t_s: three min-jerk saccades along a triangle."""
        seg = self.duration_s / 3.0
        k = min(int(t_s // seg), 2) if seg > 0 else 2
        u = float(min_jerk((t_s - k * seg) / seg)) if seg > 0 else 1.0
        corners = [(0.0, 0.0)]
        for j in range(3):
            a = self.theta + j * 2 * np.pi / 3
            x, y = corners[-1]
            corners.append((x + self.amplitude_px * math.cos(a),
                            y + self.amplitude_px * math.sin(a)))
        (x0, y0), (x1, y1) = corners[k], corners[k + 1]
        # centre the triangle on the view
        cx = sum(c[0] for c in corners[:3]) / 3
        cy = sum(c[1] for c in corners[:3]) / 3
        return x0 + u * (x1 - x0) - cx, y0 + u * (y1 - y0) - cy

    def render(self, t_us: int, labels: bool = False):
        dx, dy = self.offset(t_us * 1e-6)
        self._m[0, 2] = -(self.margin + dx)
        self._m[1, 2] = -(self.margin + dy)
        view = cv2.warpAffine(self.canvas, self._m, (self.width, self.height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        view *= np.float32(self.illum)
        return view, None

    def describe(self) -> dict:
        return {"saccade_px": round(self.amplitude_px, 3), "theta_rad": round(self.theta, 4)}
