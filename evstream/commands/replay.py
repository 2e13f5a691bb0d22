"""`evstream replay FILE`: a recording through the streaming pipeline, the same as `run` from a
file.

Source -> shared-memory ring -> windows -> representation -> zmq -> inference worker -> viewer,
each in its own process. Without a display (or with --no-window) the viewer is headless and can
write an MP4 (`--video`); `--no-model` draws (or, with --no-viewer, only counts) the windows.
Options shared with `run` live in commands/pipeline_args.py.
"""

from __future__ import annotations

import argparse

from evstream.commands.common import add_replay_args, add_source_args, source_spec
from evstream.commands.pipeline_args import add_pipeline_args, pipeline_config, run_and_report
from evstream.errors import EvstreamError

# the pipeline released everything when the command returns: no interpreter teardown
EXIT_AT_ONCE = True
HELP = "replay a recording through the pipeline: student predictions over the events"
EXAMPLES = """  evstream replay file.aedat4                                # live overlay window
  evstream replay file.aedat4 --no-window --video out.mp4 --json
  evstream replay file.aedat4 --model evdistill-r18q-seg --speed 2 --loop
  evstream replay file.aedat4 --speed max --lossless --no-model --no-viewer --json
  evstream replay file.raw --speed 0.5 --start 1.0 --end 3.0 --model ./run/student"""


def configure(p: argparse.ArgumentParser) -> None:
    add_source_args(p)
    add_replay_args(p)
    add_pipeline_args(p)


def main(args) -> int:
    if getattr(args, "camera", None):
        raise EvstreamError("replay takes a recording; use `evstream run --camera ...` for a camera")
    spec = source_spec(args) if (args.source or not args.stages) else None
    return run_and_report(pipeline_config(args, spec, live=False), args)
