"""EvDistill trainer and `evstream train` / `evstream eval`: tiny networks on a tiny synthetic set.

The data set is written here in the section-5 layout (manifest.json, <seq>/events.aedat4 with APS
frames through evstream's writer, <seq>/labels.npz): a box moving over a road, 64x48, events at
the box's edges, frames of the scene (dark in the "low" sequences). Its labels hold no 255, so
every pixel counts the same on every DDP rank and the two-rank run can be compared with a tight
tolerance.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli, run_evstream
from evstream.distill import config as C
from evstream.distill.task import (STEPS, TaskModule, build_bmr, distill_step, loss_weights,
                                   needs_teacher, stage2_modules)
from evstream.distill.train import COLUMNS, WarmupPoly
from evstream.distill import losses as L
from evstream.errors import EvstreamError
from evstream.sources.writer import Aedat4Writer
from evstream.types import EVENT_DTYPE, Frame, concat_events

CLASSES = ["flat", "background", "object"]
COLORS = [[128, 64, 128], [70, 70, 70], [220, 220, 0]]
W, H = 64, 48

# a few iterations of the tiny preset, one thread (bit-for-bit comparisons need equal threads)
QUICK = ["--preset", "tiny", "--threads", "1", "--no-progress",
         "--set", "stage1.iterations=6", "--set", "stage2.iterations=6",
         "--set", "stage1.batch_size=4", "--set", "stage2.batch_size=4"]



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one torch thread is faster (and the bit-for-bit runs need equal counts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# -- the data set --------------------------------------------------------------------------------

def _box(t_us: int, seed: int, w: int = W, h: int = H):
    rng = np.random.default_rng(seed)
    sx, sy = w / W, h / H
    x0 = int((4 + int(rng.integers(0, 10))) * sx)
    speed = (150 + 50 * (seed % 3)) * sx               # px/s
    bw, bh, by = int((14 + seed % 5) * sx), int(12 * sy), int((14 + seed % 6) * sy)
    return int(x0 + speed * t_us / 1e6) % (w - bw), bw, by, bh


def _labels(t_us: int, seed: int, w: int = W, h: int = H) -> np.ndarray:
    x, bw, by, bh = _box(t_us, seed, w, h)
    lab = np.ones((h, w), np.uint8)
    lab[h * 3 // 4:] = 0
    lab[by:by + bh, x:x + bw] = 2
    return lab


def _write_sequence(folder: Path, seed: int, frames: int, low: bool, w: int = W,
                    h: int = H) -> dict:
    W, H = w, h                                        # noqa: N806 - the sensor of this set
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1000 + seed)
    t_frames = np.arange(1, frames + 1, dtype=np.int64) * 40_000
    chunks = []
    for t in range(0, int(t_frames[-1]) + 5000, 2000):   # ON/OFF at the box's edges, every 2 ms
        x, bw, by, bh = _box(t, seed, W, H)
        ys = rng.integers(by, by + bh, 12)
        e = np.zeros(24, EVENT_DTYPE)
        e["t"] = t + np.sort(rng.integers(0, 2000, 24))
        e["x"] = np.r_[np.full(12, min(x + bw, W - 1)), np.full(12, x)]
        e["y"] = np.r_[ys, ys]
        e["p"] = np.r_[np.ones(12), np.zeros(12)]
        chunks.append(e[np.argsort(e["t"], kind="stable")])
    events = concat_events(chunks)
    labels = []
    with Aedat4Writer(folder / "events.aedat4", width=W, height=H, frames=True) as w:
        w.write_events(events)
        for t in t_frames:
            lab = _labels(int(t), seed, W, H)
            labels.append(lab)
            grey = np.array([60, 150, 230], np.float32)[lab] * (0.3 if low else 1.0)
            img = np.clip(grey + rng.normal(0, 8, lab.shape), 0, 255).astype(np.uint8)
            w.write_frame(Frame(int(t), img, 5000))
    np.savez(folder / "labels.npz", t_us=t_frames, labels=np.stack(labels))
    return {"name": folder.name, "seed": seed, "events": int(len(events)), "frames": frames,
            "t_end_us": int(events["t"][-1]),
            "conditions": {"illumination": "low" if low else "normal",
                           "motion": "fast" if seed % 3 == 2 else "slow"}}


def make_synth(root: Path, splits=(("train", 3), ("val", 1), ("test", 2)), frames: int = 8,
               seed: int = 0, width: int = W, height: int = H, task: str = "seg") -> Path:
    """A tiny set in `evstream synth`'s layout (see the module doc). task "cls": sequence k is
    of class k % 3 (the same scenes: a wiring check, not a learnable task)."""
    root.mkdir(parents=True, exist_ok=True)
    seqs, names, k = [], {}, 0
    for split, n in splits:
        names[split] = []
        for _ in range(n):
            s = _write_sequence(root / f"seq_{k:04d}", seed * 100 + k, frames, low=k % 2 == 1,
                                w=width, h=height)
            if task == "cls":
                s.update(label=k % 3, **{"class": CLASSES[k % 3]})
                np.savez(root / s["name"] / "labels.npz", label=np.int64(k % 3))
            seqs.append({**s, "split": split})
            names[split].append(s["name"])
            k += 1
    (root / "manifest.json").write_text(json.dumps({
        "format": "evstream-synth", "version": 1, "task": task, "width": width,
        "height": height,
        "classes": CLASSES, "colors": COLORS, "seed": seed, "seconds": frames * 0.04,
        "frame_rate": 25, "generator": {"writer": "tests/test_train.py"}, "splits": names,
        "sequences": seqs}))
    return root


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """One finished tiny run (both stages, unpaired setting): (run dir, --json summary)."""
    run = tmp_path_factory.mktemp("run") / "tiny"
    torch.set_num_threads(1)
    from evstream.cli import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", *QUICK, "--data", str(synth), "--out", str(run), "--json"])
    assert code == 0
    return run, json.loads(out.getvalue().strip().splitlines()[-1])


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# -- config ----------------------------------------------------------------------------------------

def test_presets_paper_weights_and_round_trip():
    p = C.preset("paper")
    assert (p.teacher.backbone, p.student.backbone, p.student.output_stride) == \
        ("resnet101", "resnet101", 16)
    assert (p.loss.ce, p.loss.recon, p.loss.pixel_kd, p.loss.affinity) == (10, 10, 20, 0.1)
    assert p.loss.adversarial == 0 and p.loss.bmr
    o = p.stage2.optim
    assert (o.name, o.momentum, o.nesterov, o.lr, o.poly_power) == ("sgd", 0.9, True, 1e-3, 0.9)
    assert o.warmup_iters > 0
    assert C.preset("realtime").student.backbone == "resnet18"
    assert C.preset("tiny").student.backbone == "tiny"
    for name in C.PRESETS:
        cfg = C.preset(name)
        assert C.from_dict(json.loads(C.to_json(cfg))) == cfg
        assert C.from_dict(tomllib.loads(C.to_toml(cfg))) == cfg


def test_overrides_types_and_errors():
    cfg = C.apply_overrides(C.preset("tiny"), ["stage2.iterations=7", "loss.bmr=false",
                                               "setting=paired", "data.resize=[32, 48]",
                                               "loss.affinity=0", "student.extra.head_channels=8"])
    assert (cfg.stage2.iterations, cfg.loss.bmr, cfg.data.resize, cfg.loss.affinity) == \
        (7, False, [32, 48], 0.0)
    assert cfg.student.extra == {"head_channels": 8}
    for bad, words in [("nope=1", "unknown key nope"), ("stage2.iterations=x", "not of type int"),
                       ("stage2.batch_size=0", "batch_size"), ("loss.bmr=false", "needs setting"),
                       ("setting=magic", "paired, unpaired"), ("novalue", "key.path=value"),
                       ("loss.a2e_width=-1", "a2e_width")]:
        with pytest.raises(EvstreamError, match=words):
            C.apply_overrides(C.preset("tiny"), [bad])


def test_bmr_widths_follow_the_config():
    from evstream.nn import build_model

    student = build_model({"arch": "classifier", "backbone": "tiny", "in_channels": 5,
                           "num_classes": 3})
    default = build_bmr({"e2a", "a2e"}, student, 5, 1, tiny=True)
    narrow = build_bmr({"e2a", "a2e"}, student, 5, 1, tiny=False, e2a_width=12, a2e_width=4)
    assert default["a2e"].enc1[0][0].out_channels == 8 and default["e2a"].stem[0].out_channels == 16
    assert narrow["a2e"].enc1[0][0].out_channels == 4 and narrow["e2a"].stem[0].out_channels == 12
    x = torch.randn(2, 1, 32, 32)
    assert narrow["a2e"](x).shape == (2, 5, 32, 32)


def test_warmup_then_poly():
    f = WarmupPoly(total=100, warmup=10, factor=0.1, power=0.9)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 ** 0.9)
    assert f(100) == 0.0


# -- the step --------------------------------------------------------------------------------------

def _tiny_models(num_classes=3, event_channels=5, bmr=("e2a", "a2e")):
    from evstream.nn import build_model

    torch.manual_seed(0)
    mk = lambda c: build_model({"arch": "deeplabv3plus", "backbone": "tiny",  # noqa: E731
                                "in_channels": c, "num_classes": num_classes})
    teacher, student = mk(1), mk(event_channels)
    return {"teacher": teacher, "student": student,
            **build_bmr(set(bmr), student, event_channels, 1, tiny=True)}


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 3, (n, 4, 6), generator=g)           # 8x8-pixel regions
    label = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    image = (label.float()[:, None] - 1) * 0.8 + 0.1 * torch.randn(n, 1, 32, 48, generator=g)
    events = label.float()[:, None].repeat(1, 5, 1, 1) + 0.3 * torch.randn(n, 5, 32, 48,
                                                                          generator=g)
    return {"events": events, "image": image, "label": label,
            "valid": torch.ones(n, 32, 48, dtype=torch.bool)}


@pytest.mark.parametrize("setting", ["unpaired", "paired"])
def test_teacher_frozen_gradients_reach_student_and_bmr_only(setting):
    cfg = C.with_changes(C.preset("tiny"), setting=setting)
    models = _tiny_models()
    before = {k: v.clone() for k, v in models["teacher"].state_dict().items()}
    task = TaskModule(models, cfg, stage=2).train()
    assert not models["teacher"].training and models["student"].training
    assert all(not p.requires_grad for p in models["teacher"].parameters())
    assert set(task.trainable()) == {"student", "e2a", "a2e"}
    terms = task(_batch())
    assert {"consistency", "recon/e2a", "recon/a2e"} <= set(terms)
    total, _ = L.total_loss(terms, loss_weights(cfg))
    total.backward()
    assert all(p.grad is None for p in models["teacher"].parameters())
    for name in ("student", "e2a", "a2e"):
        grads = [p.grad for p in models[name].parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    after = models["teacher"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # BN stats untouched too


@pytest.mark.parametrize("setting", ["unpaired", "paired", "events_gt", "pseudo_aps"])
def test_losses_decrease_over_a_few_steps(setting):
    cfg = C.with_changes(C.preset("tiny"), setting=setting)
    task = TaskModule(_tiny_models(), cfg, stage=2).train()
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    batch, totals = _batch(), []
    for _ in range(12):
        total, _ = L.total_loss(task(batch), loss_weights(cfg))
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-3:]) < 0.9 * np.mean(totals[:2]), totals


def test_kd_terms_vanish_when_student_is_the_teacher():
    cfg = C.apply_overrides(C.preset("tiny"), ["setting=paired", "loss.bmr=false"])
    models = _tiny_models(event_channels=1, bmr=())
    models["student"].load_state_dict(models["teacher"].state_dict())
    task = TaskModule(models, cfg, stage=2).eval()
    b = _batch()
    b["events"] = b["image"]
    with torch.no_grad():
        terms = distill_step(b, dict(task.models.items()), cfg)
    assert set(terms) == {"pixel_kd", "affinity"}         # paired: no labels reach the student
    assert float(terms["pixel_kd"]) == pytest.approx(0, abs=1e-6)
    assert float(terms["affinity"]) == pytest.approx(0, abs=1e-6)


# -- the trainer through the CLI ----------------------------------------------------------------

def test_train_writes_run_directory(trained):
    run, summary = trained
    assert summary["stages"]["1"]["ran"] == 6 and summary["stages"]["2"]["ran"] == 6
    assert summary["student"] == str(run / "student" / "model.pt")
    cfg = json.loads((run / "config.json").read_text())
    assert C.from_dict(cfg) == C.from_dict(tomllib.loads((run / "config.toml").read_text()))
    assert cfg["data"]["root"] and cfg["stage2"]["iterations"] == 6
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [(r["stage"], r["iteration"]) for r in train_rows] == [(1, 6), (2, 6)]
    assert {"ce", "pixel_kd/events", "pixel_kd/images", "affinity/events", "recon/e2a",
            "recon/a2e", "consistency", "lr", "samples_per_s"} <= set(train_rows[1])
    assert any("val_miou" in r for r in rows)
    from evstream.nn import load_checkpoint, load_model

    ck = load_checkpoint(run / "student" / "model.pt")
    c = ck["config"]
    assert c["trained"] is True and c["classes"] == CLASSES and c["colors"] == COLORS
    assert c["in_channels"] == 5 and c["representation"]["name"] == "voxel"
    assert c["window"]["window_us"] == 50_000 and c["input"]["resize"] == [48, 64]
    assert 0 <= c["metrics"]["miou"] <= 1
    assert not any(k.startswith(("e2a", "a2e", "teacher")) for k in ck["state_dict"])
    model, _ = load_model(run / "student" / "model.pt")
    assert model(torch.zeros(1, 5, 48, 64)).shape == (1, 3, 48, 64)
    t_cfg = load_checkpoint(run / "teacher" / "model.pt")["config"]
    assert t_cfg["in_channels"] == 1 and t_cfg["modality"] == "images"


def test_eval_json_and_table(trained, synth, capsys):
    run, _ = trained
    code, out, err = run_cli(capsys, "eval", run, "--data", synth, "--split", "test", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert {"miou", "pixel_acc", "per_class", "conditions", "samples", "model"} <= set(r)
    assert r["samples"] == 16 and r["modality"] == "events"
    assert list(r["per_class"]) == CLASSES
    assert set(r["conditions"]["illumination"]) == {"normal", "low"}
    assert sum(v["samples"] for v in r["conditions"]["illumination"].values()) == 16
    assert 0 <= r["conditions"]["motion"]["slow"]["miou"] <= 1
    code, out, err = run_cli(capsys, "eval", run, "--data", synth, "--modality", "images",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["modality"] == "images"
    assert json.loads(out)["model"].endswith(os.path.join("teacher", "model.pt"))
    code, out, _ = run_cli(capsys, "eval", run / "student" / "model.pt", "--data", synth)
    assert code == 0
    assert "object" in out and "mean" in out and "mIoU by illumination" in out


@pytest.mark.parametrize("setting", ["paired", "paired+adversarial", "events_gt", "pseudo_aps"])
def test_stage2_settings_with_given_teacher(trained, synth, tmp_path, capsys, setting):
    run, _ = trained
    name, _, extra = setting.partition("+")
    more = ["--set", "loss.adversarial=0.1"] if extra else []
    code, out, err = run_cli(capsys, "train", *QUICK, "--data", synth, "--out", tmp_path / "r",
                             "--stage", "2", "--setting", name,
                             "--teacher", run / "teacher" / "model.pt",
                             "--set", "stage2.iterations=3", *more, "--json")
    assert code == 0, err
    s = json.loads(out.splitlines()[-1])
    assert list(s["stages"]) == ["2"] and s["stages"]["2"]["ran"] == 3
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    terms = set(rows[0]) - {"stage", "iteration", "epoch", "lr", "loss", "samples_per_s",
                            "time_s"}
    paired = {f"{kd}/{side}" for kd in ("pixel_kd", "affinity") for side in ("frame", "recon", "a2e")}
    paired |= {"recon/e2a", "recon/a2e", "consistency"}
    want = {"paired": paired, "paired+adversarial": paired | {"adversarial", "discriminator"},
            "events_gt": {"ce"}, "pseudo_aps": {"ce"}}[setting]
    assert terms == want
    state = torch.load(tmp_path / "r" / "student" / "state.pt", weights_only=True)
    assert set(state["modules"]) == {"student"} | ({"e2a", "a2e"} if name == "paired" else set()) \
        | ({"disc"} if extra else set())


def test_classification_train_and_eval(tmp_path, capsys):
    data = make_synth(tmp_path / "cls", splits=(("train", 3), ("test", 2)), frames=4, task="cls")
    code, out, err = run_cli(capsys, "train", *QUICK, "--data", data, "--out", tmp_path / "r",
                             "--set", "stage1.iterations=3", "--set", "stage2.iterations=3",
                             "--json")
    assert code == 0, err
    s = json.loads(out.splitlines()[-1])
    assert s["task"] == "classification" and s["stages"]["2"]["ran"] == 3
    code, out, err = run_cli(capsys, "eval", tmp_path / "r", "--data", data, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["task"] == "classification" and r["samples"] == 8
    assert 0 <= r["top1"] <= r["top5"] == 1.0          # 3 classes: top-5 always right
    assert set(r["conditions"]["illumination"]) == {"normal", "low"}
    from evstream.nn import load_checkpoint

    assert load_checkpoint(tmp_path / "r" / "student" / "model.pt")["config"]["arch"] == \
        "classifier"


def test_user_errors_are_one_line(trained, synth, tmp_path, capsys):
    run, _ = trained
    cases = [
        ("train", *QUICK, "--data", tmp_path / "nothing", "--out", tmp_path / "a"),
        ("train", *QUICK, "--data", synth, "--out", run),                   # already a run
        ("train", *QUICK, "--data", synth, "--out", run, "--resume",        # changed config
         "--set", "loss.affinity=0"),
        ("train", *QUICK, "--data", synth, "--out", tmp_path / "b", "--set", "loss.nope=1"),
        ("train", *QUICK, "--data", synth, "--out", tmp_path / "c", "--stage", "2"),  # no teacher
        ("eval", tmp_path / "missing.pt", "--data", synth),
        ("eval", run, "--data", tmp_path / "nothing"),
        ("export", tmp_path / "missing", "--out", tmp_path / "e"),
    ]
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    cases += [("eval", bad, "--data", synth), ("export", bad, "--out", tmp_path / "e2"),
              ("train", *QUICK, "--data", synth, "--out", tmp_path / "d", "--stage", "2",
               "--teacher", bad)]
    for args in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)


def test_resume_after_completion_is_a_no_op(trained, synth, capsys):
    run, _ = trained
    before = _state(run / "student" / "model.pt")
    code, out, err = run_cli(capsys, "train", *QUICK, "--data", synth, "--out", run, "--resume",
                             "--json")
    assert code == 0, err
    s = json.loads(out.splitlines()[-1])
    assert all(v.get("skipped") for v in s["stages"].values())
    after = _state(run / "student" / "model.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- processes: kill + resume, DDP ----------------------------------------------------------------

def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float = 120) -> list[str]:
    """Lines of proc's stderr up to and including the first one holding needle."""
    import time

    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; stderr was:\n{''.join(seen)}")


def test_resume_after_sigkill_is_bit_for_bit(synth, tmp_path, capsys):
    args = [*QUICK, "--data", str(synth), "--set", "stage1.iterations=4",
            "--set", "stage2.iterations=10", "--set", "stage2.ckpt_every=4",
            "--set", "stage2.log_every=1"]
    # the uninterrupted reference, in this process
    code, _, err = run_cli(capsys, "train", *args, "--out", tmp_path / "ref")
    assert code == 0, err
    # the same run in a child process, killed right after its iteration-4 checkpoint
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evstream", "train", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        _wait_for_line(proc, "stage 2: checkpoint at iteration 4 ")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (run / "student" / "model.pt").exists()      # it really died mid-stage
    r = run_evstream("train", *args, "--out", run, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.splitlines()[-1])
    assert s["stages"]["1"]["skipped"] and 0 < s["stages"]["2"]["ran"] <= 6
    for which in ("teacher", "student"):
        a, b = _state(tmp_path / "ref" / which / "model.pt"), _state(run / which / "model.pt")
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{which}: {len(diff)} tensors differ, e.g. {diff[:3]}"

    def rows(path):
        out = []
        for line in (path / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.append({k: v for k, v in r.items() if k not in ("samples_per_s", "time_s")})
        return out

    assert rows(run) == rows(tmp_path / "ref")        # no duplicated or lost log rows


def test_ddp_two_cpu_ranks_match_one_process(synth, tmp_path, capsys):
    # BatchNorm frozen (eval mode) and dropout off: with them, two ranks of batch 2 compute the
    # same gradients as one process of batch 4 (see evstream/distill/train.py)
    args = [*QUICK, "--data", str(synth), "--set", "stage1.iterations=4",
            "--set", "stage2.iterations=4", "--set", "stage1.optim.lr=0.002",
            "--set", "stage2.optim.lr=0.002", "--json"]
    for who in ("teacher", "student"):
        args += ["--set", f"{who}.freeze_bn=true", "--set", f"{who}.no_dropout=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "evstream", "train", *args,
                        "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["world_size"] == 2
    code, out, err = run_cli(capsys, "train", *args, "--out", tmp_path / "one")
    assert code == 0, err
    one = json.loads(out.strip().splitlines()[-1])
    for stage in ("1", "2"):       # validation: every sample once, counts all-reduced
        a, b = s["stages"][stage]["val"], one["stages"][stage]["val"]
        assert a["samples"] == b["samples"] == 8 and a["pixels"] == b["pixels"]
        assert a["miou"] == pytest.approx(b["miou"], abs=1e-3)
    for which in ("teacher", "student"):
        a, b = _state(tmp_path / "ddp" / which / "model.pt"), _state(tmp_path / "one" / which
                                                                      / "model.pt")
        moved = [k for k in a if a[k].is_floating_point()]
        for k in moved:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{which} {k}")
    losses = []
    for run in ("ddp", "one"):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if "loss" in r])
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


# -- settings table, augmentation ------------------------------------------------------------------

def test_settings_table_and_the_paper_alias(tmp_path):
    from evstream.distill import settings as S

    assert set(S.SETTINGS) == {"paired", "unpaired", "events_gt", "pseudo_aps"}
    cfg = C.with_changes(C.preset("tiny"), setting="paper")
    assert cfg.setting == "unpaired"                        # stored in its canonical form
    assert C.from_dict({"setting": "paper"}).setting == "unpaired"
    for name, s in S.SETTINGS_TABLE.items():
        assert s.step in STEPS, name
        assert needs_teacher(C.with_changes(C.preset("tiny"), setting=name)) == s.teacher
    # neither baseline nor paired reads a label; unpaired needs BMR, paired may drop it
    assert "label" not in S.get("paired").parts and "label" not in S.get("pseudo_aps").parts
    assert stage2_modules(C.apply_overrides(C.preset("tiny"), ["setting=paired", "loss.bmr=false"])
                          ) == {"teacher"}
    with pytest.raises(EvstreamError, match="setting unpaired pairs"):
        C.apply_overrides(C.preset("tiny"), ["setting=unpaired", "loss.bmr=false"])
    # an old run directory saved with "paper" still resumes
    from evstream.distill.train import _check_run_dir

    old = C.with_changes(C.preset("tiny"), out=str(tmp_path)).as_dict()
    old["setting"] = "paper"
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_run_dir(C.with_changes(C.preset("tiny"), out=str(tmp_path), setting="paper"),
                   tmp_path, resume=True)


def test_stage2_reads_only_what_its_setting_names(synth):
    from evstream.distill.stage import open_split, stage_dataset

    for name, parts in [("paired", {"events", "image"}), ("events_gt", {"events", "label"}),
                        ("pseudo_aps", {"events", "image"})]:
        cfg = C.with_changes(C.preset("tiny"), setting=name, data=C.DataCfg(root=str(synth),
                                                                            resize=[48, 64]))
        ds = stage_dataset(cfg, 2, open_split(cfg, "train"))
        assert set(ds[0]) - {"meta"} == parts, name


def test_paired_step_terms_with_and_without_bmr():
    cfg = C.with_changes(C.preset("tiny"), setting="paired")
    task = TaskModule(_tiny_models(), cfg, stage=2).train()
    batch = _batch()
    del batch["label"]                                       # paired never needs a label
    terms = task(batch)
    assert set(terms) == {f"{k}/{side}" for k in ("pixel_kd", "affinity")
                          for side in ("frame", "recon", "a2e")} | \
        {"recon/e2a", "recon/a2e", "consistency"}
    cfg = C.apply_overrides(cfg, ["loss.bmr=false", "loss.affinity=0"])
    terms = TaskModule(_tiny_models(bmr=()), cfg, stage=2).train()(batch)
    assert set(terms) == {"pixel_kd"}


def test_augment_shift_and_flip_are_per_global_slot():
    from evstream.distill.augment import _shifted, augment

    x = torch.arange(12.0).reshape(1, 3, 4)
    y = _shifted(x, 1, -1, 3, 4, 0)                       # down 1, left 1, zeros moved in
    assert y.tolist() == [[[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0]]]
    assert x[0, 0, 0] == 0 and x[0, 2, 3] == 11            # input untouched
    lab = _shifted(torch.zeros(3, 4, dtype=torch.long), -1, 2, 2, 3, 255)
    assert lab.tolist() == [[255, 255, 0, 0], [255, 255, 255, 0], [0, 0, 0, 0]]

    g = torch.Generator().manual_seed(0)
    ev = torch.rand(4, 2, 10, 12, generator=g)
    lab = torch.randint(0, 3, (4, 10, 12), generator=g)
    valid = torch.zeros(4, 10, 12, dtype=torch.bool)
    valid[:, :8, :11] = True
    batch = {"events": ev, "label": lab, "valid": valid}

    def run(slots, rows):
        b = {k: v[rows] for k, v in batch.items()}
        return augment(b, content_hw=(8, 11), hflip=True, shift=2,
                       generator=torch.Generator().manual_seed(5), slots=torch.tensor(slots),
                       global_batch=4, segmentation=True)

    one = run([0, 1, 2, 3], [0, 1, 2, 3])
    r0, r1 = run([0, 2], [0, 2]), run([1, 3], [1, 3])       # two DDP ranks, batch 2 each
    for k in batch:
        assert torch.equal(one[k][[0, 2]], r0[k]) and torch.equal(one[k][[1, 3]], r1[k])
        assert torch.equal(batch[k], {"events": ev, "label": lab, "valid": valid}[k])
    assert not torch.equal(one["events"], ev)
    # padding stays untouched, and ignore labels sit exactly where the picture has no content
    assert (one["events"][:, :, 8:, :] == ev[:, :, 8:, :]).all()
    assert ((one["label"] == 255) == (one["valid"].logical_not() & valid)).all()
    none = augment(batch, content_hw=(8, 11), hflip=False, shift=0, generator=g,
                   slots=torch.arange(4), global_batch=4, segmentation=True)
    assert all(none[k] is batch[k] for k in batch)


def test_paired_leaves_the_frames_clipped_pixels_to_the_reconstruction():
    from evstream.distill.losses import unclipped

    img = torch.tensor([[[[-1.0, -0.98, 0.0], [0.995, 1.0, 0.5]]]])     # -0.98: 2.5 DN
    assert unclipped(img).tolist() == [[[False, True, True], [False, False, True]]]
    cfg = C.with_changes(C.preset("tiny"), setting="paired")
    batch = _batch()
    batch["image"] = torch.where(batch["image"] > 0, 1.0, -1.0)    # every pixel clipped
    torch.manual_seed(0)
    terms = TaskModule(_tiny_models(), cfg, stage=2).train()(batch)
    for k in ("pixel_kd/frame", "pixel_kd/a2e", "recon/e2a", "consistency"):
        assert float(terms[k].detach()) == 0.0, k     # nothing measured: no target there
    assert float(terms["pixel_kd/recon"].detach()) > 0 and float(terms["recon/a2e"].detach()) > 0
    off = C.apply_overrides(cfg, ["loss.frame_clip_mask=false"])
    terms = TaskModule(_tiny_models(), off, stage=2).train()(batch)
    assert all(float(terms[k].detach()) > 0 for k in ("pixel_kd/frame", "recon/e2a", "consistency"))


@pytest.mark.parametrize("detach", [False, True])
def test_e2a_detach_keeps_reconstruction_gradients_out_of_the_student(detach):
    """loss.e2a_detach: recon/e2a and consistency train E2A only; without it they reach the
    student's encoder too. The KD terms reach the student either way."""
    cfg = C.apply_overrides(C.with_changes(C.preset("tiny"), setting="paired"),
                            [f"loss.e2a_detach={str(detach).lower()}"])
    models = _tiny_models()
    terms = TaskModule(models, cfg, stage=2).train()(_batch())

    def grads(term: str, name: str) -> float:
        params = [p for p in models[name].parameters() if p.requires_grad]
        gs = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        return sum(float(g.abs().sum()) for g in gs if g is not None)

    for term in ("recon/e2a", "consistency"):
        assert grads(term, "e2a") > 0, term
        assert (grads(term, "student") == 0) == detach, term
    assert grads("pixel_kd/recon", "student") > 0


def test_recon_kd_where_none_and_min_conf():
    """loss.recon_kd_where=none: no KD target from the teacher's reading of E2A's picture (E2A
    still trains and the consistency term stays); loss.recon_kd_min_conf keeps only the pixels
    the teacher reads with at least that confidence."""
    base = C.with_changes(C.preset("tiny"), setting="paired")
    batch = _batch()
    torch.manual_seed(0)
    terms = TaskModule(_tiny_models(), C.apply_overrides(base, ["loss.recon_kd_where=none"]),
                       stage=2).train()(batch)
    assert not any(k.endswith("/recon") for k in terms)
    assert {"recon/e2a", "consistency", "pixel_kd/frame", "pixel_kd/a2e"} <= set(terms)
    torch.manual_seed(0)
    models = _tiny_models()
    sure = C.apply_overrides(base, ["loss.recon_kd_min_conf=0.999999"])
    terms = TaskModule(models, sure, stage=2).train()(batch)
    assert float(terms["pixel_kd/recon"].detach()) == 0.0      # an untrained teacher is unsure
    terms = TaskModule(models, C.apply_overrides(base, ["loss.recon_kd_min_conf=0.01"]),
                       stage=2).train()(batch)
    assert float(terms["pixel_kd/recon"].detach()) > 0
    with pytest.raises(EvstreamError, match="recon_kd_min_conf"):
        C.apply_overrides(base, ["loss.recon_kd_min_conf=1.5"])
