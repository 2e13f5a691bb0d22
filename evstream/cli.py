"""The `evstream` command.

Each subcommand lives in `evstream/commands/<name>.py` with four names:
`HELP` (one line), `EXAMPLES` (text shown by --help), `configure(parser)` and `main(args) -> int`.
A subcommand whose module does not exist yet still shows its help and says plainly that it is not
built (exit 2).

User errors (`EvstreamError`, bad flag values) print one line on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from evstream import __version__
from evstream.errors import EvstreamError, NotBuiltError
from evstream.outpaths import USER_ERRNOS, reason

# name -> (one-line help, examples) for every subcommand, built or not.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("live camera -> student -> overlay window",
            "  evstream run --camera davis346\n"
            "  evstream run --camera any --serial DAVIS346_00000104 --window-ms 33\n"
            "  evstream run --camera davis346 --record out.aedat4 --json"),
    "replay": ("replay a recording through the pipeline: student predictions over the events",
               "  evstream replay file.aedat4\n"
               "  evstream replay file.aedat4 --speed max --no-model --lossless --json\n"
               "  evstream replay file.raw --speed 0.5 --loop --start 1.0 --end 3.0"),
    "record": ("record any source (camera, network, file, synthetic) to .aedat4 or any output "
               "format",
               "  evstream record out.aedat4 --camera davis346 --duration 10\n"
               "  evstream record out.aedat4 --source tcp://127.0.0.1:7777\n"
               "  evstream record out.aedat4 --source in.raw          # convert a file"),
    "convert": ("convert a recording between formats (aedat4, raw, dat, aedat, bin, npy, npz, h5, "
                "...)",
                "  evstream convert in.aedat4 out.raw\n"
                "  evstream convert in.raw out.h5 --start 1 --end 3 --verify --json"),
    "repair": ("recover every intact packet of a damaged or truncated .aedat4 into a new file",
               "  evstream repair cut.aedat4 fixed.aedat4\n"
               "  evstream repair damaged.aedat4 fixed.aedat4 --json"),
    "info": ("describe a recording: camera, resolution, streams, counts, rates, anomalies",
             "  evstream info file.aedat4\n"
             "  evstream info file.raw --json\n"
             "  evstream info N-MNIST/00001.bin --width 34 --height 34"),
    "view": ("open the overlay viewer on a running worker's endpoint",
             "  evstream view tcp://192.168.1.20:5560"),
    "train": ("EvDistill training: teacher on images, distilled event student",
              "  evstream train --preset tiny --data data/seg --out runs/tiny"),
    "eval": ("evaluate a checkpoint or shipped model on a dataset split",
             "  evstream eval models/student --data data/seg --split test --json"),
    "export": ("export a student (state dict + config, TorchScript, ONNX) for the worker",
               "  evstream export runs/tiny --out student_export"),
    "synth": ("generate labelled synthetic event datasets (segmentation / classification)",
              "  evstream synth seg data/seg --sequences 8 --seconds 10 --seed 1"),
    "bench": ("run the benchmarks under tools/bench and print their tables",
              "  evstream bench io --events 10000000"),
    "demo": ("the `make demo` job: a replay of the built-in recording, headless, with a summary",
             "  evstream demo\n  evstream demo --json"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _load(name: str):
    try:
        return importlib.import_module(f"evstream.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"evstream.commands.{name}":
            return None
        raise


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the subcommand it names is imported and configured (the
    others get their line of help from COMMANDS), so `evstream --help` and every command start
    without importing the other commands' modules (torch, Numba, dv-processing, ...)."""
    chosen = _command_in(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="evstream", description="Real-time streaming pipeline for event cameras.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="examples:\n" + "\n".join(ex.splitlines()[0] for ex in
                                                 (v[1] for v in COMMANDS.values())))
    p.add_argument("--version", action="version", version=f"evstream {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, examples) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        mod = _load(name)
        if mod is not None:        # a built command's own help and examples win over the table
            help_ = getattr(mod, "HELP", help_)
            examples = getattr(mod, "EXAMPLES", examples)
        desc = help_ if mod is not None else f"{help_}\n\nNOT BUILT YET: this command comes in a later release."
        sp = sub.add_parser(name, help=help_, description=desc,
                            epilog="examples:\n" + examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if mod is not None:
            mod.configure(sp)
            sp.set_defaults(_main=mod.main, _exit_at_once=getattr(mod, "EXIT_AT_ONCE", False))
        else:
            sp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            sp.set_defaults(_main=_not_built(name))
    return p


def _not_built(name: str):
    def main(args) -> int:
        raise NotBuiltError(f"`evstream {name}` is not built yet")
    return main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else
                        logging.INFO if args.verbose else logging.WARNING,
                        format="evstream: %(levelname)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        code = int(args._main(args) or 0)
        if argv is None and getattr(args, "_exit_at_once", False):
            # the pipeline released everything: the launcher's interpreter teardown (Numba,
            # dv-processing and zmq loaded) took 0.43 s, all of it after the summary was out
            from evstream.stream.lifeline import exit_now

            exit_now(code)
        return code
    except EvstreamError as e:
        print(f"evstream {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `evstream info ... | head`
        return 0
    except OSError as e:
        # a path the user gave that cannot be written or read (no folder, no permission, disk
        # full) and that no command turned into its own line: still one line, exit 2
        if e.errno not in USER_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"evstream {args.command}: error: {where}{reason(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
