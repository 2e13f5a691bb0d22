"""Shared fixtures: the real recordings in ../shared/realdata and synthetic events."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evstream.types import EVENT_DTYPE

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Path to ../shared/realdata; tests that need it skip with a reason where it is absent."""
    if not (REALDATA / "MANIFEST.md").exists():
        pytest.skip(f"real recordings not found at {REALDATA} (../shared beside the checkout)")
    return REALDATA


def random_events(n: int, width: int = 346, height: int = 260, t0: int = 0,
                  duration_us: int = 50_000, seed: int = 0) -> np.ndarray:
    """Sorted random events in EVENT_DTYPE (the one synthetic-events helper for tests)."""
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t0, t0 + duration_us, n))
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


@pytest.fixture
def events_factory():
    return random_events


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """evstream's CLI in this process (fast): (exit code, stdout, stderr). Tests that need the
    real entry point use run_evstream."""
    from evstream.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_evstream(*args, timeout=120) -> subprocess.CompletedProcess:
    """`python -m evstream ARGS` in a child process from the checkout root, text output captured."""
    return subprocess.run([sys.executable, "-m", "evstream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(autouse=True)
def _no_foreign_leftovers():
    """Shared memory left by a launcher that is gone (another test run on this machine, a
    killed process) is removed before each test, as the next evstream run would, so a test's
    own run does not print the launcher's one-line notice about it. Tests that leave segments on
    purpose check that notice themselves, within the test."""
    from evstream.stream import lifeline

    lifeline.remove_stale()
    yield
