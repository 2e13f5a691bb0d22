"""Windows of any source as tensors, for notebooks and training scripts (no processes).

    import evstream
    for t0_us, t1_us, x in evstream.windows("rec.aedat4", window_ms=50, bins=5):
        ...                                   # x: float32 (5, H, W), numpy

    ds = evstream.WindowDataset("recordings/", window_ms=50, representation="voxel", bins=5)
    x, meta = ds[0]                           # x: torch float32 (C, H, W); meta: path, t0_us, ...

`windows(spec, ...)` opens `spec` with `open_source` (a file of any format evstream reads, a
`synthetic:` or `tcp://` source, a camera; source options such as filters pass through), cuts
the stream with the same `Windower` the live pipeline's window stage uses, and computes each
window's tensor with the same registered representation and parameters
(`representation_params` of the same `WindowConfig`), so each yielded tensor equals the one a
lossless `evstream replay` hands to its consumer (tests/test_windowing.py compares them with
the sink's `dump_windows`). Windows are time windows (`window_ms`, `stride_ms`) or count
windows (`window_events`, `stride_events`); the last, partial window at the end of a finite
source is yielded too (as the pipeline does). Each tensor is a new array the caller owns.

`WindowDataset(root, ...)` (evstream/window_dataset.py, which imports torch; this module does
not): a `torch.utils.data.Dataset` over the recordings under `root` (a
folder, searched recursively for the extensions evstream reads, or a list of paths). It reads
each recording once when it is built, to count its windows, and then on demand (the most recent
recording's events are kept, so a sequential pass reads each file once more). `label` is an
optional function path -> label (for N-MNIST: the digit folder's name); items are then
(tensor, label, meta), else (tensor, meta).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from evstream.config import WindowConfig
from evstream.errors import EvstreamError
from evstream.stream.window import Window, Windower, WindowSpec

# what WindowDataset looks for in a folder (the formats sources/ reads)
RECORDING_SUFFIXES = (".aedat4", ".aedat", ".aedat2", ".raw", ".dat", ".bin", ".npz", ".npy",
                      ".h5", ".hdf5")


def window_config(window_ms: float | None = 50.0, window_events: int | None = None,
                  stride_ms: float | None = None, stride_events: int | None = None,
                  representation: str = "voxel", bins: int = 5, normalize: bool = False,
                  tau_ms: float = 50.0) -> WindowConfig:
    """The pipeline's WindowConfig for these keyword arguments (a one-line error if they do
    not fit together)."""
    from evstream.represent import get_representation

    get_representation(representation)              # an unknown name: one line
    if window_events is not None:
        if stride_ms is not None:
            raise EvstreamError("count windows (window_events) take stride_events, not stride_ms")
        return WindowConfig(mode="count", count=int(window_events),
                            stride_count=None if stride_events is None else int(stride_events),
                            representation=representation, num_bins=int(bins),
                            normalize=normalize, tau_us=tau_ms * 1000.0)
    if stride_events is not None:
        raise EvstreamError("time windows (window_ms) take stride_ms, not stride_events")
    if window_ms is None or not window_ms > 0:
        raise EvstreamError("give window_ms > 0 or window_events")
    return WindowConfig(mode="time", window_us=int(round(window_ms * 1000)),
                        stride_us=None if stride_ms is None else int(round(stride_ms * 1000)),
                        representation=representation, num_bins=int(bins), normalize=normalize,
                        tau_us=tau_ms * 1000.0)


def _spec(wc: WindowConfig) -> WindowSpec:
    return WindowSpec(mode=wc.mode, window_us=wc.window_us, stride_us=wc.stride_us,
                      count=wc.count, stride_count=wc.stride_count)


class _Tensorizer:
    """A window's tensor exactly as the window stage computes it."""

    def __init__(self, wc: WindowConfig, height: int, width: int):
        from evstream.represent import get_representation, representation_params

        self.rep = get_representation(wc.representation)
        self.params = representation_params(wc)
        self.time_ref = wc.representation == "timesurface"
        self.height, self.width = height, width
        self.channels = self.rep.channels(**self.params)

    def __call__(self, w: Window) -> np.ndarray:
        extra = {"t_ref_us": int(w.t1_us)} if self.time_ref else {}
        return self.rep.compute(w.events, self.height, self.width, **self.params, **extra)


def windows(spec, window_ms: float | None = 50.0, window_events: int | None = None,
            representation: str = "voxel", bins: int = 5, stride_ms: float | None = None,
            stride_events: int | None = None, normalize: bool = False, tau_ms: float = 50.0,
            **source_options) -> Iterator[tuple[int, int, np.ndarray]]:
    """(t_start_us, t_end_us, float32 (C, H, W) array) for every window of `spec` (see the
    module doc). Source options (filters, bad_events, ...) go to open_source."""
    from evstream.sources import open_source

    wc = window_config(window_ms, window_events, stride_ms, stride_events, representation, bins,
                       normalize, tau_ms)
    src = open_source(spec, **source_options)
    try:
        make = _Tensorizer(wc, src.height, src.width)
        windower = Windower(_spec(wc))
        for pkt in src.packets():
            if len(pkt.events):
                for w in windower.push(pkt.events):
                    yield int(w.t0_us), int(w.t1_us), make(w)
        for w in windower.finish():
            yield int(w.t0_us), int(w.t1_us), make(w)
    finally:
        src.close()


def _read_all(path: str, source_options: dict) -> tuple[np.ndarray, int, int]:
    from evstream.sources import open_source
    from evstream.types import EVENT_DTYPE, concat_events

    src = open_source(path, **source_options)
    try:
        parts = [pkt.events for pkt in src.packets() if len(pkt.events)]
        events = concat_events(parts) if parts else np.zeros(0, EVENT_DTYPE)
        return events, src.height, src.width
    finally:
        src.close()


def find_recordings(root) -> list[str]:
    """The recordings under a folder (recursively, sorted), or the given list of paths."""
    if isinstance(root, (list, tuple)):
        return [os.fspath(p) for p in root]
    root = Path(root)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise EvstreamError(f"{root}: no such folder or file")
    found = sorted(str(p) for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES)
    if not found:
        raise EvstreamError(f"{root}: no recordings ({', '.join(RECORDING_SUFFIXES)})")
    return found
