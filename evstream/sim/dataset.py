"""Synthetic labelled datasets: plan the sequences, generate them (in worker processes), write
the layout of the contract (OUT/manifest.json, OUT/<name>/events.aedat4 | events.h5 +
frames.npz, OUT/<name>/labels.npz).

    cfg = SynthConfig(task="seg", sequences=8, seconds=10.0, seed=1)
    summary = generate_dataset("data/seg", cfg, workers=2, progress=True)

Planning (`plan_sequences`, deterministic for a seed):
- Split sizes from the fractions (largest remainder), then every split with a non-zero
  fraction gets at least one sequence when there are enough, the test split at least three
  when that still leaves one for each other split, and at least five (one per single
  condition, below) while that leaves training at least as many as the test split.
  Which sequences go where is a seeded permutation: the split is by sequence, never by frame.
- Conditions: inside each split the sequences cycle through the eight (illumination, motion)
  pairs of CONDITION_CYCLE. Its first five change one thing at a time from the nominal
  (normal, slow): normal/slow, low/slow, hdr/slow, normal/fast, over/slow; then the mixed
  low/fast, hdr/fast, over/fast. The test split starts at the first pair, val at the second,
  train at the third, so a test split of five sequences has each single condition in a
  sequence of its own (per-condition scores never mix two adverse conditions), and a
  3-sequence dataset has three illuminations.
- cls: inside each split the labels cycle through a seeded permutation of the classes
  (balanced splits), and the condition cycle steps one further after each round of classes
  so that every class meets every condition.
- Each sequence has its own seed (SeedSequence(seed).spawn(N)), from which the world, the
  simulator (thresholds, noise) and the APS noise draw their own streams: a sequence's bytes
  do not depend on how many workers made it, or in what order.

Workers: one spawned process per sequence at a time (`workers` of them), each rendering with
cpu_count // workers Numba threads; with one worker everything runs in this process (the
renderer then uses every core), which the tests rely on. Progress (APS frames done) comes back
through a queue to one tqdm bar on stderr.

Writing is atomic at the dataset level: everything goes into a sibling folder
"OUT.tmp-XXXXXXXX" that is renamed to OUT once the manifest is written; a failure or Ctrl-C
removes it. An existing OUT that is not empty is refused unless `force`, in which case the old
folder is moved aside and deleted only after the new one is in place.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from evstream.errors import EvstreamError
from evstream.outpaths import check_free, ensure_dir
from evstream.sim.camera import ILLUMINATION, MOTION, ApsConfig, exposure_for
from evstream.sim.driver import DriverStats, StepConfig, run_world
from evstream.sim.esim import EventSimulator, SimConfig
from evstream.sim.scenes_cls import CLS_CLASSES, CLS_COLORS, ClsSceneConfig, ClsWorld
from evstream.sim.scenes_seg import SEG_CLASSES, SEG_COLORS, SegSceneConfig, SegWorld
from evstream.sim.writers import ROOM_BYTES

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
TASKS = ("seg", "cls")
# (illumination, motion): the nominal pair, then one adverse condition at a time, then mixed
CONDITION_CYCLE = (("normal", "slow"), ("low", "slow"), ("hdr", "slow"), ("normal", "fast"),
                   ("over", "slow"), ("low", "fast"), ("hdr", "fast"), ("over", "fast"))
SINGLE_CONDITIONS = 5                    # the first five of CONDITION_CYCLE
SPLIT_CYCLE_START = {"test": 0, "val": 1, "train": 2}

# The simulator as the datasets use it: DAVIS-like thresholds and a little noise. eps is far
# below the darkest radiance of every illumination (hdr: 0.006 x albedo 0.02 = 1.2e-4), so the
# log response is the same in all conditions; low light and hdr multiply the background
# activity.
DEFAULT_SIM = SimConfig(c_on=0.25, c_off=0.25, sigma_threshold=0.03, refractory_us=100,
                        ba_rate_hz=0.1, hot_pixel_fraction=1e-4, hot_pixel_rate_hz=10.0,
                        eps=1e-5)
DEFAULT_SIZE = {"seg": (346, 260), "cls": (128, 128)}
DEFAULT_SECONDS = {"seg": 10.0, "cls": 0.3}


@dataclass(frozen=True)
class SynthConfig:
    task: str = "seg"
    sequences: int = 8
    seconds: float | None = None          # per sequence; None = DEFAULT_SECONDS[task]
    seed: int = 0
    width: int | None = None              # None = DEFAULT_SIZE[task]
    height: int | None = None
    frame_rate: float = 25.0
    fmt: str = "aedat4"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    sim: SimConfig = DEFAULT_SIM
    step: StepConfig = StepConfig()
    aps: ApsConfig = ApsConfig()
    seg_scene: SegSceneConfig = field(default_factory=SegSceneConfig)
    cls_scene: ClsSceneConfig = field(default_factory=ClsSceneConfig)

    def resolved(self) -> "SynthConfig":
        """Defaults filled in and every value checked (EvstreamError, one line)."""
        if self.task not in TASKS:
            raise EvstreamError(f"unknown task {self.task!r} (seg or cls)")
        w, h = DEFAULT_SIZE[self.task]
        cfg = replace(self, width=self.width or w, height=self.height or h,
                      seconds=DEFAULT_SECONDS[self.task] if self.seconds is None
                      else float(self.seconds))
        if not (8 <= cfg.width <= 4096 and 8 <= cfg.height <= 4096):
            raise EvstreamError(f"--width/--height {cfg.width}x{cfg.height}: need 8..4096 each")
        if cfg.sequences < 1:
            raise EvstreamError(f"--sequences {cfg.sequences}: need at least 1")
        if not (cfg.frame_rate > 0 and math.isfinite(cfg.frame_rate)):
            raise EvstreamError(f"--frame-rate {cfg.frame_rate}: must be > 0")
        if not (math.isfinite(cfg.seconds) and cfg.seconds * cfg.frame_rate >= 1):
            raise EvstreamError(f"--seconds {cfg.seconds}: must hold at least one APS frame "
                                f"(>= {1 / cfg.frame_rate:g} s at {cfg.frame_rate:g} fps)")
        if cfg.seconds * 1e6 >= 2 ** 32 and cfg.fmt == "h5":
            raise EvstreamError(f"--seconds {cfg.seconds}: the h5 layout holds at most "
                                f"{2 ** 32 / 1e6:.0f} s per sequence")
        if cfg.fmt not in ("aedat4", "h5"):
            raise EvstreamError(f"--format {cfg.fmt!r}: aedat4 or h5")
        split = tuple(float(x) for x in cfg.split)
        if len(split) != 3 or min(split) < 0 or not math.isclose(sum(split), 1.0,
                                                                 abs_tol=1e-6):
            raise EvstreamError(f"--split {','.join(map(str, cfg.split))}: three fractions "
                                f">= 0 (train, val, test) that sum to 1")
        return replace(cfg, split=split)

    @property
    def classes(self) -> list[str]:
        return list(SEG_CLASSES if self.task == "seg" else CLS_CLASSES)

    @property
    def colors(self) -> list[list[int]]:
        return [list(c) for c in (SEG_COLORS if self.task == "seg" else CLS_COLORS)]

    def frame_times_us(self) -> list[int]:
        n = int(math.floor(self.seconds * self.frame_rate + 1e-9))
        return [int(round((k + 0.5) * 1e6 / self.frame_rate)) for k in range(n)]

    def generator_dict(self) -> dict:
        """Every generator parameter, for the manifest."""
        scene = self.seg_scene if self.task == "seg" else self.cls_scene
        return {"scene": asdict(scene), "simulator": asdict(self.sim),
                "stepping": asdict(self.step), "aps": asdict(self.aps),
                "illumination": {k: dict(v) for k, v in ILLUMINATION.items()},
                "motion": dict(MOTION), "format": self.fmt, "split_fractions": list(self.split),
                "sequences": self.sequences,
                "frame_times": "frame k is centred on (k + 0.5) / frame_rate s; its exposure "
                               "window is centred there too; labels are rendered at that time"}


# ---------------------------------------------------------------------------------------------
# Planning

def split_sizes(n: int, fractions) -> list[int]:
    raw = [f * n for f in fractions]
    sizes = [int(math.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: (-(raw[i] - sizes[i]), i))[:n - sum(sizes)]:
        sizes[i] += 1
    positive = [i for i in range(3) if fractions[i] > 0]

    def take(i: int) -> bool:
        donors = [j for j in positive if j != i and sizes[j] > 1]
        if not donors:
            return False
        j = max(donors, key=lambda j: (sizes[j], -j))
        sizes[j] -= 1
        sizes[i] += 1
        return True

    for i in positive:
        while sizes[i] < 1 and take(i):
            pass
    if fractions[2] > 0:
        while sizes[2] < 3 and take(2):
            pass
        while sizes[2] < SINGLE_CONDITIONS and sizes[0] - 1 >= sizes[2] + 1 and take(2):
            pass
    return sizes


def plan_sequences(cfg: SynthConfig) -> list[dict]:
    """One entry per sequence: name, split, seed, conditions (and label, class for cls)."""
    n = cfg.sequences
    root = np.random.SeedSequence(int(cfg.seed))
    s_plan, s_seqs = root.spawn(2)
    rng = np.random.default_rng(s_plan)
    seeds = [int(s.generate_state(1, np.uint32)[0]) for s in s_seqs.spawn(n)]
    sizes = split_sizes(n, cfg.split)
    order = rng.permutation(n)
    cycle = [{"illumination": a, "motion": b} for a, b in CONDITION_CYCLE]
    classes = cfg.classes
    class_order = rng.permutation(len(classes))
    entries: list[dict | None] = [None] * n
    start = 0
    for split, size in zip(SPLITS, sizes):
        members = sorted(int(i) for i in order[start:start + size])
        start += size
        for j, i in enumerate(members):
            # each split starts at its own place in the cycle (a 3-sequence dataset gets three
            # illuminations); cls: shift the cycle by one after each round of classes, so every
            # class meets every condition (8 and 10 share a factor: lockstep would not)
            c = SPLIT_CYCLE_START[split] + j + (j // len(classes) if cfg.task == "cls" else 0)
            e = {"name": f"seq_{i:04d}", "split": split, "seed": seeds[i],
                 "conditions": dict(cycle[c % len(cycle)])}
            if cfg.task == "cls":
                label = int(class_order[j % len(classes)])
                e["label"] = label
                e["class"] = classes[label]
            entries[i] = e
    return entries


# ---------------------------------------------------------------------------------------------
# One sequence

def make_world(cfg: SynthConfig, entry: dict, seed: int):
    if cfg.task == "seg":
        return SegWorld(cfg.width, cfg.height, cfg.seconds, entry["conditions"], seed,
                        cfg.seg_scene)
    return ClsWorld(cfg.width, cfg.height, cfg.seconds, entry["conditions"], seed,
                    entry["label"], cfg.cls_scene)


def sequence_outputs(cfg: SynthConfig, entry: dict, stats: DriverStats | None = None):
    """(world, exposure_us, iterator of driver.StepOutput) for one planned sequence, nothing
    written: what generate_sequence writes, and what the tests check byte for byte."""
    s_world, s_sim, s_aps = np.random.SeedSequence(int(entry["seed"])).spawn(3)
    cond = entry["conditions"]
    world = make_world(cfg, entry, int(s_world.generate_state(1, np.uint32)[0]))
    illum = ILLUMINATION[cond["illumination"]]
    sim_cfg = replace(cfg.sim, ba_rate_hz=cfg.sim.ba_rate_hz * illum["ba_multiplier"])
    sim = EventSimulator(cfg.height, cfg.width, sim_cfg,
                         int(s_sim.generate_state(1, np.uint32)[0]))
    exposure_us = exposure_for(cond["illumination"], cfg.frame_rate, cfg.aps)
    outputs = run_world(world, sim, cfg.frame_times_us(), exposure_us,
                        int(round(cfg.seconds * 1e6)), aps=cfg.aps, gain=illum["gain"],
                        rng=np.random.default_rng(s_aps), step=cfg.step, stats=stats)
    return world, exposure_us, outputs


def generate_sequence(cfg: SynthConfig, entry: dict, folder, progress=None) -> dict:
    """Write one sequence into `folder` (created); returns its manifest entry."""
    from evstream.sim.writers import SequenceWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    stats = DriverStats()
    t_wall = time.perf_counter()
    t_cpu = time.process_time()
    world, exposure_us, outputs = sequence_outputs(cfg, entry, stats)
    n_frames = len(cfg.frame_times_us())
    writer = SequenceWriter(folder, cfg.fmt, cfg.width, cfg.height, n_frames,
                            labels=cfg.task == "seg")
    try:
        for out in outputs:
            writer.write_events(out.events)
            if out.frame is not None:
                writer.write_frame(out.frame, out.labels)
                if progress is not None:
                    progress(1)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if cfg.task == "cls":
        with open(folder / "labels.npz", "wb") as f:
            np.savez(f, label=np.int64(entry["label"]))
    result = dict(entry)
    result.update({
        "events": int(writer.events), "frames": int(writer.frames),
        "t_end_us": int(round(cfg.seconds * 1e6)),
        "params": {"exposure_us": int(exposure_us),
                   "gain": ILLUMINATION[entry["conditions"]["illumination"]]["gain"],
                   "virtual_frames": int(stats.virtual_frames),
                   "wall_s": round(time.perf_counter() - t_wall, 3),
                   "cpu_s": round(time.process_time() - t_cpu, 3),
                   "render_cpu_s": round(stats.render_s, 3),
                   "simulate_cpu_s": round(stats.sim_s, 3),
                   "world": world.describe()},
    })
    return result


# ---------------------------------------------------------------------------------------------
# The dataset

_PROGRESS = None


def _init_worker(progress_queue, threads: int) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue
    import cv2
    import numba

    cv2.setNumThreads(1)
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _worker(cfg: SynthConfig, entry: dict, folder: str) -> dict:
    q = _PROGRESS
    return generate_sequence(cfg, entry, folder,
                             progress=(lambda n: q.put(n)) if q is not None else None)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EvstreamError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EvstreamError(f"{out}: folder is not empty (use --force to replace it)")
    ensure_dir(out.parent, "dataset's parent")


def generate_dataset(out, cfg: SynthConfig, workers: int = 1, progress: bool = False,
                     force: bool = False) -> dict:
    """Plan, generate and write a dataset (see the module top); returns a summary dict."""
    cfg = cfg.resolved()
    out = Path(out).absolute()
    _prepare_out(out, force)
    check_free(out, "dataset", ROOM_BYTES)
    entries = plan_sequences(cfg)
    tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    t0 = time.perf_counter()
    bar = None
    try:
        n_frames = len(cfg.frame_times_us())
        if progress:
            from evstream.progress import progress as progress_bar
            bar = progress_bar(total=n_frames * len(entries), unit="frame",
                               desc=f"synth {cfg.task}")
        results = _run(cfg, entries, tmp, workers, bar)
        manifest = build_manifest(cfg, results)
        with open(tmp / "manifest.json", "w") as f:
            f.write(manifest_json(manifest))
            f.flush()
            os.fsync(f.fileno())
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    total_s = cfg.seconds * len(entries)
    return {"out": str(out), "task": cfg.task, "format": cfg.fmt,
            "sequences": len(entries), "width": cfg.width, "height": cfg.height,
            "splits": {s: len(manifest["splits"][s]) for s in SPLITS},
            "events": sum(r["events"] for r in results),
            "frames": sum(r["frames"] for r in results),
            "virtual_frames": sum(r["params"]["virtual_frames"] for r in results),
            "simulated_s": total_s, "wall_s": round(wall, 3),
            "simulated_s_per_wall_s": round(total_s / wall, 4) if wall > 0 else None,
            "cpu_s": round(sum(r["params"]["cpu_s"] for r in results), 3),
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def _run(cfg: SynthConfig, entries: list[dict], tmp: Path, workers: int, bar) -> list[dict]:
    workers = max(1, min(int(workers), len(entries)))
    if workers == 1:
        update = bar.update if bar is not None else None
        return [generate_sequence(cfg, e, tmp / e["name"], progress=update) for e in entries]
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    results: dict[str, dict] = {}
    threads = max(1, (os.cpu_count() or 1) // workers)     # the renderer's rows in parallel
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(progress_queue, threads)) as pool:
        pending = {pool.submit(_worker, cfg, e, str(tmp / e["name"])) for e in entries}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, bar)
                for fut in done:
                    r = fut.result()                  # a worker's exception surfaces here
                    results[r["name"]] = r
            _drain(progress_queue, bar)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[e["name"]] for e in entries]


def _drain(q, bar) -> None:
    while True:
        try:
            n = q.get_nowait()
        except queue.Empty:
            return
        if bar is not None:
            bar.update(n)


def _install(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f"{out.name}.old-{secrets.token_hex(4)}"
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def manifest_json(manifest: dict) -> str:
    """Indented JSON with short lists of numbers or names kept on one line."""
    text = json.dumps(manifest, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


def build_manifest(cfg: SynthConfig, results: list[dict]) -> dict:
    splits = {s: [r["name"] for r in results if r["split"] == s] for s in SPLITS}
    return {
        "format": "evstream-synth", "version": FORMAT_VERSION, "task": cfg.task,
        "width": cfg.width, "height": cfg.height,
        "classes": cfg.classes, "colors": cfg.colors,
        "seed": int(cfg.seed), "seconds": cfg.seconds, "frame_rate": cfg.frame_rate,
        "generator": cfg.generator_dict(),
        "splits": splits,
        "sequences": results,
    }
