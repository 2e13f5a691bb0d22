"""`evstream bench NAME [ARGS...]`: run a benchmark from the checkout's tools/bench/.

Benchmarks are scripts, not package code: they live beside the package in the source tree
(tools/bench/NAME.py, each with a main(argv)) and print markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    spec = importlib.util.spec_from_file_location(f"evstream_bench_{args.name}",
                                                  BENCH_DIR / f"{args.name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return int(mod.main(args.args) or 0)
