"""Procedural sprites for the driving world: vehicles, pedestrians, trees, poles and signs.

Each `make_*` function returns a `Sprite`: albedo and alpha (float32, rows top -> bottom), the
size it stands for in the world (width_m, height_m) and its class label. Shapes are drawn with
OpenCV at `SS` times the texel resolution and area-averaged down, so silhouettes are
anti-aliased (soft alpha at the edges), then a little fractal noise is multiplied into the
albedo so surfaces are not perfectly flat. Coordinates given to the `_Canvas` drawing helpers
are metres, x from the sprite's left edge, y up from its bottom edge.

Albedos are grey levels in [0, 1] (the sensor is monochrome): paint 0.05-0.7, glass 0.04-0.1,
lamps and plates 0.6-0.9. All randomness comes from the Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from evstream.sim.render import fractal_noise

SS = 4     # supersampling factor for drawing

FLAT, BACKGROUND, OBJECT, VEGETATION, HUMAN, VEHICLE = range(6)


@dataclass
class Sprite:
    albedo: np.ndarray
    alpha: np.ndarray
    width_m: float
    height_m: float
    label: int


class _Canvas:
    """Albedo/alpha canvases at SS x resolution; shapes are painted over each other."""

    def __init__(self, width_m: float, height_m: float, texel_m: float):
        self.w = max(2, int(round(width_m / texel_m)))
        self.h = max(2, int(round(height_m / texel_m)))
        self.width_m, self.height_m = width_m, height_m
        self.sx = self.w * SS / width_m
        self.sy = self.h * SS / height_m
        self.albedo = np.zeros((self.h * SS, self.w * SS), np.float32)
        self.alpha = np.zeros_like(self.albedo)

    def _pts(self, pts) -> np.ndarray:
        p = np.asarray(pts, np.float64)
        out = np.stack([p[:, 0] * self.sx, (self.height_m - p[:, 1]) * self.sy], axis=1)
        return np.round(out * 16).astype(np.int32)        # 4 fractional bits (cv2 shift=4)

    def _paint(self, mask: np.ndarray, value: float) -> None:
        m = mask.astype(np.float32) / 255.0
        self.albedo += m * (np.float32(value) - self.albedo)
        np.maximum(self.alpha, m, out=self.alpha)

    def poly(self, pts, value: float) -> None:
        mask = np.zeros(self.albedo.shape, np.uint8)
        cv2.fillPoly(mask, [self._pts(pts)], 255, lineType=cv2.LINE_8, shift=4)
        self._paint(mask, value)

    def rect(self, x0, y0, x1, y1, value: float) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], value)

    def ellipse(self, cx, cy, rx, ry, value: float, angle_deg: float = 0.0) -> None:
        mask = np.zeros(self.albedo.shape, np.uint8)
        c = self._pts([(cx, cy)])[0]
        axes = (int(round(rx * self.sx * 16)), int(round(ry * self.sy * 16)))
        cv2.ellipse(mask, (int(c[0]), int(c[1])), axes, angle_deg, 0, 360, 255, -1,
                    lineType=cv2.LINE_8, shift=4)
        self._paint(mask, value)

    def line(self, p0, p1, width_m: float, value: float) -> None:
        """A thick segment with round caps."""
        (x0, y0), (x1, y1) = p0, p1
        length = math.hypot(x1 - x0, y1 - y0) or 1e-9
        nx, ny = -(y1 - y0) / length * width_m / 2, (x1 - x0) / length * width_m / 2
        self.poly([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny),
                   (x0 - nx, y0 - ny)], value)
        self.ellipse(x0, y0, width_m / 2, width_m / 2, value)
        self.ellipse(x1, y1, width_m / 2, width_m / 2, value)

    def paint_mask(self, mask_ss: np.ndarray, value) -> None:
        """Paint a float (0..1) mask at SS resolution with a value or an SS-sized array."""
        m = mask_ss.astype(np.float32)
        self.albedo += m * (np.asarray(value, np.float32) - self.albedo)
        np.maximum(self.alpha, m, out=self.alpha)

    def finish(self, rng: np.random.Generator, label: int, grain: float = 0.06) -> Sprite:
        size = (self.w, self.h)
        alpha = cv2.resize(self.alpha, size, interpolation=cv2.INTER_AREA)
        premul = cv2.resize(self.albedo * self.alpha, size, interpolation=cv2.INTER_AREA)
        albedo = np.where(alpha > 1e-4, premul / np.maximum(alpha, 1e-4), 0.0)
        if grain > 0:
            noise = fractal_noise(self.h, self.w, rng, beta=1.0)
            albedo = albedo * (1.0 + grain * (2.0 * noise - 1.0))
        return Sprite(np.clip(albedo, 0, 1).astype(np.float32), np.clip(alpha, 0, 1),
                      self.width_m, self.height_m, label)


# ---------------------------------------------------------------------------------------------
# Vehicles

def make_car(rng: np.random.Generator, texel_m: float, front: bool = False) -> Sprite:
    """A car seen from behind (or from the front for oncoming traffic)."""
    w, h = rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6)
    c = _Canvas(w, h, texel_m)
    paint = float(rng.choice([rng.uniform(0.04, 0.12), rng.uniform(0.2, 0.45),
                              rng.uniform(0.55, 0.75)]))
    roof = h * rng.uniform(0.6, 0.68)
    c.rect(0.1, 0.0, 0.4, 0.38, 0.03)                 # tyres
    c.rect(w - 0.4, 0.0, w - 0.1, 0.38, 0.03)
    c.poly([(0.0, 0.22), (w, 0.22), (w, roof - 0.05), (w - 0.05, roof), (0.05, roof),
            (0.0, roof - 0.05)], paint)
    inset = w * rng.uniform(0.1, 0.16)
    c.poly([(inset, roof), (w - inset, roof), (w - inset - 0.12, h), (inset + 0.12, h)], paint)
    glass = float(rng.uniform(0.04, 0.1))
    c.poly([(inset + 0.06, roof + 0.04), (w - inset - 0.06, roof + 0.04),
            (w - inset - 0.16, h - 0.06), (inset + 0.16, h - 0.06)], glass)
    c.rect(0.0, 0.22, w, 0.36, 0.08)                  # bumper
    plate = (w / 2 - 0.26, 0.42, w / 2 + 0.26, 0.53)
    if front:
        c.rect(0.3, 0.55, w - 0.3, 0.78, 0.06)        # grille
        c.rect(0.06, 0.62, 0.38, 0.8, 0.85)           # headlights
        c.rect(w - 0.38, 0.62, w - 0.06, 0.8, 0.85)
    else:
        c.rect(0.04, roof - 0.32, 0.3, roof - 0.12, 0.3)    # tail lights
        c.rect(w - 0.3, roof - 0.32, w - 0.04, roof - 0.12, 0.3)
    c.rect(*plate, 0.8)
    return c.finish(rng, VEHICLE, grain=0.05)


def make_van(rng: np.random.Generator, texel_m: float) -> Sprite:
    """A van or box truck seen from behind."""
    w, h = rng.uniform(2.1, 2.5), rng.uniform(2.3, 3.2)
    c = _Canvas(w, h, texel_m)
    body = float(rng.uniform(0.35, 0.8))
    c.rect(0.15, 0.0, 0.5, 0.45, 0.03)
    c.rect(w - 0.5, 0.0, w - 0.15, 0.45, 0.03)
    c.rect(0.0, 0.3, w, h, body)
    c.rect(w / 2 - 0.015, 0.5, w / 2 + 0.015, h - 0.1, body * 0.6)     # door seam
    c.rect(0.05, 0.5, 0.25, 0.75, 0.3)
    c.rect(w - 0.25, 0.5, w - 0.05, 0.75, 0.3)
    c.rect(w / 2 - 0.26, 0.35, w / 2 + 0.26, 0.46, 0.8)
    if rng.random() < 0.5:                                            # a logo band
        c.rect(0.2, h * 0.55, w - 0.2, h * 0.7, float(rng.uniform(0.05, 0.3)))
    return c.finish(rng, VEHICLE, grain=0.05)


# ---------------------------------------------------------------------------------------------
# People

def make_pedestrian_cycle(rng: np.random.Generator, texel_m: float,
                          poses: int = 8) -> list[Sprite]:
    """`poses` frames of one person's walking cycle (legs and arms swinging)."""
    height = rng.uniform(1.55, 1.9)
    w = 0.8
    skin, hair = rng.uniform(0.2, 0.55), rng.uniform(0.03, 0.3)
    shirt, trousers = rng.uniform(0.05, 0.8), rng.uniform(0.04, 0.5)
    shoulder, hip = 0.82 * height, 0.5 * height
    head_r = 0.065 * height
    sprites = []
    for i in range(poses):
        phase = 2 * math.pi * i / poses
        swing = 0.45 * math.sin(phase)
        c = _Canvas(w, height, texel_m)
        cx = w / 2
        leg = hip - 0.02
        for side, sgn in ((-0.07, 1.0), (0.07, -1.0)):
            a = sgn * swing
            foot = (cx + side + leg * math.sin(a), 0.03 + leg * (1 - math.cos(a)) * 0.3)
            c.line((cx + side, hip), foot, 0.13, trousers)
        for side, sgn in ((-0.2, -1.0), (0.2, 1.0)):
            a = sgn * swing * 0.8
            arm = 0.6 * height * 0.42
            c.line((cx + side, shoulder - 0.05),
                   (cx + side * 1.1 + arm * math.sin(a), shoulder - 0.05 - arm * math.cos(a)),
                   0.09, shirt * 0.9)
        c.poly([(cx - 0.19, shoulder), (cx + 0.19, shoulder), (cx + 0.16, hip - 0.05),
                (cx - 0.16, hip - 0.05)], shirt)
        c.rect(cx - 0.05, shoulder, cx + 0.05, shoulder + 0.06, skin)
        c.ellipse(cx, shoulder + 0.06 + head_r, head_r * 0.85, head_r, skin)
        c.ellipse(cx, shoulder + 0.1 + head_r, head_r * 0.88, head_r * 0.75, hair)
        sprites.append(c.finish(rng, HUMAN, grain=0.04))
    return sprites


# ---------------------------------------------------------------------------------------------
# Vegetation

def _blob(c: _Canvas, rng: np.random.Generator, cx, cy, rx, ry, value_base: float,
          roughness: float = 0.35) -> None:
    """An irregular leafy blob: an ellipse whose edge is pushed around by fractal noise and
    whose inside carries a leaf texture."""
    hh, ww = c.albedo.shape
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float32)
    xm = xs / c.sx
    ym = c.height_m - ys / c.sy
    r = np.sqrt(((xm - cx) / rx) ** 2 + ((ym - cy) / ry) ** 2)
    edge = fractal_noise(hh // SS, ww // SS, rng, beta=1.2)
    edge = cv2.resize(edge, (ww, hh), interpolation=cv2.INTER_LINEAR)
    inside = np.clip((1.0 + roughness * (edge - 0.5) * 2 - r) * 6.0, 0, 1)
    leaves = fractal_noise(hh // SS, ww // SS, rng, beta=0.6, f_min=0.02)
    leaves = cv2.resize(leaves, (ww, hh), interpolation=cv2.INTER_LINEAR)
    c.paint_mask(inside, value_base * (0.55 + 0.9 * leaves))


def make_tree(rng: np.random.Generator, texel_m: float) -> Sprite:
    w, h = rng.uniform(3.5, 6.0), rng.uniform(5.5, 9.0)
    c = _Canvas(w, h, texel_m)
    trunk_w = rng.uniform(0.2, 0.4)
    c.rect(w / 2 - trunk_w / 2, 0.0, w / 2 + trunk_w / 2, h * 0.55, rng.uniform(0.06, 0.16))
    _blob(c, rng, w / 2, h * 0.62, w * 0.46, h * 0.36, float(rng.uniform(0.06, 0.16)))
    return c.finish(rng, VEGETATION, grain=0.0)


def make_bush(rng: np.random.Generator, texel_m: float) -> Sprite:
    w, h = rng.uniform(1.5, 4.0), rng.uniform(0.7, 1.6)
    c = _Canvas(w, h, texel_m)
    _blob(c, rng, w / 2, h * 0.45, w * 0.48, h * 0.5, float(rng.uniform(0.06, 0.15)), 0.25)
    return c.finish(rng, VEGETATION, grain=0.0)


# ---------------------------------------------------------------------------------------------
# Street furniture

def make_pole(rng: np.random.Generator, texel_m: float) -> Sprite:
    """A lamp post, a sign post (round / triangular / square plate) or a traffic light."""
    kind = int(rng.integers(0, 4))
    metal = float(rng.uniform(0.2, 0.45))
    if kind == 0:                                                     # lamp post with an arm
        w, h = 1.6, rng.uniform(6.0, 8.0)
        c = _Canvas(w, h, texel_m)
        c.rect(0.14, 0.0, 0.28, h - 0.2, metal)
        c.rect(0.14, h - 0.3, w - 0.1, h - 0.18, metal)
        c.rect(w - 0.5, h - 0.42, w - 0.05, h - 0.28, 0.75)
        return c.finish(rng, OBJECT, grain=0.03)
    if kind == 3:                                                     # traffic light
        w, h = 0.5, rng.uniform(3.2, 4.0)
        c = _Canvas(w, h, texel_m)
        c.rect(0.19, 0.0, 0.31, h - 1.0, metal)
        c.rect(0.05, h - 1.0, 0.45, h, 0.05)
        for j, lit in enumerate(rng.permutation([0.85, 0.15, 0.15])):
            c.ellipse(0.25, h - 0.18 - j * 0.3, 0.1, 0.1, float(lit))
        return c.finish(rng, OBJECT, grain=0.03)
    w, h = 0.8, rng.uniform(2.6, 3.2)                                 # sign post
    c = _Canvas(w, h, texel_m)
    c.rect(0.35, 0.0, 0.45, h - 0.3, metal)
    face, rim = float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.08, 0.3))
    top = h - 0.02
    if kind == 1:
        c.ellipse(0.4, top - 0.36, 0.36, 0.36, rim)
        c.ellipse(0.4, top - 0.36, 0.27, 0.27, face)
    else:
        if rng.random() < 0.5:
            c.poly([(0.02, top - 0.65), (0.78, top - 0.65), (0.4, top)], rim)
            c.poly([(0.14, top - 0.58), (0.66, top - 0.58), (0.4, top - 0.13)], face)
        else:
            c.rect(0.05, top - 0.7, 0.75, top, rim)
            c.rect(0.1, top - 0.65, 0.7, top - 0.05, face)
    return c.finish(rng, OBJECT, grain=0.03)
