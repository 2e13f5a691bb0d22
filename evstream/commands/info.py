"""`evstream info FILE [--json]`: what is in a recording, for any format open_source reads.

Reads the whole file once through the EventSource contract (no format-specific code here):
camera, resolution (and how it was found), streams, counts (events, ON/OFF, frames, IMU
samples, triggers), first/last EVENT time stamps, duration, mean and peak event rate (peak over
fixed 10 ms bins starting at the first event), time-stamp anomalies and file size.

Events that break the source contract are dropped and counted (bad_events="drop" unless the
user asks for "error"), so a damaged file is described rather than refused; a file that cannot
be read at all is a one-line error (exit 2).

`--json` prints ONE object. Stable keys other tools rely on: camera, width, height, events,
frames, imu, triggers, t_start_us, t_end_us (null when there are no events). Also: file, bytes,
reader, resolution_note, streams, on, off, duration_s, mean_rate_hz, peak_rate_hz, peak_bin_us,
dropped_out_of_order, dropped_outside_sensor, details (the source's describe(); for .aedat4 it
says whether the file was finished, and how many bytes after its last complete packet were
skipped when it was not: a recording killed midway is read as it is, up to its last complete
packet).
"""

from __future__ import annotations

import json
import os
import sys

from evstream.commands.common import add_source_args, open_from_args, source_spec
from evstream.errors import EvstreamError

HELP = "describe a recording: camera, resolution, streams, counts, rates, anomalies"
EXAMPLES = """  evstream info file.aedat4
  evstream info file.raw --json
  evstream info N-MNIST/00001.bin --width 34 --height 34"""

PEAK_BIN_US = 10_000
PROGRESS_MIN_BYTES = 32 << 20     # progress (evstream.progress) only for files this big


def configure(p) -> None:
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, a line every 30 s elsewhere)")


class PeakRate:
    """Largest event count in fixed bins of bin_us, the bins starting at the first event."""

    def __init__(self, bin_us: int = PEAK_BIN_US):
        self.bin_us = bin_us
        self.t0: int | None = None
        self.open_bin = -1       # index of the bin still collecting events
        self.open_count = 0
        self.peak = 0

    def add(self, t: np.ndarray) -> None:
        import numpy as np

        if not len(t):
            return
        if self.t0 is None:
            self.t0 = int(t[0])
        b = (t - self.t0) // self.bin_us
        first = int(b[0])
        counts = np.bincount(b - first)
        if first == self.open_bin:
            counts[0] += self.open_count
        elif self.open_bin >= 0:
            self.peak = max(self.peak, self.open_count)
        self.peak = max(self.peak, int(counts[:-1].max()) if len(counts) > 1 else 0)
        self.open_bin = int(b[-1])
        self.open_count = int(counts[-1])

    def result(self) -> int:
        return max(self.peak, self.open_count)


def _size(path: str | None) -> int | None:
    """Bytes of a recording: a file's size, or the files' sizes summed for a folder (a ROS 2
    bag); None for a camera or a stream."""
    if not path:
        return None
    if os.path.isfile(path):
        return os.path.getsize(path)
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
                   for f in files)
    return None


def describe_source(src, path: str | None, progress: bool = False) -> dict:
    """Read every packet of src and return the info dict (see module doc)."""
    import numpy as np

    n = on = frames = imu = triggers = 0
    t_start = t_end = None
    peak = PeakRate()
    bar = None
    if progress:
        from evstream.progress import progress as progress_bar

        bar = progress_bar(unit="ev", unit_scale=True, desc="reading", leave=False)
    try:
        for pkt in src.packets():
            ev = pkt.events
            frames += len(pkt.frames)
            imu += len(pkt.imu)
            triggers += len(pkt.triggers)
            if not len(ev):
                continue
            n += len(ev)
            on += int(np.count_nonzero(ev["p"]))
            if t_start is None:
                t_start = int(ev["t"][0])
            t_end = int(ev["t"][-1])
            peak.add(ev["t"])
            if bar is not None:
                bar.update(len(ev))
    finally:
        if bar is not None:
            bar.close()
    duration_s = (t_end - t_start) / 1e6 if n else 0.0
    declared = getattr(src, "streams", None)
    streams = list(declared) if declared is not None else \
        [k for k, c in (("events", n), ("frames", frames), ("imu", imu),
                        ("triggers", triggers)) if c]
    st = src.stats
    return {
        "file": path,
        "bytes": _size(path),
        "reader": type(src).__name__,
        "camera": src.camera,
        "width": int(src.width),
        "height": int(src.height),
        "resolution_note": src.resolution_note,
        "streams": streams,
        "events": n,
        "on": on,
        "off": n - on,
        "frames": frames,
        "imu": imu,
        "triggers": triggers,
        "t_start_us": t_start,
        "t_end_us": t_end,
        "duration_s": duration_s,
        "mean_rate_hz": n / duration_s if duration_s > 0 else None,
        "peak_rate_hz": peak.result() * 1e6 / PEAK_BIN_US if n else None,
        "peak_bin_us": PEAK_BIN_US,
        "dropped_out_of_order": st.dropped_out_of_order,
        "dropped_outside_sensor": st.dropped_outside_sensor,
        "details": src.describe(),
    }


def _rate(hz) -> str:
    if hz is None:
        return "-"
    return f"{hz / 1e6:.3f} Mev/s" if hz >= 1e5 else f"{hz / 1e3:.1f} kev/s"


def format_info(d: dict) -> str:
    res = f"{d['width']}x{d['height']}" + (f"  ({d['resolution_note']})"
                                           if d["resolution_note"] else "")
    lines = [
        ("file", f"{d['file']}" + (f"  ({d['bytes']:,} bytes)" if d["bytes"] is not None
                                   else "")),
        ("reader", d["reader"]),
        ("camera", d["camera"]),
        ("resolution", res),
        ("streams", ", ".join(d["streams"]) or "none"),
        ("events", f"{d['events']:,}  (ON {d['on']:,} / OFF {d['off']:,})"),
        ("frames", f"{d['frames']:,}"),
        ("imu", f"{d['imu']:,}"),
        ("triggers", f"{d['triggers']:,}"),
    ]
    if d["events"]:
        lines += [
            ("time", f"{d['t_start_us']} .. {d['t_end_us']} us (first / last event)"),
            ("duration", f"{d['duration_s']:.6f} s"),
            ("rate", f"mean {_rate(d['mean_rate_hz'])}, peak {_rate(d['peak_rate_hz'])} "
                     f"({d['peak_bin_us'] // 1000} ms bins)"),
        ]
    det = d.get("details") or {}
    if det.get("finished") is False:      # an .aedat4 without a packet table
        tail = det.get("tail_bytes", 0)
        lines.append(("recording", "not finished (no packet table: stopped by a crash or still "
                                   "being written)" + (f"; the last {tail:,} bytes are not a "
                                                       f"complete packet and were skipped"
                                                       if tail else "")))
    bad = d["dropped_out_of_order"], d["dropped_outside_sensor"]
    lines.append(("anomalies", "none" if not any(bad) else
                  f"{bad[0]:,} events out of time order and {bad[1]:,} outside the sensor "
                  f"(dropped)"))
    return "\n".join(f"{k:<11} {v}" for k, v in lines)


def main(args) -> int:
    spec = source_spec(args)
    if args.bad_events is None:
        args.bad_events = "drop"
    src = open_from_args(args, spec)
    try:
        if src.live:
            raise EvstreamError(f"{spec}: is a live source; `evstream info` describes "
                                f"recordings (use `evstream record` first)")
        big = os.path.isfile(spec) and os.path.getsize(spec) >= PROGRESS_MIN_BYTES
        d = describe_source(src, spec if os.path.exists(spec) else None,
                            progress=big and not args.quiet)
    finally:
        src.close()
    print(json.dumps(d) if args.json else format_info(d))
    return 0
