"""`evstream run --camera MODEL`: a live camera (or any live source) through the pipeline:
events -> windows -> student -> overlay window, with honest latency figures.

Options shared with `replay` live in commands/pipeline_args.py (model, viewer, endpoints,
`--stages` for a pipeline split over several hosts).
"""

from __future__ import annotations

import argparse

from evstream.commands.common import add_source_args, source_spec
from evstream.commands.pipeline_args import add_pipeline_args, pipeline_config, run_and_report
from evstream.errors import EvstreamError

# the pipeline released everything when the command returns: no interpreter teardown
EXIT_AT_ONCE = True
HELP = "live camera -> student -> overlay window"
EXAMPLES = """  evstream run --camera davis346
  evstream run --camera davis346 --model evdistill-r18q-seg --window-ms 50 --record out.aedat4
  evstream run --camera any --serial DAVIS346_00000104 --no-window --video live.mp4
  evstream run tcp://127.0.0.1:7777 --json                  # a DV / dv-processing network stream
  # split over hosts: camera host -> GPU host -> viewer host
  evstream run --camera davis346 --stages source,window --connect windows=tcp://gpu:5555
  evstream run --stages worker,sink --sensor-width 346 --sensor-height 260 \\
      --bind windows=tcp://0.0.0.0:5555 --bind publish=tcp://0.0.0.0:5556
  evstream view tcp://gpu:5556"""


def configure(p: argparse.ArgumentParser) -> None:
    add_source_args(p)
    add_pipeline_args(p)
    p.add_argument("--record", metavar="OUT.aedat4",
                   help="also record everything the camera sends (written as it goes: a crash "
                        "leaves it readable up to about a second before)")
    p.add_argument("--force", action="store_true",
                   help="with --record: replace an existing OUT.aedat4")


def main(args) -> int:
    local_source = not args.stages or "source" in args.stages.split(",")
    if local_source and not args.camera and not args.source:
        raise EvstreamError("no source: give --camera MODEL (e.g. davis346) or a tcp:// stream")
    if args.record and not str(args.record).endswith(".aedat4"):
        raise EvstreamError(f"--record {args.record}: recordings are written as .aedat4")
    spec = source_spec(args) if local_source else None
    if args.record and local_source:
        from evstream.commands.record import check_output

        check_output(str(args.record), spec, args.force)
    return run_and_report(pipeline_config(args, spec, live=True), args)
