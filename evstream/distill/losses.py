"""EvDistill's loss terms: pure functions, tensors in, one scalar tensor out.

Where the formulas come from. EvDistill (Wang, Chae, Yoon, Kim, Yoon, CVPR 2021, "EvDistill:
Asynchronous Events to End-task Learning via Bidirectional Reconstruction-guided Cross-modal
Knowledge Distillation", arXiv 2111.12341) trains an event student from an APS-image teacher with
a bidirectional modality reconstruction (BMR: E2A maps the student's features to an APS-like
image, A2E maps an image to an event representation) plus three kinds of distillation: per-pixel
distribution matching (KL with temperature T), an affinity-graph loss on features, and the
teacher's prediction on the reconstructed image agreeing with its prediction on the real one.
The authors' public repository (addisonwang2013/evdistill) holds only test and evaluation code;
its configs/configurations.py keeps `ignore_label = 255` (line 8) and `pool_scale = 0.8`
(line 17), the latter a leftover of the training config, which is the affinity pooling scale of
the structured-KD code EvDistill builds on. The affinity graph is structured KD's pair-wise loss
(Liu et al., CVPR 2019, "Structured Knowledge Distillation for Semantic Segmentation"; code
irfanICMLL/structure_knowledge_distillation: utils/utils.py lines 170-183 `similarity` /
`sim_dis_compute`, utils/criterion.py lines 228-245 the max-pool to nodes, lines 211-225 the
pixel-wise term, lines 122-166 the adversarial terms). Everything here is written from those
definitions, not copied.

Contracts, for every function:
- pure: inputs are never modified; the result is a 0-dim float32 tensor on the inputs' device
  (computed in float32 whatever the input dtype, so AMP half inputs are fine).
- differentiable in every non-detached input; an empty selection (all labels ignored, an
  all-false mask) gives 0 that still has a graph (backward works, gradients are 0), never NaN.
- shapes: logits are (N, K, H, W) for segmentation or (N, K) for classification; labels are
  (N, H, W) or (N,); features are (N, C, h, w); images / event tensors (N, C, H, W).
- shape mismatches and impossible labels raise ValueError naming the function and both shapes.

The terms:

task_ce        mean cross-entropy over the pixels whose label is not `ignore_index`.

pixel_kd       mean over valid pixels of T^2 * KL(p_t || p_s), p = softmax(logits / T) over the
               class axis (Hinton's T^2 keeps gradients comparable across T). mode="ce" uses the
               cross-entropy H(p_t, p_s) = KL + H(p_t) instead, as structured KD's pixel-wise
               term does: same gradient, but not 0 when the student equals the teacher.
               EvDistill uses T = 1.

affinity_kd    both feature maps are pooled to the same grid of n nodes, each node's feature
               vector is L2-normalised along channels, a_ij = cos(f_i, f_j) gives an (N, n, n)
               affinity per map, and the loss is mean((a_s - a_t)^2) over N*n*n. Pooling as in
               structured KD: max-pool with kernel = stride = int(size * scale) and ceil_mode
               (so scale 0.5 -> a 2x2 grid when the size is even, the last cell may be partial),
               or `nodes=` for an adaptive pool to a fixed grid. The affinity compares features
               with themselves, so student and teacher channel counts may differ, and it is
               invariant to scaling either map by a positive constant by construction. A node
               whose features are all zero has no direction: it normalises to 0 (affinity 0
               with everything, itself included). Structured KD detaches the norm before
               dividing; here the gradient goes through the norm (the exact cosine gradient),
               which changes the direction of the update, not the loss value.

reconstruction L1 (default) or L2 between a reconstruction and its target: E2A (student features
               -> APS-like image in [-1, 1]) against the real APS frame, A2E (image -> event
               representation) against the real events, by default with "balanced_l1" (pixels
               with and without events weigh half each; see the function). "l1+ssim" mixes
               ssim_weight * (1 - SSIM) / 2 + (1 - ssim_weight) * L1 (the usual image
               reconstruction mix); SSIM needs the data range (2 for [-1, 1] images), so use it
               for images, not for normalised event tensors.

consistency    pixel_kd's KL between the teacher's prediction on the E2A reconstruction and its
               prediction on the real APS image (the target, detached by default): it asks the
               reconstruction to carry the teacher's semantics, and its gradient reaches E2A and
               the student through the (frozen) teacher.

adversarial    optional distribution matching (off by default, weight 0): a small patch
               discriminator D tells teacher outputs (real) from student outputs (fake); LSGAN
               (least squares, default) or BCE (non-saturating). `adversarial_losses` returns
               D's loss (inputs detached: trains D only) and the student's loss (D evaluated
               with detached parameters: trains the student only), so one backward per
               optimiser and no gradient leaks between them. Feed it softmax probabilities
               (or features), not raw logits, so D compares distributions.

Who detaches the teacher. pixel_kd / affinity_kd / consistency take `detach_teacher` /
`detach_target` (default True): the teacher side is detached inside, so gradients reach only the
student (and, for consistency, what produced the reconstruction). Pass False only to train the
teacher jointly; callers that already run the teacher under torch.no_grad() lose nothing.

Weights. `LossWeights` holds one weight per term; the defaults are the ones the EvDistill
authors released for DDD17 segmentation as handed to this project (ce 10, recon 10, pixel_kd 20,
affinity 0.1; the public repository itself has no training config to check them against).
consistency = 10: it is a KL of the same size as pixel_kd but it acts on the BMR path, so it
takes the reconstruction's weight rather than the full KD weight; adversarial = 0 (off).
`total_loss` sums weight * term; a term named "recon/e2a" takes the "recon" weight, so several
terms can share one weight and still be logged apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

IGNORE_INDEX = 255
AFFINITY_POOL_SCALE = 0.8  # EvDistill configs/configurations.py line 17 (structured KD: 0.5)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _zero_safe_mean(values: torch.Tensor, mask: torch.Tensor | None, fn: str) -> torch.Tensor:
    """Mean of `values` over the entries where `mask` is true (or weighted by a float mask)."""
    if mask is None:
        return values.mean()
    if tuple(mask.shape) != tuple(values.shape):
        raise ValueError(f"{fn}: mask shape {tuple(mask.shape)} does not match the per-pixel "
                         f"shape {tuple(values.shape)}")
    w = mask.to(device=values.device, dtype=values.dtype)
    denom = w.sum()
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return (values * w).sum() / denom


def _check_same(a: torch.Tensor, b: torch.Tensor, fn: str, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{fn}: {what} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_logits(x: torch.Tensor, fn: str) -> None:
    if x.dim() not in (2, 4):
        raise ValueError(f"{fn}: logits must be (N, K) or (N, K, H, W), got {tuple(x.shape)}")


def task_ce(logits: torch.Tensor, labels: torch.Tensor,
            ignore_index: int = IGNORE_INDEX, class_weights=None) -> torch.Tensor:
    """Cross-entropy averaged over the labels that are not `ignore_index` (0 if there are none).

    class_weights (K,), optional: each label's term weighs w[label] and the mean is weighted
    (sum w[y] * ce / sum w[y]), so rare classes (poles, people) count more; None = all 1.

    logits (N, K, H, W) with labels (N, H, W), or logits (N, K) with labels (N,). A label that is
    neither in [0, K) nor `ignore_index` raises ValueError (on CUDA it would be a device assert).
    """
    _check_logits(logits, "task_ce")
    want = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(labels.shape) != want:
        raise ValueError(f"task_ce: labels shape {tuple(labels.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {want})")
    labels = labels.to(device=logits.device, dtype=torch.int64)
    k = logits.shape[1]
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        raise ValueError(f"task_ce: label {int(labels[bad][0])} is outside [0, {k}) and is not "
                         f"the ignore index {ignore_index}")
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if tuple(w.shape) != (k,):
            raise ValueError(f"task_ce: class_weights has shape {tuple(w.shape)}, expected ({k},)")
        per = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
        wl = w[labels.masked_fill(~valid, 0)] * valid
        return (per * wl).sum() / wl.sum().clamp(min=1e-12)
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def _kl_per_pixel(student_logits: torch.Tensor, target_logits: torch.Tensor, T: float,
                  mode: str) -> torch.Tensor:
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_t = F.log_softmax(target_logits.float() / T, dim=1)
    p_t = log_t.exp()
    if mode == "kl":
        per = (p_t * (log_t - log_s)).sum(dim=1)
    else:
        per = -(p_t * log_s).sum(dim=1)
    return per * (T * T)


def pixel_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
             mask: torch.Tensor | None = None, mode: str = "kl", *,
             detach_teacher: bool = True) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per pixel, averaged over the pixels in `mask`.

    mask: None (every pixel) or (N, H, W) / (N,) bool (or float weights). mode "kl" | "ce".
    detach_teacher: the teacher logits are detached inside (default), so only the student
    receives gradients.
    """
    _check_logits(student_logits, "pixel_kd")
    _check_same(student_logits, teacher_logits, "pixel_kd", "student/teacher logits")
    if mode not in ("kl", "ce"):
        raise ValueError(f"pixel_kd: mode must be 'kl' or 'ce', got {mode!r}")
    if not T > 0:
        raise ValueError(f"pixel_kd: temperature T must be > 0, got {T}")
    teacher = teacher_logits.detach() if detach_teacher else teacher_logits
    per = _kl_per_pixel(student_logits, teacher, float(T), mode)
    return _zero_safe_mean(per, mask, "pixel_kd")


def pool_nodes(feat: torch.Tensor, *, pool: str = "max", scale: float = AFFINITY_POOL_SCALE,
               nodes: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Pool a feature map (N, C, h, w) to its graph nodes (N, C, gh, gw).

    nodes=None: kernel = stride = max(1, int(size * scale)) per axis with ceil_mode (structured
    KD's rule). nodes=g or (gh, gw): adaptive pooling to exactly that grid.
    """
    if feat.dim() != 4:
        raise ValueError(f"affinity_kd: features must be (N, C, h, w), got {tuple(feat.shape)}")
    if pool not in ("max", "avg"):
        raise ValueError(f"affinity_kd: pool must be 'max' or 'avg', got {pool!r}")
    if nodes is not None:
        grid = (nodes, nodes) if isinstance(nodes, int) else tuple(nodes)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"affinity_kd: nodes must be a positive int or (gh, gw), got {nodes}")
        if pool == "max":
            return F.adaptive_max_pool2d(feat, grid)
        return F.adaptive_avg_pool2d(feat, grid)
    if not 0 < scale <= 1:
        raise ValueError(f"affinity_kd: scale must be in (0, 1], got {scale}")
    h, w = feat.shape[2:]
    # + 1e-9: 0.6 * 5 is 2.9999999999999996 in floating point, and int() would make it 2
    kernel = (max(1, int(h * scale + 1e-9)), max(1, int(w * scale + 1e-9)))
    if pool == "max":
        return F.max_pool2d(feat, kernel, stride=kernel, ceil_mode=True)
    return F.avg_pool2d(feat, kernel, stride=kernel, ceil_mode=True)


def affinity_matrix(nodes: torch.Tensor) -> torch.Tensor:
    """Cosine affinity (N, n, n) between the n = gh * gw node vectors of (N, C, gh, gw)."""
    flat = nodes.float().flatten(2)                      # (N, C, n)
    unit = F.normalize(flat, p=2.0, dim=1, eps=1e-12)    # unit vectors along channels
    return torch.bmm(unit.transpose(1, 2), unit)


def affinity_kd(student_feat: torch.Tensor, teacher_feat: torch.Tensor, *, pool: str = "max",
                scale: float = AFFINITY_POOL_SCALE,
                nodes: int | tuple[int, int] | None = None,
                detach_teacher: bool = True) -> torch.Tensor:
    """Mean squared difference of the student's and teacher's node-affinity matrices.

    Channel counts may differ; both maps must pool to the same node grid (pass `nodes=` when
    their spatial sizes differ).
    """
    teacher = teacher_feat.detach() if detach_teacher else teacher_feat
    if student_feat.shape[0] != teacher.shape[0]:
        raise ValueError(f"affinity_kd: batch sizes differ: {tuple(student_feat.shape)} vs "
                         f"{tuple(teacher.shape)}")
    ns = pool_nodes(student_feat, pool=pool, scale=scale, nodes=nodes)
    nt = pool_nodes(teacher, pool=pool, scale=scale, nodes=nodes)
    if ns.shape[2:] != nt.shape[2:]:
        raise ValueError(f"affinity_kd: student features {tuple(student_feat.shape)} and teacher "
                         f"features {tuple(teacher.shape)} pool to different node grids "
                         f"{tuple(ns.shape[2:])} vs {tuple(nt.shape[2:])}; pass nodes=")
    return (affinity_matrix(ns) - affinity_matrix(nt)).pow(2).mean()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over
    the valid windows of every channel; the window shrinks to the largest odd size that fits
    an image smaller than 11 pixels."""
    _check_same(pred, target, "ssim", "pred/target")
    if pred.dim() != 4:
        raise ValueError(f"ssim: images must be (N, C, H, W), got {tuple(pred.shape)}")
    x, y = pred.float(), target.float()
    c = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[2], x.shape[3])
    size -= 1 - size % 2
    win = _gaussian_window(size, SSIM_SIGMA, x.device, x.dtype).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def reconstruction(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1", *,
                   data_range: float = 2.0, ssim_weight: float = 0.85,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction error: kind "l1" | "l2" | "l1+ssim" (means over all elements) or
    "balanced_l1".

    E2A: pred = E2A(student features) (N, 1, H, W) in [-1, 1], target = the APS frame.
    A2E: pred = A2E(image) (N, C, H, W), target = the event representation.
    The target is used as given (real data has no gradient to stop).

    balanced_l1 (for sparse event targets): a pixel is active when any channel of the target is
    non-zero there; the loss is the mean |pred - target| over the active pixels' elements plus
    the mean over the empty pixels' elements, half each (all of it on one side when the other
    is empty), per sample, then averaged over the batch (so DDP ranks' means average to the
    whole batch's). Plain L1 on a window where 2 % of the pixels hold events is minimised, to within
    2 % of the target's magnitude, by an all-zero output: A2E learnt exactly that. Here the
    all-zero output costs half the mean active magnitude. `mask` (N, H, W) bool, optional:
    only these pixels count (e.g. not the geometry's padding, not a frame's clipped pixels), for
    l1 and l2 as well (their mean over the channels, then over the masked pixels).
    """
    _check_same(pred, target, "reconstruction", "pred/target")
    diff = pred.float() - target.float()
    if kind in ("l1", "l2"):
        err = diff.abs() if kind == "l1" else diff.pow(2)
        if mask is None:
            return err.mean()
        if err.dim() != 4:
            raise ValueError(f"reconstruction: a mask needs (N, C, H, W), got {tuple(err.shape)}")
        return _zero_safe_mean(err.mean(dim=1), mask, "reconstruction")
    if kind == "balanced_l1":
        if diff.dim() != 4:
            raise ValueError(f"reconstruction: balanced_l1 needs (N, C, H, W), got "
                             f"{tuple(diff.shape)}")
        err = diff.abs().mean(dim=1)                        # (N, H, W): per pixel
        active = target.detach().ne(0).any(dim=1)
        valid = torch.ones_like(active) if mask is None else mask.to(active.device).bool()
        if tuple(valid.shape) != tuple(active.shape):
            raise ValueError(f"reconstruction: mask shape {tuple(valid.shape)} does not match "
                             f"the per-pixel shape {tuple(active.shape)}")
        on, off = active & valid, ~active & valid
        n_on, n_off = on.sum(dim=(1, 2)), off.sum(dim=(1, 2))          # per sample
        mean_on = (err * on).sum(dim=(1, 2)) / n_on.clamp(min=1)
        mean_off = (err * off).sum(dim=(1, 2)) / n_off.clamp(min=1)
        half = torch.full_like(mean_on, 0.5)
        w_on = torch.where(n_off > 0, torch.where(n_on > 0, half, 0.0 * half), 1.0 + 0.0 * half)
        return (w_on * mean_on + (1 - w_on) * mean_off).mean()
    if kind == "l1+ssim":
        if not 0 <= ssim_weight <= 1:
            raise ValueError(f"reconstruction: ssim_weight must be in [0, 1], got {ssim_weight}")
        dssim = (1 - ssim(pred, target, data_range)) / 2
        return ssim_weight * dssim + (1 - ssim_weight) * diff.abs().mean()
    raise ValueError(f"reconstruction: kind must be 'l1', 'l2', 'l1+ssim' or 'balanced_l1', "
                     f"got {kind!r}")


def unclipped(image: torch.Tensor, tol: float = 1.5 / 127.5) -> torch.Tensor:
    """(N, 1, H, W) APS frame in [-1, 1] -> (N, H, W) bool: the pixels that hold a measurement,
    i.e. not at the sensor's black or white limit (8-bit 0 or 255, within `tol`). A clipped pixel
    says only "darker than" or "brighter than": neither a KD target nor a reconstruction target."""
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"unclipped: expected an (N, 1, H, W) frame, got {tuple(image.shape)}")
    return image[:, 0].abs() < 1.0 - tol


def consistency(teacher_logits_on_recon: torch.Tensor, teacher_logits_on_real: torch.Tensor,
                T: float = 1.0, mask: torch.Tensor | None = None, *,
                detach_target: bool = True) -> torch.Tensor:
    """T^2 * KL(p_real || p_recon) per pixel, averaged: the teacher must predict on the
    reconstructed APS-like image what it predicts on the real image (the detached target)."""
    _check_logits(teacher_logits_on_recon, "consistency")
    _check_same(teacher_logits_on_recon, teacher_logits_on_real, "consistency",
                "recon/real logits")
    if not T > 0:
        raise ValueError(f"consistency: temperature T must be > 0, got {T}")
    target = teacher_logits_on_real.detach() if detach_target else teacher_logits_on_real
    per = _kl_per_pixel(teacher_logits_on_recon, target, float(T), "kl")
    return _zero_safe_mean(per, mask, "consistency")


class Discriminator(nn.Module):
    """Patch discriminator for the optional adversarial term: `depth` stride-2 3x3 convolutions
    (width, 2*width, ...) with LeakyReLU(0.2), then a 1x1 convolution to one score per patch.
    No normalisation layers (so evaluating it with detached parameters is exact). Input
    (N, C, H, W), or (N, C) for classification outputs (seen as 1x1 maps); output (N, 1, h, w)
    raw scores (logits for BCE)."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"Discriminator: in_channels, width and depth must be >= 1, got "
                             f"{in_channels}, {width}, {depth}")
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            out = width * 2 ** i
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = out
        layers.append(nn.Conv2d(c, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x[:, :, None, None]
        return self.net(x)


class AdversarialLosses(NamedTuple):
    d_loss: torch.Tensor  # for the discriminator's optimiser only
    g_loss: torch.Tensor  # for the student's optimiser (weight it with LossWeights.adversarial)


def adversarial_losses(d: nn.Module, student_out: torch.Tensor, teacher_out: torch.Tensor,
                       kind: str = "lsgan") -> AdversarialLosses:
    """Discriminator and student losses; teacher outputs are "real" (1), student's "fake" (0).

    lsgan: d = (mean((D(t) - 1)^2) + mean(D(s)^2)) / 2,  g = mean((D(s) - 1)^2) / 2
    bce:   d = (BCE(D(t), 1) + BCE(D(s), 0)) / 2,       g = BCE(D(s), 1)  (non-saturating)
    d_loss sees detached inputs (no gradient to the student or teacher); g_loss evaluates D with
    detached parameters and buffers (no gradient to D), so each backward feeds one optimiser.
    """
    _check_same(student_out, teacher_out, "adversarial_losses", "student/teacher outputs")
    if kind not in ("lsgan", "bce"):
        raise ValueError(f"adversarial_losses: kind must be 'lsgan' or 'bce', got {kind!r}")
    real = d(teacher_out.detach()).float()
    fake = d(student_out.detach()).float()
    frozen = {name: t.detach() for name, t in list(d.named_parameters())
              + list(d.named_buffers())}
    fooled = functional_call(d, frozen, (student_out,)).float()
    if kind == "lsgan":
        d_loss = ((real - 1).pow(2).mean() + fake.pow(2).mean()) / 2
        g_loss = (fooled - 1).pow(2).mean() / 2
    else:
        bce = F.binary_cross_entropy_with_logits
        d_loss = (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / 2
        g_loss = bce(fooled, torch.ones_like(fooled))
    return AdversarialLosses(d_loss, g_loss)


@dataclass(frozen=True)
class LossWeights:
    """One weight per loss term (the term's name is the field's name)."""

    ce: float = 10.0           # task cross-entropy (where labels exist)
    recon: float = 10.0        # E2A and A2E reconstruction ("recon/e2a", "recon/a2e")
    pixel_kd: float = 20.0     # per-pixel KL distillation, T = 1
    affinity: float = 0.1      # affinity-graph distillation on features
    consistency: float = 10.0  # teacher(E2A image) vs teacher(real image): see the module note
    adversarial: float = 0.0   # optional adversarial distribution matching; 0 = off

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"LossWeights.{f.name} must be a finite number >= 0, got {v!r}")


def total_loss(terms: Mapping[str, torch.Tensor],
               weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of weight * term over the terms whose weight is not 0.

    A term's weight is the LossWeights field named by the part of its key before any "/"
    ("recon/e2a" -> recon); an unknown name raises ValueError (a typo would otherwise silently
    drop a term). Returns the total (a graph to backward) and {key: weighted value, ...,
    "total": value} as Python floats (one device sync). Zero-weight terms are left out of both,
    so a NaN in a disabled term cannot poison the total.
    """
    names = {f.name for f in fields(weights)}
    used: list[tuple[str, torch.Tensor]] = []
    for key, value in terms.items():
        field = key.split("/", 1)[0]
        if field not in names:
            raise ValueError(f"total_loss: unknown loss term {key!r}; names are "
                             f"{', '.join(sorted(names))} (optionally with a /suffix)")
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise ValueError(f"total_loss: term {key!r} must be a scalar tensor")
        w = float(getattr(weights, field))
        if w != 0.0:
            used.append((key, w * value.float()))
    if not used:
        raise ValueError("total_loss: no loss term has a non-zero weight")
    total = used[0][1]
    for _, t in used[1:]:
        total = total + t
    values = torch.stack([t.detach() for _, t in used] + [total.detach()]).tolist()
    logged = {key: v for (key, _), v in zip(used, values)}
    logged["total"] = values[-1]
    return total, logged
