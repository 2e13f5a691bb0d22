"""evstream: real-time streaming pipeline for event cameras.

For Python users: `evstream.windows(spec, window_ms=50, representation="voxel", bins=5)` yields
(t_start_us, t_end_us, tensor) for any source, and `evstream.WindowDataset(folder, ...)` is a
torch Dataset over a folder of recordings (evstream.windowing and evstream.window_dataset,
imported on first use, so `import evstream` stays light).
"""

__version__ = "0.1.0"

_LAZY = {"windows": "evstream.windowing", "WindowDataset": "evstream.window_dataset",
         "open_source": "evstream.sources"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evstream' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
