"""Event representations: one window of events -> a float32 (C, H, W) tensor.

Each representation has a readable numpy reference (`*_numpy`) and a fast Numba kernel side by
side, held equal by tests, and is registered by name (see registry.py for the shared input
contract: any structured array with t, x, y, p; never mutated; events inside the sensor; `out`
reused when given):

    voxel          E2VID voxel grid, num_bins channels           (voxel.py)
    histogram      polarity counts, channel 0 OFF / 1 ON          (histogram.py)
    histogram_max  the same, each channel divided by its maximum  (histogram.py)
    timesurface    exp(-(t_ref - last t)/tau) per polarity        (timesurface.py)
    evdistill_rgb  EvDistill's event PNG: channel 0 ON / 1 OFF     (evdistill.py)
                   counts over their maxima in 8 bits, 2 empty

`voxel_grid(events, num_bins, height, width, normalize=False, out=None)` is the stable public
entry point of the voxel grid (the fast kernel); `voxel_grid_numpy` is its reference.
"""

# Each name comes from its module when first asked for (PEP 562): importing the package, or its
# registry alone (the launcher checks a representation's name), loads no Numba kernel.
_FROM = {
    "evdistill": ("evdistill_rgb", "evdistill_rgb_numba", "evdistill_rgb_numpy"),
    "histogram": ("histogram", "histogram_numba", "histogram_numpy"),
    "registry": ("UnknownRepresentationError", "get_representation", "list_representations",
                 "register_representation", "representation_params"),
    "timesurface": ("NEVER_US", "last_timestamps", "last_timestamps_numpy", "time_surface",
                    "time_surface_numba", "time_surface_numpy"),
    "voxel": ("voxel_grid", "voxel_grid_numba", "voxel_grid_numpy"),
}
_MODULE_OF = {name: mod for mod, names in _FROM.items() for name in names}

__all__ = [
    "NEVER_US", "UnknownRepresentationError", "evdistill_rgb", "evdistill_rgb_numba",
    "evdistill_rgb_numpy", "get_representation", "histogram",
    "histogram_numba", "histogram_numpy", "last_timestamps", "last_timestamps_numpy",
    "list_representations", "register_representation", "representation_params", "time_surface",
    "time_surface_numba", "time_surface_numpy", "voxel_grid", "voxel_grid_numba",
    "voxel_grid_numpy",
]


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module 'evstream.represent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"evstream.represent.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))

