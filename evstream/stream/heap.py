"""Keeping freed heap memory mapped in a stage process (glibc's malloc).

Why. dv-processing allocates a few blocks of up to a few MB for every packet it reads (the bytes
read from the file, the decompressed packet, the event vector, the numpy copy) and frees them
again before the next. With glibc's default settings a block that large is either its own mmap
(returned to the kernel on free) or lies at the top of the heap, which free() trims; either way
the next packet's blocks are fresh pages, and every page faults in again (~2 us each on this
VM). A fresh source process replaying a 10 M-event file took ~8,000 page faults (~16 ms) while
it streamed, on the critical path of a `--speed max` replay; a warmed-up process took 10.

`keep_heap()` makes blocks below 32 MiB come from the heap and never trims it (glibc's
M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; setting one turns off glibc's adaptive threshold, so both
are set), then maps `reserve` bytes of heap once (malloc, touch, free), so the first packets
find their pages already there. The cost: the process keeps its peak heap until it exits,
which for a stage is its steady state anyway. Where the C library has no `mallopt` (not glibc)
it does nothing and returns False.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20        # glibc's documented upper limit for it on 64-bit
TRIM_THRESHOLD = 1 << 30
RESERVE = 16 << 20            # below MMAP_THRESHOLD, so it comes from the heap


def _libc():
    # the process's own symbols, as shm.py and ring.py load libc (find_library would run
    # ldconfig: ~4 ms at every stage start)
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    return libc


def keep_heap(reserve: int = RESERVE) -> bool:
    """See the module comment. -> True when the settings took effect."""
    libc = _libc()
    if libc is None:
        return False
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False
    if reserve > 0:
        p = libc.malloc(reserve)
        if p:
            ctypes.memset(p, 0, reserve)        # fault the pages in now, before `ready`
            libc.free(p)                        # back to the heap, which is no longer trimmed
    return True
