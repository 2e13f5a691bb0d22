"""Command-line options shared by every command that opens a source.

`add_source_args(parser)` adds the source, noise-filter and camera options;
`add_replay_args(parser)` adds --speed/--loop/--start/--end for commands that replay files;
`source_options(args, spec)` turns them into the typed `sources.options.SourceOptions` (what the
pipeline's source process opens with); `open_from_args(args, spec)` opens the source with them
(`sources.options.open_configured`: the reader's options, then the noise filters) and, when
replay options are present, wraps it in `pacing.paced` (with a reopen factory for --loop).

Only options the user set are passed on, so a reader never sees an option that does not concern
it unless the user asked for it (then it is a one-line error). Values that make no sense are
rejected by argparse (one line, exit 2) or by `open_from_args` (EvstreamError, exit 2).
`args` may be any object with these attributes (an argparse Namespace, a SimpleNamespace);
missing attributes count as "not set".
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from evstream.errors import EvstreamError
from evstream.sources.options import SourceOptions, open_configured

REPLAY_FLAGS = ("speed", "loop", "start", "end")
CAMERA_FLAG_NAMES = {"time_interval_us": "--time-interval-us", "aps": "--aps/--no-aps",
                     "exposure_us": "--exposure-us",
                     "sensor_noise_filter_us": "--sensor-noise-filter"}


# -- argparse value types: one-line errors ---------------------------------------------------

def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def nonnegative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds >= 0")
    return value


def speed_value(text: str):
    from evstream.sources.pacing import parse_speed

    try:
        speed = parse_speed(text)
    except EvstreamError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    return "max" if speed is None else speed


def roi_value(text: str) -> tuple[int, int, int, int]:
    from evstream.errors import SourceError
    from evstream.sources.filters import parse_roi

    try:
        return parse_roi(text)
    except SourceError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


# -- parsers -------------------------------------------------------------------------------------

def add_source_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    g = p.add_argument_group("source")
    if positional:
        g.add_argument("source", nargs="?", help="recording path, tcp://HOST:PORT, unix:///PATH, "
                       "camera:MODEL or synthetic:")
    g.add_argument("--camera", metavar="MODEL", help="live camera: davis346, davis240, dvxplorer, "
                   "dvxplorer-lite, dvs128 or any")
    g.add_argument("--serial", help="camera serial number (with --camera)")
    g.add_argument("--width", type=positive_int, help="sensor width, where the file does not say")
    g.add_argument("--height", type=positive_int,
                   help="sensor height, where the file does not say")
    g.add_argument("--bad-events", choices=("error", "drop"), help="events out of time order or "
                   "outside the sensor: stop with an error (files' default) or drop and count "
                   "them (live default)")
    g.add_argument("--stream", "--topic", dest="stream", metavar="NAME",
                   help="which stream of a source that has several: the camera of a "
                        "multi-camera .aedat4, the event topic of a ROS bag (--topic)")

    f = p.add_argument_group("noise filters (software, any source; applied in this order: "
                             "roi, polarity, hot pixels, refractory, background activity)")
    f.add_argument("--roi", type=roi_value, metavar="X,Y,W,H",
                   help="keep only events inside this rectangle")
    f.add_argument("--polarity", choices=("on", "off"), help="keep only ON or only OFF events")
    f.add_argument("--hot-pixels", metavar="X,Y;X,Y|FILE",
                   help="drop all events at these pixels (a list, or a file of x,y lines)")
    f.add_argument("--refractory-us", type=positive_int, metavar="US",
                   help="drop an event less than US after the previous one at its pixel")
    f.add_argument("--ba-filter-us", type=positive_int, metavar="US",
                   help="background-activity filter: drop events with no neighbour event in "
                   "the last US microseconds")

    c = p.add_argument_group("camera settings (live cameras)")
    c.add_argument("--time-interval-us", type=positive_int, metavar="US",
                   help="packet interval: how often the camera sends data (latency)")
    c.add_argument("--aps", action=argparse.BooleanOptionalAction, default=None,
                   help="DAVIS APS frames on/off")
    c.add_argument("--exposure-us", type=positive_int, metavar="US",
                   help="DAVIS APS exposure time (turns auto-exposure off)")
    c.add_argument("--sensor-noise-filter", dest="sensor_noise_filter_us", type=positive_int,
                   nargs="?", const=2000, metavar="US",
                   help="the camera's own background-activity filter (DAVIS; default 2000 us)")


def add_replay_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replay")
    g.add_argument("--speed", type=speed_value, metavar="1.0|N|max",
                   help="replay speed: 1.0 real time (default), any factor, or max (no waiting)")
    g.add_argument("--loop", action="store_true", help="replay the recording again and again")
    g.add_argument("--start", type=seconds, metavar="S",
                   help="start S seconds after the first event")
    g.add_argument("--end", type=seconds, metavar="S",
                   help="stop S seconds after the first event")


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


def source_options(args, spec: str | None = None) -> SourceOptions:
    """The source options the user set, as the typed `SourceOptions` the source opens with.
    With `spec`, camera settings given for a source that is no camera are a one-line error."""
    options = SourceOptions(**{f.name: getattr(args, f.name, None) for f in fields(SourceOptions)})
    cam = options.camera_settings(spec or "")
    if spec and cam and not spec.startswith("camera:"):
        name = CAMERA_FLAG_NAMES.get(next(iter(cam)), "--serial")
        raise EvstreamError(f"{spec}: {name} is a camera setting, "
                            f"for --camera / camera: sources only")
    return options


def replay_options(args) -> dict | None:
    """paced() keywords when the command has replay options (add_replay_args), else None."""
    if not hasattr(args, "speed"):
        return None
    speed = 1.0 if args.speed is None else args.speed
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start is not None and end is not None and end <= start:
        raise EvstreamError(f"--end {end} must be after --start {start}")
    if end is not None and end <= 0:
        raise EvstreamError(f"--end {end}: must be > 0 seconds")
    return dict(speed=speed, loop=bool(getattr(args, "loop", False)), start_s=start, end_s=end)


def open_from_args(args, spec: str | None = None, *, pace: bool = True, **extra):
    """Open the source the args name, with filters and (when replay args exist) pacing.

    pace=False skips the pacing wrapper (for callers that pace themselves).
    """
    spec = spec or source_spec(args)
    options = source_options(args, spec)
    replay = replay_options(args) if pace else None

    src = open_configured(spec, options, **extra)
    if replay is None:
        return src
    try:
        if src.live:
            given = [f"--{k}" for k in REPLAY_FLAGS if getattr(args, k, None) not in (None, False)]
            if given:
                raise EvstreamError(f"{spec}: {', '.join(given)}: replay options are for "
                                    f"recordings, not live sources")
            return src      # a live source runs at its own pace
        from evstream.sources.pacing import paced

        def reopen():
            return open_configured(spec, options, **extra)

        src = paced(src, reopen=reopen, **replay)
    except BaseException:
        src.close()
        raise
    return src
