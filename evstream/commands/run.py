"""`evstream run --camera MODEL`: a live camera (or any live source) through the pipeline."""

from __future__ import annotations

import argparse

from evstream.commands.common import add_source_args, source_spec
from evstream.commands.replay import add_pipeline_args, pipeline_config, run_and_report
from evstream.errors import EvstreamError

HELP = "live camera -> student -> overlay window"
EXAMPLES = """  evstream run --camera davis346 --no-model
  evstream run --camera any --serial DAVIS346_00000104 --window-ms 33 --no-model
  evstream run tcp://127.0.0.1:7777 --no-model --json     # a DV / dv-processing network stream"""


def configure(p: argparse.ArgumentParser) -> None:
    add_source_args(p)
    add_pipeline_args(p)


def main(args) -> int:
    if not args.no_model:
        raise EvstreamError("the inference worker is not built yet: use --no-model")
    if not args.camera and not args.source:
        raise EvstreamError("no source: give --camera MODEL (e.g. davis346) or a tcp:// stream")
    return run_and_report(pipeline_config(args, source_spec(args), live=True), args)
