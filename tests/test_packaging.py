"""Packaging that coexists: evstream's metadata accepts the torch a user already has (a lower
bound only), while this checkout's Makefile installs with the exact pin of constraints.txt."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _torch_requirement() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    return req


def test_pyproject_accepts_other_recent_torch_versions():
    spec = _torch_requirement().specifier
    for version in ("2.4.1", "2.8.0", "2.11.0", "2.13.0", "2.15.0", "2.13.0+cu126"):
        assert spec.contains(version), (str(spec), version)
    assert not spec.contains("1.13.1")


def test_the_makefile_installs_with_the_exact_pin():
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert [str(r) for r in pins if r.name == "torch"] == ["torch==2.13.0"]
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
