"""Evaluation metrics: a segmentation confusion matrix (mIoU, per-class IoU, pixel accuracy) and
a top-k accuracy accumulator, both mergeable across processes.

Conventions (those of EvDistill's own evaluate.py in addisonwang2013/evdistill, lines 111-126,
which are the common semantic-segmentation ones):
- The matrix is (K, K) int64 with rows = ground truth, columns = prediction. Pixels whose target
  is `ignore_index` (255) are not counted at all, whatever was predicted there.
- IoU_c = TP / (TP + FP + FN) = M[c, c] / (row_c + col_c - M[c, c]). A class that appears in
  neither the targets nor the predictions (union 0) has no IoU: NaN, and the mean IoU is the
  mean over the other classes (numpy's nanmean). A class that is present but never predicted
  counts with IoU 0. With no counted pixel at all every IoU is NaN and so is the mean.
- pixel accuracy = trace / total (NaN when nothing was counted).
- mIoU is computed from the matrix summed over the whole set, never averaged per image.

update(pred, target) takes torch tensors or numpy arrays, on any device: pred is either labels
with target's shape or scores with one more axis at position 1 ((N, K, H, W) logits against
(N, H, W) labels), which are arg-maxed. A target outside [0, K) that is not the ignore index, or
a prediction outside [0, K) at a counted pixel, raises ValueError: silently dropping pixels
would inflate the score.

Across processes: `merge(other)` adds another accumulator (or its raw tensor); `all_reduce()`
sums the counts of every rank in place with torch.distributed (a no-op when no process group is
running). The counts are one int64 tensor (`.matrix`, `.counts`) so one all_reduce suffices;
gloo and nccl both sum int64. Put the accumulator on the rank's device for nccl (`device=`).

Top-k: a sample is correct at k when its target is among the k highest scores. k larger than the
number of classes is clamped to it (top-5 over 3 classes is always right). Ties are broken by
torch.topk, as everywhere else.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = 255


def _as_tensor(x, device=None) -> torch.Tensor:
    if isinstance(x, (np.ndarray, list, tuple)):
        a = np.asarray(x)
        if a.dtype.kind in "ub":   # torch has thin support for uint16/32/64: widen first
            a = a.astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch tensor or numpy array, got {type(x).__name__}")
    return x if device is None else x.to(device)


def _all_reduce_sum(t: torch.Tensor, group=None) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix (rows: target, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device=None) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64,
                                  device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred, target) -> None:
        """Count one batch. pred: labels shaped like target, or scores (N, K, ...)."""
        k = self.num_classes
        target = _as_tensor(target)
        pred = _as_tensor(pred, target.device)
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != k:
                raise ValueError(f"ConfusionMatrix.update: scores have {pred.shape[1]} classes, "
                                 f"the matrix {k}")
            pred = pred.argmax(dim=1)
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"ConfusionMatrix.update: prediction shape {tuple(pred.shape)} does "
                             f"not match target shape {tuple(target.shape)}")
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(torch.int64)
        keep = target != self.ignore_index
        t, p = target[keep], pred[keep]
        bad_t = (t < 0) | (t >= k)
        if bool(bad_t.any()):
            raise ValueError(f"ConfusionMatrix.update: target value {int(t[bad_t][0])} is outside "
                             f"[0, {k}) and is not the ignore index {self.ignore_index}")
        bad_p = (p < 0) | (p >= k)
        if bool(bad_p.any()):
            raise ValueError(f"ConfusionMatrix.update: predicted value {int(p[bad_p][0])} is "
                             f"outside [0, {k}) at a pixel with a valid target")
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self.matrix += counts.to(self.matrix.device)

    def merge(self, other: "ConfusionMatrix | torch.Tensor | np.ndarray") -> None:
        """Add another accumulator's counts (same number of classes)."""
        if isinstance(other, ConfusionMatrix):
            if other.ignore_index != self.ignore_index:
                raise ValueError("ConfusionMatrix.merge: different ignore indices")
            other = other.matrix
        m = _as_tensor(other)
        if tuple(m.shape) != tuple(self.matrix.shape):
            raise ValueError(f"ConfusionMatrix.merge: shape {tuple(m.shape)} does not match "
                             f"{tuple(self.matrix.shape)}")
        self.matrix += m.to(device=self.matrix.device, dtype=torch.int64)

    def all_reduce(self, group=None) -> None:
        """Sum the matrix over every rank of the process group (no-op without one)."""
        _all_reduce_sum(self.matrix, group)

    def _numpy(self) -> np.ndarray:
        return self.matrix.detach().cpu().numpy().astype(np.float64)

    def per_class_iou(self) -> np.ndarray:
        """IoU per class, float64 (K,), NaN where the class is in neither target nor prediction."""
        m = self._numpy()
        tp = np.diag(m)
        union = m.sum(axis=1) + m.sum(axis=0) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes with a defined IoU (NaN if none)."""
        iou = self.per_class_iou()
        ok = ~np.isnan(iou)
        return float(iou[ok].mean()) if ok.any() else math.nan

    def pixel_accuracy(self) -> float:
        m = self._numpy()
        total = m.sum()
        return float(np.trace(m) / total) if total > 0 else math.nan

    def total(self) -> int:
        """Number of counted (not ignored) pixels."""
        return int(self.matrix.sum())

    def summary(self, classes: Sequence[str] | None = None) -> dict:
        """JSON-able metrics: {"miou", "pixel_acc", "pixels", "per_class_iou"}; NaN -> None."""
        def clean(v: float):
            return None if math.isnan(v) else float(v)
        iou = self.per_class_iou()
        names = list(classes) if classes is not None else [str(i) for i in range(len(iou))]
        if len(names) != len(iou):
            raise ValueError(f"ConfusionMatrix.summary: {len(names)} class names for "
                             f"{len(iou)} classes")
        return {"miou": clean(self.miou()), "pixel_acc": clean(self.pixel_accuracy()),
                "pixels": self.total(),
                "per_class_iou": {n: clean(v) for n, v in zip(names, iou)}}

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total()}, "
                f"miou={self.miou():.4f})")


class TopKAccuracy:
    """Counts top-k hits for classification: update(scores (N, K), target (N,))."""

    def __init__(self, ks: Sequence[int] = (1, 5), device=None) -> None:
        ks = tuple(sorted({int(k) for k in ks}))
        if not ks or ks[0] < 1:
            raise ValueError(f"TopKAccuracy: ks must be positive integers, got {ks}")
        self.ks = ks
        # counts[i] = hits at ks[i]; counts[-1] = samples seen (one tensor for one all_reduce)
        self.counts = torch.zeros(len(ks) + 1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, scores, target) -> None:
        target = _as_tensor(target)
        scores = _as_tensor(scores, target.device)
        if scores.dim() != 2 or target.dim() != 1 or scores.shape[0] != target.shape[0]:
            raise ValueError(f"TopKAccuracy.update: expected scores (N, K) and target (N,), got "
                             f"{tuple(scores.shape)} and {tuple(target.shape)}")
        n, k_classes = scores.shape
        target = target.to(torch.int64)
        bad = (target < 0) | (target >= k_classes)
        if bool(bad.any()):
            raise ValueError(f"TopKAccuracy.update: target {int(target[bad][0])} is outside "
                             f"[0, {k_classes})")
        if n == 0:
            return
        k_max = min(self.ks[-1], k_classes)
        top = scores.topk(k_max, dim=1).indices                  # (N, k_max), best first
        hit = (top == target[:, None]).to(torch.int64)
        first_hit = hit.cumsum(dim=1).clamp(max=1)               # hit within the first j+1
        got = torch.stack([first_hit[:, min(k, k_classes) - 1].sum() for k in self.ks])
        self.counts[:-1] += got.to(self.counts.device)
        self.counts[-1] += n

    def merge(self, other: "TopKAccuracy") -> None:
        if other.ks != self.ks:
            raise ValueError(f"TopKAccuracy.merge: ks differ: {other.ks} vs {self.ks}")
        self.counts += other.counts.to(self.counts.device)

    def all_reduce(self, group=None) -> None:
        """Sum the counts over every rank of the process group (no-op without one)."""
        _all_reduce_sum(self.counts, group)

    def total(self) -> int:
        return int(self.counts[-1])

    def result(self) -> dict[str, float]:
        """{"top1": fraction, "top5": fraction, ...}; NaN before any sample."""
        c = self.counts.detach().cpu().tolist()
        n = c[-1]
        return {f"top{k}": (c[i] / n if n else math.nan) for i, k in enumerate(self.ks)}


def format_table(per_class: Sequence[float], classes: Sequence[str], *, header: str = "IoU",
                 percent: bool = True) -> str:
    """A plain-text table, one class per line plus a "mean" line (NaN-skipping mean).

    Values are shown as percentages with two decimals (or raw with four when percent=False);
    NaN (class absent from target and prediction) shows as "-".
    """
    values = [float(v) for v in per_class]
    if len(values) != len(classes):
        raise ValueError(f"format_table: {len(values)} values for {len(classes)} classes")
    finite = [v for v in values if not math.isnan(v)]
    mean = sum(finite) / len(finite) if finite else math.nan

    def fmt(v: float) -> str:
        if math.isnan(v):
            return "-"
        return f"{100 * v:.2f}" if percent else f"{v:.4f}"

    names = [str(c) for c in classes] + ["mean"]
    cells = [fmt(v) for v in values] + [fmt(mean)]
    name_w = max(len("class"), *(len(n) for n in names))
    val_w = max(len(header), *(len(c) for c in cells))
    rule = "-" * (name_w + 2 + val_w)
    lines = [f"{'class':<{name_w}}  {header:>{val_w}}", rule]
    lines += [f"{n:<{name_w}}  {c:>{val_w}}" for n, c in zip(names[:-1], cells[:-1])]
    lines += [rule, f"{names[-1]:<{name_w}}  {cells[-1]:>{val_w}}"]
    return "\n".join(lines)
