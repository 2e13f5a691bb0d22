"""DeepLabv3+ (Chen et al. 2018) on a ResNet backbone: ASPP + a decoder fed by 1/4 features.

    x (N,C,H,W) -> backbone -> low (1/4, layer1) and high (1/output_stride, layer4)
    high -> ASPP: 1x1 conv, three 3x3 atrous convs (rates 6/12/18 at output stride 16, doubled
            to 12/24/36 at output stride 8), image pooling (global mean -> 1x1 conv -> broadcast);
            concatenated -> 1x1 projection -> "aspp" (N, head, H/os, W/os)
    low  -> 1x1 projection to `low_proj` channels (48 in the paper)
    decoder: upsample "aspp" to the 1/4 map, concatenate, two 3x3 convs -> "feat" (N, head, H/4, W/4)
    classifier: 1x1 conv -> logits at 1/4 -> bilinear upsample to the input size -> "logits"

`forward(x)` returns the logits (N, K, H, W); `forward_features(x)` returns {"logits", "feat",
"low" (the raw layer1 map, the features BMR's E2A may use), "aspp"}. The image-pooling branch has
no BatchNorm (a 1x1 map per sample cannot be batch-normalised at batch size 1); every other conv is
conv-BN-ReLU. Dropout 0.1 after the ASPP projection acts only in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evstream.nn.resnet import ResNet


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return y.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...], dropout: float = 0.1):
        super().__init__()
        self.rates = tuple(rates)
        branches = [conv_bn_relu(c_in, c_out, 1)]
        branches += [conv_bn_relu(c_in, c_out, 3, r) for r in self.rates]
        branches.append(ImagePooling(c_in, c_out))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(c_out * len(branches), c_out, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: ResNet, num_classes: int, head_channels: int = 256,
                 low_proj_channels: int = 48):
        super().__init__()
        os_ = backbone.output_stride
        if os_ not in (8, 16):
            raise ValueError(f"DeepLabv3+ needs output stride 8 or 16, got {os_}")
        rates = (6, 12, 18) if os_ == 16 else (12, 24, 36)
        self.backbone = backbone
        self.num_classes = num_classes
        self.feat_channels = head_channels
        self.low_channels = backbone.low_channels
        self.aspp = ASPP(backbone.out_channels, head_channels, rates)
        self.low_proj = conv_bn_relu(backbone.low_channels, low_proj_channels, 1)
        self.decoder = nn.Sequential(conv_bn_relu(head_channels + low_proj_channels, head_channels, 3),
                                     conv_bn_relu(head_channels, head_channels, 3))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        for m in (self.aspp, self.low_proj, self.decoder):
            for c in m.modules():
                if isinstance(c, nn.Conv2d):
                    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = self.backbone(x)
        aspp = self.aspp(high)
        up = F.interpolate(aspp, size=low.shape[2:], mode="bilinear", align_corners=False)
        feat = self.decoder(torch.cat([up, self.low_proj(low)], dim=1))
        logits = F.interpolate(self.classifier(feat), size=x.shape[2:], mode="bilinear",
                               align_corners=False)
        return {"logits": logits, "feat": feat, "low": low, "aspp": aspp}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]
