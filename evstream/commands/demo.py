"""`evstream demo`: the job behind `make demo`.

The built-in recording is a seeded synthetic scene (moving shapes with APS-like frames, 346x260
like a DAVIS346) that `demo` writes once as .aedat4 through the same recorder `evstream record`
uses, into the user's cache directory, and reuses after that: the recipe ships with the code,
not a multi-megabyte binary (an LZ4 .aedat4 costs about 9 bytes per event). The same seed gives
the same events every time (tests/test_synthetic.py checks determinism).

Then it describes the file (`evstream info`) and replays it in real time through the whole
pipeline (source -> ring -> windows -> voxel grid -> zmq -> student -> viewer, separate
processes) with the default model (see models/README.md), headless when there is no display,
writing the overlay video (default demo-output/overlay.mp4) and ending with the latency and
throughput summary.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from evstream.errors import EvstreamError

HELP = "the `make demo` job: a replay of the built-in recording, headless, with a summary"
EXAMPLES = """  evstream demo
  evstream demo --json
  evstream demo --speed max --lossless"""

DEMO_SPEC = "synthetic:?seed=7&rate=2e5&duration=2.5&frame_rate=25&shapes=4&noise=0.02"
DEMO_NAME = "demo-v1.aedat4"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", default="1.0", help="replay speed: 1.0 (real time), N or max")
    p.add_argument("--lossless", action="store_true", help="deliver every window")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--video", default=os.path.join("demo-output", "overlay.mp4"),
                   help="where the overlay video goes (default: %(default)s)")
    p.add_argument("--model", help="a model name or checkpoint (default: the shipped default)")
    p.add_argument("--recording", metavar="PATH",
                   help="where the built-in recording lives (default: the user cache directory)")


def demo_recording(path: str | None = None, quiet: bool = False) -> Path:
    """The built-in recording, written on first use."""
    if path is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "evstream"
        path = cache / DEMO_NAME
    path = Path(path)
    if not path.exists():
        from evstream.commands.record import record
        from evstream.sources import open_source

        path.parent.mkdir(parents=True, exist_ok=True)
        if not quiet:
            print(f"writing the built-in recording to {path} ({DEMO_SPEC})", flush=True)
        with open_source(DEMO_SPEC) as src:
            record(src, str(path))
    return path


def main(args) -> int:
    from evstream.cli import main as cli_main

    try:
        path = demo_recording(args.recording, quiet=args.json)
    except OSError as e:
        raise EvstreamError(f"cannot write the built-in recording: {e}") from None
    if not args.json:
        print(f"\n$ evstream info {path}", flush=True)
        rc = cli_main(["info", str(path)])
        if rc:
            return rc
        print(f"\n$ evstream replay {path} --no-window --video {args.video} --speed {args.speed}",
              flush=True)
    try:
        os.makedirs(os.path.dirname(args.video) or ".", exist_ok=True)
    except OSError as e:
        raise EvstreamError(f"cannot create the folder for {args.video}: {e}") from None
    argv = ["replay", str(path), "--no-window", "--video", args.video, "--speed", str(args.speed),
            "--status-every", "1"]
    if args.model:
        argv += ["--model", args.model]
    if args.lossless:
        argv.append("--lossless")
    if args.json:
        argv.append("--json")
    rc = cli_main(argv)
    if rc == 0 and not args.json:
        print(f"\noverlay video: {os.path.abspath(args.video)}")
    return rc
