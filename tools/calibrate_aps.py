"""Measure the DAVIS APS frame figures that evstream.sim.camera is calibrated on.

    .venv/bin/python tools/calibrate_aps.py [--data /work/shared/realdata/davis_aps]
                                            [--out aps_calibration.json] [--figures docs/img/aps]

Prints (and with --out writes) one JSON object; docs/aps_model.md tabulates it. With --figures
it also renders real vs simulated frames side by side (PNG) through evstream's simulator.

What is measured, and how (--figures applies the same frame estimators to the simulated
frames, so real and simulated numbers compare like for like):
- temporal noise against brightness, from consecutive frame pairs of slider_depth (a static
  tabletop seen from a slow slider): d = I[k+1] - I[k] holds no fixed pattern; at flat pixels
  (Sobel gradient < 2 DN/px) the difference of d between horizontal neighbours also cancels
  the slider's motion, flicker and any per-pair gain change (d's own mean moves by +-2 DN
  from pair to pair). Per 10-DN bin of brightness, a discretised Gaussian is fitted to the
  central histogram (|x| <= 5), which gives var = (s^2 - 1/3) / 4 (1/3: four 8-bit
  roundings). Then var = a * m + b is fitted over 8-110 DN (the slider's white wall saturates
  at ~116 DN: no noise there): a = DN per electron (conversion gain 1/a e-/DN), b = read-noise
  variance (DN^2).
- column (and row) fixed-pattern noise: in every frame, the difference to a 9-px box mean
  along the row, at pixels away from vertical scene edges, median over the rows -> one offset
  per column; averaged over the frames (the noise averages out, the pattern stays), std over
  the columns x sqrt(9/8) (the box removes 1/9 of an iid pattern's variance); estimated on
  each half of the frames too: a fixed pattern correlates (~1), scene or row noise does not.
- pixel fixed pattern: neighbour differences along the rows of the slider's temporal mean at
  flat pixels, robust std / sqrt 2, less the column pattern (an upper bound: texture remains).
- dark level: in the darkest 8x8 blocks of night_run (black sky), the fraction of 0 DN; with
  the read noise above, a Gaussian clipped at 0 gives the black offset mu = 0.5 - s z(P0).
- frame statistics (frame_stats): single-frame noise (neighbour differences at flat pixels),
  mean, 99th percentile, fraction at 0 and at 255, and the SNR of the dark regions: the 8x8
  blocks whose mean is in the lowest quarter, median of block mean / block std.
- dynamic range: 20 log10(full scale / read noise) with the read noise from the fit.
- blur (blur_px): along the most blurred direction, 2 x the half-maximum lag of the
  autocorrelation of the signed pixel difference: a box blur of L px gives about L.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

DATA = "/work/shared/realdata/davis_aps"


def read_gray(path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if im is None:
        raise SystemExit(f"{path}: cannot read")
    return im


def read_stack(pattern: str) -> np.ndarray:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"{pattern}: no frames")
    frames = [read_gray(f) for f in files]
    return np.stack([f for f in frames if f.shape == frames[0].shape])   # drops torn frames


# ---------------------------------------------------------------------------------------------
# Estimators (pure functions of uint8 frames)

def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def fit_discrete_gaussian(d: np.ndarray, half: int = 4) -> float:
    """Std of a zero-centred Gaussian whose rounding best fits the histogram of the integer
    differences d inside |d| <= half (normalised there: wide tails do not matter)."""
    k = np.arange(-half, half + 1)
    counts = np.array([(d == v).sum() for v in k], np.float64)
    if counts.sum() < 100:
        return float("nan")
    p = counts / counts.sum()
    best, best_s = np.inf, float("nan")
    for mu in np.linspace(-0.5, 0.5, 11):
        for s in np.geomspace(0.2, 8.0, 200):
            q = _phi((k + 0.5 - mu) / s) - _phi((k - 0.5 - mu) / s)
            q = q / q.sum()
            err = float(np.sum((p - q) ** 2))
            if err < best:
                best, best_s = err, float(s)
    return best_s


def temporal_noise(frames: np.ndarray, grad_max: float = 2.0, bin_dn: int = 10,
                   min_pixels: int = 2000) -> list[dict]:
    """[{mean, var, pixels}] per brightness bin, from the differences of consecutive frames
    between horizontal neighbours at flat pixels (see the module top)."""
    f = frames.astype(np.float32)
    d = (f[1:] - f[:-1]).astype(np.int32)
    m = 0.5 * (f[1:] + f[:-1])
    flat = np.stack([np.hypot(cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1))
                     < grad_max * 4 for x in m])          # Sobel is 4x a unit gradient
    dd = d[:, :, 1:] - d[:, :, :-1]
    mm = 0.5 * (m[:, :, 1:] + m[:, :, :-1])
    ok = flat[:, :, 1:] & flat[:, :, :-1]
    rows = []
    for lo in range(0, 256, bin_dn):
        sel = ok & (mm >= lo) & (mm < lo + bin_dn)
        if sel.sum() < min_pixels:
            continue
        s_dd = fit_discrete_gaussian(dd[sel], half=5)
        rows.append({"mean": float(mm[sel].mean()), "var": max((s_dd ** 2 - 1 / 3) / 4, 0.0),
                     "pixels": int(sel.sum())})
    return rows


def pixel_fpn(frames: np.ndarray, col_dn: float, row_dn: float) -> float:
    """Per-pixel offset std (DN): neighbour differences of the temporal mean at flat pixels
    along the rows (robust std / sqrt 2), less the column pattern (scene texture left in the
    mean only adds: an upper bound)."""
    mean = frames.astype(np.float32).mean(0)
    sm = cv2.GaussianBlur(mean, (0, 0), 1.5)
    g = np.hypot(cv2.Sobel(sm, cv2.CV_32F, 1, 0), cv2.Sobel(sm, cv2.CV_32F, 0, 1)) / 8
    ok = (g < 0.5) & (mean > 10) & (mean < 105)
    out = []
    for axis, line in ((1, col_dn),):
        dd = np.diff(mean, axis=axis)
        o = (ok[:-1] & ok[1:]) if axis == 0 else (ok[:, :-1] & ok[:, 1:])
        x = dd[o]
        robust = float(np.median(np.abs(x - np.median(x)))) * 1.4826 / math.sqrt(2)
        out.append(math.sqrt(max(robust ** 2 - line ** 2, 0.0)))
    return out[0]


def fit_shot_read(rows: list[dict], black_dn: float, lo: float = 8.0,
                  hi: float = 110.0) -> tuple[float, float]:
    """(a, b) of var = a (mean - black) + b over the bins in [lo, hi], least squares weighted
    by pixels / var^2."""
    use = [r for r in rows if lo <= r["mean"] <= hi and r["var"] > 0]
    x = np.array([r["mean"] - black_dn for r in use])
    y = np.array([r["var"] for r in use])
    w = np.sqrt(np.array([r["pixels"] for r in use]) / y ** 2)
    a, b = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1) * w[:, None], y * w, rcond=None)[0]
    return float(a), float(b)


def line_pattern(frames: np.ndarray, axis: int = 0, box: int = 9,
                 edge_max: float = 1.5) -> np.ndarray:
    """Fixed offset per column (axis=0) or per row (axis=1), DN, with the scene removed (see
    the module top)."""
    f = frames.astype(np.float32)
    if axis == 1:
        f = f.transpose(0, 2, 1)
    est = []
    for x in f:
        hp = x - cv2.blur(x, (box, 1), borderType=cv2.BORDER_REFLECT)
        smooth = cv2.GaussianBlur(x, (0, 0), 2.0)
        edge = np.abs(cv2.Sobel(smooth, cv2.CV_32F, 1, 0)) / 8 > edge_max
        edge |= (x <= 0) | (x >= 255)                   # clipped pixels carry no pattern
        hp[edge] = np.nan
        est.append(np.nanmedian(hp, axis=0))
    return np.nanmean(np.stack(est), axis=0)


def line_fpn_std(frames: np.ndarray, axis: int = 0, box: int = 9) -> tuple[float, float]:
    """(std of the line pattern, DN; correlation of the patterns of the first and second
    half of the frames: ~1 for a fixed pattern, ~0 for scene or temporal row noise)."""
    p = line_pattern(frames, axis, box)
    half = len(frames) // 2
    a, b = (line_pattern(x, axis, box)[box:-box] for x in (frames[:half], frames[half:]))
    return (float(np.nanstd(p[box:-box]) * math.sqrt(box / (box - 1))),
            float(np.corrcoef(a, b)[0, 1]))


def frame_stats(image: np.ndarray, block: int = 8) -> dict:
    """Mean, 99th percentile, clipped fractions and the dark regions' SNR of one uint8 frame."""
    im = image.astype(np.float64)
    h, w = (im.shape[0] // block) * block, (im.shape[1] // block) * block
    b = im[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)
    b = b.reshape(-1, block * block)
    bm, bs = b.mean(1), b.std(1)
    dark = bm <= np.percentile(bm, 25)
    ok = dark & (bs > 0)
    snr = float(np.median(bm[ok] / bs[ok])) if ok.any() else float("inf")
    return {"noise_dn": round(single_frame_noise(image), 3),
            "mean": round(float(im.mean()), 2), "p99": round(float(np.percentile(im, 99)), 1),
            "zero_fraction": round(float(np.mean(image == 0)), 4),
            "saturated_fraction": round(float(np.mean(image >= 255)), 4),
            "dark_mean": round(float(bm[dark].mean()), 2), "dark_snr": round(snr, 2)}


def single_frame_noise(image: np.ndarray, grad_max: float = 1.0) -> float:
    """Noise std (DN) of one frame: neighbour differences at flat, unclipped pixels (a
    discretised Gaussian fit, the smaller of the two directions; texture and the fixed
    pattern of that direction are included, so it is an upper bound of the temporal noise)."""
    im = image.astype(np.float32)
    sm = cv2.GaussianBlur(im, (0, 0), 1.5)
    g = np.hypot(cv2.Sobel(sm, cv2.CV_32F, 1, 0), cv2.Sobel(sm, cv2.CV_32F, 0, 1)) / 8
    ok = (g < grad_max) & (image > 0) & (image < 255)
    out = []
    for axis in (0, 1):
        d = np.diff(image.astype(np.int32), axis=axis)
        o = (ok[:-1] & ok[1:]) if axis == 0 else (ok[:, :-1] & ok[:, 1:])
        s = fit_discrete_gaussian(d[o], half=6)
        if s == s:
            out.append(math.sqrt(max((s ** 2 - 1 / 6) / 2, 0.0)))
    return min(out) if out else float("nan")


def blur_px(image: np.ndarray) -> float:
    """Blur length (px) along the most blurred of four directions (0, 90, 45, 135 deg): the
    signed difference to the next pixel along the direction, its autocorrelation along the
    same direction, 2 x the lag where that falls to one half. A box blur of L px spreads each
    edge's difference over L px, so the estimate is ~L (the slider frame blurred by 5, 11,
    21 px reads 5.1, 8.8, 16.4); a sharp frame reads 2.5-3.5 (the 0.7 px pre-smoothing and
    the optics), noise pulls it down. Whole-frame: it follows the frame's strongest edges."""
    im = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.7)
    widths = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        d = np.roll(im, (-dy, -dx), (0, 1)) - im
        d = d[2:-2, 2:-2] - d[2:-2, 2:-2].mean()
        f = np.fft.rfft2(d)
        ac = np.fft.irfft2(f * np.conj(f), s=d.shape)
        ac = ac / ac[0, 0]
        step = math.hypot(dy, dx)
        width = 80 * step
        for n in range(1, 80):
            cur = float(ac[(n * dy) % d.shape[0], (n * dx) % d.shape[1]])
            if cur < 0.5:
                prev = float(ac[((n - 1) * dy) % d.shape[0], ((n - 1) * dx) % d.shape[1]])
                width = step * (n - 1 + (prev - 0.5) / (prev - cur))
                break
        widths.append(2 * width)
    return round(max(widths), 2)


def dark_offset(image: np.ndarray, read_dn: float, block: int = 8) -> dict:
    """Black offset (DN) from the fraction of zeros in the darkest 5 % of blocks."""
    im = image.astype(np.float64)
    h, w = (im.shape[0] // block) * block, (im.shape[1] // block) * block
    b = im[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)
    b = b.reshape(-1, block * block)
    dark = b[b.mean(1) <= np.percentile(b.mean(1), 5)]
    p0 = float(np.mean(dark == 0))
    p0c = min(max(p0, 1e-4), 1 - 1e-4)
    lo, hi = -10.0, 10.0                         # z with Phi(z) = p0 (bisection)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p0c:
            lo = mid
        else:
            hi = mid
    return {"zero_fraction": round(p0, 4), "mean": round(float(dark.mean()), 3),
            "black_offset_dn": round(0.5 - read_dn * lo, 2)}


# ---------------------------------------------------------------------------------------------
# The measurement

def measure(data: str) -> dict:
    data = Path(data)
    slider = read_stack(str(data / "slider_depth_davis240c/images/*.png"))
    board = read_stack(str(data / "edi_checkerboard_davis240/blurimage/*.png"))
    nj = data / "ni_joint"
    rows = temporal_noise(slider)
    a, b = fit_shot_read(rows, 0.0)
    read_dn = math.sqrt(max(b, 0.0))
    night = read_gray(nj / "night_run.png")
    dark = dark_offset(night, read_dn)
    col = {"slider": line_fpn_std(slider, 0), "checkerboard": line_fpn_std(board, 0)}
    row = {"slider": line_fpn_std(slider, 1), "checkerboard": line_fpn_std(board, 1)}
    pix = pixel_fpn(slider, col["slider"][0], row["slider"][0])
    # the slider's white wall stops changing (temporal variance ~0) below 255: pixel saturation
    plateau = next((round(r["mean"], 1) for r in rows if r["mean"] > 60 and r["var"] < 0.15),
                   None)
    frames = {name: frame_stats(read_gray(nj / f"{name}.png"))
              for name in ("low_light_model", "night_run", "badminton", "keyboard", "toy",
                           "text_cambridge")}
    frames["slider_first"] = frame_stats(slider[0])
    frames["checkerboard_first"] = frame_stats(board[0])
    blur = {name: blur_px(read_gray(nj / f"{name}.png"))
            for name in ("badminton", "keyboard", "toy", "text_cambridge", "low_light_model",
                         "night_run")}
    blur["slider (static, sharp)"] = round(float(np.median([blur_px(x) for x in slider[::10]])), 2)
    blur["checkerboard (hand-moved)"] = round(float(np.median([blur_px(x) for x in board[::4]])),
                                              2)
    return {
        "temporal_noise": {"bins": [{k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in r.items()} for r in rows],
                           "dn_per_electron": round(a, 5),
                           "conversion_gain_e_per_dn": round(1 / a, 2) if a > 0 else None,
                           "read_noise_dn": round(read_dn, 3),
                           "read_noise_e": round(read_dn / a, 2) if a > 0 else None,
                           "full_scale_e": round(255 / a, 0) if a > 0 else None,
                           "measured_on": "slider_depth_davis240c (86 frame pairs)"},
        "column_fpn_dn": {k: round(v[0], 3) for k, v in col.items()},
        "column_fpn_halves_corr": {k: round(v[1], 3) for k, v in col.items()},
        "row_fpn_dn": {k: round(v[0], 3) for k, v in row.items()},
        "row_fpn_halves_corr": {k: round(v[1], 3) for k, v in row.items()},
        "pixel_fpn_dn": round(pix, 3),
        "dark_level": {"measured_on": "night_run darkest 5 % of 8x8 blocks", **dark},
        "frames": frames,
        "dynamic_range_db": round(20 * math.log10(255 / read_dn), 1) if read_dn > 0 else None,
        "slider_saturation_dn": plateau,
        "dynamic_range_db_slider": round(20 * math.log10(plateau / read_dn), 1)
        if read_dn > 0 and plateau else None,
        "blur_px": blur,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--figures", help="render real vs simulated PNGs into this folder")
    args = ap.parse_args(argv)
    result = measure(args.data)
    print(json.dumps(result, indent=1))
    if args.figures:
        result["simulated"] = render_figures(args.data, args.figures)
        print(json.dumps(result["simulated"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# real frame, simulated (illumination, motion), PNG name
PAIRS = (("ni_joint/low_light_model.png", ("low", "slow"), "low_light"),
         ("ni_joint/night_run.png", ("hdr", "slow"), "hdr_night"),
         ("ni_joint/keyboard.png", ("normal", "fast"), "blur_fast"),
         ("ni_joint/toy.png", ("low", "fast"), "blur_low_fast"),
         ("edi_checkerboard_davis240/blurimage/0001.png", ("over", "slow"), "over"),
         ("slider_depth_davis240c/images/frame_00000000.png", ("normal", "slow"), "normal"))


def simulate_frames(conditions: tuple[str, str], seed: int = 1, seconds: float = 0.2,
                    width: int = 346, height: int = 260) -> list[np.ndarray]:
    """The APS frames of one `evstream synth seg` sequence (DAVIS346 size) in `conditions`."""
    from evstream.sim.dataset import SynthConfig, sequence_outputs

    cfg = SynthConfig(task="seg", sequences=1, seconds=seconds, seed=seed, width=width,
                      height=height).resolved()
    entry = {"name": "demo", "split": "test", "seed": seed,
             "conditions": {"illumination": conditions[0], "motion": conditions[1]}}
    _, _, outputs = sequence_outputs(cfg, entry)
    return [o.frame.image for o in outputs if o.frame is not None]


def side_by_side(real: np.ndarray, sim: np.ndarray, labels: tuple[str, str]) -> np.ndarray:
    """Both at the simulated frame's height, a 6 px gap, a caption strip on top."""
    h = sim.shape[0]
    real = cv2.resize(real, (round(real.shape[1] * h / real.shape[0]), h),
                      interpolation=cv2.INTER_NEAREST)
    gap = np.full((h, 6), 255, np.uint8)
    body = np.hstack([real, gap, sim])
    top = np.full((18, body.shape[1]), 255, np.uint8)
    for x, text in ((2, labels[0]), (real.shape[1] + 8, labels[1])):
        cv2.putText(top, text, (x, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
    return np.vstack([top, body])


def render_figures(data: str, folder: str, seed: int = 1) -> dict:
    """Real vs simulated PNGs into folder; returns the simulated frames' statistics."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for real_path, cond, name in PAIRS:
        real = read_gray(Path(data) / real_path)
        frames = simulate_frames(cond, seed)
        sim = frames[len(frames) // 2]
        stats[name] = {"conditions": "/".join(cond), **frame_stats(sim),
                       "blur_px": blur_px(sim), "real": Path(real_path).name}
        png = side_by_side(real, sim, (f"real {Path(real_path).name}",
                                       f"simulated {cond[0]}/{cond[1]}"))
        cv2.imwrite(str(out / f"{name}.png"), png, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return stats


if __name__ == "__main__":
    sys.exit(main())
