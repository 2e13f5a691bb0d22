"""`evstream demo`: the job behind `make demo`.

The built-in recording is one 2.5 s sequence of the procedural driving world (`evstream synth
seg`, seed 7: events from the ESIM simulator plus APS frames, 346x260 like a DAVIS346), generated
once into the user's cache directory and reused after that: the recipe ships with the code, not a
multi-megabyte binary. The same seed gives the same bytes (tests/test_synth.py checks that).

Then it describes the file (`evstream info`) and replays it in real time through the whole
pipeline (source -> ring -> windows -> voxel grid -> zmq -> student -> viewer, separate
processes) with the default model (see models/README.md), headless when there is no display,
writing the overlay video (default demo-output/overlay.mp4) and ending with the latency and
throughput summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

from evstream.errors import EvstreamError

HELP = "the `make demo` job: a replay of the built-in recording, headless, with a summary"
EXAMPLES = """  evstream demo
  evstream demo --json
  evstream demo --speed max --lossless"""

# The built-in recording: one sequence of the procedural driving world the shipped student was
# trained on (a different seed from its dataset), events + APS frames, 346x260, 2.5 s.
DEMO_SYNTH = ["seg", "--sequences", "1", "--seconds", "2.5", "--seed", "7", "--split", "0,0,1"]
DEMO_NAME = "demo-v2"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", default="1.0", help="replay speed: 1.0 (real time), N or max")
    p.add_argument("--lossless", action="store_true", help="deliver every window")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no status lines while the replay runs (the summary still prints)")
    p.add_argument("--video", default=os.path.join("demo-output", "overlay.mp4"),
                   help="where the overlay video goes (default: %(default)s)")
    p.add_argument("--model", help="a model name or checkpoint (default: the shipped default)")
    p.add_argument("--recording", metavar="PATH",
                   help="where the built-in recording lives (default: the user cache directory)")


def demo_recording(path: str | None = None, quiet: bool = False) -> Path:
    """The built-in recording (.aedat4 with events and APS frames), generated on first use with
    `evstream synth` (deterministic: the same seed gives the same bytes)."""
    if path is not None:
        return Path(path)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "evstream"
    folder = cache / DEMO_NAME
    rec = folder / "seq_0000" / "events.aedat4"
    if not rec.exists():
        from evstream.cli import main as cli_main

        cache.mkdir(parents=True, exist_ok=True)
        if not quiet:
            print(f"generating the built-in recording in {folder} (evstream synth "
                  f"{' '.join(DEMO_SYNTH)}; once, about half a minute)", flush=True)
        argv = ["synth", DEMO_SYNTH[0], str(folder), *DEMO_SYNTH[1:], "--force", "--no-progress"]
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(argv)
        if rc or not rec.exists():
            raise EvstreamError(f"could not generate the built-in recording in {folder}")
    return rec


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
        print(f"\n$ evstream replay {path} --video {args.video} --speed {args.speed}", flush=True)
    try:
        os.makedirs(os.path.dirname(args.video) or ".", exist_ok=True)
    except OSError as e:
        raise EvstreamError(f"cannot create the folder for {args.video}: {e}") from None
    # a window where there is a display (the video is written either way), headless otherwise
    show = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    argv = ["replay", str(path), *([] if show else ["--no-window"]), "--video", args.video,
            "--speed", str(args.speed), "--status-every", "1"]
    if args.quiet:
        argv.append("--quiet")
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
