"""Image/event classifier (the N-Caltech101 setting): ResNet backbone + global mean pool + fc.

`forward(x)` (N, C, H, W) -> logits (N, K). `forward_features(x)` -> {"feat": the last backbone
map (N, D, H/os, W/os), "logits"}. The output stride is 32 unless the config asks for 16 or 8
(dilated, more compute, finer "feat" for feature distillation).
"""

from __future__ import annotations

import torch
from torch import nn

from evstream.nn.resnet import ResNet


class Classifier(nn.Module):
    def __init__(self, backbone: ResNet, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feat_channels = backbone.out_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, feat = self.backbone(x)
        logits = self.fc(self.dropout(feat.mean(dim=(2, 3))))
        return {"logits": logits, "feat": feat}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]
