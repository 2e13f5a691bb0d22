"""The segmentation world: a drive down a street, labelled with DDD17's six classes.

    world = SegWorld(width, height, duration_s, {"illumination": "low", "motion": "fast"},
                     seed, SegSceneConfig())
    radiance, labels = world.render(t_us, labels=True)     # float32 (H, W), uint8 (H, W)

Classes (DDD17 as Ev-SegNet / EvDistill merge Cityscapes, in this order): 0 flat (road,
sidewalk, parking, markings), 1 background (buildings, skyline blocks, sky), 2 object (poles,
signs, traffic lights), 3 vegetation (trees, bushes, grass verges, tree lines), 4 human
(pedestrians), 5 vehicle (cars, vans). 255 = no label (the car's own hood at the bottom of the
image, which DDD17 crops away).

What a sequence holds (all drawn from the sequence's seed; see seg_layers / sprites):
- a straight street with 1 or 2 lanes per direction, maybe a parking strip, curbs, grass or
  paved verges, sidewalks, a row of buildings on each side and a distant skyline;
- the ego car in the rightmost lane at speed v(t) = v0 (1 + smooth variation), v0 =
  speed_mps x MOTION multiplier x U(0.8, 1.2), with a slowly oscillating heading (yaw) and a
  small lateral drift, plus fast pitch/yaw vibration; the camera pose is a pure function of t;
- independently moving objects: a lead car in our lane keeping a varying gap, traffic in the
  other lanes (same direction at their own speeds, oncoming), parked cars, pedestrians walking
  along the sidewalks (walking cycle animated) and some crossing the road well ahead of the
  car, plus static trees, bushes, poles, signs and traffic lights along the curb;
- the illumination condition scales all radiance (ILLUMINATION in camera.py; its sky_scale,
  if any, scales the sky alone, not the haze, relative to the surfaces: "hdr"); the motion
  condition scales speeds, yaw and vibration (MOTION).
Rendering: seg_kernel.render_seg, ~10-15 ms per 346x260 virtual frame on one core of the
development machine (its per-pixel pass runs rows in parallel when Numba has threads). Below
346 px wide the textures are 2x or 4x coarser (a small sensor cannot resolve the detail), which
builds a world in a fraction of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evstream.sim import seg_kernel as K
from evstream.sim.camera import ILLUMINATION, MOTION
from evstream.sim.render import SmoothSignal, TextureBank
from evstream.sim.seg_layers import RoadLayout, facade_texture, ground_texture, skyline_texture
from evstream.sim.sprites import (HUMAN, VEHICLE, make_bush, make_car, make_pedestrian_cycle,
                                  make_pole, make_tree, make_van)

REFERENCE_WIDTH = 346          # texel sizes in SegSceneConfig are for this sensor width
SEG_CLASSES = ["flat", "background", "object", "vegetation", "human", "vehicle"]
SEG_COLORS = [[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [220, 20, 60],
              [0, 0, 142]]


@dataclass(frozen=True)
class SegSceneConfig:
    hfov_deg: float = 70.0              # horizontal field of view
    horizon: float = 0.4                # horizon row / image height at zero pitch
    camera_height_m: float = 1.3
    hood_fraction: float = 0.12         # image height the hood covers at its top (0 = none)
    speed_mps: float = 12.0             # nominal ego speed (x MOTION multiplier)
    speed_variation: float = 0.15       # std of the speed, relative
    yaw_deg: float = 2.0                # std of the slow heading oscillation (x MOTION)
    vibration_deg: float = 0.12         # std of fast pitch/yaw vibration (x MOTION)
    lateral_m: float = 0.25             # std of the lateral drift in the lane
    fog_m: float = 220.0                # visibility: fog transmission exp(-distance / fog_m)
    sky: float = 1.6                    # sky radiance (1 = white surface), x illumination
    ground_texel_m: float = 0.05        # texel sizes at 346 px wide; x2 below 173 px, x4 below
    facade_texel_m: float = 0.05        # 87 px (a small sensor cannot resolve the detail)
    skyline_texel_m: float = 0.1
    sprite_texel_m: float = 0.025
    period_m: float = 204.8             # the static layers repeat every period_m (2x skyline)
    facade_top_m: float = 24.0
    skyline_top_m: float = 40.0
    skyline_offset_m: float = 35.0      # skyline planes this far behind the facades
    vehicles_per_100m: float = 3.0      # moving traffic in the other lanes, per lane
    parked_per_100m: float = 4.0        # where there is a parking strip
    pedestrians_per_100m: float = 5.0   # per sidewalk
    crossing_pedestrians_per_min: float = 3.0
    trees_per_100m: float = 5.0         # per side
    poles_per_100m: float = 4.0         # per side
    lead_vehicle_probability: float = 0.6
    view_m: float = 300.0               # objects farther than this are not drawn

    def __post_init__(self) -> None:
        if not (10 <= self.hfov_deg <= 150 and 0 < self.horizon < 1
                and 0 <= self.hood_fraction < 0.5 and self.speed_mps >= 0):
            raise ValueError(f"bad SegSceneConfig {self}")
        for name, period in (("ground_texel_m", self.period_m),
                             ("facade_texel_m", self.period_m),
                             ("skyline_texel_m", 2 * self.period_m)):
            n = period / (4 * getattr(self, name))          # whole texels at every scale
            if not (n >= 1 and abs(n - round(n)) < 1e-6):
                raise ValueError(f"SegSceneConfig: period_m must be a multiple of 4 x {name}")


# object table columns: z(t) = z0 + vz t + follow (s(t) + gap_amp sin(2 pi gap_f t + gap_ph)),
# x(t) = x0 + vx clip(t - t0, 0, dur); a billboard 2 half_w wide, height tall from y0 up,
# texture tid + (walked distance / stride) mod poses
COLUMNS = ("z0", "vz", "x0", "vx", "t0", "dur", "follow", "gap_amp", "gap_f", "gap_ph",
           "half_w", "height", "y0", "tid", "poses", "stride", "label")
COL = {name: i for i, name in enumerate(COLUMNS)}
(O_Z0, O_VZ, O_X0, O_VX, O_T0, O_DUR, O_FOLLOW, O_GAP_AMP, O_GAP_F, O_GAP_PH, O_HALF_W,
 O_HEIGHT, O_Y0, O_TID, O_POSES, O_STRIDE, O_LABEL) = range(len(COLUMNS))
N_COLS = len(COLUMNS)


class SegWorld:
    """A driving sequence; `render(t_us, labels)` is a pure function of t_us."""

    def __init__(self, width: int, height: int, duration_s: float, conditions: dict,
                 seed: int, config: SegSceneConfig = SegSceneConfig()) -> None:
        self.width, self.height = int(width), int(height)
        self.config = cfg = config
        self.conditions = dict(conditions)
        illum = ILLUMINATION[conditions["illumination"]]["radiance_scale"]
        sky = illum * ILLUMINATION[conditions["illumination"]].get("sky_scale", 1.0)
        motion = MOTION[conditions["motion"]]
        rng_layout, rng_tex, rng_sprites, rng_motion, rng_objects = (
            np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5))

        lanes = int(rng_layout.integers(1, 3))
        self.layout = layout = RoadLayout(
            lanes_per_direction=lanes,
            parking_m=2.2 if rng_layout.random() < 0.5 else 0.0,
            verge_m=float(rng_layout.uniform(0.8, 2.0)),
            sidewalk_m=float(rng_layout.uniform(2.5, 4.0)))

        # camera
        self.f = self.width / (2 * math.tan(math.radians(cfg.hfov_deg) / 2))
        self.cx, self.cy = self.width / 2, cfg.horizon * self.height
        # ego motion
        self.v0 = cfg.speed_mps * motion * float(rng_motion.uniform(0.8, 1.2))
        self._speed = SmoothSignal(rng_motion, cfg.speed_variation * self.v0, 0.03, 0.15)
        self._yaw = SmoothSignal(rng_motion, math.radians(cfg.yaw_deg) * motion, 0.05, 0.25)
        self._lateral = SmoothSignal(rng_motion, cfg.lateral_m, 0.03, 0.12)
        vib = math.radians(cfg.vibration_deg) * motion
        self._pitch_vib = SmoothSignal(rng_motion, vib, 1.0, 4.0, terms=4)
        self._yaw_vib = SmoothSignal(rng_motion, 0.5 * vib, 1.0, 4.0, terms=4)
        self.duration_s = float(duration_s)

        # textures
        bank = TextureBank()
        x_ext = layout.facade_x + 1.0
        # a smaller sensor sees less detail: coarser textures (a power of two, so the periods
        # stay whole numbers of texels), built much faster
        self.texel_scale = ts = float(2 ** min(2, max(0, int(math.floor(
            math.log2(REFERENCE_WIDTH / self.width))))))
        g_texel, f_texel, s_texel = (ts * cfg.ground_texel_m, ts * cfg.facade_texel_m,
                                     ts * cfg.skyline_texel_m)
        g_alb, _, g_lab = ground_texture(layout, rng_tex, g_texel, cfg.period_m, x_ext)
        self._g_tid = bank.add(g_alb, labels=g_lab)
        self._g_x0 = -x_ext
        f_tids = []
        for _ in range(2):
            alb, a, lab = facade_texture(rng_tex, f_texel, cfg.period_m,
                                         cfg.facade_top_m)
            f_tids.append(bank.add(alb, a, lab))
        s_tids = []
        for _ in range(2):
            alb, a, lab = skyline_texture(rng_tex, s_texel, 2 * cfg.period_m,
                                          cfg.skyline_top_m)
            s_tids.append(bank.add(alb, a, lab))

        # sprites: (first texture id, poses, half width, height, label) per kind
        sp = ts * cfg.sprite_texel_m
        kinds: dict[str, list[tuple]] = {k: [] for k in
                                         ("rear", "front", "van", "walker", "tree", "bush",
                                          "pole")}

        def add(kind, sprites):
            first = bank.add(sprites[0].albedo, sprites[0].alpha)
            for s in sprites[1:]:
                bank.add(s.albedo, s.alpha)
            s0 = sprites[0]
            kinds[kind].append((first, len(sprites), s0.width_m / 2, s0.height_m, s0.label))

        for _ in range(6):
            add("rear", [make_car(rng_sprites, sp)])
        for _ in range(4):
            add("front", [make_car(rng_sprites, sp, front=True)])
        for _ in range(3):
            add("van", [make_van(rng_sprites, sp)])
        for _ in range(5):
            add("walker", make_pedestrian_cycle(rng_sprites, sp))
        for _ in range(5):
            add("tree", [make_tree(rng_sprites, 2 * sp)])
        for _ in range(3):
            add("bush", [make_bush(rng_sprites, 2 * sp)])
        for _ in range(6):
            add("pole", [make_pole(rng_sprites, sp)])
        self._kinds = kinds
        self._tex = bank.pack()

        self._objects = self._place_objects(rng_objects, motion)

        # hood: a dark, static shape at the bottom with a faint reflection gradient
        self._hood_alpha, self._hood_rad = self._make_hood(rng_layout, illum)

        p = np.zeros(K.N_PARAMS)
        p[K.P_F], p[K.P_CX], p[K.P_CY] = self.f, self.cx, self.cy
        p[K.P_CAM_Y] = cfg.camera_height_m
        p[K.P_ILLUM] = illum
        p[K.P_FOG_M] = cfg.fog_m
        p[K.P_SKY] = cfg.sky * sky
        p[K.P_FOG] = 0.75 * cfg.sky * illum
        p[K.P_G_TID], p[K.P_G_TEXEL], p[K.P_G_X0] = self._g_tid, g_texel, self._g_x0
        p[K.P_F_TID_L], p[K.P_F_TID_R] = f_tids
        p[K.P_F_X_L], p[K.P_F_X_R] = -layout.facade_x, layout.facade_x
        p[K.P_F_TEXEL], p[K.P_F_TOP] = f_texel, cfg.facade_top_m
        p[K.P_S_TID_L], p[K.P_S_TID_R] = s_tids
        far = layout.facade_x + cfg.skyline_offset_m
        p[K.P_S_X_L], p[K.P_S_X_R] = -far, far
        p[K.P_S_TEXEL], p[K.P_S_TOP] = s_texel, cfg.skyline_top_m
        self._params = p

    # -- ego motion ----------------------------------------------------------------------------
    def distance(self, t_s):
        """Distance driven since t = 0, metres."""
        return self.v0 * np.asarray(t_s, np.float64) + self._speed.integral(t_s)

    def pose(self, t_s: float) -> dict:
        return {
            "x": self.layout.ego_lane_x + float(self._lateral.value(t_s)),
            "z": float(self.distance(t_s)),
            "yaw": float(self._yaw.value(t_s) + self._yaw_vib.value(t_s)),
            "pitch": float(self._pitch_vib.value(t_s)),
        }

    # -- objects -------------------------------------------------------------------------------
    def _row(self, kind: str, rng, **cols) -> np.ndarray:
        first, poses, half_w, height, label = self._kinds[kind][
            int(rng.integers(len(self._kinds[kind])))]
        row = np.zeros(N_COLS)
        row[O_TID], row[O_POSES], row[O_HALF_W], row[O_HEIGHT] = first, poses, half_w, height
        row[O_LABEL] = label
        row[O_STRIDE] = 0.35
        row[O_DUR] = 0.0
        for name, value in cols.items():
            row[COL[name]] = value
        return row

    def _place_objects(self, rng, motion: float) -> np.ndarray:
        cfg, lay = self.config, self.layout
        length = float(self.distance(self.duration_s)) + cfg.view_m + 50.0
        rows = []

        def count(per_100m, metres):
            return int(rng.poisson(per_100m * metres / 100.0))

        # static roadside things, both sides
        for side in (-1.0, 1.0):
            for _ in range(count(cfg.trees_per_100m, length)):
                kind = "tree" if rng.random() < 0.75 else "bush"
                x = side * (lay.verge_x + lay.verge_m / 2 + rng.uniform(-0.3, 0.3))
                rows.append(self._row(kind, rng, z0=rng.uniform(-20, length), x0=x))
            for _ in range(count(cfg.poles_per_100m, length)):
                x = side * (lay.verge_x + 0.3)
                rows.append(self._row("pole", rng, z0=rng.uniform(-20, length), x0=x))
            if lay.parking_m > 0:
                for _ in range(count(cfg.parked_per_100m, length)):
                    x = side * (lay.road_half + lay.parking_m / 2 + rng.uniform(-0.15, 0.15))
                    kind = ("rear" if side > 0 else "front") if rng.random() < 0.8 else "van"
                    rows.append(self._row(kind, rng, z0=rng.uniform(-20, length), x0=x))
            # pedestrians along the sidewalk, both directions
            for _ in range(count(cfg.pedestrians_per_100m, length)):
                v = rng.uniform(0.9, 1.6) * (1 if rng.random() < 0.5 else -1)
                x = side * (lay.sidewalk_x + rng.uniform(0.5, lay.sidewalk_m - 0.5))
                rows.append(self._row("walker", rng, z0=rng.uniform(-20, length + 30), vz=v,
                                      x0=x))
        # traffic: lead car, other lanes (ours: +X, oncoming: -X)
        span_s = self.duration_s
        for lane in range(lay.lanes_per_direction):
            x_lane = lay.road_half - lay.lane_m * (lane + 0.5)
            for sgn in (1.0, -1.0):
                if sgn > 0 and lane == 0:
                    continue                                   # our lane: the lead car only
                v_rel = self.v0 * rng.uniform(0.7, 1.3)
                metres = length + v_rel * span_s
                for _ in range(count(cfg.vehicles_per_100m, metres)):
                    v = sgn * self.v0 * rng.uniform(0.7, 1.3)
                    kind = "van" if rng.random() < 0.2 else ("rear" if sgn > 0 else "front")
                    if sgn > 0:
                        z0 = rng.uniform(-60, length)
                    else:
                        z0 = rng.uniform(0, length + abs(v) * span_s)
                    rows.append(self._row(kind, rng, z0=z0, vz=v,
                                          x0=sgn * x_lane + rng.uniform(-0.25, 0.25)))
        if rng.random() < cfg.lead_vehicle_probability:
            gap = rng.uniform(15, 35)
            rows.append(self._row("van" if rng.random() < 0.25 else "rear", rng, z0=gap,
                                  follow=1.0, gap_amp=gap * 0.3, gap_f=rng.uniform(0.03, 0.1),
                                  gap_ph=rng.uniform(0, 2 * np.pi),
                                  x0=lay.ego_lane_x + rng.uniform(-0.2, 0.2)))
        # pedestrians crossing the road well ahead of the car (done before it arrives)
        n_cross = int(rng.poisson(cfg.crossing_pedestrians_per_min * self.duration_s / 60.0))
        for _ in range(n_cross):
            t_arrive = rng.uniform(0.3, 1.0) * self.duration_s + 6.0
            z = float(self.distance(t_arrive)) + 10.0
            width = 2 * lay.curb_x
            v = rng.uniform(1.0, 1.6)
            dur = width / v
            t0 = t_arrive - 3.0 - dur
            sgn = 1.0 if rng.random() < 0.5 else -1.0
            rows.append(self._row("walker", rng, z0=z, x0=-sgn * lay.curb_x, vx=sgn * v, t0=t0,
                                  dur=dur))
        return np.array(rows) if rows else np.zeros((0, N_COLS))

    def object_state(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(objects (n, 6) [z, xl, xr, yb, yt, texture id] sorted far to near, labels (n,))
        of the objects in view at t_s."""
        o = self._objects
        if not len(o):
            return np.zeros((0, 6)), np.zeros(0, np.uint8)
        s = float(self.distance(t_s))
        walked_x = np.clip(t_s - o[:, O_T0], 0, o[:, O_DUR])
        z = (o[:, O_Z0] + o[:, O_VZ] * t_s
             + o[:, O_FOLLOW] * (s + o[:, O_GAP_AMP]
                                 * np.sin(2 * np.pi * o[:, O_GAP_F] * t_s + o[:, O_GAP_PH])))
        x = o[:, O_X0] + o[:, O_VX] * walked_x
        rel = z - s
        keep = (rel > 0.5) & (rel < self.config.view_m)
        if not keep.any():
            return np.zeros((0, 6)), np.zeros(0, np.uint8)
        o, z, x, rel = o[keep], z[keep], x[keep], rel[keep]
        dist = np.abs(o[:, O_VZ]) * t_s + np.abs(o[:, O_VX]) * walked_x[keep]
        pose = np.floor(dist / o[:, O_STRIDE]).astype(np.int64) % o[:, O_POSES].astype(np.int64)
        out = np.empty((len(o), 6))
        out[:, 0] = z
        out[:, 1] = x - o[:, O_HALF_W]
        out[:, 2] = x + o[:, O_HALF_W]
        out[:, 3] = o[:, O_Y0]
        out[:, 4] = o[:, O_Y0] + o[:, O_HEIGHT]
        out[:, 5] = o[:, O_TID] + pose
        order = np.argsort(-rel, kind="stable")
        return out[order], o[order, O_LABEL].astype(np.uint8)

    # -- hood --------------------------------------------------------------------------------
    def _make_hood(self, rng, illum: float):
        h, w = self.height, self.width
        alpha = np.zeros((h, w), np.float32)
        rad = np.zeros((h, w), np.float32)
        if self.config.hood_fraction <= 0:
            return alpha, rad
        ss = 4
        ys = (np.arange(h * ss) + 0.5) / ss
        xs = (np.arange(w * ss) + 0.5) / ss
        u = (xs - w / 2) / (w / 2)                        # -1 .. 1
        top = h * (1 - self.config.hood_fraction * (1 - 0.35 * u ** 2))
        inside = (ys[:, None] >= top[None, :]).astype(np.float32)
        alpha = inside.reshape(h, ss, w, ss).mean(axis=(1, 3))
        gy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        paint = float(rng.uniform(0.04, 0.12))
        rad = (paint * (1 + 0.6 * (1 - gy)) * np.ones((1, w), np.float32)) * illum
        return alpha.astype(np.float32), rad.astype(np.float32)

    # -- rendering ---------------------------------------------------------------------------
    def render(self, t_us: int, labels: bool = True):
        t_s = t_us * 1e-6
        pose = self.pose(t_s)
        p = self._params.copy()
        K.set_pose(p, pose["x"], pose["z"], pose["yaw"], pose["pitch"])
        objects, object_labels = self.object_state(t_s)
        rad = np.empty((self.height, self.width), np.float32)
        lab = np.empty((self.height, self.width), np.uint8)
        depth = np.empty((self.height, self.width), np.float32)
        K.render_seg(p, self._tex, objects, object_labels, self._hood_alpha, self._hood_rad,
                     bool(labels), rad, lab, depth)
        return rad, (lab if labels else None)

    def describe(self) -> dict:
        """The sequence's drawn parameters (for the manifest)."""
        lay = self.layout
        return {"lanes_per_direction": lay.lanes_per_direction, "parking": lay.parking_m > 0,
                "speed_mps": round(self.v0, 3), "objects": int(len(self._objects)),
                "vehicles": int(np.sum(self._objects[:, O_LABEL] == VEHICLE))
                if len(self._objects) else 0,
                "pedestrians": int(np.sum(self._objects[:, O_LABEL] == HUMAN))
                if len(self._objects) else 0,
                "focal_px": round(self.f, 3), "texel_scale": self.texel_scale}
