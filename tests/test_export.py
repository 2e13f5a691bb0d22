"""`evstream export`: the trained student alone as model.pt (checkpoint + config) and model.ts
(TorchScript), both giving the trained network's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from test_train import QUICK, _one_thread, make_synth  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth") / "data",
                      splits=(("train", 2), ("val", 1), ("test", 1)), frames=6)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A student trained for a few iterations (events with labels: no teacher stage)."""
    import contextlib
    import io

    from evstream.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "r"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", *QUICK, "--data", str(data), "--out", str(out), "--stage", "2",
                     "--setting", "events_gt", "--set", "stage2.iterations=4"])
    assert code == 0
    return out


def _real_batch(run, data) -> torch.Tensor:
    from evstream.distill.data import open_dataset
    from evstream.nn import load_checkpoint

    cfg = load_checkpoint(run / "student" / "model.pt")["config"]
    ds = open_dataset(data, split="test", representation=cfg["representation"],
                      window_us=cfg["window"]["window_us"], input_cfg=cfg["input"])
    return torch.stack([ds.get(i, {"events"})["events"] for i in range(4)])


def test_export_both_formats_match_the_trained_student(run, data, tmp_path, capsys):
    from evstream.commands.export import load_torchscript
    from evstream.nn import load_checkpoint, load_model

    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "exp", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["source"] == str(run / "student" / "model.pt")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["model.pt", "model.ts"]
    assert r["check"]["model_pt_max_abs_diff"] == 0.0
    assert r["check"]["model_ts_max_abs_diff"] <= 1e-5

    trained, cfg = load_model(run / "student" / "model.pt")       # eval mode
    exported, cfg2 = load_model(tmp_path / "exp")
    ts, ts_cfg = load_torchscript(tmp_path / "exp" / "model.ts")
    assert cfg2 == cfg and ts_cfg == cfg and cfg["trained"] is True
    assert not ts.training
    g = torch.Generator().manual_seed(1)
    for x in (_real_batch(run, data), torch.randn(2, 5, 48, 64, generator=g),
              torch.randn(1, 5, 64, 96, generator=g)):                # another size: dynamic
        with torch.no_grad():
            ref = trained(x)
            assert torch.equal(exported(x), ref)
            torch.testing.assert_close(ts(x), ref, rtol=1e-5, atol=1e-5)
    ck = load_checkpoint(tmp_path / "exp" / "model.pt")
    assert ck["state_dict"].keys() == trained.state_dict().keys()  # the student alone


def test_exported_checkpoint_scores_like_the_run(run, data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", run / "student" / "model.pt", "--out",
                           tmp_path / "exp", "--no-torchscript")
    assert code == 0, err
    assert not (tmp_path / "exp" / "model.ts").exists()
    scores = []
    for model in (run, tmp_path / "exp"):
        code, out, err = run_cli(capsys, "eval", model, "--data", data, "--json")
        assert code == 0, err
        r = json.loads(out)
        scores.append((r["miou"], r["pixel_acc"], r["per_class"], r["conditions"]))
    assert scores[0] == scores[1]


def test_export_refuses_a_run_without_a_student(run, tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "export", tmp_path / "empty_run", "--out", tmp_path / "x")
    assert code == 2 and "student/model.pt" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "export", run, "--out", blocker)
    assert code == 2 and "is not a folder" in err
