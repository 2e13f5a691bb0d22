"""`evstream view tcp://HOST:PORT`: the overlay viewer on a worker's published predictions.

Connects a SUB socket to the URL (topics prediction, window, control) and shows what arrives in a
window, or headless (--no-window) writes it to an MP4 and/or PNG frames. Ends at the stream's
end-of-stream message, `q`/Esc or the window's close button, or Ctrl-C; the video is finalised
in every case. The worker must publish: start the pipeline with its `publish` endpoint bound,
e.g. `--bind publish=tcp://0.0.0.0:5560` on the worker's host. With `--curve-keys DIR` on both
sides (the same DIR, copied) the stream is encrypted and only a viewer holding the client key is
let in (stream/curve.py).

`--json` prints one summary object: url, predictions, windows, frames_drawn, dropped,
malformed_messages, latency_ms {count, mean, min, p50, p90, p99, max}, model, device, trained,
video {path, frames, fps, fourcc} (or null), eos, quit, interrupted. Latency is measured from the
window's end (CLOCK_MONOTONIC) and only means something when the worker runs on the same host.
"""

from __future__ import annotations

import argparse
import json
import sys

from evstream.config import ViewerConfig

HELP = "open the overlay viewer on a running worker's endpoint"
EXAMPLES = """  evstream view tcp://192.168.1.20:5560
  evstream view tcp://127.0.0.1:5560 --no-window --video out.mp4 --json
  evstream view tcp://gpu-box:5560 --scale 1 --alpha 0.3 --snapshot-dir shots
  evstream view tcp://gpu-box:5560 --curve-keys keys/
the worker's host publishes its predictions on the `publish` endpoint, e.g.
  evstream replay rec.aedat4 --no-viewer --bind publish=tcp://0.0.0.0:5560"""


def _fraction(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in 0..1, not {s}")
    return v


def _positive(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {s}")
    return v


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n" + EXAMPLES + "\n\nkeys: q/Esc quit, space pause, a/A alpha -/+, "
                "m overlay on/off,\n      b APS background on/off, s snapshot PNG, r record MP4 "
                "(into --snapshot-dir)")
    p.add_argument("url", help="the worker's publish endpoint, tcp://HOST:PORT")
    p.add_argument("--no-window", action="store_true",
                   help="headless: no window (use --video and/or --png-dir to keep the frames)")
    p.add_argument("--video", metavar="OUT.mp4", default="",
                   help="write every drawn frame to this MP4")
    p.add_argument("--png-dir", metavar="DIR", default="", help="write every drawn frame as PNG")
    p.add_argument("--snapshot-dir", metavar="DIR", default=".",
                   help="where the s and r keys save (default: the current directory)")
    p.add_argument("--alpha", type=_fraction, default=0.5, help="segmentation opacity (0..1)")
    p.add_argument("--scale", type=_positive, default=2.0, help="display scale of the sensor")
    p.add_argument("--fps", type=_positive, help="video frame rate (default: from the windows)")
    p.add_argument("--stream", help="show only this stream id (default: every stream)")
    p.add_argument("--lossless", action="store_true",
                   help="draw every message received, in order (default: only the newest)")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="CURVE keys (the DIR the pipeline was given): encrypted, authenticated")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def main(args) -> int:
    from evstream.stream.curve import load_or_create_keys
    from evstream.viewer.app import check_url, run_viewer

    check_url(args.url)
    curve = load_or_create_keys(args.curve_keys) if args.curve_keys else None
    vc = ViewerConfig(window=not args.no_window, video=args.video, png_dir=args.png_dir,
                      snapshot_dir=args.snapshot_dir, alpha=args.alpha, scale=args.scale,
                      video_fps=args.fps or 0.0, title=f"evstream view {args.url}")
    quiet = args.json
    summary = run_viewer(args.url, vc, stream=args.stream, lossless=args.lossless, curve=curve,
                         status=None if quiet else (lambda line: print(line, file=sys.stderr)))
    if args.json:
        print(json.dumps(summary))
    else:
        v = summary["video"]
        print(f"{summary['frames_drawn']} frames drawn, {summary['dropped']} dropped"
              + (f", video {v['path']} ({v['frames']} frames, {v['fourcc']})" if v else ""),
              file=sys.stderr)
    return 0
