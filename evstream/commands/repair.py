"""`evstream repair IN.aedat4 OUT.aedat4`: every intact packet of a damaged or truncated
recording, in a new file that every reader opens.

For a recording cut short (a finished file copied before it was complete, a disk or camera that
lost power: its header points at a packet table past the end, so dv-processing refuses it
whole), one with a damaged packet or a broken packet table. `evstream info` and `replay` name
this command when they stop on such a file. A recording that `evstream record` or
`run --record` was writing when it was killed needs no repair: it is readable as it is.

How (sources/aedat4_repair.py): the packets are walked from the header; each must pass the
packet check every read goes through; after damage the walk finds the next intact packet;
the kept packets are copied byte for byte (not recompressed) under a new packet table; the
result is read back with dv-processing before it takes the name OUT (nothing is left at OUT
on an error).

Prints one line: what was kept (packets, events, frames, IMU samples, triggers, time range) and
what was lost (bytes, where and why; with the input's packet table still readable, also how
many packets and elements of each stream). `--json` prints one object instead (keys: in, out,
bytes, compression, input_bytes, table, packets_kept, events, frames, imu, triggers,
t_start_us, t_end_us, events_t_start_us, events_t_end_us, bytes_lost, damaged [{byte, bytes,
what}], packets_lost, lost {events, frames, imu, triggers}, lost_t_start_us, lost_t_end_us;
the lost* keys are null without a readable table). Exit 0 when a file was written, 2 on bad
input (missing file, not AEDAT 4.0, header damaged, ZSTD, nothing intact) or an OUT that
cannot be written: one line, no traceback. An existing OUT is refused unless --force.
"""

from __future__ import annotations

import json
import os

from evstream.errors import EvstreamError

HELP = "recover every intact packet of a damaged or truncated .aedat4 into a new file"
EXAMPLES = """  evstream repair cut.aedat4 fixed.aedat4
  evstream repair damaged.aedat4 fixed.aedat4 --json
  evstream repair cut.aedat4 fixed.aedat4 --force     # replace an earlier repair
  # no need after `evstream record` was killed: that file is readable as it is"""


def configure(p) -> None:
    p.add_argument("input", metavar="IN.aedat4", help="the damaged or truncated recording")
    p.add_argument("out", metavar="OUT.aedat4", help="the repaired recording to write")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _check_paths(src: str, out: str, force: bool) -> None:
    if not os.path.exists(src):
        raise EvstreamError(f"{src}: no such file")
    if os.path.isdir(src):
        raise EvstreamError(f"{src}: is a folder, not a recording")
    if not out.lower().endswith(".aedat4"):
        raise EvstreamError(f"{out}: the output must end in .aedat4")
    if os.path.exists(out) and os.path.samefile(src, out):
        raise EvstreamError(f"{out}: is the input; repair into another file")
    if os.path.isdir(out):
        raise EvstreamError(f"{out}: is a folder")
    if os.path.lexists(out) and not force:
        raise EvstreamError(f"{out}: exists; give --force to replace it")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise EvstreamError(f"{out}: folder {folder} does not exist")


def _n(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _contents(c: dict, t0, t1) -> str:
    out = (f"{c['events']:,} events, {c['frames']} frames, {c['imu']} IMU samples, "
           f"{c['triggers']} triggers")
    return out + ("" if t0 is None else f"; {t0} .. {t1} us")


def summary_line(d: dict) -> str:
    kept = (f"kept {_n(d['packets_kept'], 'packet')} "
            f"({_contents(d, d['t_start_us'], d['t_end_us'])})")
    damaged = d["damaged"]
    if not damaged and not d["packets_lost"]:
        lost = "nothing lost"
    else:
        lost = f"lost {d['bytes_lost']:,} bytes"
        if d["packets_lost"] is not None:
            lost += (f", {_n(d['packets_lost'], 'packet')} "
                     f"({_contents(d['lost'], d['lost_t_start_us'], d['lost_t_end_us'])})")
        if damaged:
            first = damaged[0]
            lost += f": {first['what']} at byte {first['byte']:,}"
            if len(damaged) > 1:
                lost += f", and {_n(len(damaged) - 1, 'more damaged place')} (--json lists them)"
    table = {"intact": "", "none": "; the file had no packet table (never finished)",
             "cut off": "; its packet table was cut off", "damaged":
             "; its packet table was damaged"}[d["table"]]
    if table:
        table += ", a new one was written"
    return f"{d['in']} -> {d['out']}: {kept}; {lost}{table}"


def main(args) -> int:
    from evstream.sources.aedat4_repair import salvage, write_repaired

    src, out = args.input, args.out
    _check_paths(src, out, args.force)
    salv = salvage(src)
    size = write_repaired(salv, out)
    d = {"in": src, "out": out, "bytes": size, **salv.report()}
    print(json.dumps(d) if args.json else summary_line(d))
    return 0
