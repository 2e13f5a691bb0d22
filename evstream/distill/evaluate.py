"""Evaluation of one network on one dataset split: mIoU / pixel accuracy or top-1 / top-5, overall
and broken down by the recording conditions (illumination, motion) the synthetic manifest states.

    evaluate(model, loader, *, task, classes, modality="events", device="cpu", max_batches=0)
        -> {"task", "modality", "samples", + the metrics, "conditions": {...}}
  segmentation:   "miou", "pixel_acc", "pixels", "per_class" {class name: IoU or None}
  classification: "top1", "top5"
  "conditions":   {condition name: {value: {same metrics, "samples"}}} e.g.
                  {"illumination": {"low": {...}, "normal": {...}}, "motion": {"fast": {...}}}
Metrics are computed at the network's input geometry (the dataset applies the model's crop /
resize / pad: labels nearest-resized, padding 255 = ignored) from ONE confusion matrix summed
over the whole split, never averaged per image. NaN (a class absent from both target and
prediction) becomes None in the dicts, so the result is always valid JSON.

Under DDP every rank evaluates its own shard (`shard_sampler`: indices rank, rank + W, ...;
no padding, so no sample counts twice) and the counts are all-reduced; every rank returns the
same dict. The set of condition values is gathered first, so ranks whose shards lack a value
still take part in its reduction.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from evstream.distill.metrics import ConfusionMatrix, TopKAccuracy

TOPK = (1, 5)


class Parts(Dataset):
    """A view of an evstream dataset that reads only some parts of each sample (base.get(i,
    parts)): stage 1 and image evaluation never compute event windows, event evaluation never
    decodes frames. Attributes (classes, task, ...) are the base's."""

    def __init__(self, base, parts):
        self.base = base
        self.parts = frozenset(parts)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return self.base.get(i, self.parts)

    def __getattr__(self, name):
        if name in ("base", "parts") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


class ShardSampler(Sampler):
    """Indices rank, rank + world, ... of range(n), in order (evaluation shards, no padding)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset, batch_size: int, *, rank: int = 0, world: int = 1,
                num_workers: int = 0, collate_fn=None) -> DataLoader:
    """A deterministic evaluation loader over this rank's shard of dataset."""
    kw = {}
    if collate_fn is not None:
        kw["collate_fn"] = collate_fn
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank,
                                                                             world),
                      num_workers=num_workers, drop_last=False,
                      generator=torch.Generator().manual_seed(0), **kw)


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def _conditions(meta, n: int) -> list[dict]:
    """Per-sample condition dicts from a collated meta (list of dicts or dict of lists)."""
    if not meta:
        return [{} for _ in range(n)]
    conds = meta.get("conditions") if isinstance(meta, dict) else None
    if conds is None:
        if isinstance(meta, list):
            return [dict(m.get("conditions") or {}) for m in meta]
        return [{} for _ in range(n)]
    if isinstance(conds, list):
        return [dict(c or {}) for c in conds]
    if isinstance(conds, dict):               # default_collate: dict of lists
        return [{k: v[i] for k, v in conds.items()} for i in range(n)]
    return [{} for _ in range(n)]


class _Acc:
    """One accumulator of the task's metrics."""

    def __init__(self, task: str, num_classes: int, device):
        self.task = task
        self.samples = torch.zeros(1, dtype=torch.int64, device=device)
        if task == "segmentation":
            self.m = ConfusionMatrix(num_classes, device=device)
        else:
            self.m = TopKAccuracy(TOPK, device=device)

    def update(self, logits, target) -> None:
        self.m.update(logits, target)
        self.samples += target.shape[0]

    def all_reduce(self) -> None:
        self.m.all_reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.samples)

    def result(self, classes) -> dict:
        out = {"samples": int(self.samples)}
        if self.task == "segmentation":
            s = self.m.summary(classes)
            out.update(miou=s["miou"], pixel_acc=s["pixel_acc"], pixels=s["pixels"],
                       per_class=s["per_class_iou"])
        else:
            out.update({k: _clean(v) for k, v in self.m.result().items()})
        return out


def _input_key(modality: str) -> str:
    return "image" if modality == "images" else "events"


@torch.no_grad()
def evaluate(model, loader, *, task: str, classes, modality: str = "events", device="cpu",
             max_batches: int = 0) -> dict:
    """Metrics of model on every batch of loader (see module doc). model is left as it was."""
    was_training = model.training
    model.eval()
    key = _input_key(modality)
    k = len(classes)
    total = _Acc(task, k, device)
    per_cond: dict[tuple[str, str], _Acc] = {}
    try:
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x = batch[key].to(device, non_blocking=True)
            target = batch["label"].to(device, non_blocking=True)
            logits = model(x)
            total.update(logits, target)
            for j, cond in enumerate(_conditions(batch.get("meta"), x.shape[0])):
                for name, value in cond.items():
                    acc = per_cond.get((name, str(value)))
                    if acc is None:
                        acc = per_cond[(name, str(value))] = _Acc(task, k, device)
                    acc.update(logits[j:j + 1], target[j:j + 1])
        keys = sorted(per_cond)
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, keys)
            keys = sorted({kk for g in gathered for kk in g})
            for kk in keys:
                per_cond.setdefault(kk, _Acc(task, k, device))
            total.all_reduce()
            for kk in keys:
                per_cond[kk].all_reduce()
    finally:
        model.train(was_training)
    out = {"task": task, "modality": modality, **total.result(classes), "conditions": {}}
    for name, value in keys:
        out["conditions"].setdefault(name, {})[value] = per_cond[(name, value)].result(classes)
    return out


def headline(metrics: dict) -> dict:
    """The one or two numbers a log row carries: miou + pixel_acc, or top1 + top5."""
    if metrics["task"] == "segmentation":
        return {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"]}
    return {"top1": metrics.get("top1"), "top5": metrics.get("top5")}
