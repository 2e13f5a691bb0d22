"""Model checkpoints and model configs: the one file format every tool reads and writes.

A checkpoint is one file written by `torch.save` holding plain containers and tensors only:
    {"format": "evstream-model", "version": 1, "config": <model config dict, JSON-able>,
     "state_dict": {name: tensor (CPU)}, "extra": {...}}        # extra: trainer state, metrics...
- save_checkpoint(path, state_dict, config, extra=None) writes it atomically: a temp file in the
  same directory, flushed and fsynced, then os.replace; a failed save leaves no temp file and
  any previous checkpoint at `path` untouched. Tensors are detached and moved to the CPU.
- load_checkpoint(path, map_location="cpu") reads it with torch.load(weights_only=True) (a file
  holding arbitrary Python objects is refused, never executed) and checks the envelope; a missing,
  corrupt or foreign file is a one-line EvstreamError naming the path.
- resolve_model(name_or_path): an existing file -> itself; a directory -> DIR/model.pt; a bare name
  -> <repo>/models/<name>/model.pt (repo = the parent of the evstream package). "untrained" has no
  file (load_model builds it).
- load_model(name_or_path, device="cpu") -> (model in eval mode, complete config).
  "untrained" is a ResNet-18 DeepLabv3+ from default_config() with weights drawn after
  torch.manual_seed(0) (the caller's RNG state is left as it was), config["trained"] False.
  Weights that do not fit the config's architecture are a one-line EvstreamError.
- default_config(**overrides): the contract's model config (DDD17 segmentation, 6 classes, voxel
  5 bins normalised, 50 ms windows, the whole 346x260 sensor padded to a multiple of 16).
  Overrides replace top-level keys; a dict given for a dict-valued key (representation, window,
  input, metrics) is merged into the default one level deep.
- complete_config(cfg) checks a loaded config and fills the optional keys (name, task, classes,
  colors, representation, window, input, trained=False, metrics) so consumers can index freely.
"""

from __future__ import annotations

import warnings

import copy
import io
import json
import os
import pickle
from pathlib import Path

import torch

from evstream.atomic import atomic_write
from evstream.errors import EvstreamError
from evstream.nn.registry import build_model
from evstream.nn.resnet import describe_mismatch, error_summary

FORMAT = "evstream-model"
VERSION = 1
UNTRAINED = "untrained"
REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"

# DDD17 as EvSegNet/EvDistill use it (Cityscapes colours of the merged classes)
DDD17_CLASSES = ["flat", "background", "object", "vegetation", "human", "vehicle"]
DDD17_COLORS = [[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [220, 20, 60],
                [0, 0, 142]]
TASKS = {"deeplabv3plus": "segmentation", "classifier": "classification"}


def default_config(**overrides) -> dict:
    cfg = {
        "name": "untrained-r18-seg",
        "arch": "deeplabv3plus",
        "backbone": "resnet18",
        "task": "segmentation",
        "in_channels": 5,
        "num_classes": 6,
        "output_stride": 16,
        "classes": list(DDD17_CLASSES),
        "colors": [list(c) for c in DDD17_COLORS],
        "representation": {"name": "voxel", "num_bins": 5, "normalize": True},
        "window": {"mode": "time", "window_us": 50000},
        "input": {"height": 260, "width": 346, "crop": None, "resize": None, "pad_multiple": 16},
        "trained": False,
        "metrics": {},
    }
    for key, value in overrides.items():
        if isinstance(cfg.get(key), dict) and isinstance(value, dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def palette(n: int) -> list[list[int]]:
    """n distinct-looking RGB colours (golden-angle hues), deterministic."""
    import colorsys
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append([round(255 * r), round(255 * g), round(255 * b)])
    return out


def complete_config(cfg: dict) -> dict:
    if not isinstance(cfg, dict):
        raise EvstreamError(f"model config must be a dict, got {type(cfg).__name__}")
    cfg = copy.deepcopy(cfg)
    for key in ("arch", "in_channels", "num_classes"):
        if key not in cfg:
            raise EvstreamError(f"model config: missing {key!r}")
    n = cfg["num_classes"]
    cfg.setdefault("backbone", "resnet18")
    cfg.setdefault("task", TASKS.get(cfg["arch"], "segmentation"))
    cfg.setdefault("name", f"{cfg['arch']}-{cfg['backbone']}")
    cfg.setdefault("classes", [f"class{i}" for i in range(n)])
    cfg.setdefault("colors", palette(n))
    if len(cfg["classes"]) != n:
        raise EvstreamError(f"model config: {len(cfg['classes'])} class names for num_classes {n}")
    if len(cfg["colors"]) != n or not all(
            len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in cfg["colors"]):
        raise EvstreamError(f"model config: colors must be {n} [r, g, b] triples of 0..255")
    defaults = default_config()
    cfg.setdefault("representation", {"name": "voxel", "num_bins": cfg["in_channels"],
                                      "normalize": True})
    cfg.setdefault("window", dict(defaults["window"]))
    cfg["input"] = {"crop": None, "resize": None, "pad_multiple": 16, **(cfg.get("input") or {})}
    cfg.setdefault("trained", False)
    cfg.setdefault("metrics", {})
    return cfg


def save_checkpoint(path, state_dict: dict, config: dict, extra: dict | None = None) -> None:
    path = Path(path)
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint config must be JSON-able: {exc}") from None
    sd = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state_dict.items()}
    payload = {"format": FORMAT, "version": VERSION, "config": copy.deepcopy(config),
               "state_dict": sd, "extra": dict(extra or {})}
    save_torch(payload, path)


def save_torch(obj, path, what: str = "checkpoint") -> None:
    """torch.save(obj) to `path`, atomically and durably (evstream.atomic).

    torch 2.13's zip writer turns a short write on a full disk into
    "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos A vs B" instead of
    the OSError(ENOSPC) underneath, so the bytes are made in memory first and written with a
    plain write, which raises OSError like any other file (tests/test_outpaths.py shows both)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), what=what)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        raise EvstreamError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise EvstreamError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # torch 2.13 warns (on stderr) about the pickle protocol of a file it then rejects
            # anyway; the one-line error below says what is wrong
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "Unsupported global" in detail:
            raise EvstreamError(f"{path}: refused: holds Python objects other than tensors and plain "
                                f"containers ({detail.split(' was not')[0]}; checkpoints load with "
                                "weights_only=True)") from None
        raise EvstreamError(f"{path}: not a readable checkpoint ({detail})") from None
    except Exception as exc:  # noqa: BLE001 - zip/pickle/EOF errors of a damaged file
        raise EvstreamError(f"{path}: not a readable checkpoint ({error_summary(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = "a bare state dict" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else f"a {type(ckpt).__name__}"
        raise EvstreamError(f"{path}: not an evstream model checkpoint (holds {what}; write one with "
                            "evstream.nn.checkpoint.save_checkpoint)")
    version = ckpt.get("version")
    if not isinstance(version, int) or version < 1:
        raise EvstreamError(f"{path}: evstream checkpoint with a bad version {version!r}")
    if version > VERSION:
        raise EvstreamError(f"{path}: checkpoint version {version} is newer than this evstream "
                            f"reads ({VERSION}); update evstream")
    if not isinstance(ckpt.get("config"), dict):
        raise EvstreamError(f"{path}: damaged evstream checkpoint (no config dict)")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EvstreamError(f"{path}: damaged evstream checkpoint (state_dict is not tensors by name)")
    ckpt.setdefault("extra", {})
    return ckpt


def _unpickler_detail(exc: BaseException) -> str:
    """The useful line of torch's long weights_only error ("Unsupported operand 139", ...)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        line = rest.splitlines()[0].strip() if rest else ""
        return line[:160] or error_summary(exc)
    return error_summary(exc)


def resolve_model(name_or_path) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.pt").is_file():
            return path / "model.pt"
        raise EvstreamError(f"{path}: directory has no model.pt")
    if text == UNTRAINED:
        raise EvstreamError("untrained: the built-in untrained model has no checkpoint file "
                            "(load it with load_model)")
    bare = text and os.sep not in text and "/" not in text and not path.suffix
    if bare:
        candidate = MODELS_DIR / text / "model.pt"
        if candidate.is_file():
            return candidate
        known = sorted(p.parent.name for p in MODELS_DIR.glob("*/model.pt")) if MODELS_DIR.is_dir() else []
        raise EvstreamError(f"{text}: no such model (looked for {candidate}; known: "
                            f"{', '.join(known + [UNTRAINED])})")
    raise EvstreamError(f"{path}: no such checkpoint file")


def _build(cfg: dict, where: str):
    try:
        return build_model(cfg)
    except EvstreamError as exc:
        raise EvstreamError(f"{where}: {exc}") from None


def load_model(name_or_path, device="cpu"):
    if str(name_or_path) == UNTRAINED:
        cfg = default_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _build(cfg, UNTRAINED)
        cfg["trained"] = False
    else:
        path = resolve_model(name_or_path)
        ckpt = load_checkpoint(path)
        try:
            cfg = complete_config(ckpt["config"])
        except EvstreamError as exc:
            raise EvstreamError(f"{path}: {exc}") from None
        model = _build(cfg, str(path))
        own, theirs = model.state_dict(), ckpt["state_dict"]
        missing = [k for k in own if k not in theirs]
        unexpected = [k for k in theirs if k not in own]
        shapes = [k for k in theirs if k in own and theirs[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise EvstreamError(f"{path}: weights do not fit its config ({cfg['arch']}, "
                                f"{cfg['backbone']}): "
                                + describe_mismatch(missing, unexpected, shapes, theirs, own))
        model.load_state_dict(theirs, strict=True)
    return model.to(device).eval(), cfg
