"""The driving world's static layers: ground, building facades and a distant skyline.

World frame: X to the right of the road's centre line, Y up from the ground, Z along the road
(the direction of travel), metres. The road is straight and infinite; every layer is periodic
in Z with the texture's period, so the car can drive for as long as it likes.

    ground   the plane Y = 0, texture rows = Z (WRAP), columns = X (CLAMP), from -x_extent to
             +x_extent: oncoming lanes | centre line | our lanes | parking strip | curb | verge
             (grass or paving, segment by segment) | sidewalk, mirrored on the left. Lane
             markings (dashed / double centre line, lane dividers, edge lines) and one zebra
             crossing per period. Labels: flat, grass verge = vegetation.
    facade   the vertical planes X = +-facade_x, texture columns = Z (WRAP), rows = height from
             top_m down to 0 (ZERO outside): a row of buildings of varying height, width,
             colour, floor height and window grid, with gaps (alpha 0) that show the skyline
             behind. Label: background.
    skyline  the vertical planes X = +-far_x, same layout with a coarser texel: distant
             building blocks (background) and tree lines (vegetation).

Markings and edges are anti-aliased: the ground's bands are drawn with their exact coverage of
each texel; facades and skyline are drawn at 2x and area-averaged. `RoadLayout` holds the cross
section; `ground_texture`, `facade_texture`, `skyline_texture` return (albedo, alpha, labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from evstream.sim.render import fractal_noise
from evstream.sim.sprites import BACKGROUND, FLAT, VEGETATION


@dataclass(frozen=True)
class RoadLayout:
    lane_m: float = 3.5
    lanes_per_direction: int = 1
    parking_m: float = 0.0        # parking strip beside our outer lane (0 = none)
    curb_m: float = 0.2
    verge_m: float = 1.2          # grass (or paving) strip between curb and sidewalk
    sidewalk_m: float = 3.0

    @property
    def road_half(self) -> float:
        return self.lanes_per_direction * self.lane_m

    @property
    def curb_x(self) -> float:
        return self.road_half + self.parking_m

    @property
    def verge_x(self) -> float:
        return self.curb_x + self.curb_m

    @property
    def sidewalk_x(self) -> float:
        return self.verge_x + self.verge_m

    @property
    def facade_x(self) -> float:
        return self.sidewalk_x + self.sidewalk_m

    @property
    def ego_lane_x(self) -> float:
        return self.road_half - self.lane_m / 2


def _cover(c0: np.ndarray, c1: np.ndarray, a: float, b: float) -> np.ndarray:
    """Fraction of each texel [c0, c1] covered by the interval [a, b]."""
    return np.clip(np.minimum(c1, b) - np.maximum(c0, a), 0, None) / (c1 - c0)


def _cover_periodic(c0: np.ndarray, c1: np.ndarray, period: float, a: float,
                    b: float) -> np.ndarray:
    """Coverage of texels by the intervals [a + k*period, b + k*period] (b - a < period)."""
    k = np.floor((c0 - a) / period)
    out = np.zeros_like(c0)
    for dk in (-1.0, 0.0, 1.0):
        base = (k + dk) * period
        out += np.clip(np.minimum(c1, base + b) - np.maximum(c0, base + a), 0, None)
    return np.clip(out / (c1 - c0), 0, 1)


def ground_texture(layout: RoadLayout, rng: np.random.Generator, texel_m: float,
                   period_m: float, x_extent: float):
    nz = int(round(period_m / texel_m))
    nx = int(round(2 * x_extent / texel_m))
    x0 = -x_extent + np.arange(nx)[None, :] * texel_m
    x1 = x0 + texel_m
    z0 = np.arange(nz)[:, None] * texel_m
    z1 = z0 + texel_m
    ax0, ax1 = np.abs(x0), np.abs(x1)
    lo, hi = np.minimum(ax0, ax1), np.maximum(ax0, ax1)     # |X| extent of each texel column
    lo = np.where(x0 * x1 < 0, 0.0, lo)

    coarse = fractal_noise(nz // 8, max(nx // 8, 2), rng, beta=1.4)
    coarse = cv2.resize(coarse, (nx, nz), interpolation=cv2.INTER_LINEAR) - 0.5
    grain = fractal_noise(nz, nx, rng, beta=0.5, f_min=0.05) - 0.5
    asphalt = rng.uniform(0.1, 0.16) * (1 + 0.35 * coarse + 0.25 * grain)
    paving = rng.uniform(0.25, 0.38) * (1 + 0.2 * coarse + 0.15 * grain)
    grass = rng.uniform(0.07, 0.12) * (1 + 0.5 * coarse + 0.6 * grain)

    def band(a, b):       # coverage of |X| in [a, b] on both sides of the centre line
        return _cover(lo, hi, a, b)

    albedo = asphalt.copy()
    labels = np.full((nz, nx), FLAT, np.uint8)
    # curb, verge, sidewalk (outside the road)
    curb = band(layout.curb_x, layout.verge_x)
    verge = band(layout.verge_x, layout.sidewalk_x)
    walk = band(layout.sidewalk_x, x_extent + 1)
    # verge segments along Z: grass or paving
    grass_z = np.zeros((nz, 1), np.float32)
    z = 0.0
    while z < period_m:
        length = rng.uniform(10, 45)
        if rng.random() < 0.65:
            grass_z[int(z / texel_m):int(min(z + length, period_m) / texel_m)] = 1.0
        z += length
    verge_grass = verge * grass_z
    albedo = albedo * (1 - curb) + curb * rng.uniform(0.3, 0.45)
    albedo = albedo * (1 - verge) + verge * (grass * grass_z + paving * (1 - grass_z))
    joints = np.maximum(_cover_periodic(z0, z1, 0.6, 0.0, 0.025),
                        _cover_periodic(x0, x1, 0.6, 0.0, 0.025))
    walk_albedo = paving * (1 - 0.25 * joints)
    albedo = albedo * (1 - walk) + walk * walk_albedo
    labels[verge_grass >= 0.5] = VEGETATION

    # markings (white paint, ~0.12 m wide)
    paint = rng.uniform(0.55, 0.75)
    lw = 0.12
    marks = np.zeros_like(albedo)
    road_z = np.ones_like(z0)
    if layout.lanes_per_direction == 1:
        marks = np.maximum(marks, _cover(x0, x1, -lw / 2, lw / 2)
                           * _cover_periodic(z0, z1, 9.0, 0.0, 3.0))
    else:
        for c in (-0.12, 0.12):
            marks = np.maximum(marks, _cover(x0, x1, c - lw / 2, c + lw / 2) * road_z)
        for k in range(1, layout.lanes_per_direction):
            for sgn in (-1, 1):
                c = sgn * k * layout.lane_m
                marks = np.maximum(marks, _cover(x0, x1, c - lw / 2, c + lw / 2)
                                   * _cover_periodic(z0, z1, 12.0, 0.0, 3.0))
    edge = layout.road_half - 0.25
    for sgn in (-1, 1):
        c = sgn * edge
        marks = np.maximum(marks, _cover(x0, x1, c - lw / 2, c + lw / 2) * road_z)
    # one zebra crossing per period: bars along Z, 0.5 m wide every 1 m across the road
    zc = rng.uniform(0.2, 0.8) * period_m
    zebra_z = _cover(z0, z1, zc, zc + 3.0)
    zebra_x = _cover_periodic(x0, x1, 1.0, 0.25, 0.75) * _cover(lo, hi, 0.0, layout.road_half)
    marks = np.maximum(marks, zebra_x * zebra_z)
    on_road = _cover(lo, hi, 0.0, layout.curb_x)
    marks *= on_road
    albedo = albedo * (1 - marks) + marks * paint * (1 + 0.1 * grain)
    return np.clip(albedo, 0.01, 1).astype(np.float32), None, labels


def _window_grid(canvas: np.ndarray, rng: np.random.Generator, z0: float, z1: float,
                 height: float, top_m: float, scale: float, floor_m: float, base: float,
                 shop: bool) -> None:
    """Draw floors and windows of one building into `canvas` (albedo, 2x texel scale)."""
    def px(z):
        return int(round(z * scale))

    def py(y):
        return int(round((top_m - y) * scale))

    spacing = rng.uniform(2.2, 3.6)
    win_w = rng.uniform(0.8, min(1.6, spacing - 0.5))
    win_h = rng.uniform(1.2, min(1.9, floor_m - 0.8))
    n_cols = max(1, int((z1 - z0 - 1.0) // spacing))
    start = z0 + (z1 - z0 - n_cols * spacing) / 2 + (spacing - win_w) / 2
    floors = int(height // floor_m)
    for f in range(floors):
        y_floor = f * floor_m
        cv2.rectangle(canvas, (px(z0), py(y_floor + 0.12)), (px(z1) - 1, py(y_floor)),
                      float(base * 0.8), -1)
        if f == 0 and shop:
            for j in range(max(1, n_cols // 2)):
                a = z0 + 0.6 + j * (z1 - z0 - 1.2) / max(1, n_cols // 2)
                b = a + (z1 - z0 - 1.2) / max(1, n_cols // 2) - 0.6
                cv2.rectangle(canvas, (px(a), py(2.8)), (px(b), py(0.3)),
                              float(rng.uniform(0.04, 0.14)), -1)
            continue
        for j in range(n_cols):
            a = start + j * spacing
            sill = y_floor + 0.9
            glass = rng.uniform(0.04, 0.12) if rng.random() < 0.85 else rng.uniform(0.25, 0.5)
            cv2.rectangle(canvas, (px(a - 0.08), py(sill + win_h + 0.1)),
                          (px(a + win_w + 0.08), py(sill - 0.1)), float(base * 0.7), -1)
            cv2.rectangle(canvas, (px(a), py(sill + win_h)), (px(a + win_w), py(sill)),
                          float(glass), -1)


def facade_texture(rng: np.random.Generator, texel_m: float, period_m: float, top_m: float):
    """A row of buildings along Z; gaps are transparent (see the module top)."""
    scale = 2.0 / texel_m
    nz, ny = int(round(period_m / texel_m)), int(round(top_m / texel_m))
    albedo = np.zeros((2 * ny, 2 * nz), np.float32)
    alpha = np.zeros_like(albedo)
    z = 0.0
    while z < period_m - 4.0:
        if rng.random() < 0.2:                                     # a gap between buildings
            z += rng.uniform(3.0, 12.0)
            continue
        length = min(rng.uniform(8.0, 30.0), period_m - z)
        height = min(rng.uniform(5.0, top_m - 1.0), top_m - 0.5)
        base = float(rng.uniform(0.15, 0.55))
        a, b = int(round(z * scale)), int(round((z + length) * scale))
        top = int(round((top_m - height) * scale))
        albedo[top:, a:b] = base
        alpha[top:, a:b] = 1.0
        albedo[top:top + int(0.4 * scale), a:b] = base * rng.uniform(0.6, 1.3)   # cornice
        _window_grid(albedo[:, a:b], rng, 0.0, length, height, top_m, scale,
                     rng.uniform(2.9, 3.6), base, rng.random() < 0.6)
        albedo[:top, a:b] = 0.0
        z += length
    size = (nz, ny)
    a = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    c = cv2.resize(albedo * alpha, size, interpolation=cv2.INTER_AREA)
    out = np.where(a > 1e-4, c / np.maximum(a, 1e-4), 0.0)
    noise = fractal_noise(ny, nz, rng, beta=1.0)
    out = out * (1 + 0.12 * (noise - 0.5))
    labels = np.where(a >= 0.5, BACKGROUND, 255).astype(np.uint8)
    return np.clip(out, 0, 1).astype(np.float32), a.astype(np.float32), labels


def skyline_texture(rng: np.random.Generator, texel_m: float, period_m: float, top_m: float):
    """Distant blocks and tree lines along Z (see the module top)."""
    nz, ny = int(round(period_m / texel_m)), int(round(top_m / texel_m))
    heights = np.zeros(nz)
    kind = np.zeros(nz, np.uint8)
    albedo_col = np.zeros(nz)
    z = 0
    bumps = fractal_noise(1, nz, rng, beta=1.0)[0] - 0.5
    while z < nz:
        n = int(rng.uniform(20, 80) / texel_m)
        seg = slice(z, min(z + n, nz))
        if rng.random() < 0.5:
            heights[seg] = rng.uniform(7, 14) + 6 * bumps[seg]
            kind[seg] = VEGETATION
            albedo_col[seg] = rng.uniform(0.06, 0.12)
        else:
            m = z
            while m < seg.stop:
                w = int(rng.uniform(8, 30) / texel_m)
                heights[m:min(m + w, seg.stop)] = rng.uniform(8, top_m - 2)
                albedo_col[m:min(m + w, seg.stop)] = rng.uniform(0.2, 0.5)
                m += w
            kind[seg] = BACKGROUND
        z = seg.stop
    heights = np.clip(heights, 0, top_m)
    y_top = top_m - (np.arange(ny)[:, None]) * texel_m          # top edge of each texel row
    alpha = np.clip((heights[None, :] - (y_top - texel_m)) / texel_m, 0, 1).astype(np.float32)
    noise = fractal_noise(ny, nz, rng, beta=0.8)
    albedo = albedo_col[None, :] * (0.8 + 0.4 * noise)
    labels = np.where(alpha >= 0.5, kind[None, :], 255).astype(np.uint8)
    return np.clip(albedo, 0, 1).astype(np.float32), alpha, labels
