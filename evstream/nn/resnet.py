"""ResNet backbones in plain torch, with torchvision's module names.

`resnet(name, in_channels, output_stride)` builds "resnet18" / "resnet34" (BasicBlock),
"resnet50" / "resnet101" (Bottleneck, stride on the 3x3 conv as in torchvision's v1.5) or "tiny"
(the ResNet-18 layout with one block per stage and a few channels: for CPU tests and presets).

Contract of a backbone:
- `backbone(x)` takes (N, in_channels, H, W) float32 and returns `(low, high)`: `low` is layer1's
  output at 1/4 of the input size (`low_channels` channels), `high` is layer4's output at
  1/`output_stride` (`out_channels` channels). Sizes follow conv arithmetic (ceil for odd sizes).
- `forward_stages(x)` returns every stage: {"layer1": 1/4, "layer2": 1/8, "layer3": 1/16,
  "layer4": 1/32} for output stride 32; output stride 16 keeps layer4 at 1/16 by replacing its
  stride with dilation 2, output stride 8 does the same for layer3 (dilation 2) and layer4 (4).
  The first block of a dilated stage keeps the previous dilation, as torchvision does.
- Parameter and buffer names are torchvision's (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0,
  ...) without fc/avgpool, so `load_torchvision_weights(backbone, "resnet18-f37072fd.pth")` loads
  a torchvision ImageNet file. When in_channels != 3 the RGB stem filter is adapted: its mean over
  RGB is repeated over the new channels and scaled by 3 / in_channels, so a constant input gives
  the same stem response as a grey RGB image. fc.* is dropped; `num_batches_tracked` (absent from
  old torchvision files) may be missing. Anything else missing, unexpected or of the wrong shape
  is a one-line EvstreamError naming the file.
- `input_norm="instance"` standardises every sample before the stem: x' = (x - mean) /
  sqrt(var + INSTANCE_EPS**2), mean and var over (C, H, W) of that sample ("none": x as is).
  It has no parameters (state dicts are unchanged). It is what lets a teacher learn from APS
  frames whose brightness and contrast vary tenfold between low light and over-exposure: on the
  object world a ResNet-18/2 fed raw [-1, 1] frames stayed at chance (CE ln 10 after 900
  iterations) while the same net on standardised frames learnt at once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from evstream.errors import EvstreamError

# name -> (block kind, blocks per stage, stage widths, stem width)
SPECS = {
    "tiny": ("basic", (1, 1, 1, 1), (8, 16, 24, 32), 8),
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    # ResNet-18's depth at a half / a quarter of its widths: real-time students for CPUs
    "resnet18h": ("basic", (2, 2, 2, 2), (32, 64, 128, 256), 32),
    "resnet18q": ("basic", (2, 2, 2, 2), (16, 32, 64, 128), 16),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64),
}
OUTPUT_STRIDES = (8, 16, 32)


def list_backbones() -> list[str]:
    return sorted(SPECS)


def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(c_in, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, 1, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + skip)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + skip)


INPUT_NORMS = ("none", "instance")
INSTANCE_EPS = 0.02     # in input units ([-1, 1] frames): a blank frame stays ~0, not noise x 1e3


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-sample standardisation over (C, H, W); a pure function (x is not changed)."""
    var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + INSTANCE_EPS ** 2)


class ResNet(nn.Module):
    """A ResNet trunk (stem + layer1..layer4), no pooling head. See the module contract."""

    def __init__(self, name: str = "resnet18", in_channels: int = 3, output_stride: int = 32,
                 input_norm: str = "none"):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise EvstreamError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, "
                                f"got {input_norm!r}")
        self.input_norm = input_norm
        if name not in SPECS:
            raise EvstreamError(f"unknown backbone {name!r} (known: {', '.join(list_backbones())})")
        if output_stride not in OUTPUT_STRIDES:
            raise EvstreamError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise EvstreamError(f"in_channels must be a positive integer, got {in_channels!r}")
        kind, blocks, widths, stem = SPECS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.name, self.in_channels, self.output_stride = name, in_channels, output_stride
        # layer2, layer3, layer4: stride 2 replaced by dilation when the output stride asks so
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
        self._c = stem
        self._dilation = 1
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, widths[0], blocks[0], 1, False)
        self.layer2 = self._stage(block, widths[1], blocks[1], 2, dilate[output_stride][0])
        self.layer3 = self._stage(block, widths[2], blocks[2], 2, dilate[output_stride][1])
        self.layer4 = self._stage(block, widths[3], blocks[3], 2, dilate[output_stride][2])
        self.low_channels = widths[0] * block.expansion
        self.out_channels = widths[3] * block.expansion
        del self._c, self._dilation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, width: int, count: int, stride: int, dilate: bool) -> nn.Sequential:
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._c != width * block.expansion:
            downsample = nn.Sequential(conv1x1(self._c, width * block.expansion, stride),
                                       nn.BatchNorm2d(width * block.expansion))
        layers = [block(self._c, width, stride, previous, downsample)]
        self._c = width * block.expansion
        layers += [block(self._c, width, 1, self._dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.input_norm == "instance":
            x = standardize(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages = self.forward_stages(x)
        return stages["layer1"], stages["layer4"]


def resnet(name: str = "resnet18", in_channels: int = 3, output_stride: int = 32,
           input_norm: str = "none") -> ResNet:
    return ResNet(name, in_channels, output_stride, input_norm)


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem filter (O, 3, k, k) for `in_channels` inputs: mean over RGB, repeated, scaled."""
    if weight.shape[1] == in_channels:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_torchvision_weights(backbone: ResNet, path: str | Path) -> list[str]:
    """Load a torchvision-format ResNet state dict file into `backbone` (in place).

    Returns the names of the file's entries that were dropped (fc.*). Raises a one-line
    EvstreamError naming the file on a missing / unreadable file or keys / shapes that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise EvstreamError(f"{path}: no such torchvision weights file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise EvstreamError(f"{path}: not a readable torch file ({error_summary(exc)})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EvstreamError(f"{path}: not a state dict of tensors")
    own = backbone.state_dict()
    dropped = sorted(k for k in sd if k.startswith("fc."))
    theirs = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if "conv1.weight" in theirs and theirs["conv1.weight"].dim() == 4:
        theirs["conv1.weight"] = adapt_stem(theirs["conv1.weight"], backbone.in_channels)
    missing = [k for k in own if k not in theirs and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in theirs if k not in own]
    shapes = [k for k in theirs if k in own and theirs[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise EvstreamError(f"{path}: not torchvision {backbone.name} weights ("
                            + describe_mismatch(missing, unexpected, shapes, theirs, own) + ")")
    with torch.no_grad():
        for k, v in theirs.items():
            own[k].copy_(v.to(own[k].dtype))
    return dropped


def describe_mismatch(missing, unexpected, shapes, theirs, own) -> str:
    """One line: counts and one example of each kind of key/shape mismatch."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {k} "
                     f"{list(theirs[k].shape)} vs {list(own[k].shape)}")
    return "; ".join(parts)


def error_summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."
