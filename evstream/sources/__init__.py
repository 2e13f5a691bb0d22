"""Event sources: files, cameras, network streams, synthetic scenes.

`open_source(path_or_uri, **options)` picks the reader:

    file.aedat4                        AEDAT 4.0 (dv-processing)
    file.aedat / .aedat2 / .dat(jAER)  jAER AEDAT 2.0 (DAVIS240 / DVS128 address layouts)
    file.raw                           Prophesee EVT 2.0 / EVT 3.0
    file.dat                           Prophesee DAT (Event2d TD); jAER .dat is detected by header
    file.bin                           N-MNIST / N-Caltech101 40-bit ATIS
    file.npz / file.npy / file.h5      event arrays (t,x,y,p fields or DSEC-style events/{t,x,y,p})
    file.bag, BAG_FOLDER/, file.mcap   ROS 1 bags, ROS 2 bags (sqlite3 / mcap): event topics
    camera:davis346[?serial=...]       a live iniVation camera (dv-processing)
    tcp://host:port, unix:///path      a dv-processing NetworkWriter stream (DV software, evstream)
    synthetic:[?seed=..&rate=..]       deterministic moving shapes

Readers register themselves with `register_reader(suffixes, opener)`, `register_scheme`, or
`register_folder(marker, opener)` for recordings that are a folder holding a marker file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from evstream.errors import SourceError

if TYPE_CHECKING:
    from evstream.sources.base import EventSource, SourceStats

__all__ = ["EventSource", "SourceStats", "open_source", "register_folder", "register_reader",
           "register_scheme"]

_READERS: dict[str, Callable[..., EventSource]] = {}
_SCHEMES: dict[str, Callable[..., EventSource]] = {}
_FOLDERS: dict[str, Callable[..., EventSource]] = {}     # marker file name -> opener
_LOADED = False


def __getattr__(name: str):
    # the EventSource contract loads Numba (0.4 s): only when asked for, so that importing
    # this package (a stage process unpickling its SourceOptions, say) stays cheap
    if name in ("EventSource", "SourceStats"):
        from evstream.sources import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_reader(suffixes, opener: Callable[..., EventSource]) -> None:
    for s in ([suffixes] if isinstance(suffixes, str) else suffixes):
        _READERS[s.lower()] = opener


def register_scheme(scheme: str, opener: Callable[..., EventSource]) -> None:
    _SCHEMES[scheme] = opener


def register_folder(marker: str, opener: Callable[..., EventSource]) -> None:
    _FOLDERS[marker] = opener


def _load_readers() -> None:
    # Import reader modules lazily so `import evstream.sources` stays cheap.
    global _LOADED
    if _LOADED:
        return
    import importlib

    for mod in ("recording", "aedat2", "prophesee", "atis", "arrays", "camera", "network",
                "synthetic", "rosbag"):
        try:
            importlib.import_module(f"evstream.sources.{mod}")
        except ModuleNotFoundError as e:  # a reader module not written yet
            if e.name != f"evstream.sources.{mod}":
                raise
    _LOADED = True


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    for s in sorted(_READERS, key=len, reverse=True):
        if name.endswith(s):
            return s
    return os.path.splitext(name)[1]


def open_source(path_or_uri: str | os.PathLike, **options) -> EventSource:
    """Open a file, camera, network stream or synthetic source; raises SourceError (one line)."""
    _load_readers()
    spec = os.fspath(path_or_uri)
    if "://" in spec or spec.startswith(("camera:", "synthetic:")):
        scheme = spec.split(":", 1)[0]
        if scheme not in _SCHEMES:
            raise SourceError(f"{spec}: unknown source scheme {scheme!r} "
                              f"(known: {', '.join(sorted(_SCHEMES))})")
        return _call(_SCHEMES[scheme], spec, scheme, options)
    if not os.path.exists(spec):
        raise SourceError(f"{spec}: no such file")
    if os.path.isdir(spec):
        for marker, opener in _FOLDERS.items():
            if os.path.isfile(os.path.join(spec, marker)):
                return _call(opener, spec, "folder", options)
        raise SourceError(f"{spec}: is a directory, not a recording")
    if os.path.getsize(spec) == 0:
        raise SourceError(f"{spec}: file is empty")
    suffix = _suffix(spec)
    if suffix not in _READERS:
        raise SourceError(f"{spec}: unknown recording format {suffix or '(no suffix)'!r} "
                          f"(known: {', '.join(sorted(_READERS))})")
    return _call(_READERS[suffix], spec, suffix, options)


def _call(opener, spec: str, kind: str, options: dict) -> EventSource:
    options = {k: v for k, v in options.items() if v is not None}
    try:
        import inspect

        inspect.signature(opener).bind(spec, **options)
    except TypeError as e:
        raise SourceError(f"{spec}: option not valid for {kind} sources ({e})") from None
    return opener(spec, **options)
