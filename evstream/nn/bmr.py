"""Bidirectional modality reconstruction (EvDistill's BMR): E2A and A2E, used only in training.

E2A ("events to APS") decodes the student's features into an APS-like image so the student's
features are pushed to hold what a frame holds:
    E2A(in_channels=D of "feat", out_channels=1 or 3, low_channels=channels of "low" or 0)
    forward(feat (N,D,h,w), low=None (N,L,h',w'), size=None) -> image (N, out, H, W) in (-1, 1)
  "feat" is refined by a 3x3 conv; when `low` is given it is resized onto `low`'s grid and fused
  with a projection of `low`; then `steps` x2-upsample + 3x3 conv stages and a final bilinear
  resize to `size` (default: the fused map's size times 2**steps, i.e. the input size for
  DeepLab features at 1/4 with steps=2) and tanh (matches images scaled to [-1, 1]).
A2E ("APS to events") maps an image to an event representation of C channels:
    A2E(in_channels=1 or 3, out_channels=C) forward(img (N,in,H,W)) -> (N, C, H, W), linear
  a three-level U-Net (full, 1/2, 1/4 resolution, skips by concatenation); any H, W.
Neither is exported with a student: checkpoints of deployed models hold the student alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evstream.nn.deeplab import conv_bn_relu


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class E2A(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 1, low_channels: int = 0,
                 width: int = 64, steps: int = 2):
        super().__init__()
        self.in_channels, self.out_channels, self.low_channels = in_channels, out_channels, low_channels
        self.steps = steps
        self.stem = conv_bn_relu(in_channels, width, 3)
        if low_channels:
            self.low_proj = conv_bn_relu(low_channels, width // 2, 1)
            self.fuse = conv_bn_relu(width + width // 2, width, 3)
        ups, c = [], width
        for _ in range(steps):
            ups.append(conv_bn_relu(c, max(c // 2, 16), 3))
            c = max(c // 2, 16)
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, feat: torch.Tensor, low: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.stem(feat)
        if self.low_channels:
            if low is None:
                raise ValueError("this E2A was built with low_channels and needs `low`")
            x = self.fuse(torch.cat([_resize(x, low.shape[2:]), self.low_proj(low)], dim=1))
        if size is None:
            size = (x.shape[2] << self.steps, x.shape[3] << self.steps)
        for up in self.ups:
            x = up(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return torch.tanh(_resize(self.out(x), size))


class A2E(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 5, width: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        w = width
        self.enc1 = nn.Sequential(conv_bn_relu(in_channels, w, 3), conv_bn_relu(w, w, 3))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), conv_bn_relu(w, 2 * w, 3),
                                  conv_bn_relu(2 * w, 2 * w, 3))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), conv_bn_relu(2 * w, 4 * w, 3),
                                  conv_bn_relu(4 * w, 4 * w, 3))
        self.dec2 = nn.Sequential(conv_bn_relu(6 * w, 2 * w, 3), conv_bn_relu(2 * w, 2 * w, 3))
        self.dec1 = nn.Sequential(conv_bn_relu(3 * w, w, 3), conv_bn_relu(w, w, 3))
        self.out = nn.Conv2d(w, out_channels, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(img)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([_resize(e3, e2.shape[2:]), e2], dim=1))
        d1 = self.dec1(torch.cat([_resize(d2, e1.shape[2:]), e1], dim=1))
        return self.out(d1)
