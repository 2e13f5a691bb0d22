"""EvDistill training configuration: dataclasses, presets, `--set key.path=value` overrides.

One `TrainCfg` object drives a whole run (both stages); it is printed, and saved as
RUN/config.json and RUN/config.toml beside the checkpoints, so that a run can be repeated and
`--resume` can refuse a changed config instead of silently mixing two.

Settings (`TrainCfg.setting`): the table in evstream/distill/settings.py -- paired (EvDistill
on events and APS frames of the same instant, no labels, BMR), unpaired (events plus labelled
images of other instants, BMR; old name "paper", still accepted), events_gt and pseudo_aps (the
two baselines). A setting name is stored in its canonical form.

Presets (`PRESETS`, built by `preset(name)`):
  tiny      tiny backbone on 48x64 inputs (resized from the sensor), 150 + 150 iterations of
            batch 8, one torch thread (faster for networks this small): both stages on a small
            synthetic set in about a minute on a 2-core CPU (tests, demos, CI).
  cpu       the shipped CPU student: quarter-width ResNet-18 DeepLabv3+ (1.1 M parameters) on
            96x128 inputs, half-width ResNet-18 teacher, 600 + 600 iterations of batch 8, one
            thread per run (two ablation runs side by side on a 2-core CPU).
  realtime  ResNet-18 DeepLabv3+ student (what the live CPU worker runs in real time) at full
            sensor size, with a ResNet-18 teacher, the cheapest one. Training it on a 2-core
            CPU is possible but slow (about 0.7 samples/s in stage 1, 0.15 in stage 2): use a GPU.
  paper     ResNet-101 teacher and student, output stride 16, the authors' loss weights
            total = 10 CE + 10 reconstruction + 20 pixel KD + 0.1 affinity, SGD Nesterov
            momentum 0.9, lr 1e-3, linear warm-up then poly 0.9.

Overrides: `apply_overrides(cfg, ["stage2.iterations=50", "loss.bmr=false"])`. A value is read
as JSON when it parses (numbers, true/false, null, lists), else as a string, then checked
against the field's type; an unknown key or a wrong type is a one-line EvstreamError.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from evstream.distill.settings import CHOICES as SETTING_CHOICES  # noqa: F401
from evstream.distill.settings import SETTINGS, canonical  # noqa: F401
from evstream.distill.settings import get as get_setting
from evstream.errors import EvstreamError
STAGES = ("1", "2", "all")


@dataclass(frozen=True)
class ModelCfg:
    arch: str = ""                     # "deeplabv3plus" | "classifier"; "" = from the task
    backbone: str = "resnet18"         # resnet18/34/50/101 | tiny
    output_stride: int = 16            # deeplab only
    freeze_bn: bool = False            # BatchNorm layers kept in eval mode (running statistics
                                       # fixed, affine weights still trained): makes DDP ranks
                                       # compute exactly what one process computes
    sync_bn: bool = True               # DDP on CUDA: convert BatchNorm to SyncBatchNorm
    no_dropout: bool = False           # Dropout layers kept in eval mode (deterministic DDP tests)
    pretrained: str = ""               # torchvision ResNet .pth for the backbone ("" = random)
    name: str = ""                     # shown in the HUD; "" = made up from preset/setting
    extra: dict = field(default_factory=dict)  # more model-config keys passed to build_model


@dataclass(frozen=True)
class DataCfg:
    root: str = ""                     # dataset directory (--data)
    kind: str = ""                     # "" = auto-detect (synth, recording, ddd17, ...)
    representation: dict = field(default_factory=lambda: {"name": "voxel", "num_bins": 5,
                                                          "normalize": True})
    window_us: int = 50_000            # event window ending at each sample time
    crop: list | None = None           # [y0, x0, h, w] applied at sensor size first
    resize: list | None = None         # [h, w] bilinear (labels nearest)
    pad_multiple: int = 16             # zero-pad bottom/right (labels 255)
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0               # DataLoader worker processes (0: in the trainer process)
    hflip: bool = True                 # random horizontal flip (decided per global batch slot)
    shift: int = 0                     # random translation by up to this many pixels (0: off)


@dataclass(frozen=True)
class LossCfg:
    """Weights (0 switches a term off) and switches; the terms are evstream.distill.losses'."""
    ce: float = 10.0                   # cross-entropy with labels (GT, or pseudo for pseudo_aps)
    teacher_class_weights: list | None = None  # stage 1 CE weight per class (rare classes
                                       # count more); None = all 1
    recon: float = 10.0                # BMR reconstruction, the two directions below
    recon_e2a: bool = True             #   E2A: (A2E(image) | events) -> student -> E2A ~ image
    recon_a2e: bool = True             #   A2E: image -> A2E ~ events (paper: E2A(events) -> A2E)
    recon_kind: str = "l1"             # E2A's image loss: "l1" | "l2" | "l1+ssim"
    recon_a2e_kind: str = "balanced_l1"  # A2E's event loss: "balanced_l1" (active and empty
                                       # pixels weigh half each: plain L1 on sparse windows is
                                       # minimised by an empty output) | "l1" | "l2"
    consistency: float = 10.0          # teacher(E2A(...)) agrees with teacher(real image)
    pixel_kd: float = 20.0             # pixel-wise T^2 KL(teacher || student)
    kd_mode: str = "kl"                # "kl" | "ce" (structured KD's cross-entropy form)
    temperature: float = 1.0
    affinity: float = 0.1              # affinity-graph distillation of the "feat" maps
    affinity_scale: float = 0.8        # pooling kernel = int(size * scale) (EvDistill's 0.8)
    affinity_pool: str = "max"         # "max" | "avg"
    adversarial: float = 0.0           # output-space adversarial term (off by default)
    adversarial_kind: str = "lsgan"    # "lsgan" | "bce"
    bmr: bool = True                   # E2A/A2E modules at all (ablation: False)
    frame_clip_mask: bool = True       # paired: the APS frame's clipped pixels (black or white
                                       # limit: no measurement) are left out of the terms whose
                                       # target is the real frame or the teacher's output on it;
                                       # E2A's reconstruction and the teacher on it cover them
    recon_kd_where: str = "all"        # paired: where the teacher's output on E2A's
                                       # reconstruction is a KD target: "all" valid pixels, or
                                       # only where the frame measured nothing ("clipped"), or
                                       # nowhere ("none": E2A then shapes the student through
                                       # its image loss and the consistency term only)
    recon_kd_min_conf: float = 0.0     # paired: pixels where the teacher's top softmax on the
                                       # reconstruction is below this are no KD target (0: off)
    e2a_detach: bool = False           # E2A reads the student's features detached: its image
                                       # loss and the consistency term train E2A only, never the
                                       # student's encoder (which then learns from KD alone)
    e2a_width: int = 0                 # E2A channels (0: 64, or 16 with a "tiny" student)
    a2e_width: int = 0                 # A2E U-Net base channels (0: 32, or 8 with "tiny"); its
                                       # full-resolution convs are most of stage 2's compute


@dataclass(frozen=True)
class OptimCfg:
    name: str = "sgd"                  # "sgd" | "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_iters: int = 0              # linear warm-up from lr * warmup_factor to lr
    warmup_factor: float = 0.1
    poly_power: float = 0.9            # then lr * (1 - progress) ** poly_power
    grad_clip: float = 0.0             # max gradient norm; 0 = off


@dataclass(frozen=True)
class StageCfg:
    iterations: int = 1000             # optimiser steps; 0 = epochs * batches per epoch
    epochs: int = 0
    batch_size: int = 8                # GLOBAL batch (split evenly over DDP ranks)
    log_every: int = 10                # metrics.jsonl/csv row every N iterations
    ckpt_every: int = 100              # resumable training state every N iterations
    eval_every: int = 0                # validation every N iterations; 0 = at the end only
    eval_batches: int = 0              # 0 = the whole validation split
    optim: OptimCfg = field(default_factory=OptimCfg)


@dataclass(frozen=True)
class TrainCfg:
    preset: str = "tiny"
    setting: str = "unpaired"
    task: str = ""                     # "" = from the dataset ("segmentation"/"classification")
    teacher: ModelCfg = field(default_factory=ModelCfg)
    student: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    stage1: StageCfg = field(default_factory=StageCfg)
    stage2: StageCfg = field(default_factory=StageCfg)
    out: str = ""                      # run directory (--out)
    stage: str = "all"                 # "1" | "2" | "all"
    teacher_ckpt: str = ""             # --teacher: skip stage 1, load this teacher
    seed: int = 0
    device: str = "auto"               # "auto" | "cpu" | "cuda[:N]" (torchrun: cuda:LOCAL_RANK)
    amp: str = "auto"                  # mixed precision: "auto" (CUDA: bf16, or fp16 + GradScaler
                                       # where there is no bf16; CPU: off) | "off" | "bf16" |
                                       # "fp16" (CUDA only); see runtime.py
    fp32_math: str = "ieee"            # CUDA fp32 convs/matmuls: "ieee" (strict) | "tf32"
    threads: int = 0                   # torch CPU threads; 0 = torch's default
    progress: bool = True              # tqdm bars on stderr
    tensorboard: bool = True           # RUN/tb event files, when tensorboard is installed

    def as_dict(self) -> dict:
        return asdict(self)


def _tiny() -> TrainCfg:
    tiny_model = ModelCfg(backbone="tiny")
    return TrainCfg(
        preset="tiny", teacher=tiny_model, student=tiny_model, threads=1,
        data=DataCfg(resize=[48, 64], pad_multiple=16),
        stage1=StageCfg(iterations=150, batch_size=8, log_every=10, ckpt_every=50,
                        optim=OptimCfg(lr=0.02, warmup_iters=15)),
        stage2=StageCfg(iterations=150, batch_size=8, log_every=10, ckpt_every=50,
                        optim=OptimCfg(lr=0.02, warmup_iters=15)))


def _realtime() -> TrainCfg:
    r18 = ModelCfg(backbone="resnet18", output_stride=16)
    return TrainCfg(
        preset="realtime", teacher=r18, student=r18,
        data=DataCfg(),                       # full sensor size, padded to a multiple of 16
        stage1=StageCfg(iterations=20_000, batch_size=8, log_every=20, ckpt_every=500,
                        eval_every=2000, optim=OptimCfg(lr=0.01, warmup_iters=500)),
        stage2=StageCfg(iterations=20_000, batch_size=8, log_every=20, ckpt_every=500,
                        eval_every=2000, optim=OptimCfg(lr=0.01, warmup_iters=500)))


def _paper() -> TrainCfg:
    r101 = ModelCfg(backbone="resnet101", output_stride=16)
    optim = OptimCfg(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4,
                     warmup_iters=1000, poly_power=0.9)
    return TrainCfg(
        preset="paper", teacher=r101, student=r101,
        data=DataCfg(),
        loss=LossCfg(ce=10.0, recon=10.0, pixel_kd=20.0, affinity=0.1),
        stage1=StageCfg(iterations=40_000, batch_size=8, log_every=50, ckpt_every=1000,
                        eval_every=5000, optim=optim),
        stage2=StageCfg(iterations=40_000, batch_size=8, log_every=50, ckpt_every=1000,
                        eval_every=5000, optim=optim))


def _cpu() -> TrainCfg:
    # the shipped CPU student: ResNet-18's depth at a quarter of its widths with a 64-channel
    # DeepLabv3+ head (1.1 M parameters, 4 MB), on the sensor image resized to 96x128; the
    # teacher is the half-width ResNet-18. Both stages train on a 2-core CPU in minutes.
    head = {"head_channels": 64, "low_proj_channels": 24}
    teacher = ModelCfg(backbone="resnet18h", output_stride=16, extra=dict(head))
    student = ModelCfg(backbone="resnet18q", output_stride=16, extra=dict(head))
    optim = OptimCfg(lr=0.01, warmup_iters=30)
    return TrainCfg(
        preset="cpu", teacher=teacher, student=student, threads=1,
        data=DataCfg(resize=[96, 128], pad_multiple=16),
        stage1=StageCfg(iterations=600, batch_size=8, log_every=20, ckpt_every=100,
                        optim=optim),
        stage2=StageCfg(iterations=600, batch_size=8, log_every=20, ckpt_every=100,
                        optim=optim))


PRESETS = {"tiny": _tiny, "cpu": _cpu, "realtime": _realtime, "paper": _paper}


def preset(name: str) -> TrainCfg:
    try:
        return PRESETS[name]()
    except KeyError:
        raise EvstreamError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


# -- dict round trip with type checks ----------------------------------------------------------

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_value(key: str, value, hint):
    """value coerced to hint (int -> float, str -> bool...) or a one-line EvstreamError."""
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise EvstreamError(f"config {key}: expected a table of settings, got {value!r}")
        return _from_dict(hint, value, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(key, value, a)
            except EvstreamError as e:
                last = e
        raise last
    base = origin or hint
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no",
                                                        "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif base is dict:
        if isinstance(value, dict):
            return dict(value)
    name = getattr(base, "__name__", base)
    raise EvstreamError(f"config {key}: {value!r} is not of type {name}")


def _from_dict(cls, d: dict, prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise EvstreamError(f"config: unknown key {prefix}{unknown[0]} "
                            f"(known: {', '.join(prefix + n for n in sorted(names))})")
    kw = {k: _check_value(prefix + k, v, hints[k]) for k, v in d.items()}
    return cls(**kw)


def from_dict(d: dict) -> TrainCfg:
    """A TrainCfg from a (possibly partial) dict, e.g. RUN/config.json; checks keys and types."""
    return _validate(_from_dict(TrainCfg, d))


def parse_value(text: str):
    """A --set value: JSON when it parses (3, 0.5, true, null, [48, 64]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set_path(d: dict, path: list[str], value, full: str) -> None:
    for i, part in enumerate(path[:-1]):
        sub = d.get(part)
        if not isinstance(sub, dict):
            raise EvstreamError(f"--set {full}: {'.'.join(path[:i + 1])} is not a table")
        d = sub
    if path[-1] not in d:
        raise EvstreamError(f"--set {full}: unknown key {'.'.join(path)}"
                            f" (known here: {', '.join(sorted(d)) or 'none'})")
    d[path[-1]] = value


def apply_overrides(cfg: TrainCfg, overrides: list[str]) -> TrainCfg:
    """cfg with each "key.path=value" applied in order (one-line errors for bad ones)."""
    if not overrides:
        return cfg
    d = cfg.as_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EvstreamError(f"--set {item!r}: expected key.path=value")
        path = key.split(".")
        # free-form dicts (model extra, data representation) accept new keys below them
        parent = d
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-2:-1] in (["extra"], ["representation"]):
            value = parse_value(text)
            if path[-2:] == ["representation", "name"] and parent.get("name") != value:
                parent.clear()           # another representation: the old one's parameters
                                         # (num_bins...) are not its; set them after the name
            parent[path[-1]] = value
            continue
        _set_path(d, path, parse_value(text), item)
    return from_dict(d)


def _validate(cfg: TrainCfg) -> TrainCfg:
    if not isinstance(cfg.setting, str):
        raise EvstreamError(f"config setting: {cfg.setting!r} is not a setting name")
    if canonical(cfg.setting) != cfg.setting:
        cfg = replace(cfg, setting=canonical(cfg.setting))
    if cfg.stage not in STAGES:
        raise EvstreamError(f"config stage: {cfg.stage!r} is not one of 1, 2, all")
    for name in ("stage1", "stage2"):
        st: StageCfg = getattr(cfg, name)
        if st.batch_size <= 0:
            raise EvstreamError(f"config {name}.batch_size: must be > 0")
        if st.iterations < 0 or st.epochs < 0 or (st.iterations == 0 and st.epochs == 0):
            raise EvstreamError(f"config {name}: give iterations > 0 or epochs > 0")
        if st.log_every <= 0 or st.ckpt_every <= 0 or st.eval_every < 0:
            raise EvstreamError(f"config {name}: log_every and ckpt_every must be > 0, "
                                f"eval_every >= 0")
        if st.optim.name not in ("sgd", "adam"):
            raise EvstreamError(f"config {name}.optim.name: {st.optim.name!r} is not sgd or adam")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise EvstreamError(f"config amp: {cfg.amp!r} is not one of auto, off, bf16, fp16")
    if cfg.fp32_math not in ("ieee", "tf32"):
        raise EvstreamError(f"config fp32_math: {cfg.fp32_math!r} is not ieee or tf32")
    tw = cfg.loss.teacher_class_weights
    if tw is not None and not all(isinstance(v, (int, float)) and v >= 0 for v in tw):
        raise EvstreamError("config loss.teacher_class_weights: a list of numbers >= 0")
    if cfg.data.shift < 0:
        raise EvstreamError("config data.shift: must be >= 0")
    if cfg.loss.temperature <= 0:
        raise EvstreamError("config loss.temperature: must be > 0")
    if not 0 <= cfg.loss.recon_kd_min_conf < 1:
        raise EvstreamError("config loss.recon_kd_min_conf: must be in [0, 1)")
    if not 0 < cfg.loss.affinity_scale <= 1:
        raise EvstreamError("config loss.affinity_scale: must be in (0, 1]")
    for key, allowed in (("recon_kind", ("l1", "l2", "l1+ssim")),
                         ("recon_a2e_kind", ("balanced_l1", "l1", "l2")), ("kd_mode", ("kl", "ce")),
                         ("recon_kd_where", ("all", "clipped", "none")),
                         ("affinity_pool", ("max", "avg")),
                         ("adversarial_kind", ("lsgan", "bce"))):
        if getattr(cfg.loss, key) not in allowed:
            raise EvstreamError(f"config loss.{key}: {getattr(cfg.loss, key)!r} is not one of "
                                f"{', '.join(allowed)}")
    for key in ("ce", "recon", "consistency", "pixel_kd", "affinity", "adversarial"):
        if not getattr(cfg.loss, key) >= 0:
            raise EvstreamError(f"config loss.{key}: must be >= 0")
    for key in ("e2a_width", "a2e_width"):
        v = getattr(cfg.loss, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise EvstreamError(f"config loss.{key}: must be an integer >= 0 (0: default)")
    if get_setting(cfg.setting).bmr == "required" and not cfg.loss.bmr:
        raise EvstreamError(f"config: setting {cfg.setting} pairs unpaired events and images "
                            f"through BMR; loss.bmr=false needs setting paired (or events_gt / "
                            f"pseudo_aps)")
    return cfg


def with_changes(cfg: TrainCfg, **changes) -> TrainCfg:
    """replace() that validates the result (for the CLI's dedicated flags)."""
    return _validate(replace(cfg, **changes))


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, dataclasses.MISSING), b.get(k, dataclasses.MISSING)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


# -- output -----------------------------------------------------------------------------------

def to_json(cfg: TrainCfg) -> str:
    return json.dumps(cfg.as_dict(), indent=2, sort_keys=False)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)          # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: TrainCfg) -> str:
    """The resolved config as TOML (tomllib reads it back). TOML has no null: None is omitted,
    which from_dict reads back as the field's default (None for every optional field here)."""
    lines: list[str] = []

    def table(d: dict, name: str) -> None:
        scalars = [(k, v) for k, v in d.items()
                   if v is not None and not (isinstance(v, dict) and _is_table(name, k))]
        subs = [(k, v) for k, v in d.items() if isinstance(v, dict) and _is_table(name, k)]
        if name:
            lines.append(f"\n[{name}]")
        for k, v in scalars:
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs:
            table(v, f"{name}.{k}" if name else k)

    table(cfg.as_dict(), "")
    return "\n".join(lines).lstrip("\n") + "\n"


_TABLES = {"", "teacher", "student", "data", "loss", "stage1", "stage2", "stage1.optim",
           "stage2.optim"}


def _is_table(parent: str, key: str) -> bool:
    """Nested dataclasses become TOML tables; free-form dicts (extra, representation) inline."""
    return (f"{parent}.{key}" if parent else key) in _TABLES
