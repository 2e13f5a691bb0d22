"""Networks of a run: the evstream model config of the teacher or student, building them,
loading a trained teacher, and the plain state dict a checkpoint stores."""

from __future__ import annotations

import torch
from torch import nn

from evstream.distill import config as C
from evstream.distill.runtime import Dist
from evstream.errors import EvstreamError

def _arch(mcfg: C.ModelCfg, task: str) -> str:
    return mcfg.arch or ("classifier" if task == "classification" else "deeplabv3plus")


def model_config(cfg: C.TrainCfg, which: str, info: dict, metrics: dict | None = None,
                 trained: bool = False) -> dict:
    """The evstream model config (contract 1) of the teacher or student of this run."""
    mcfg = cfg.teacher if which == "teacher" else cfg.student
    arch = _arch(mcfg, info["task"])
    d = {
        "name": mcfg.name or f"{cfg.preset}-{cfg.setting}-{mcfg.backbone}-{which}",
        "arch": arch,
        "backbone": mcfg.backbone,
        "task": info["task"],
        "in_channels": info["image_channels"] if which == "teacher" else info["event_channels"],
        "num_classes": len(info["classes"]),
        "classes": list(info["classes"]),
        "colors": [list(c) for c in info["colors"]],
        "representation": dict(cfg.data.representation),
        "window": {"mode": "time", "window_us": cfg.data.window_us},
        "input": {"height": info["content_hw"][0], "width": info["content_hw"][1],
                  "crop": cfg.data.crop, "resize": cfg.data.resize,
                  "pad_multiple": cfg.data.pad_multiple},
        "trained": trained,
        "metrics": metrics or {},
        "modality": "images" if which == "teacher" else "events",
        "training": {"preset": cfg.preset, "setting": cfg.setting, "seed": cfg.seed,
                     "data": cfg.data.root},
    }
    if arch == "deeplabv3plus":
        d["output_stride"] = mcfg.output_stride   # classifiers: 32 unless extra says otherwise
    d.update(mcfg.extra)
    return d


def build_network(mconf: dict, mcfg: C.ModelCfg, seed: int) -> nn.Module:
    from evstream.nn import build_model, load_torchvision_weights

    torch.manual_seed(seed)
    model = build_model(mconf)
    if mcfg.pretrained:
        load_torchvision_weights(model.backbone, mcfg.pretrained)
    return model


def sync_bn(module: nn.Module, d: Dist, mcfg: C.ModelCfg) -> nn.Module:
    if d.world > 1 and d.device.type == "cuda" and mcfg.sync_bn and not mcfg.freeze_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def plain_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}



def load_teacher(path, info: dict, d: Dist) -> nn.Module:
    from evstream.nn import load_model

    net, mconf = load_model(path, device=d.device)
    if mconf.get("num_classes") != len(info["classes"]):
        raise EvstreamError(f"{path}: teacher has {mconf.get('num_classes')} classes, the "
                            f"dataset {len(info['classes'])}")
    if mconf.get("in_channels") != info["image_channels"]:
        raise EvstreamError(f"{path}: teacher reads {mconf.get('in_channels')} channels, the "
                            f"dataset's images have {info['image_channels']} (is it a teacher?)")
    return net
