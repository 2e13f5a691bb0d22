"""Event simulation: rendered intensity frames -> DVS events (ESIM-style, see esim.py).

Procedural labelled scenes and dataset generation build on this package in later issues.
"""

from evstream.sim.esim import EventSimulator, SimConfig, log_intensity, simulate

__all__ = ["EventSimulator", "SimConfig", "log_intensity", "simulate"]
