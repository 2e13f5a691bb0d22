"""One training stage: its dataset view, the loop (`train_one_epoch`), checkpoints, evaluation.

    net, val_metrics, summary = run_stage(stage, cfg, d, run_dir, info, models, log, resume)

See evstream/distill/train.py for the run directory, determinism and DDP.

Mixed precision (d.amp, from cfg.amp; runtime.py): the forward pass and its loss terms run under
torch.autocast (losses that autocast keeps in fp32 stay there: softmax, KL, cross-entropy);
the backward and the optimiser step in fp32. fp16 adds a GradScaler (the loss scaled before the
backward, gradients unscaled before clipping, a step skipped when they overflow); its state is
saved with the training state, so a resumed fp16 run continues with the same scale. Evaluation
runs in fp32.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from evstream.distill import checkpointing as ck
from evstream.distill import config as C
from evstream.distill import losses as L
from evstream.distill.augment import augment
from evstream.distill.build import plain_state, model_config
from evstream.distill.evaluate import Parts, evaluate, headline, make_loader
from evstream.distill.metrics_log import MetricsLog
from evstream.distill.optim import WarmupPoly, make_optimizer
from evstream.distill.runtime import Dist
from evstream.distill.settings import get as get_setting
from evstream.distill.task import DISC_KEY, TaskModule
from evstream.errors import EvstreamError

STAGE_DIRS = {1: "teacher", 2: "student"}
EVAL_BATCH = 8

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
    setting = get_setting(cfg.setting)
    want = set(setting.parts)
    _need(base, where, events="events" in want, images="image" in want, labels="label" in want,
          why=f"setting {setting.name} needs {setting.needs_why}")
    if setting.pairing == "unpaired":
        return D.UnpairedDataset(base, seed=cfg.seed)
    return Parts(base, setting.parts)


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
    scaler: object = None             # torch.amp.GradScaler with fp16 autocast, else None

    @property
    def scfg(self) -> C.StageCfg:
        return self.cfg.stage1 if self.stage == 1 else self.cfg.stage2

    @property
    def dir(self) -> Path:
        return self.run_dir / STAGE_DIRS[self.stage]

    # -- per batch -----------------------------------------------------------------------------
    def prepare(self, batch: dict) -> dict:
        """Tensors to the device, the valid-pixel mask, and this iteration's augmentation."""
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
        if self.cfg.data.hflip or self.cfg.data.shift > 0:
            g = torch.Generator().manual_seed(
                (self.cfg.seed * 1_000_003 + self.stage * 10_007 + self.it) % (1 << 62))
            slots = torch.arange(self.d.rank, self.scfg.batch_size, self.d.world)[:n]
            out = augment(out, content_hw=(rh, rw), hflip=self.cfg.data.hflip,
                          shift=self.cfg.data.shift, generator=g, slots=slots,
                          global_batch=self.scfg.batch_size, segmentation=seg)
        return out

    def autocast(self):
        if self.d.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.d.amp)

    def step(self, batch: dict) -> dict:
        with self.autocast():
            terms = self.engine(batch)
        disc = terms.pop(DISC_KEY, None)
        total, _ = L.total_loss(terms, self.info["weights"])
        loss = total if disc is None else total + disc
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        (loss if scaler is None else scaler.scale(loss)).backward()
        clip = self.scfg.optim.grad_clip
        if clip > 0:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.task.parameters() if p.requires_grad],
                                           clip)
        self.last_lr = self.lr()          # the rate this step used (logged with its row)
        if scaler is None:
            self.optimizer.step()
            self.scheduler.step()
        else:
            scale = scaler.get_scale()
            scaler.step(self.optimizer)
            scaler.update()
            with warnings.catch_warnings():
                if scaler.get_scale() < scale:    # overflow: the step was skipped, and the
                    warnings.simplefilter("ignore")   # schedule warns of a missing step
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
                                            "world": self.d.world, "val": self.last_val,
                                            **({"scaler": self.scaler.state_dict()}
                                               if self.scaler is not None else {})})
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
                   sampler=sampler, val_loader=val_loader, log=log, total=total, bpe=bpe,
                   scaler=torch.amp.GradScaler(d.device.type) if d.amp == torch.float16
                   else None)
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
        if run.scaler is not None and state["extra"].get("scaler"):
            run.scaler.load_state_dict(state["extra"]["scaler"])
        if d.main:
            log.truncate(stage, run.it)
    elif d.main:
        log.truncate(stage, 0)

    from evstream.progress import progress

    run.bar = progress(total=total, initial=run.it, desc=f"stage {stage} ({which})", unit="it",
                       enabled=d.main and cfg.progress)
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

        save_checkpoint(model_path, plain_state(net), mconf,
                        extra={"stage": stage, "iterations": total, "val": metrics})
    run.save(done=True)
    ran = run.it - first_it
    summary = {"iterations": total, "ran": ran, "seconds": round(train_s, 3),
               "samples_per_s": round(ran * scfg.batch_size / train_s, 2) if train_s > 0 and ran
               else None, "checkpoint": str(model_path), "val": metrics}
    return net, metrics, summary
