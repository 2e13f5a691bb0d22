"""Command-line options shared by every command that opens a source.

`add_source_args(parser)` adds them; `open_from_args(args, spec)` turns them into
`open_source(spec, **options)`. Only options the user set are passed on, so a reader never sees
an option that does not concern it unless the user asked for it (then it is a one-line error).
"""

from __future__ import annotations

import argparse

from evstream.errors import EvstreamError
from evstream.sources import open_source


def add_source_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    g = p.add_argument_group("source")
    if positional:
        g.add_argument("source", nargs="?", help="recording path, tcp://HOST:PORT, unix:///PATH, "
                       "camera:MODEL or synthetic:")
    g.add_argument("--camera", metavar="MODEL", help="live camera: davis346, davis240, dvxplorer, "
                   "dvxplorer-lite, dvs128 or any")
    g.add_argument("--serial", help="camera serial number (with --camera)")
    g.add_argument("--width", type=int, help="sensor width, where the file does not say")
    g.add_argument("--height", type=int, help="sensor height, where the file does not say")
    g.add_argument("--bad-events", choices=("error", "drop"), help="events out of time order or "
                   "outside the sensor: stop with an error (files' default) or drop and count "
                   "them (live default)")
    g.add_argument("--stream", metavar="CAMERA", help="which camera of a multi-camera .aedat4")


def source_spec(args) -> str:
    """The source the user named: --camera MODEL wins over a positional path."""
    if getattr(args, "camera", None):
        spec = f"camera:{args.camera}"
        if getattr(args, "serial", None):
            spec += f"?serial={args.serial}"
        return spec
    spec = getattr(args, "source", None)
    if not spec:
        raise EvstreamError("no source given: name a recording, --camera MODEL or a tcp:// URI")
    return spec


def open_from_args(args, spec: str | None = None, **extra):
    spec = spec or source_spec(args)
    options = dict(width=args.width, height=args.height, bad_events=args.bad_events)
    if getattr(args, "stream", None):
        options["stream"] = args.stream
    options.update(extra)
    return open_source(spec, **options)
