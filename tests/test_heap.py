"""Stage processes keep freed heap memory mapped (stream/heap.py): dv-processing's per-packet
buffers stop faulting in again for every packet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from evstream.sources.writer import Aedat4Writer
from evstream.types import EVENT_DTYPE

# decode every packet after the first; print the page faults that took
_DECODE = """
import resource, sys
from evstream.stream.heap import keep_heap
ok = keep_heap() if sys.argv[2] == "1" else None
import dv_processing as dv
rec = dv.io.MonoCameraRecording(sys.argv[1])
rec.getNextEventBatch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
packets = 0
while (batch := rec.getNextEventBatch()) is not None:
    batch.numpy()
    packets += 1
print(ok, packets, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(path: str, keep: bool) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", _DECODE, path, "1" if keep else "0"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


def test_dv_packets_stop_faulting_in(tmp_path):
    path = str(tmp_path / "two_million.aedat4")
    rng = np.random.default_rng(0)
    with Aedat4Writer(path, width=346, height=260, camera="test") as w:
        for start in range(0, 2_000_000, 500_000):
            ev = np.zeros(500_000, EVENT_DTYPE)
            ev["t"] = (start + np.arange(len(ev))) // 5
            ev["x"], ev["y"] = rng.integers(0, 346, len(ev)), rng.integers(0, 260, len(ev))
            ev["p"] = rng.integers(0, 2, len(ev))
            w.write_events(ev)
    ok, packets, kept = _faults(path, keep=True)
    assert ok == "True" and packets >= 20
    assert kept < 20
    # glibc's defaults (2.36 here), for comparison: ~10 fresh pages per packet
    _, _, default = _faults(path, keep=False)
    assert default > 5 * packets
