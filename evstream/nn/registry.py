"""The model registry: a config dict (see checkpoint.default_config) -> a torch.nn.Module.

    @register_model("name")
    def build(cfg: dict) -> nn.Module: ...
    build_model(cfg) -> module (train mode, fresh weights from torch's global RNG)
    list_models() -> sorted names

Registered architectures and the config keys they read (other keys are ignored):
    deeplabv3plus  backbone, in_channels, num_classes, output_stride (8 | 16, default 16),
                   head_channels (default 256; 32 for "tiny"), low_proj_channels (48; 12 for tiny)
    classifier     backbone, in_channels, num_classes, output_stride (8 | 16 | 32, default 32),
                   dropout (default 0.0)
    both also read input_norm ("none" default | "instance": per-sample standardisation in the
    backbone, see resnet.py)
    e2a            in_channels (feature channels), out_channels (1), low_channels (0), width (64),
                   steps (2)
    a2e            in_channels (image channels, 1), out_channels (event channels, 5), width (32)
Task models (deeplabv3plus, classifier) expose `.backbone` (a ResNet with torchvision names, for
`resnet.load_torchvision_weights`), `.num_classes`, `.feat_channels`, `forward` and
`forward_features`. A bad config (unknown arch or backbone, a missing or non-positive size) is a
one-line EvstreamError naming the key and, for names, the known values.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from evstream.errors import EvstreamError
from evstream.nn.bmr import A2E, E2A
from evstream.nn.classifier import Classifier
from evstream.nn.deeplab import DeepLabV3Plus
from evstream.nn.resnet import INPUT_NORMS, ResNet, list_backbones

_REGISTRY: dict[str, Callable[[dict], nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[[dict], nn.Module]], Callable[[dict], nn.Module]]:
    def add(builder: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder
    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(cfg: dict) -> nn.Module:
    if not isinstance(cfg, dict):
        raise EvstreamError(f"model config must be a dict, got {type(cfg).__name__}")
    arch = cfg.get("arch")
    if arch not in _REGISTRY:
        raise EvstreamError(f"model config: unknown arch {arch!r} (known: {', '.join(list_models())})")
    return _REGISTRY[arch](cfg)


def _int(cfg: dict, key: str, default: int | None = None, choices: tuple[int, ...] | None = None,
         minimum: int = 1) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise EvstreamError(f"model config ({cfg.get('arch')}): missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EvstreamError(f"model config ({cfg.get('arch')}): {key} must be an integer >= {minimum}, "
                            f"got {value!r}")
    if choices is not None and value not in choices:
        raise EvstreamError(f"model config ({cfg.get('arch')}): {key} must be one of "
                            f"{', '.join(map(str, choices))}, got {value}")
    return value


def _backbone(cfg: dict, output_stride: int) -> ResNet:
    name = cfg.get("backbone", "resnet18")
    if name not in list_backbones():
        raise EvstreamError(f"model config ({cfg.get('arch')}): unknown backbone {name!r} "
                            f"(known: {', '.join(list_backbones())})")
    input_norm = cfg.get("input_norm", "none")
    if input_norm not in INPUT_NORMS:
        raise EvstreamError(f"model config ({cfg.get('arch')}): input_norm must be one of "
                            f"{', '.join(INPUT_NORMS)}, got {input_norm!r}")
    return ResNet(name, _int(cfg, "in_channels"), output_stride, input_norm)


@register_model("deeplabv3plus")
def _deeplabv3plus(cfg: dict) -> DeepLabV3Plus:
    tiny = cfg.get("backbone") == "tiny"
    backbone = _backbone(cfg, _int(cfg, "output_stride", 16, (8, 16)))
    return DeepLabV3Plus(backbone, _int(cfg, "num_classes"),
                         head_channels=_int(cfg, "head_channels", 32 if tiny else 256),
                         low_proj_channels=_int(cfg, "low_proj_channels", 12 if tiny else 48))


@register_model("classifier")
def _classifier(cfg: dict) -> Classifier:
    dropout = cfg.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise EvstreamError(f"model config (classifier): dropout must be in [0, 1), got {dropout!r}")
    backbone = _backbone(cfg, _int(cfg, "output_stride", 32, (8, 16, 32)))
    return Classifier(backbone, _int(cfg, "num_classes"), float(dropout))


@register_model("e2a")
def _e2a(cfg: dict) -> E2A:
    return E2A(_int(cfg, "in_channels"), _int(cfg, "out_channels", 1),
               low_channels=_int(cfg, "low_channels", 0, minimum=0),
               width=_int(cfg, "width", 64), steps=_int(cfg, "steps", 2, minimum=0))


@register_model("a2e")
def _a2e(cfg: dict) -> A2E:
    return A2E(_int(cfg, "in_channels", 1), _int(cfg, "out_channels", 5), width=_int(cfg, "width", 32))
