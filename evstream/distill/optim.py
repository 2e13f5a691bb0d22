"""The optimiser and its learning-rate schedule (linear warm-up, then poly decay)."""

from __future__ import annotations

import torch

from evstream.distill import config as C

class WarmupPoly:
    """LR factor at step s: linear warm-up from `factor` to 1 over `warmup` steps, then
    (1 - (s - warmup) / (total - warmup)) ** power (poly decay to 0 at `total`)."""

    def __init__(self, total: int, warmup: int, factor: float, power: float):
        self.total, self.warmup, self.factor, self.power = total, warmup, factor, power

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.factor + (1.0 - self.factor) * step / self.warmup
        span = max(1, self.total - self.warmup)
        return max(0.0, 1.0 - (step - self.warmup) / span) ** self.power


def make_optimizer(params, o: C.OptimCfg) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)
