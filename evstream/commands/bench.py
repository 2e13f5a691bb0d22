"""`evstream bench NAME [ARGS...]`: run a benchmark from the checkout's tools/bench/.

Benchmarks are scripts, not package code: they live beside the package in the source tree
(tools/bench/NAME.py, each with a main(argv)) and print markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from evstream.errors import EvstreamError

HELP = "run the benchmarks under tools/bench and print their tables"
EXAMPLES = """  evstream bench list
  evstream bench io --events 10000000
  evstream bench voxel
  evstream bench pipeline --events 10000000 --live-seconds 3"""

BENCH_DIR = Path(__file__).resolve().parents[2] / "tools" / "bench"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark name (a file in tools/bench), or `list`")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def available() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(f.stem for f in BENCH_DIR.glob("*.py") if not f.stem.startswith("_"))


def main(args) -> int:
    names = available()
    if not names:
        raise EvstreamError(f"no benchmarks at {BENCH_DIR}: they ship with the source checkout")
    if args.name == "list":
        print("\n".join(names))
        return 0
    if args.name not in names:
        raise EvstreamError(f"unknown benchmark {args.name!r} (known: {', '.join(names)})")
    # imported as `bench.NAME` with tools/ on sys.path (not loaded from a file path): a benchmark
    # that starts processes with multiprocessing's spawn needs its module importable by name in
    # the children, which get this sys.path
    tools = str(BENCH_DIR.parent)
    if tools not in sys.path:
        sys.path.insert(0, tools)
    mod = importlib.import_module(f"bench.{args.name}")
    return int(mod.main(args.args) or 0)
