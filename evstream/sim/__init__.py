"""Event simulation and procedural labelled worlds.

    esim.py        rendered intensity frames -> DVS events (ESIM-style; noise.py: its random parts)
    render.py      textures, mip-mapped sampling kernels, smooth motion signals
    camera.py      the APS frame camera (exposure, gain, noise, clipping) and the conditions
    driver.py      adaptive virtual frames -> events + APS frames + labels, for any world
    scenes_seg.py  the driving world with DDD17's six classes (seg_layers, seg_kernel, sprites)
    scenes_cls.py  the object-recognition world (N-Caltech101-like saccades, ten shapes)
    dataset.py     planning, generation and the dataset layout (writers.py); `evstream synth`

Only the simulator is imported here; the worlds and the dataset code load on use.
"""

from evstream.sim.esim import EventSimulator, SimConfig, log_intensity, simulate

__all__ = ["EventSimulator", "SimConfig", "log_intensity", "simulate"]
