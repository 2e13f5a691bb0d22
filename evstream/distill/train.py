"""The EvDistill trainer: stage 1 trains the teacher on labelled images, stage 2 the event student
(+ BMR) against the frozen teacher; single process or torchrun DDP; resumable bit for bit.

    main(cfg: TrainCfg, resume=False) -> summary dict
    train_one_epoch(run: StageRun) -> bool          (True when the stage's last iteration is done)
    evaluate(model, loader, ...)                    (evstream.distill.evaluate)

The parts, one concern each: runtime.py (processes, DDP set-up, device), metrics_log.py (the
metrics files), optim.py (optimiser, schedule), build.py (model configs, networks, teacher
loading), stage.py (one stage: dataset view, loop, checkpoints, evaluation), settings.py (what
each setting reads and which step it runs), task.py (the loss terms of one step), augment.py
(flips and shifts); this module runs the stages and owns the run directory.

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
same weights, rank 0 writes the files. One process (WORLD_SIZE 1) creates no process group, so
on a one-GPU machine nccl, DDP and SyncBatchNorm are exercised by tools/ddp_check.py instead.
Each rank's device: runtime.py (cuda:LOCAL_RANK under torchrun); mixed precision: stage.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from evstream.distill import checkpointing as ck
from evstream.distill import config as C
from evstream.distill.build import load_teacher, sync_bn, build_network, model_config
from evstream.distill.evaluate import evaluate
from evstream.distill.metrics_log import COLUMNS, TERMS, MetricsLog
from evstream.distill.optim import WarmupPoly, make_optimizer
from evstream.distill.runtime import Dist, amp_name, init_distributed
from evstream.distill.stage import (STAGE_DIRS, StageRun, content_hw, open_split, run_stage,
                                    train_one_epoch)
from evstream.distill.task import build_bmr, build_discriminator, freeze, loss_weights, \
    needs_teacher, stage2_modules
from evstream.errors import EvstreamError
from evstream.outpaths import ensure_dir

__all__ = ["main", "train_one_epoch", "evaluate", "StageRun", "COLUMNS", "TERMS", "model_config",
           "WarmupPoly", "make_optimizer", "STAGE_DIRS"]

# keys of the saved config that may change between a run and its --resume
RESUMABLE_CHANGES = {"stage", "progress", "tensorboard", "threads", "device"}


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
        try:
            old = C.from_dict(old).as_dict()     # old names (setting "paper") in today's form
        except EvstreamError:
            pass
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
        ensure_dir(run_dir, "run")
        ck.atomic_write_text(run_dir / "config.json", C.to_json(cfg) + "\n")
        ck.atomic_write_text(run_dir / "config.toml", C.to_toml(cfg))
        if on_start is not None:
            on_start(cfg)
    d.barrier()
    t0 = time.perf_counter()
    summary = {"run": str(run_dir), "preset": cfg.preset, "setting": cfg.setting,
               "task": info["task"], "world_size": d.world, "device": str(d.device),
               "amp": amp_name(d.amp),
               "fp32_math": cfg.fp32_math if d.device.type == "cuda" else "ieee",
               "stages": {}}
    teacher = None
    try:
        want1 = cfg.stage in ("1", "all") and needs_teacher(cfg) and not cfg.teacher_ckpt
        if want1:
            mconf = model_config(cfg, "teacher", info)
            net = sync_bn(build_network(mconf, cfg.teacher, cfg.seed + 1), d, cfg.teacher)
            teacher, _, s1 = run_stage(1, cfg, d, run_dir, info, {"teacher": net}, log, resume)
            summary["stages"]["1"] = s1
            summary["teacher"] = s1["checkpoint"]
        if cfg.stage in ("2", "all"):
            models = {}
            if needs_teacher(cfg):
                if cfg.teacher_ckpt:
                    teacher = load_teacher(cfg.teacher_ckpt, info, d)
                    summary["teacher"] = cfg.teacher_ckpt
                elif teacher is None:
                    path = run_dir / "teacher" / "model.pt"
                    if not path.exists():
                        raise EvstreamError(f"{run_dir}: stage 2 needs a teacher: run stage 1 "
                                            f"first (--stage 1 or all) or pass --teacher CKPT")
                    teacher = load_teacher(path, info, d)
                    summary["teacher"] = str(path)
                models["teacher"] = freeze(teacher.to(d.device))
            sconf = model_config(cfg, "student", info)
            student = sync_bn(build_network(sconf, cfg.student, cfg.seed + 2), d, cfg.student)
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
                    models[k] = sync_bn(models[k], d, cfg.student)
            _, _, s2 = run_stage(2, cfg, d, run_dir, info, models, log, resume)
            summary["stages"]["2"] = s2
            summary["student"] = s2["checkpoint"]
    finally:
        log.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
