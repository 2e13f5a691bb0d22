"""What the AEDAT 4 reader (recording.py) and writer (writer.py) share, so neither imports the
other: the one useful line of a dv-processing exception, and the registry that keeps the dv
EventStore behind an event array reachable, so an .aedat4 -> .aedat4 copy writes the store as
it is instead of converting the numpy events back (see writer.py).
"""

from __future__ import annotations

import weakref

import numpy as np


def dv_message(e: BaseException) -> str:
    """The useful line of a dv-processing exception (it adds a C++ location and a stacktrace)."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    for ln in lines:
        if not ln or ln.startswith("Stacktrace") or ln[:1].isdigit() or ln.startswith("/"):
            continue
        return ln.split(" - Error info:", 1)[0]
    return type(e).__name__


# -- dv EventStores that travel with our event arrays ----------------------------------------

_DV_STORES: dict[int, tuple[weakref.ref, object]] = {}


def remember_dv_store(events: np.ndarray, store) -> None:
    """Note that `events` is a view of the WHOLE dv EventStore `store` (not a slice of one), so
    a writer can write the store itself. Forgotten when the array is garbage-collected."""
    key = id(events)
    _DV_STORES[key] = (weakref.ref(events, lambda _r, k=key: _DV_STORES.pop(k, None)), store)


def dv_store_of(events: np.ndarray):
    """The dv EventStore remembered for exactly this array (same object, same length), or None."""
    hit = _DV_STORES.get(id(events))
    if hit is None or hit[0]() is not events or len(hit[1]) != len(events):
        return None
    return hit[1]
