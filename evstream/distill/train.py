"""The EvDistill trainer: stage 1 trains the teacher on labelled images, stage 2 the event student
(+ BMR) against the frozen teacher; single process or torchrun DDP; resumable bit for bit.

    main(cfg: TrainCfg, resume=False) -> summary dict
    train_one_epoch(run: StageRun) -> bool          (True when the stage's last iteration is done)
    evaluate(model, loader, ...)                    (evstream.distill.evaluate)

Run directory (cfg.out), written by rank 0 only:
    config.json, config.toml      the resolved TrainCfg
    metrics.jsonl, metrics.csv    one row per log_every iterations: stage, iteration, epoch, lr,
                                  loss (the weighted total), every loss term UNweighted (the
                                  names task.py returns: ce, pixel_kd/events, recon/e2a, ...),
                                  samples_per_s (global samples / wall second, eval excluded),
                                  time_s; validation rows add val_miou/val_pixel_acc (or
                                  val_top1/val_top5). The CSV has a fixed column set (COLUMNS);
                                  the JSON lines carry everything.
    tb/                           TensorBoard events, when tensorboard is installed
    teacher/state.pt, student/state.pt   resumable training state (checkpointing.py), replaced
                                  atomically every ckpt_every iterations and at the end
    teacher/model.pt, student/model.pt   the trained networks as evstream model checkpoints
                                  (evstream.nn.checkpoint; what the worker, eval and export read)
A stage is complete when its state says done and its model.pt exists; `--resume` skips complete
stages, continues an interrupted one from its last state (same data order, same augmentation,
same RNG streams: see checkpointing.py) and starts a missing one. Without --resume a directory
that already holds a run is refused, so nothing is overwritten by accident.

Determinism. Model weights are drawn after torch.manual_seed(seed + stage); the data order is a
function of (seed, stage, epoch); the horizontal flips of iteration `it` come from a generator
seeded with (seed, stage, it), decided per GLOBAL batch slot, so one process with batch B and
W DDP ranks with batch B/W see the same samples with the same flips. BatchNorm differs between
the two (each rank normalises by its own half-batch statistics): `freeze_bn` keeps BN layers in
eval mode and makes them identical; on CUDA, `sync_bn` converts BN to SyncBatchNorm instead
(SyncBatchNorm has no CPU implementation). Dropout draws from per-rank RNGs: `no_dropout`.

DDP: started by torchrun (WORLD_SIZE/RANK/LOCAL_RANK in the environment), gloo on CPU, nccl on
CUDA. The whole TaskModule (student + BMR + discriminator; the frozen teacher has no trainable
parameter) is one DistributedDataParallel, so one backward averages every gradient over ranks;
the global batch is split evenly (stageN.batch_size must be divisible by the world size). Loss
values, samples/s and the evaluation's confusion matrices are all-reduced; every rank keeps the
same weights, rank 0 writes the files.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from evstream.distill import checkpointing as ck
from evstream.distill import config as C
from evstream.distill import losses as L
from evstream.distill.evaluate import Parts, evaluate, headline, make_loader
from evstream.distill.task import (DISC_KEY, TaskModule, build_bmr, build_discriminator, freeze,
                                   loss_weights, needs_teacher, stage2_modules)
from evstream.errors import EvstreamError

__all__ = ["main", "train_one_epoch", "evaluate", "StageRun", "COLUMNS", "model_config"]

STAGE_DIRS = {1: "teacher", 2: "student"}
TERMS = ("ce", "pixel_kd", "pixel_kd/events", "pixel_kd/images", "affinity", "affinity/events",
         "affinity/images", "recon/e2a", "recon/a2e", "consistency", "adversarial", DISC_KEY)
COLUMNS = ("stage", "iteration", "epoch", "lr", "loss") + TERMS + (
    "samples_per_s", "time_s", "val_miou", "val_pixel_acc", "val_top1", "val_top5")
# keys of the saved config that may change between a run and its --resume
RESUMABLE_CHANGES = {"stage", "progress", "tensorboard", "threads", "device"}
EVAL_BATCH = 8


# -- processes -----------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False          # we called init_process_group (and so destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EvstreamError(f"device {name!r}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(cfg: C.TrainCfg) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(cfg.device, local)
    d = Dist(rank=rank, world=world, local_rank=local, device=device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=10))
            d.started = True
        d.rank, d.world = dist.get_rank(), dist.get_world_size()
    return d


# -- metrics log -------------------------------------------------------------------------------

class MetricsLog:
    """RUN/metrics.jsonl + RUN/metrics.csv (+ TensorBoard when installed); rank 0 only."""

    def __init__(self, run: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.jsonl = run / "metrics.jsonl"
        self.csv = run / "metrics.csv"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:          # tensorboard not installed: the files are enough
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run / "tb"))

    def truncate(self, stage: int, iteration: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint (stage, iteration)."""
        if not self.enabled or not self.jsonl.exists():
            return
        keep = []
        for line in self.jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:           # a line cut short by the kill
                continue
            if row.get("stage", 0) < stage or (row.get("stage") == stage
                                               and row.get("iteration", 0) <= iteration):
                keep.append(row)
        ck.atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep))
        ck.atomic_write_text(self.csv, self._csv_text(keep))

    @staticmethod
    def _csv_row(row: dict) -> dict:
        return {k: row.get(k, "") for k in COLUMNS}

    def _csv_text(self, rows) -> str:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(self._csv_row(r))
        return buf.getvalue()

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = not self.csv.exists() or self.csv.stat().st_size == 0
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            if new:
                w.writeheader()
            w.writerow(self._csv_row(row))
        if self.tb is not None:
            step = row["iteration"]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("stage", "iteration", "epoch"):
                    self.tb.add_scalar(f"stage{row['stage']}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- schedule ------------------------------------------------------------------------------------

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


# -- data ----------------------------------------------------------------------------------------

def input_cfg(cfg: C.TrainCfg) -> dict:
    return {"crop": cfg.data.crop, "resize": cfg.data.resize,
            "pad_multiple": cfg.data.pad_multiple}


def open_split(cfg: C.TrainCfg, split: str, task: str | None = None):
    from evstream.distill.data import open_dataset

    if not cfg.data.root:
        raise EvstreamError("no dataset given (--data DIR)")
    if not os.path.exists(cfg.data.root):
        raise EvstreamError(f"{cfg.data.root}: no such dataset directory")
    return open_dataset(cfg.data.root, split=split, task=task or (cfg.task or None),
                        representation=dict(cfg.data.representation),
                        window_us=cfg.data.window_us, input_cfg=input_cfg(cfg),
                        kind=cfg.data.kind or None)


def stage_dataset(cfg: C.TrainCfg, stage: int, base):
    """The training view of `base` for this stage and setting (only the parts it needs)."""
    from evstream.distill import data as D

    where = f"{cfg.data.root} ({base.split})"
    if stage == 1:
        _need(base, where, images=True, labels=True, why="stage 1 trains the teacher on labelled "
              "images")
        return Parts(base, ("image", "label"))
    s = cfg.setting
    if s == "paper":
        _need(base, where, events=True, images=True, labels=True,
              why="setting paper needs events and labelled images")
        return D.UnpairedDataset(base, seed=cfg.seed)
    if s == "paired":
        _need(base, where, events=True, images=True, labels=True,
              why="setting paired needs events, APS frames and labels of the same instant")
        return Parts(base, ("events", "image", "label"))
    if s == "events_gt":
        _need(base, where, events=True, labels=True, why="setting events_gt needs labelled events")
        return Parts(base, ("events", "label"))
    _need(base, where, events=True, images=True, why="setting pseudo_aps needs events with "
          "paired APS frames")
    return Parts(base, ("events", "image"))


def _need(ds, where: str, *, why: str, events=False, images=False, labels=False) -> None:
    missing = [n for n, want, have in (("events", events, ds.has_events),
                                       ("images", images, ds.has_images),
                                       ("labels", labels, ds.has_labels)) if want and not have]
    if missing:
        raise EvstreamError(f"{where}: has no {' or '.join(missing)} ({why})")


def content_hw(cfg: C.TrainCfg, base, padded_hw) -> tuple[int, int]:
    """(h, w) of the picture inside the padded network input (the rest is padding)."""
    if cfg.data.resize:
        return int(cfg.data.resize[0]), int(cfg.data.resize[1])
    if cfg.data.crop:
        return int(cfg.data.crop[2]), int(cfg.data.crop[3])
    h, w = getattr(base, "height", None), getattr(base, "width", None)
    if h and w:
        return int(h), int(w)
    return int(padded_hw[0]), int(padded_hw[1])


def _collate():
    from evstream.distill.data import collate

    return collate


# -- models --------------------------------------------------------------------------------------

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


def _sync_bn(module: nn.Module, d: Dist, mcfg: C.ModelCfg) -> nn.Module:
    if d.world > 1 and d.device.type == "cuda" and mcfg.sync_bn and not mcfg.freeze_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def _plain_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# -- one stage -----------------------------------------------------------------------------------

@dataclass
class StageRun:
    """Everything one stage's loop touches."""
    stage: int
    cfg: C.TrainCfg
    d: Dist
    run_dir: Path
    info: dict
    task: TaskModule
    engine: nn.Module                 # task, or DDP(task)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: DataLoader
    sampler: ck.StageSampler
    val_loader: DataLoader | None
    log: MetricsLog
    total: int
    bpe: int
    it: int = 0
    bar: object = None
    sums: dict = field(default_factory=dict)
    n_sum: int = 0
    t_mark: float = 0.0
    busy_s: float = 0.0
    samples: int = 0
    last_val: dict = field(default_factory=dict)
    start_time: float = 0.0
    last_lr: float = 0.0

    @property
    def scfg(self) -> C.StageCfg:
        return self.cfg.stage1 if self.stage == 1 else self.cfg.stage2

    @property
    def dir(self) -> Path:
        return self.run_dir / STAGE_DIRS[self.stage]

    # -- per batch -----------------------------------------------------------------------------
    def prepare(self, batch: dict) -> dict:
        """Tensors to the device, the valid-pixel mask, and the flips of this iteration."""
        dev = self.d.device
        out = {k: batch[k].to(dev, non_blocking=True) for k in ("events", "image", "label")
               if k in batch}
        n = next(iter(out.values())).shape[0]
        seg = self.info["task"] == "segmentation"
        rh, rw = self.info["content_hw"]
        if seg:
            ph, pw = self.info["padded_hw"]
            valid = torch.zeros((n, ph, pw), dtype=torch.bool, device=dev)
            valid[:, :rh, :rw] = True
            out["valid"] = valid
        if self.cfg.data.hflip:
            g = torch.Generator().manual_seed(
                (self.cfg.seed * 1_000_003 + self.stage * 10_007 + self.it) % (1 << 62))
            flips = torch.rand(self.scfg.batch_size, generator=g) < 0.5
            idx = torch.nonzero(flips[self.d.rank::self.d.world][:n]).flatten().to(dev)
            if len(idx):
                for k in ("events", "image"):
                    if k in out:
                        x = out[k]
                        x[idx, :, :rh, :rw] = x[idx, :, :rh, :rw].flip(-1)
                if seg and "label" in out:
                    y = out["label"]
                    y[idx, :rh, :rw] = y[idx, :rh, :rw].flip(-1)
        return out

    def step(self, batch: dict) -> dict:
        terms = self.engine(batch)
        disc = terms.pop(DISC_KEY, None)
        total, _ = L.total_loss(terms, self.info["weights"])
        loss = total if disc is None else total + disc
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.scfg.optim.grad_clip
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.task.parameters() if p.requires_grad],
                                           clip)
        self.last_lr = self.lr()          # the rate this step used (logged with its row)
        self.optimizer.step()
        self.scheduler.step()
        values = {k: v.detach() for k, v in terms.items()}
        if disc is not None:
            values[DISC_KEY] = disc.detach()
        values["loss"] = total.detach()
        names = sorted(values)
        floats = torch.stack([values[k].float() for k in names]).tolist()
        out = dict(zip(names, floats))
        if not math.isfinite(out["loss"]):
            raise EvstreamError(f"stage {self.stage}: the loss became {out['loss']} at iteration "
                                f"{self.it + 1} (try a lower stage{self.stage}.optim.lr)")
        return out

    # -- bookkeeping --------------------------------------------------------------------------
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def reduce_means(self) -> dict:
        names = sorted(self.sums)
        vals = torch.tensor([self.sums[k] for k in names] + [float(self.n_sum)],
                            dtype=torch.float64)
        if self.d.world > 1:
            if self.d.device.type == "cuda":
                vals = vals.to(self.d.device)
            dist.all_reduce(vals)
            vals = vals.cpu()
        n = max(1.0, float(vals[-1]))
        return {k: float(v) / n for k, v in zip(names, vals[:-1].tolist())}

    def log_row(self) -> None:
        means = self.reduce_means()
        now = time.perf_counter()
        self.busy_s += now - self.t_mark
        row = {"stage": self.stage, "iteration": self.it, "epoch": self.it // self.bpe,
               "lr": self.last_lr, **means,
               "samples_per_s": self.samples / self.busy_s if self.busy_s > 0 else None,
               "time_s": round(now - self.start_time, 3)}
        if self.d.main:
            self.log.write(row)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}",
                                     lr=f"{row['lr']:.2e}")
        self.sums, self.n_sum, self.samples, self.busy_s = {}, 0, 0, 0.0
        self.t_mark = time.perf_counter()

    def run_eval(self) -> dict:
        if self.val_loader is None:
            return {}
        model = self.task.models["teacher" if self.stage == 1 else "student"]
        m = evaluate(model, self.val_loader, task=self.info["task"], classes=self.info["classes"],
                     modality="images" if self.stage == 1 else "events", device=self.d.device,
                     max_batches=self.scfg.eval_batches)
        self.last_val = m
        if self.d.main:
            self.log.write({"stage": self.stage, "iteration": self.it,
                            "epoch": self.it // self.bpe,
                            **{f"val_{k}": v for k, v in headline(m).items()}})
        self.t_mark = time.perf_counter()
        return m

    def save(self, done: bool = False) -> None:
        rng = ck.capture_rng()
        if self.d.world > 1:
            every = [None] * self.d.world
            dist.all_gather_object(every, rng)
        else:
            every = [rng]
        if self.d.main:
            ck.save_state(self.dir / "state.pt", stage=self.stage, iteration=self.it,
                          modules=self.task.trainable(), optimizers={"main": self.optimizer},
                          schedulers={"main": self.scheduler}, config=self.cfg.as_dict(),
                          rng=every, extra={"done": done, "total": self.total, "bpe": self.bpe,
                                            "world": self.d.world, "val": self.last_val})
            if not done:
                msg = (f"stage {self.stage}: checkpoint at iteration {self.it} -> "
                       f"{self.dir / 'state.pt'}")
                if self.bar is not None:
                    self.bar.write(msg, file=sys.stderr)
                else:
                    print(msg, file=sys.stderr, flush=True)
        self.d.barrier()
        self.t_mark = time.perf_counter()


def train_one_epoch(run: StageRun) -> bool:
    """Train from run.it to the end of its epoch (or of the stage); True when the stage is done.

    The epoch and the offset inside it are derived from run.it, so this is also how an
    interrupted epoch resumes."""
    epoch, offset = divmod(run.it, run.bpe)
    if hasattr(run.loader.dataset, "set_epoch"):       # UnpairedDataset: new pairs each epoch
        run.loader.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.sampler.set_start(offset)
    run.loader.generator.manual_seed(run.cfg.seed * 7919 + run.stage * 104_729 + epoch)
    s = run.scfg
    run.engine.train()
    for batch in run.loader:
        if run.it >= run.total:
            break
        values = run.step(run.prepare(batch))
        run.it += 1
        run.samples += s.batch_size
        for k, v in values.items():
            run.sums[k] = run.sums.get(k, 0.0) + v
        run.n_sum += 1
        if run.bar is not None:
            run.bar.update(1)
        last = run.it >= run.total
        if run.it % s.log_every == 0 or last:
            run.log_row()
        if not last and s.eval_every and run.it % s.eval_every == 0:
            run.run_eval()
            run.engine.train()
        if not last and run.it % s.ckpt_every == 0:
            run.save()
    return run.it >= run.total


def run_stage(stage: int, cfg: C.TrainCfg, d: Dist, run_dir: Path, info: dict,
              models: dict, log: MetricsLog, resume: bool) -> tuple[nn.Module, dict, dict]:
    """Train one stage (or find it complete). Returns (trained network, val metrics, summary)."""
    scfg = cfg.stage1 if stage == 1 else cfg.stage2
    which = STAGE_DIRS[stage]
    sdir = run_dir / which
    state_path, model_path = sdir / "state.pt", sdir / "model.pt"
    if scfg.batch_size % d.world:
        raise EvstreamError(f"stage{stage}.batch_size {scfg.batch_size} does not split over "
                            f"{d.world} processes")
    local_batch = scfg.batch_size // d.world

    if d.main and sdir.is_dir():          # temp files of a save that a kill interrupted
        for stale in sdir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    state = ck.load_state(state_path) if resume and state_path.exists() else None
    if state is not None and state["extra"].get("done") and model_path.exists():
        from evstream.nn import load_model

        net, mconf = load_model(model_path, device=d.device)
        return net, mconf.get("metrics", {}), {"skipped": "complete (resumed)",
                                               "checkpoint": str(model_path)}

    base = info["train_set"]
    ds = stage_dataset(cfg, stage, base)
    bpe = ck.batches_per_epoch(len(ds), d.world, local_batch)
    if bpe == 0:
        raise EvstreamError(f"{cfg.data.root}: split {cfg.data.train_split!r} has {len(ds)} "
                            f"samples, fewer than one batch of {scfg.batch_size}")
    total = scfg.iterations or scfg.epochs * bpe
    sampler = ck.StageSampler(ds, num_replicas=d.world, rank=d.rank,
                              seed=cfg.seed * 31 + stage, local_batch=local_batch)
    kw = {"collate_fn": _collate()}
    loader = DataLoader(ds, batch_size=local_batch, sampler=sampler,
                        num_workers=cfg.data.num_workers, drop_last=True,
                        generator=torch.Generator(), pin_memory=d.device.type == "cuda", **kw)
    val_loader = None
    if info.get("val_set") is not None and len(info["val_set"]):
        vds = Parts(info["val_set"], ("image" if stage == 1 else "events", "label", "meta"))
        val_loader = make_loader(vds, EVAL_BATCH, rank=d.rank, world=d.world,
                                 num_workers=cfg.data.num_workers, **kw)

    task = TaskModule(models, cfg, stage).to(d.device)
    params = [p for m in task.trainable().values() for p in m.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, scfg.optim)
    o = scfg.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupPoly(total, o.warmup_iters, o.warmup_factor, o.poly_power))
    engine: nn.Module = task
    if d.world > 1:
        engine = nn.parallel.DistributedDataParallel(
            task, device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=True)

    run = StageRun(stage=stage, cfg=cfg, d=d, run_dir=run_dir, info=info, task=task,
                   engine=engine, optimizer=optimizer, scheduler=scheduler, loader=loader,
                   sampler=sampler, val_loader=val_loader, log=log, total=total, bpe=bpe)
    if state is not None:
        if state["stage"] != stage:
            raise EvstreamError(f"{state_path}: holds stage {state['stage']}, not {stage}")
        if state["extra"].get("bpe") != bpe or state["extra"].get("total") != total:
            raise EvstreamError(f"{state_path}: was saved with {state['extra'].get('bpe')} "
                                f"batches per epoch / {state['extra'].get('total')} iterations, "
                                f"this run has {bpe} / {total} (dataset or batch size changed)")
        ck.apply_state(state, modules=task.trainable(), optimizers={"main": optimizer},
                       schedulers={"main": scheduler}, path=state_path, rank=d.rank,
                       world=d.world)
        run.it = int(state["iteration"])
        run.last_val = state["extra"].get("val") or {}
        if d.main:
            log.truncate(stage, run.it)
    elif d.main:
        log.truncate(stage, 0)

    from tqdm import tqdm

    show = d.main and cfg.progress
    run.bar = tqdm(total=total, initial=run.it, desc=f"stage {stage} ({which})", unit="it",
                   file=sys.stderr, dynamic_ncols=True, disable=not show, leave=True)
    run.start_time = run.t_mark = time.perf_counter()
    first_it = run.it
    try:
        while run.it < run.total:
            train_one_epoch(run)
    finally:
        run.bar.close()
    train_s = time.perf_counter() - run.start_time

    metrics = run.run_eval() if val_loader is not None else {}
    net = task.models[which]
    mconf = model_config(cfg, which, info, metrics=headline(metrics) if metrics else {},
                         trained=True)
    if d.main:
        from evstream.nn import save_checkpoint

        save_checkpoint(model_path, _plain_state(net), mconf,
                        extra={"stage": stage, "iterations": total, "val": metrics})
    run.save(done=True)
    ran = run.it - first_it
    summary = {"iterations": total, "ran": ran, "seconds": round(train_s, 3),
               "samples_per_s": round(ran * scfg.batch_size / train_s, 2) if train_s > 0 and ran
               else None, "checkpoint": str(model_path), "val": metrics}
    return net, metrics, summary


# -- the whole run -------------------------------------------------------------------------------

def _check_run_dir(cfg: C.TrainCfg, run_dir: Path, resume: bool) -> None:
    saved = run_dir / "config.json"
    if not resume:
        if saved.exists() or (run_dir / "teacher" / "state.pt").exists() or \
                (run_dir / "student" / "state.pt").exists():
            raise EvstreamError(f"{run_dir}: already holds a training run; pass --resume to "
                                f"continue it or choose another --out")
        return
    if saved.exists():
        try:
            old = json.loads(saved.read_text())
        except ValueError:
            raise EvstreamError(f"{saved}: not valid JSON") from None
        changed = [k for k in C.diff(old, cfg.as_dict()) if k.split(".")[0]
                   not in RESUMABLE_CHANGES]
        if changed:
            raise EvstreamError(f"{run_dir}: --resume with a different config "
                                f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); "
                                f"resume with the run's own settings (see {saved})")


def _dataset_info(cfg: C.TrainCfg, d: Dist) -> dict:
    train_set = open_split(cfg, cfg.data.train_split)
    task = train_set.task
    if task is None:
        raise EvstreamError(f"{cfg.data.root}: the dataset says no task (segmentation or "
                            f"classification); set --set task=...")
    try:
        val_set = open_split(cfg, cfg.data.val_split, task)
        if not val_set.has_labels:
            val_set = None
    except EvstreamError:
        val_set = None
    if not len(train_set):
        raise EvstreamError(f"{cfg.data.root}: split {cfg.data.train_split!r} is empty")
    probe = train_set[0]
    ref = probe.get("events", probe.get("image"))
    padded_hw = tuple(ref.shape[-2:])
    from evstream.nn.checkpoint import palette

    classes = list(train_set.classes)
    colors = train_set.colors or palette(len(classes))
    return {"task": task, "classes": classes, "colors": colors,
            "event_channels": int(probe["events"].shape[0]) if "events" in probe
            else int(getattr(train_set, "event_channels", 0) or 0),
            "image_channels": int(probe["image"].shape[0]) if "image" in probe else 1,
            "padded_hw": padded_hw, "content_hw": content_hw(cfg, train_set, padded_hw),
            "train_set": train_set, "val_set": val_set, "weights": loss_weights(cfg)}


def _load_teacher(path, info: dict, d: Dist) -> nn.Module:
    from evstream.nn import load_model

    net, mconf = load_model(path, device=d.device)
    if mconf.get("num_classes") != len(info["classes"]):
        raise EvstreamError(f"{path}: teacher has {mconf.get('num_classes')} classes, the "
                            f"dataset {len(info['classes'])}")
    if mconf.get("in_channels") != info["image_channels"]:
        raise EvstreamError(f"{path}: teacher reads {mconf.get('in_channels')} channels, the "
                            f"dataset's images have {info['image_channels']} (is it a teacher?)")
    return net


def main(cfg: C.TrainCfg, resume: bool = False, on_start=None) -> dict:
    """Run the stages cfg asks for; returns a JSON-able summary (also on every DDP rank).

    on_start(cfg), when given, is called on rank 0 once the config is checked and saved, before
    the first stage (the CLI prints the resolved config there)."""
    d = init_distributed(cfg)
    try:
        return _main(cfg, d, resume, on_start)
    finally:
        if d.started and dist.is_initialized():
            dist.destroy_process_group()


def _main(cfg: C.TrainCfg, d: Dist, resume: bool, on_start) -> dict:
    if not cfg.out:
        raise EvstreamError("no run directory given (--out RUN)")
    if cfg.stage == "1" and not needs_teacher(cfg):
        raise EvstreamError(f"setting {cfg.setting} has no teacher: there is no stage 1 to run")
    if cfg.stage == "1" and cfg.teacher_ckpt:
        raise EvstreamError("--teacher replaces stage 1; with --stage 1 there is nothing to do")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    _check_run_dir(cfg, run_dir, resume)
    info = _dataset_info(cfg, d)
    d.barrier()
    log = MetricsLog(run_dir, d.main, cfg.tensorboard)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(run_dir / "config.json", C.to_json(cfg) + "\n")
        ck.atomic_write_text(run_dir / "config.toml", C.to_toml(cfg))
        if on_start is not None:
            on_start(cfg)
    d.barrier()
    t0 = time.perf_counter()
    summary = {"run": str(run_dir), "preset": cfg.preset, "setting": cfg.setting,
               "task": info["task"], "world_size": d.world, "device": str(d.device),
               "stages": {}}
    teacher = None
    try:
        want1 = cfg.stage in ("1", "all") and needs_teacher(cfg) and not cfg.teacher_ckpt
        if want1:
            mconf = model_config(cfg, "teacher", info)
            net = _sync_bn(build_network(mconf, cfg.teacher, cfg.seed + 1), d, cfg.teacher)
            teacher, _, s1 = run_stage(1, cfg, d, run_dir, info, {"teacher": net}, log, resume)
            summary["stages"]["1"] = s1
            summary["teacher"] = s1["checkpoint"]
        if cfg.stage in ("2", "all"):
            models = {}
            if needs_teacher(cfg):
                if cfg.teacher_ckpt:
                    teacher = _load_teacher(cfg.teacher_ckpt, info, d)
                    summary["teacher"] = cfg.teacher_ckpt
                elif teacher is None:
                    path = run_dir / "teacher" / "model.pt"
                    if not path.exists():
                        raise EvstreamError(f"{run_dir}: stage 2 needs a teacher: run stage 1 "
                                            f"first (--stage 1 or all) or pass --teacher CKPT")
                    teacher = _load_teacher(path, info, d)
                    summary["teacher"] = str(path)
                models["teacher"] = freeze(teacher.to(d.device))
            sconf = model_config(cfg, "student", info)
            student = _sync_bn(build_network(sconf, cfg.student, cfg.seed + 2), d, cfg.student)
            models["student"] = student
            names = stage2_modules(cfg)
            tiny = cfg.student.backbone == "tiny"
            torch.manual_seed(cfg.seed + 3)
            models.update(build_bmr(names, student, info["event_channels"],
                                    info["image_channels"], tiny, cfg.loss.e2a_width,
                                    cfg.loss.a2e_width))
            if "disc" in names:
                models["disc"] = build_discriminator(len(info["classes"]), tiny)
            for k in ("e2a", "a2e"):
                if k in models:
                    models[k] = _sync_bn(models[k], d, cfg.student)
            _, _, s2 = run_stage(2, cfg, d, run_dir, info, models, log, resume)
            summary["stages"]["2"] = s2
            summary["student"] = s2["checkpoint"]
    finally:
        log.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
