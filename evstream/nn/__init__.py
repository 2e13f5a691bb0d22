"""Networks: ResNet backbones, DeepLabv3+, a classifier, BMR (E2A / A2E), checkpoints, geometry.

    registry.py    register_model / build_model(cfg) / list_models: config dict -> module
    resnet.py      ResNet-18/34/50/101 + "tiny", torchvision names, load_torchvision_weights
    deeplab.py     DeepLabv3+ (ASPP + 1/4 decoder)       classifier.py  backbone + pool + fc
    bmr.py         E2A (features -> image) and A2E (image -> events), training only
    checkpoint.py  save/load_checkpoint, resolve_model, load_model, default_config
    geometry.py    to_network / to_sensor: the config's crop / resize / pad, applied and undone
"""

from evstream.nn.checkpoint import (complete_config, default_config, load_checkpoint, load_model,
                                    resolve_model, save_checkpoint)
from evstream.nn.geometry import coverage_mask, network_input_hw, to_network, to_sensor
from evstream.nn.registry import build_model, list_models, register_model
from evstream.nn.resnet import load_torchvision_weights

__all__ = [
    "build_model", "complete_config", "coverage_mask", "default_config", "list_models",
    "load_checkpoint", "load_model", "load_torchvision_weights", "network_input_hw",
    "register_model", "resolve_model", "save_checkpoint", "to_network", "to_sensor",
]
