"""evstream.windows / evstream.WindowDataset (evstream/windowing.py, window_dataset.py): the
windows and tensors a lossless replay computes, without processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evstream
from evstream.config import PipelineConfig, SourceConfig, WindowConfig
from evstream.errors import EvstreamError

ROOT = Path(__file__).resolve().parents[1]


def _pipeline_windows(path, wc: WindowConfig, tmp_path) -> dict:
    from evstream.pipeline import run_pipeline

    dump = tmp_path / "dump.npz"
    cfg = PipelineConfig(source=SourceConfig(spec=str(path), speed=None), window=wc,
                         lossless=True, telemetry_interval_s=0, dump_windows=str(dump))
    res = run_pipeline(cfg)
    assert res.exit_code == 0, res.error
    return dict(np.load(dump))


@pytest.mark.parametrize("kwargs", [
    {"window_ms": 10, "bins": 5},
    {"window_ms": 20, "stride_ms": 5, "representation": "timesurface", "tau_ms": 10},
    {"window_events": 20_000, "representation": "histogram"},
])
def test_windows_equal_the_pipelines(realdata, tmp_path, kwargs):
    rec = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    from evstream.windowing import window_config
    wc = window_config(**{k: v for k, v in kwargs.items()})
    ref = _pipeline_windows(rec, wc, tmp_path)
    got = list(evstream.windows(rec, **kwargs))
    assert len(got) == len(ref["t0_us"]) > 3
    assert [g[0] for g in got] == ref["t0_us"].tolist()
    assert [g[1] for g in got] == ref["t1_us"].tolist()
    for (_, _, x), y in zip(got, ref["windows"]):
        assert x.dtype == np.float32 and np.array_equal(x, y)


def test_window_dataset_items_and_labels(realdata):
    paths = sorted((realdata / "nmnist_real" / "Train" / "3").glob("*.bin"))[:2] + \
        sorted((realdata / "nmnist_real" / "Train" / "7").glob("*.bin"))[:2]
    ds = evstream.WindowDataset(paths, window_ms=100, representation="histogram",
                                label=lambda p: int(Path(p).parent.name))
    per_file = [list(evstream.windows(p, window_ms=100, representation="histogram"))
                for p in paths]
    assert len(ds) == sum(map(len, per_file))
    x, label, meta = ds[len(per_file[0])]                  # the second recording's first window
    t0, t1, ref = per_file[1][0]
    assert label == 3 and meta["path"] == str(paths[1]) and (meta["t0_us"], meta["t1_us"]) == (t0, t1)
    assert x.dtype == __import__("torch").float32 and np.array_equal(x.numpy(), ref)
    assert ds[-1][1] == 7
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(EvstreamError, match="stride_events"):
        list(evstream.windows("synthetic:?duration=0.1", window_ms=10, stride_events=5))
    with pytest.raises(EvstreamError, match="not registered|unknown"):
        list(evstream.windows("synthetic:?duration=0.1", representation="nope"))
    with pytest.raises(EvstreamError, match="no recordings"):
        evstream.WindowDataset(tmp_path)


def test_the_readme_example_runs(tmp_path):
    """README's windows section, run as written: its shell line, then its Python block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Windows for notebooks"):]
    shell = re.search(r"```sh\n(.*?)\n```", section, re.S).group(1).strip()
    code = re.search(r"<!-- windows-example[^>]*-->\n```python\n(.*?)```", section, re.S).group(1)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run(shell.replace("evstream ", f"{sys.executable} -m evstream ", 1),
                       shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("(5, 260, 346)") and len(lines) >= 20 + 3     # 20 windows of 50 ms
    assert lines[-1].startswith("torch.Size([")
