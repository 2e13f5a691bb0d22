"""evstream: real-time streaming pipeline for event cameras."""

__version__ = "0.1.0"
