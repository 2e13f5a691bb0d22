"""`WindowDataset`: a torch Dataset of windows over a folder of recordings (see
evstream/windowing.py, whose windows and tensors it shares)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.utils.data

from evstream.stream.window import Window, windows_offline
from evstream.windowing import _read_all, _spec, _Tensorizer, find_recordings, window_config


class WindowDataset(torch.utils.data.Dataset):
    """A torch Dataset of windows over a folder of recordings (see the module doc)."""

    def __init__(self, root, window_ms: float | None = 50.0, window_events: int | None = None,
                 representation: str = "voxel", bins: int = 5, stride_ms: float | None = None,
                 stride_events: int | None = None, normalize: bool = False, tau_ms: float = 50.0,
                 label: Callable[[str], object] | None = None, **source_options):
        self.config = window_config(window_ms, window_events, stride_ms, stride_events,
                                    representation, bins, normalize, tau_ms)
        self.paths = find_recordings(root)
        self.label = label
        self.source_options = source_options
        self.index: list[tuple[int, int]] = []          # (recording, window within it)
        self._cache: tuple[int, list[Window], _Tensorizer] | None = None
        for i, path in enumerate(self.paths):
            n = len(self._windows_of(i)[0])
            self.index.extend((i, k) for k in range(n))

    def _windows_of(self, i: int) -> tuple[list[Window], _Tensorizer]:
        if self._cache is None or self._cache[0] != i:
            events, height, width = _read_all(self.paths[i], self.source_options)
            self._cache = (i, windows_offline(events, _spec(self.config)),
                           _Tensorizer(self.config, height, width))
        return self._cache[1], self._cache[2]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int):
        if not -len(self) <= item < len(self):
            raise IndexError(f"window {item} of {len(self)}")
        i, k = self.index[item]
        ws, make = self._windows_of(i)
        w = ws[k]
        x = torch.from_numpy(make(w))
        meta = {"path": self.paths[i], "window": k, "t0_us": int(w.t0_us),
                "t1_us": int(w.t1_us), "events": int(len(w.events))}
        if self.label is not None:
            return x, self.label(self.paths[i]), meta
        return x, meta
