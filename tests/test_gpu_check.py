"""tools/gpu_check on a machine without a GPU: a real child process in CPU mode (--quick sizes).

It must exit 0, run every check that needs no GPU (and pass them), list the GPU checks as
skipped with the reason, and write both reports. With a GPU the same command runs them all
(tens of seconds here, minutes there): that run is the device check of docs/gpu.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

GPU_CHECKS = {"fp32", "tf32", "fp16", "bf16", "cuda_graphs", "compile", "worker_latency",
              "train_fp16", "student_latency"}
CPU_CHECKS = {"environment", "cpu_bf16", "compile_cpu", "train", "export", "replay"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the CPU mode is not")
def test_cpu_mode_runs_what_needs_no_gpu_and_lists_the_rest(tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([str(ROOT / "tools" / "gpu_check"), "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                            "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "GPU_CHECK.json").read_text())
    md = (out / "GPU_CHECK.md").read_text()
    status = {c["name"]: c["status"] for c in rep["checks"]}
    assert set(status) == GPU_CHECKS | CPU_CHECKS | {"resume", "ddp", "ddp_train"}
    assert rep["mode"] == "cpu" and rep["failed"] == 0
    assert {n for n, s in status.items() if s == "passed"} == CPU_CHECKS, status
    assert GPU_CHECKS <= set(rep["skipped_checks"])
    why = {c["name"]: c["summary"] for c in rep["checks"]}
    assert all(why[n] == "needs a CUDA device (none here)" for n in GPU_CHECKS)
    assert "needs 2 CUDA devices" in why["ddp_train"]
    assert set(rep["skipped_checks"]) == set(status) - CPU_CHECKS   # resume, ddp: --quick
    # the last stdout line names what was skipped; the markdown holds every check's row
    assert r.stdout.strip().splitlines()[-1].startswith(f"{len(CPU_CHECKS)} passed, 0 failed")
    for name in status:
        assert f"| {name} |" in md
    train = next(c for c in rep["checks"] if c["name"] == "train")["metrics"]
    for stage in ("stage1", "stage2"):
        assert train[stage]["loss_last"] < train[stage]["loss_first"]
    replay = next(c for c in rep["checks"] if c["name"] == "replay")["metrics"]
    assert replay["predictions"] == replay["windows"] > 0


def test_an_unknown_check_name_is_one_line(tmp_path):
    r = subprocess.run([str(ROOT / "tools" / "gpu_check"), "--only", "fp32,nope", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                            "HOME": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.strip() == \
        "gpu_check: error: unknown check(s) nope (see --list)"
