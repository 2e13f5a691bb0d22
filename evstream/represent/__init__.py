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

from evstream.represent.evdistill import evdistill_rgb, evdistill_rgb_numba, evdistill_rgb_numpy
from evstream.represent.histogram import histogram, histogram_numba, histogram_numpy
from evstream.represent.registry import (UnknownRepresentationError, get_representation,
                                         list_representations, register_representation,
                                         representation_params)
from evstream.represent.timesurface import (NEVER_US, last_timestamps, last_timestamps_numpy,
                                            time_surface, time_surface_numba, time_surface_numpy)
from evstream.represent.voxel import voxel_grid, voxel_grid_numba, voxel_grid_numpy

__all__ = [
    "NEVER_US", "UnknownRepresentationError", "evdistill_rgb", "evdistill_rgb_numba",
    "evdistill_rgb_numpy", "get_representation", "histogram",
    "histogram_numba", "histogram_numpy", "last_timestamps", "last_timestamps_numpy",
    "list_representations", "register_representation", "representation_params", "time_surface",
    "time_surface_numba", "time_surface_numpy", "voxel_grid", "voxel_grid_numba",
    "voxel_grid_numpy",
]
