"""The GPU-path risks of issue 18, fixed and shown on CPU.

- torch.compile: a worker warms up at two sizes (its guess, then the sensor's) with 8 batch
  sizes each; dynamo's default recompile limit (8 graphs per function) was spent by the first,
  and the rest ran eagerly with one log line. The compiled warm-ups here use dynamo with its
  "eager" backend: the same graph capture, guards and limit as inductor, without a C compiler.
- fp32 on CUDA: strict or TF32, chosen and reported (evstream.infer.fp32_math).
- training: AMP (autocast, and GradScaler for fp16), `--device` checked before anything loads,
  LOCAL_RANK's device under torchrun.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from evstream.errors import EvstreamError


class _OneConv(nn.Module):
    """The smallest segmentation network: dynamo traces it in milliseconds."""

    def __init__(self, channels: int = 2, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


CONFIG = {"name": "one-conv", "task": "segmentation", "in_channels": 2, "num_classes": 3,
          "input": {"crop": None, "resize": None, "pad_multiple": 1}}


@pytest.fixture
def fresh_dynamo():
    """No graphs or raised limits left by another test (they are process-wide)."""
    import torch._dynamo as dynamo
    from evstream.infer import predictor

    def clean():
        dynamo.reset()
        predictor._COMPILED.clear()

    clean()
    with dynamo.config.patch(recompile_limit=8):
        yield
    clean()


def _windows(hw, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, *hw)).astype(np.float32) for _ in range(n)]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compiled_warm_ups_at_two_sizes_stay_compiled(fresh_dynamo):
    from evstream.infer.predictor import Predictor

    torch.manual_seed(0)
    model = _OneConv()
    eager = Predictor(model, CONFIG, device="cpu", threads=1, sensor_hw=(20, 24))
    p = Predictor(model, CONFIG, device="cpu", threads=1, compile="eager", sensor_hw=(20, 24))
    assert p.info["compile_status"].startswith("compiled (eager): batch 1-8")
    before = _graphs()
    p.prepare((30, 40))                    # the worker's second warm-up, at the sensor's size
    eager.prepare((30, 40))
    status = p.info["compile_status"]
    assert status == "compiled (eager): batch 1-8 at network input 40x30", status
    assert _graphs() - before == 8         # all 8 new shapes compiled, none left to eager
    for a, b in zip(p.predict(_windows((30, 40))), eager.predict(_windows((30, 40)))):
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_a_recompile_limit_hit_is_visible_not_a_log_line(fresh_dynamo, monkeypatch, caplog):
    from evstream.infer import predictor

    # what the predictor did before: leave dynamo's limit as it is
    monkeypatch.setattr(predictor, "cover_recompile_limit", lambda graphs: 8)
    p = predictor.Predictor(_OneConv(), CONFIG, device="cpu", threads=1, compile="eager",
                            sensor_hw=(20, 24))
    assert p.info["compile_status"].startswith("compiled")
    with caplog.at_level(logging.WARNING, logger="evstream.infer"):
        p.prepare((30, 40))
    status = p.info["compile_status"]
    assert status == "eager: torch.compile hit its recompile limit (8 graphs) at 40x30", status
    assert status in caplog.text
    assert p.model is p._eager_model       # eager on purpose, and it still predicts
    assert p.predict(_windows((30, 40), n=1))[0]["labels"].shape == (30, 40)


def test_resized_input_compiles_once_for_any_sensor_size(fresh_dynamo):
    from evstream.infer.predictor import Predictor

    cfg = dict(CONFIG, input={"crop": None, "resize": [16, 16], "pad_multiple": 1})
    p = Predictor(_OneConv(), cfg, device="cpu", threads=1, compile="eager", max_batch=2,
                  sensor_hw=(20, 24))
    before = _graphs()
    p.prepare((30, 40))                    # the network sees 16x16 again: no new graph
    assert _graphs() == before
    assert p.info["compile_status"].startswith("compiled")


# -- fp32 math -----------------------------------------------------------------------------------

def test_fp32_math_is_set_consistently_and_reported():
    from evstream.infer.fp32_math import current_fp32_math, set_fp32_math
    from evstream.infer.predictor import Predictor

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for mode in ("tf32", "ieee"):
            set_fp32_math(mode)
            assert current_fp32_math() == mode
            # the newer interface (torch >= 2.9) reads the same (mixing the two raises there)
            if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
                assert (torch.backends.cuda.matmul.fp32_precision == "tf32") == (mode == "tf32")
        with pytest.raises(EvstreamError, match="expected ieee"):
            set_fp32_math("fp32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    p = Predictor(_OneConv(), CONFIG, device="cpu", threads=1, fp32_math="tf32")
    assert p.info["fp32_math"] == "ieee"   # no TF32 on a CPU, whatever was asked
    assert p.info["compile_status"] == "off"


# -- training: device, LOCAL_RANK, AMP -----------------------------------------------------------

def test_train_device_is_checked_before_anything_loads(capsys, tmp_path):
    from conftest import run_cli

    for device, says in (("cuda:7", "--device cuda:7: "), ("gpu", "--device 'gpu': expected")):
        code, out, err = run_cli(capsys, "train", "--device", device, "--data", tmp_path / "none",
                                 "--out", tmp_path / "run")
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and says in err, err
        assert not (tmp_path / "run").exists()


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch says on a machine with two GPUs (the choice logic only: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_local_rank_picks_the_gpu_under_torchrun(two_gpus, capsys):
    from evstream.distill.runtime import pick_device

    # one process: the index given is honoured, plain "cuda" is cuda:0
    assert pick_device("cuda:1", local_rank=0, world=1) == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=0, world=1) == torch.device("cuda", 0)
    # torchrun, two ranks: LOCAL_RANK wins over an index, which rank 0 says it ignores
    assert pick_device("cuda:0", local_rank=1, world=2) == torch.device("cuda", 1)
    assert capsys.readouterr().err == ""
    assert pick_device("cuda:1", local_rank=0, world=2) == torch.device("cuda", 0)
    assert "each of the 2 ranks uses cuda:LOCAL_RANK" in capsys.readouterr().err
    assert pick_device("auto", local_rank=1, world=2) == torch.device("cuda", 1)
    with pytest.raises(EvstreamError, match="LOCAL_RANK 3 needs cuda:3, but this machine has 2"):
        pick_device("cuda", local_rank=3, world=4)
    with pytest.raises(EvstreamError, match="--device cuda:5: this machine has 2 CUDA"):
        pick_device("cuda:5", local_rank=0, world=1)


def _quick_stage1(capsys, data, out, *extra):
    from conftest import run_cli

    code, stdout, err = run_cli(
        capsys, "train", "--preset", "tiny", "--threads", "1", "--no-progress", "--json",
        "--stage", "1", "--data", data, "--out", out, "--set", "stage1.iterations=12",
        "--set", "stage1.batch_size=4", "--set", "stage1.log_every=3",
        "--set", "stage1.ckpt_every=6", *extra)
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads(stdout.strip().splitlines()[-1]), [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    from test_train import make_synth

    return make_synth(tmp_path_factory.mktemp("synth") / "data", frames=6)


def test_bf16_autocast_trains_on_cpu(seg_set, tmp_path, capsys):
    fp32, loss32 = _quick_stage1(capsys, seg_set, tmp_path / "fp32")
    bf16, loss16 = _quick_stage1(capsys, seg_set, tmp_path / "bf16", "--amp", "bf16")
    assert fp32["amp"] == "off" and bf16["amp"] == "bf16" and bf16["fp32_math"] == "ieee"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["amp"] == "bf16"
    assert all(np.isfinite(loss16)) and loss16[-1] < 0.7 * loss16[0], loss16
    assert loss16 != loss32                      # the forward really ran in bfloat16
    np.testing.assert_allclose(loss16, loss32, rtol=0.25)


def test_fp16_grad_scaler_path_runs_and_is_saved(seg_set, tmp_path, capsys, monkeypatch):
    from evstream.distill import runtime

    # fp16 is refused on CPU (slow there); the path it takes on CUDA (autocast fp16 + a
    # GradScaler) runs on CPU just the same, so force it to check the scaler's steps and state
    monkeypatch.setattr(runtime, "resolve_amp", lambda amp, device: torch.float16)
    summary, losses = _quick_stage1(capsys, seg_set, tmp_path / "fp16")
    assert summary["amp"] == "fp16"
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    state = torch.load(tmp_path / "fp16" / "teacher" / "state.pt", weights_only=True)
    scaler = state["extra"]["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] > 0
