"""The driving world's renderer: one Numba pass per virtual frame (radiance, labels, depth).

A pinhole camera (focal f px, principal point cx, cy; pixel (x, y) looks along
(u, -v, 1) with u = (x + 0.5 - cx) / f, v = (y + 0.5 - cy) / f) is pitched by `pitch` (about
X, positive looks up), then yawed by `yaw` (about Y, positive turns right) and placed at
(cam_x, cam_y, cam_z) in the world frame of seg_layers (X right, Y up, Z along the road).

Per pixel:
  1. front to back, with early termination once what is in front is opaque: the facade plane,
     then the skyline plane, on the side the ray points to (X = x_left or x_right), each only
     if hit above the ground, composited with its alpha; then the ground plane Y = 0 if the ray
     points down (texture coordinates (X, Z)), else the sky (a brightness gradient over
     elevation). Mip levels come from the pixel's footprint on each plane;
  2. the objects (billboards: the rectangle [xl, xr] x [yb, yt] of the plane Z = z, facing
     down the road) in the order given, far to near, each over the pixels of its projected
     bounding box, composited with its sprite's alpha where it is nearer than what is there;
  3. the car's hood (a fixed alpha mask and radiance in the image: no motion, no events).
Every surface is attenuated by fog: c * T + fog * (1 - T), T = exp(-distance / fog_m).
Colours are premultiplied albedo (render.py) times the illumination scale. A pixel's label is
the class of the nearest surface whose coverage is >= 0.5 there and whose level-0 texel is
labelled (sky: background, hood: 255); `depth` is that surface's ray parameter (inf for the sky). Labels are looked up only when
`want_labels` (the driver needs them at APS frame times only); otherwise `lab` holds 255 for
the static layers.

Texture sampling (`sample`): coordinates are in level-0 texels (texel centres at i + 0.5);
`lod` is log2 of the pixel footprint in texels: <= 0 samples level 0 bilinearly
(magnification), otherwise the two nearest levels are sampled bilinearly and blended
(trilinear), so a surface that comes closer sharpens smoothly instead of popping from one level
to the next (popping would fire spurious events). Each axis has an edge mode: WRAP (periodic),
CLAMP (edge texel repeats) or ZERO (transparent outside: premultiplied colour and alpha 0), so
sprites get soft, anti-aliased silhouettes. It returns (premultiplied albedo, alpha). The
sampling kernels live in this file, beside their only caller, because Numba's cache notices
edits to a function's own file only.

`params` (float64) holds, by index: see the P_* constants below (`set_pose` fills the pose and
its sines/cosines). Pure function of its inputs; writes only `rad`, `lab` and `depth`. Step 1
runs its rows in parallel (Numba prange, as many threads as numba.set_num_threads allows);
every pixel is computed on its own, so the output does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

WRAP, CLAMP, ZERO = 0, 1, 2        # texture edge modes, per axis

(P_F, P_CX, P_CY, P_CAM_X, P_CAM_Y, P_CAM_Z, P_YAW, P_PITCH, P_ILLUM, P_FOG_M, P_SKY, P_FOG,
 P_G_TID, P_G_TEXEL, P_G_X0,
 P_F_TID_L, P_F_TID_R, P_F_X_L, P_F_X_R, P_F_TEXEL, P_F_TOP,
 P_S_TID_L, P_S_TID_R, P_S_X_L, P_S_X_R, P_S_TEXEL, P_S_TOP,
 P_SIN_YAW, P_COS_YAW, P_SIN_PITCH, P_COS_PITCH, N_PARAMS) = range(32)

BACKGROUND_LABEL = 1


# ---------------------------------------------------------------------------------------------
# Texture sampling. `tex` is the tuple render.TextureBank.pack() returns.

@njit(cache=True, nogil=True, error_model="numpy")
def _axis(coord, n, mode):
    """(i0, i1, frac) of a bilinear tap pair along one axis of n texels; an index of -1 is
    outside (ZERO mode). `coord` is in texel units (centres at i + 0.5)."""
    f = coord - 0.5
    if mode == WRAP:
        if f < 0.0 or f >= n:
            f -= math.floor(f / n) * n           # into [0, n)
        i0 = int(f)
        frac = f - i0
        if i0 >= n:                              # rounding at the top end
            i0 = n - 1
        i1 = i0 + 1
        if i1 >= n:
            i1 = 0
        return i0, i1, frac
    i = math.floor(f)
    frac = f - i
    i0 = int(i)
    i1 = i0 + 1
    if mode == CLAMP:
        if i0 < 0:
            i0 = 0
            if i1 < 0:
                i1 = 0
        if i1 > n - 1:
            i1 = n - 1
            if i0 > n - 1:
                i0 = n - 1
        return i0, i1, frac
    if i0 < 0 or i0 >= n:
        i0 = -1
    if i1 < 0 or i1 >= n:
        i1 = -1
    return i0, i1, frac


@njit(cache=True, nogil=True, error_model="numpy")
def _bilinear(texels, off, w, h, x, y, mode_x, mode_y):
    """Bilinear (premultiplied colour, alpha) at (x, y) in this level's texel units."""
    ix0, ix1, ax = _axis(x, w, mode_x)
    iy0, iy1, ay = _axis(y, h, mode_y)
    if ix0 >= 0 and ix1 >= 0 and iy0 >= 0 and iy1 >= 0:       # the common case
        r0 = off + iy0 * w
        r1 = off + iy1 * w
        bx = 1.0 - ax
        by = 1.0 - ay
        w00 = by * bx
        w01 = by * ax
        w10 = ay * bx
        w11 = ay * ax
        c = (w00 * texels[r0 + ix0, 0] + w01 * texels[r0 + ix1, 0]
             + w10 * texels[r1 + ix0, 0] + w11 * texels[r1 + ix1, 0])
        a = (w00 * texels[r0 + ix0, 1] + w01 * texels[r0 + ix1, 1]
             + w10 * texels[r1 + ix0, 1] + w11 * texels[r1 + ix1, 1])
        return c, a
    c = 0.0
    a = 0.0
    for iy, wy in ((iy0, 1.0 - ay), (iy1, ay)):
        if iy < 0:
            continue
        r = off + iy * w
        for ix, wx in ((ix0, 1.0 - ax), (ix1, ax)):
            if ix >= 0:
                c += wy * wx * texels[r + ix, 0]
                a += wy * wx * texels[r + ix, 1]
    return c, a


@njit(cache=True, nogil=True, error_model="numpy")
def sample(tex, tid, x, y, lod, mode_x, mode_y):
    """Trilinear (premultiplied albedo, alpha) of texture `tid` at level-0 texel coordinates
    (x, y) for a pixel footprint of 2**lod texels."""
    texels, meta, scale, levels = tex[0], tex[2], tex[3], tex[4]
    n = levels[tid]
    if lod <= 0.0 or n == 1:
        return _bilinear(texels, meta[tid, 0, 0], meta[tid, 0, 1], meta[tid, 0, 2],
                         x, y, mode_x, mode_y)
    top = n - 1
    if lod >= top:
        return _bilinear(texels, meta[tid, top, 0], meta[tid, top, 1], meta[tid, top, 2],
                         x * scale[tid, top, 0], y * scale[tid, top, 1], mode_x, mode_y)
    lv = int(lod)
    f = lod - lv
    c0, a0 = _bilinear(texels, meta[tid, lv, 0], meta[tid, lv, 1], meta[tid, lv, 2],
                       x * scale[tid, lv, 0], y * scale[tid, lv, 1], mode_x, mode_y)
    c1, a1 = _bilinear(texels, meta[tid, lv + 1, 0], meta[tid, lv + 1, 1],
                       meta[tid, lv + 1, 2], x * scale[tid, lv + 1, 0],
                       y * scale[tid, lv + 1, 1], mode_x, mode_y)
    return c0 + f * (c1 - c0), a0 + f * (a1 - a0)


@njit(cache=True, nogil=True, error_model="numpy")
def _nearest(coord, n, mode):
    """Index of the texel containing coord along an axis of n texels; -1 outside (ZERO)."""
    if mode == WRAP:
        if coord < 0.0 or coord >= n:
            coord -= math.floor(coord / n) * n
        i = int(coord)
        return n - 1 if i >= n else i
    i = int(math.floor(coord))
    if 0 <= i < n:
        return i
    if mode == CLAMP:
        return 0 if i < 0 else n - 1
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def label_at(tex, tid, x, y, mode_x, mode_y):
    """The level-0 label of the texel containing (x, y); 255 outside (ZERO mode)."""
    labels, meta = tex[1], tex[2]
    ix = _nearest(x, meta[tid, 0, 1], mode_x)
    iy = _nearest(y, meta[tid, 0, 2], mode_y)
    if ix < 0 or iy < 0:
        return np.uint8(255)
    return labels[meta[tid, 0, 0] + iy * meta[tid, 0, 1] + ix]


@njit(cache=True, nogil=True, error_model="numpy")
def fast_log2(x):
    """log2(x) for x > 0 within 0.01 (continuous and increasing: fine for mip levels)."""
    m, e = math.frexp(x)                 # x = m * 2**e, m in [0.5, 1)
    u = 2.0 * m - 1.0                    # log2(1 + u) on [0, 1)
    return e - 1 + u * (1.3465 - 0.3465 * u)


# ---------------------------------------------------------------------------------------------
# The renderer

MIN_COS = 0.05          # footprint stretch limit at grazing angles


def set_pose(params: np.ndarray, x: float, z: float, yaw: float, pitch: float) -> None:
    params[P_CAM_X], params[P_CAM_Z], params[P_YAW], params[P_PITCH] = x, z, yaw, pitch
    params[P_SIN_YAW], params[P_COS_YAW] = math.sin(yaw), math.cos(yaw)
    params[P_SIN_PITCH], params[P_COS_PITCH] = math.sin(pitch), math.cos(pitch)


@njit(cache=True, nogil=True, error_model="numpy")
def _ray(params, x, y):
    f = params[P_F]
    u = (x + 0.5 - params[P_CX]) / f
    v = (y + 0.5 - params[P_CY]) / f
    sp, cp = params[P_SIN_PITCH], params[P_COS_PITCH]
    sy, cy = params[P_SIN_YAW], params[P_COS_YAW]
    dy0 = -v
    dy = dy0 * cp + sp
    dz1 = -dy0 * sp + cp
    dx = u * cy + dz1 * sy
    dz = -u * sy + dz1 * cy
    return dx, dy, dz, math.sqrt(dx * dx + dy * dy + dz * dz)


@njit(cache=True, nogil=True, error_model="numpy")
def _lod(footprint_m, texel_m):
    if footprint_m <= texel_m:
        return 0.0
    return fast_log2(footprint_m / texel_m)


@njit(cache=True, nogil=True, error_model="numpy")
def render_seg(params, tex, objects, object_labels,
               hood_alpha, hood_rad, want_labels, rad, lab, depth):
    _render_static(params, tex, hood_alpha, hood_rad, want_labels, rad, lab, depth)
    _render_objects(params, tex, objects, object_labels, rad, lab, depth)
    height, width = rad.shape
    for y in range(height):
        for x in range(width):
            a = hood_alpha[y, x]
            if 0.0 < a < 1.0:                        # the hood's anti-aliased edge
                rad[y, x] = a * hood_rad[y, x] + (1.0 - a) * rad[y, x]
                if a >= 0.5:
                    lab[y, x] = 255
                    depth[y, x] = 0.0


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _render_static(params, tex, hood_alpha, hood_rad, want_labels, rad, lab, depth):
    """The per-pixel pass (ground, sky, facades, skyline), rows in parallel: every pixel is
    computed on its own, so the result does not depend on the number of threads."""
    height, width = rad.shape
    f = params[P_F]
    illum = params[P_ILLUM]
    fog = params[P_FOG]
    inv_fog_m = 1.0 / params[P_FOG_M]
    cam_x, cam_y, cam_z = params[P_CAM_X], params[P_CAM_Y], params[P_CAM_Z]
    for y in prange(height):
        for x in range(width):
            if hood_alpha[y, x] >= 1.0:              # under the opaque hood: nothing to see
                rad[y, x] = hood_rad[y, x]
                lab[y, x] = 255
                depth[y, x] = 0.0
                continue
            dx, dy, dz, norm = _ray(params, x, y)
            lam_g = -cam_y / dy if dy < -1e-9 else np.inf
            colour = 0.0
            trans = 1.0                    # transmittance of what is in front so far
            label = np.uint8(255)
            d = np.inf
            # front to back: the facade, then the skyline, on the side the ray points to
            for layer in range(2):
                if dx == 0.0:
                    break
                left = dx < 0.0
                if layer == 0:
                    tid = np.int64(params[P_F_TID_L] if left else params[P_F_TID_R])
                    xp = params[P_F_X_L] if left else params[P_F_X_R]
                    texel, top = params[P_F_TEXEL], params[P_F_TOP]
                else:
                    tid = np.int64(params[P_S_TID_L] if left else params[P_S_TID_R])
                    xp = params[P_S_X_L] if left else params[P_S_X_R]
                    texel, top = params[P_S_TEXEL], params[P_S_TOP]
                lam = (xp - cam_x) / dx
                if lam <= 0.0 or lam >= lam_g:
                    continue
                yh = cam_y + lam * dy
                if yh < 0.0 or yh > top:
                    continue
                dist = lam * norm
                cos_i = max(abs(dx) / norm, MIN_COS)
                tx = (cam_z + lam * dz) / texel
                ty = (top - yh) / texel
                c, a = sample(tex, tid, tx, ty,
                              _lod(dist / (f * cos_i), texel), WRAP, ZERO)
                if a <= 0.0:
                    continue
                t = math.exp(-dist * inv_fog_m)
                colour += trans * (c * illum * t + a * fog * (1.0 - t))
                if a >= 0.5:
                    if d == np.inf:
                        d = lam
                    if want_labels and label == 255:
                        # level 0 may be a gap where a blurred level is opaque: look on
                        label = label_at(tex, tid, tx, ty, WRAP, ZERO)
                trans *= 1.0 - a
                if trans < 1e-3:
                    break
            if trans >= 1e-3:
                if lam_g < np.inf:
                    gx = cam_x + lam_g * dx
                    gz = cam_z + lam_g * dz
                    dist = lam_g * norm
                    cos_i = max(-dy / norm, MIN_COS)
                    g_texel = params[P_G_TEXEL]
                    tid = np.int64(params[P_G_TID])
                    tx = (gx - params[P_G_X0]) / g_texel
                    ty = gz / g_texel
                    c, _ = sample(tex, tid, tx, ty,
                                  _lod(dist / (f * cos_i), g_texel), CLAMP, WRAP)
                    t = math.exp(-dist * inv_fog_m)
                    colour += trans * (c * illum * t + fog * (1.0 - t))
                    if d == np.inf:
                        d = lam_g
                    if want_labels and label == 255:
                        label = label_at(tex, tid, tx, ty, CLAMP, WRAP)
                else:
                    el = min(dy / norm * 3.0, 1.0)
                    colour += trans * params[P_SKY] * (1.0 - 0.35 * el)
                    if label == 255:
                        label = np.uint8(BACKGROUND_LABEL)
            rad[y, x] = colour
            lab[y, x] = label
            depth[y, x] = d


@njit(cache=True, nogil=True, error_model="numpy")
def _project(params, X, Y, Z):
    """Image (x, y) of a world point and its camera depth (<= 0: behind the camera)."""
    px = X - params[P_CAM_X]
    py = Y - params[P_CAM_Y]
    pz = Z - params[P_CAM_Z]
    sy, cy = params[P_SIN_YAW], params[P_COS_YAW]
    sp, cp = params[P_SIN_PITCH], params[P_COS_PITCH]
    x1 = px * cy - pz * sy
    z1 = px * sy + pz * cy
    y2 = py * cp - z1 * sp
    z2 = py * sp + z1 * cp
    if z2 <= 1e-6:
        return 0.0, 0.0, z2
    f = params[P_F]
    return params[P_CX] + f * x1 / z2, params[P_CY] - f * y2 / z2, z2


@njit(cache=True, nogil=True, error_model="numpy")
def _render_objects(params, tex, objects, object_labels, rad, lab, depth):
    height, width = rad.shape
    f = params[P_F]
    for k in range(objects.shape[0]):
        z, xl, xr, yb, yt = objects[k, 0], objects[k, 1], objects[k, 2], objects[k, 3], \
            objects[k, 4]
        tid = np.int64(objects[k, 5])
        x_lo, x_hi, y_lo, y_hi = 1e18, -1e18, 1e18, -1e18
        behind = False
        for X in (xl, xr):
            for Y in (yb, yt):
                px, py, pz = _project(params, X, Y, z)
                if pz <= 1e-6:
                    behind = True
                x_lo, x_hi = min(x_lo, px), max(x_hi, px)
                y_lo, y_hi = min(y_lo, py), max(y_hi, py)
        if behind:
            continue
        i0 = max(0, int(math.floor(x_lo)) - 1)
        i1 = min(width, int(math.ceil(x_hi)) + 1)
        j0 = max(0, int(math.floor(y_lo)) - 1)
        j1 = min(height, int(math.ceil(y_hi)) + 1)
        if i0 >= i1 or j0 >= j1:
            continue
        w_tex = tex[2][tid, 0, 1]
        h_tex = tex[2][tid, 0, 2]
        texel_x = (xr - xl) / w_tex
        texel_y = (yt - yb) / h_tex
        texel = math.sqrt(texel_x * texel_y)
        obj_label = object_labels[k]
        for y in range(j0, j1):
            for x in range(i0, i1):
                dx, dy, dz, norm = _ray(params, x, y)
                if dz <= 1e-9:
                    continue
                lam = (z - params[P_CAM_Z]) / dz
                if lam <= 0.0 or lam >= depth[y, x]:
                    continue
                X = params[P_CAM_X] + lam * dx
                Y = params[P_CAM_Y] + lam * dy
                tx = (X - xl) / texel_x
                ty = (yt - Y) / texel_y
                if tx < -1.0 or ty < -1.0 or tx > w_tex + 1.0 or ty > h_tex + 1.0:
                    continue
                dist = lam * norm
                cos_i = max(dz / norm, MIN_COS)
                c, a = sample(tex, tid, tx, ty,
                              _lod(dist / (f * cos_i), texel), ZERO, ZERO)
                if a <= 0.0:
                    continue
                t = math.exp(-dist / params[P_FOG_M])
                colour = c * params[P_ILLUM] * t + a * params[P_FOG] * (1.0 - t)
                rad[y, x] = colour + (1.0 - a) * rad[y, x]
                if a >= 0.5:
                    lab[y, x] = obj_label
                    depth[y, x] = lam
