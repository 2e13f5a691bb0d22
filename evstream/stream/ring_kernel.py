"""The ring writer's Numba kernel, apart from ring.py so that creating a ring (the launcher
does, and nothing else of the ring) imports no Numba: 0.2-0.35 s of the command's start-up."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def copy_checked(src, dst, last_t, width, height):
    """Copy events (as int64 word pairs: t, then x | y << 16 | p << 32) from src to dst while
    each is inside width x height and no older than the one before it (the first: than
    last_t); -> the index of the first that is not (len(src) when all are)."""
    prev = last_t
    uw = np.uint64(width)
    uh = np.uint64(height)
    for i in range(src.shape[0]):
        t = src[i, 0]
        w = src[i, 1]
        if t < prev or np.uint64(w & 0xFFFF) >= uw or np.uint64((w >> 16) & 0xFFFF) >= uh:
            return i
        dst[i, 0] = t
        dst[i, 1] = w
        prev = t
    return src.shape[0]
