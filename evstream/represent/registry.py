"""The representation registry and the input contract every representation shares.

A representation turns one window of events into a float32 tensor (C, H, W). Each one is a
small class registered under a name with `@register_representation(name)`; the registry holds one
instance of it, and `get_representation(name)` hands that instance out. An instance has:

    name                                     the registered name
    channels(**params) -> int                C for these parameters
    compute(events, height, width, out=None, **params)        the fast (Numba) kernel
    compute_numpy(events, height, width, out=None, **params)  the readable numpy reference
    requires_sorted: bool                    raises ValueError on events not sorted by t
    test_params: tuple[dict, ...]            parameter sets the registry-driven tests run

Optional: `accumulator(height, width, **params)` -> an object with `begin(out, t_last_guess_us)`,
`update(events_so_far)` and `finish(window_events) -> (grid, exact_fast_path)` that builds a
time window's tensor while the window is still open and always returns exactly what
`compute` would (see `VoxelAccumulator` in voxel.py). The window stage uses it when present.

`channels` accepts the same keyword parameters as `compute`, so a caller can size its output
buffers from the one parameter dict it will compute with.

Input contract (checked here, once, by `check_events` / `check_out`):
- `events` is a 1-D numpy structured array with at least the fields t, x, y, p. t is an integer
  timestamp (int64 microseconds in evstream), x and y are integers (uint16 in evstream, any
  integer type accepted), p is bool or an integer type; p > 0 means ON, anything else OFF (so
  0/1, -1/+1 and bool polarities all work). Other fields are ignored. Any memory layout works,
  including strided views.
- Kernels never modify `events`.
- Every event must lie inside the sensor: 0 <= x < width, 0 <= y < height. A kernel finding one
  outside raises ValueError naming the event; it never writes out of bounds.
- Representations that depend on time order (voxel grid, time surface) require t sorted
  non-decreasing and raise ValueError otherwise. Sources guarantee both properties.
- `out`, when given, must be a writeable C-contiguous float32 array of exactly (C, H, W); the
  kernel zeroes it, fills it and returns it (no allocation on the hot path). Without `out` a new
  array is returned. After a ValueError the contents of `out` are unspecified.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from evstream.errors import EvstreamError


class UnknownRepresentationError(EvstreamError, ValueError):
    """A representation name that is not registered (a user/config mistake: one line)."""


_REGISTRY: dict[str, object] = {}


def register_representation(name: str) -> Callable[[type], type]:
    """Class decorator: register one instance of the class under `name`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"representation {name!r} registered twice")
        for attr in ("channels", "compute", "compute_numpy"):
            if not callable(getattr(cls, attr, None)):
                raise TypeError(f"representation {name!r}: class {cls.__name__} lacks {attr}()")
        inst = cls()
        inst.name = name
        if not hasattr(inst, "test_params"):
            inst.test_params = ({},)
        if not hasattr(inst, "requires_sorted"):
            raise TypeError(f"representation {name!r}: class {cls.__name__} must say whether "
                            f"it requires_sorted")
        _REGISTRY[name] = inst
        return cls

    return deco


# The built-in representations and the module that registers each: names are known (for
# checking a command line) without importing the modules and their Numba kernels, which a
# launcher never runs.
BUILT_IN = {"voxel": "voxel", "histogram": "histogram", "histogram_max": "histogram",
            "timesurface": "timesurface", "evdistill_rgb": "evdistill"}


def get_representation(name: str):
    if name not in _REGISTRY and name in BUILT_IN:
        import importlib

        importlib.import_module(f"evstream.represent.{BUILT_IN[name]}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_representations()) or "none"
        raise UnknownRepresentationError(
            f"unknown representation {name!r} (known: {known})") from None


def list_representations() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILT_IN))


# ---------------------------------------------------------------------------------------------
# Shared input checks (cheap: dtype and shape inspection only, no pass over the events).

def representation_params(window_cfg) -> dict:
    """The parameters a pipeline's WindowConfig gives its representation (the time surface also
    gets the window end as its reference time, per window, from the window stage)."""
    if window_cfg.representation == "voxel":
        return {"num_bins": window_cfg.num_bins, "normalize": window_cfg.normalize}
    if window_cfg.representation == "timesurface":
        return {"tau_us": window_cfg.tau_us}
    return {}


def check_events(events: np.ndarray) -> None:
    if not isinstance(events, np.ndarray) or events.ndim != 1 or events.dtype.names is None:
        raise ValueError("events must be a 1-D numpy structured array with fields t, x, y, p")
    fields = events.dtype.fields
    for f in ("t", "x", "y", "p"):
        if f not in fields:
            raise ValueError(f"events lack the field {f!r} (have {', '.join(events.dtype.names)})")
    for f in ("t", "x", "y"):
        kind = fields[f][0].kind
        if kind not in "iu" or fields[f][0].shape:
            raise ValueError(f"events field {f!r} must be an integer scalar, got {fields[f][0]}")
    pdt = fields["p"][0]
    if pdt.kind not in "biu" or pdt.shape:
        raise ValueError(f"events field 'p' must be bool or integer, got {pdt}")


def check_size(height: int, width: int) -> tuple[int, int]:
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"sensor size must be positive, got {width}x{height}")
    return height, width


def check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a caller-provided output buffer, or allocate one. Returns it, not yet zeroed."""
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 numpy array, got "
                         f"{getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


# Kernel status codes: each Numba kernel returns (code, event index); the wrapper raises.
OK, OUT_OF_BOUNDS, UNSORTED = 0, 1, 2



def zeroed_output(events: np.ndarray, height: int, width: int, out: np.ndarray | None,
                  channels: int) -> tuple[np.ndarray, int, int]:
    """The checks every kernel starts with (events, size, out) -> (zeroed (channels, H, W)
    output, height, width)."""
    check_events(events)
    height, width = check_size(height, width)
    arr = check_out(out, (channels, height, width))
    arr.fill(0)
    return arr, height, width

def raise_kernel_error(code: int, index: int, events: np.ndarray, height: int,
                       width: int) -> None:
    """Turn a kernel's (code, index) status into the one-line ValueError the contract promises."""
    if code == OK:
        return
    e = events[index]
    if code == OUT_OF_BOUNDS:
        raise ValueError(f"event {index} (t={int(e['t'])}, x={int(e['x'])}, y={int(e['y'])}) "
                         f"is outside the {width}x{height} sensor")
    if code == UNSORTED:
        prev = int(events[index - 1]["t"])
        raise ValueError(f"events are not sorted by t: event {index} has t={int(e['t'])} "
                         f"after t={prev}")
    raise AssertionError(f"unknown kernel status {code}")


def check_sorted_numpy(t: np.ndarray) -> None:
    """Reference-side check: first index where t decreases, as the fast kernels report it."""
    if len(t) > 1:
        bad = np.flatnonzero(t[1:] < t[:-1])
        if len(bad):
            i = int(bad[0]) + 1
            raise ValueError(f"events are not sorted by t: event {i} has t={int(t[i])} "
                             f"after t={int(t[i - 1])}")


def check_bounds_numpy(x: np.ndarray, y: np.ndarray, t: np.ndarray, height: int,
                       width: int) -> None:
    bad = np.flatnonzero((x < 0) | (x >= width) | (y < 0) | (y >= height))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"event {i} (t={int(t[i])}, x={int(x[i])}, y={int(y[i])}) "
                         f"is outside the {width}x{height} sensor")
