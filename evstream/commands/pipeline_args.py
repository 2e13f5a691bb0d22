"""Options and reporting shared by `evstream run` and `evstream replay`.

    add_pipeline_args(parser)            windows, representation, model, viewer, endpoints
    cfg = pipeline_config(args, spec, live=...)
    return run_and_report(cfg, args)     # runs the launcher, prints the summary (or --json)

The representation the pipeline computes comes from the model's checkpoint unless the user sets
it: `--representation/--bins/--normalize/--window-ms` left alone take the model's values; set to
something else, they are checked against the model before any process starts (one-line error).

Endpoints. Every stage talks over ipc in a private directory by default; `--bind NAME=URL` and
`--connect NAME=URL` put an endpoint on tcp so that the camera host, the GPU host and the viewer
host can be different machines:
    windows      bound by the worker (or the consumer), connected to by the window stage
    predictions  bound by the viewer (or sink), connected to by the worker
    side         frames/IMU/triggers: bound by the consumer, connected to by the source
    publish      optional PUB socket the worker binds: every prediction, for `evstream view URL`
With `--stages` a host runs part of the pipeline, e.g.
    camera host: evstream run --camera davis346 --stages source,window \
                     --connect windows=tcp://gpu:5555
    GPU host:    evstream run --stages worker,sink --width 346 --height 260 \
                     --bind windows=tcp://0.0.0.0:5555 --bind publish=tcp://0.0.0.0:5556
    viewer host: evstream view tcp://gpu:5556
Binding anything but loopback is explicit, and `--curve-keys DIR` encrypts and authenticates
tcp endpoints with CURVE (keys are created in DIR on first use; copy DIR to the other hosts,
and give it to `evstream view` too). A URL is checked before any process starts (syntax, port,
known host, ipc directory); a bind that fails in its stage (port taken, no permission) is one
line naming the endpoint and the URL, exit 2. `tcp://HOST:*` binds a free port, which the
launcher prints. What a tcp peer sends that is not ours (garbage, oversized or truncated
messages, a wrong schema version, a refused handshake) is dropped, counted in the summary's
`malformed_messages` / `rejected_peers`, and the stream goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from evstream.commands.common import source_options
from evstream.config import InferConfig, PipelineConfig, SourceConfig, ViewerConfig, WindowConfig
from evstream.errors import EvstreamError

ENDPOINT_NAMES = ("windows", "predictions", "side", "publish")


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("windows and representation")
    g.add_argument("--lossless", action="store_true",
                   help="deliver every window (writers wait for readers); default is live: the "
                        "newest window wins and drops are counted")
    g.add_argument("--window-ms", type=float, help="time window length (ms; default: the "
                   "model's, else 50)")
    g.add_argument("--stride-ms", type=float, help="time between window starts (default: window)")
    g.add_argument("--count", type=int, help="count windows of this many events instead of time")
    g.add_argument("--representation", help="voxel | histogram | histogram_max | timesurface "
                   "(default: the model's, else voxel)")
    g.add_argument("--bins", type=int, help="voxel grid bins (default: the model's, else 5)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="voxel non-zero mean/std normalisation (default: the model's)")
    g.add_argument("--deadline-ms", type=float, default=10.0,
                   help="sparse scenes: emit a window this long after its end even without "
                        "later events (0: off)")
    g.add_argument("--ring-events", type=int, default=1 << 22,
                   help="shared-memory ring capacity in events (16 bytes each)")
    g.add_argument("--window-transport", choices=("auto", "zmq"), default="auto",
                   help="auto: windows reach a consumer on this host through shared memory, "
                        "only their headers through zmq; zmq: the tensors go in the messages")

    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME|PATH",
                   help="a model under models/, a checkpoint file or directory, an .onnx "
                        "(default: the shipped default, see models/README.md)")
    m.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what runs the network: torch, onnxruntime (a checkpoint is exported "
                        "on the fly and cached), or auto: onnxruntime where measured faster "
                        "(docs/benchmarks.md), else torch")
    m.add_argument("--no-model", action="store_true", help="no inference: draw or count windows")
    m.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda[:N]")
    m.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: fp16 autocast on CUDA, fp32 on CPU")
    m.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: automatic)")
    m.add_argument("--cuda-graphs", action="store_true", help="capture the forward pass (CUDA)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model")
    m.add_argument("--max-batch", type=int, default=8, help="windows of several streams per batch")
    m.add_argument("--restart", action="store_true", help="restart the worker if it dies")

    v = p.add_argument_group("viewer")
    v.add_argument("--no-window", action="store_true",
                   help="headless (automatic when there is no display)")
    v.add_argument("--no-viewer", action="store_true",
                   help="draw nothing: predictions (or windows) go to a counting sink")
    v.add_argument("--video", metavar="OUT.mp4", help="write one video frame per prediction drawn")
    v.add_argument("--png-dir", metavar="DIR", help="write every drawn frame as PNG")
    v.add_argument("--alpha", type=float, default=0.5, help="segmentation overlay opacity 0..1")
    v.add_argument("--on-close", choices=("stop", "continue"), default="stop",
                   help="closing the viewer window stops the pipeline, or it runs on headless")

    e = p.add_argument_group("endpoints and hosts")
    e.add_argument("--bind", action="append", default=[], metavar="NAME=URL",
                   help=f"bind an endpoint ({', '.join(ENDPOINT_NAMES)}) at a URL, e.g. "
                        "publish=tcp://0.0.0.0:5556 (port *: a free one, printed)")
    e.add_argument("--connect", action="append", default=[], metavar="NAME=URL",
                   help="connect an endpoint to another host, e.g. windows=tcp://gpu:5555")
    e.add_argument("--stages", help="run only these stages here: source,window,worker,viewer,sink")
    e.add_argument("--stream-id", default="cam0", help="this camera's stream name (multi-camera)")
    e.add_argument("--curve-keys", metavar="DIR", help="CURVE keys for tcp endpoints")
    e.add_argument("--sensor-width", dest="sensor_width", type=int, default=0,
                   help=argparse.SUPPRESS)
    e.add_argument("--sensor-height", dest="sensor_height", type=int, default=0,
                   help=argparse.SUPPRESS)

    o = p.add_argument_group("output")
    o.add_argument("--status-every", type=float, default=2.0, metavar="S",
                   help="print a status line every S seconds (0: never)")
    o.add_argument("-q", "--quiet", action="store_true",
                   help="no status lines while streaming (same as --status-every 0); the "
                        "summary at the end still prints")
    o.add_argument("--json", action="store_true", help="print a final JSON summary on stdout")
    o.add_argument("--dump-windows", metavar="NPZ", help=argparse.SUPPRESS)
    o.add_argument("--slow-consumer-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def _positive(name: str, value, allow_none=True):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise EvstreamError(f"{name} must be > 0, not {value}")


def _endpoint_overrides(args) -> dict:
    """--bind/--connect NAME=URL -> {name: url}, each URL checked before any process starts
    (stream/sockets.check_url: syntax, port range, known host, ipc directory); what only a bind
    can tell (a port taken, no permission) is a one-line error from the stage that binds."""
    from evstream.stream.sockets import check_url

    out = {}
    for flag in ("bind", "connect"):
        for item in getattr(args, flag, []) or []:
            name, sep, url = item.partition("=")
            if not sep or name not in ENDPOINT_NAMES:
                raise EvstreamError(f"--{flag} {item!r}: expected NAME=URL with NAME one of "
                                    f"{', '.join(ENDPOINT_NAMES)}")
            if name in out:
                raise EvstreamError(f"--{flag} {item!r}: endpoint {name} is given twice")
            out[name] = check_url(name, url, flag)
    return out


# The model `run`/`replay` use without --model: the shipped student once it exists (issue 7 puts
# it in models/<name>/), else the registered untrained network, labelled as such everywhere.
SHIPPED_DEFAULT = "evdistill-r18q-seg"


def default_model() -> str:
    from evstream.nn.checkpoint import resolve_model

    try:
        resolve_model(SHIPPED_DEFAULT)
        return SHIPPED_DEFAULT
    except EvstreamError:
        return "untrained"


def model_config_for(name: str) -> dict:
    """The model config of a checkpoint (or of an .onnx, from its metadata), read before any
    process starts (errors are one line)."""
    from evstream.infer.backends import model_config_of

    return model_config_of(name)


def pipeline_config(args, spec: str | None, live: bool) -> PipelineConfig:
    _positive("--window-ms", args.window_ms)
    _positive("--stride-ms", args.stride_ms)
    _positive("--count", args.count)
    _positive("--bins", args.bins)
    _positive("--ring-events", args.ring_events, allow_none=False)
    _positive("--max-batch", args.max_batch, allow_none=False)
    if not 0.0 <= args.alpha <= 1.0:
        raise EvstreamError(f"--alpha must be in 0..1, not {args.alpha}")
    from evstream.represent.registry import list_representations

    infer = None
    model_cfg: dict = {}
    if not args.no_model:
        name = args.model or default_model()
        model_cfg = model_config_for(name)
        infer = InferConfig(model=name, device=args.device, threads=args.threads,
                            precision=args.precision, cuda_graphs=args.cuda_graphs,
                            compile=args.compile, max_batch=args.max_batch,
                            backend=getattr(args, "backend", "auto"))
        from evstream.infer.backends import check_infer_config

        check_infer_config(infer)
    rep_cfg = model_cfg.get("representation", {})
    win_cfg = model_cfg.get("window", {})
    representation = args.representation or rep_cfg.get("name", "voxel")
    if representation not in list_representations():
        raise EvstreamError(f"unknown representation {representation!r} "
                            f"(known: {', '.join(list_representations())})")
    window_ms = args.window_ms or win_cfg.get("window_us", 50_000) / 1000
    normalize = args.normalize if args.normalize is not None else bool(rep_cfg.get("normalize"))
    speed = getattr(args, "speed", None)
    speed = 1.0 if speed is None else (None if speed == "max" else float(speed))
    source = SourceConfig(spec=spec or "", options=source_options(args, spec),
                          speed=None if live else speed,
                          loop=getattr(args, "loop", False), start_s=getattr(args, "start", None),
                          end_s=getattr(args, "end", None),
                          ring_capacity_events=args.ring_events,
                          record_path=getattr(args, "record", None) or "")
    window = WindowConfig(mode="count" if args.count else "time",
                          window_us=int(window_ms * 1000),
                          stride_us=int(args.stride_ms * 1000) if args.stride_ms else None,
                          count=args.count or 100_000, representation=representation,
                          num_bins=args.bins or int(rep_cfg.get("num_bins", 5)),
                          normalize=normalize, deadline_ms=args.deadline_ms,
                          width=args.sensor_width, height=args.sensor_height)
    if infer is not None:
        from evstream.infer.predictor import check_compatible

        check_compatible(model_cfg, window)
    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else ()
    viewer = None
    consumer = "sink"
    # the viewer runs when it has somewhere to draw: a window (a display is there and not
    # --no-window), a video or PNG frames; otherwise a sink counts what arrives
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    show = not args.no_window and has_display
    if not args.no_viewer and (show or args.video or args.png_dir):
        consumer = "viewer"
        viewer = ViewerConfig(window=show,
                              video=args.video or "", png_dir=args.png_dir or "",
                              alpha=args.alpha, on_close=args.on_close)
    if args.no_viewer and (args.video or args.png_dir):
        raise EvstreamError("--video/--png-dir need the viewer: drop --no-viewer")
    cfg = PipelineConfig(source=source, window=window, lossless=args.lossless,
                         consumer=consumer, infer=infer, viewer=viewer,
                         endpoints=_endpoint_overrides(args), stages=stages,
                         restart_worker=args.restart, stream_id=args.stream_id,
                         window_transport=args.window_transport,
                         curve=_curve_keys(args.curve_keys) if args.curve_keys else {},
                         telemetry_interval_s=0 if args.quiet else args.status_every,
                         dump_windows=args.dump_windows or "",
                         slow_consumer_ms=args.slow_consumer_ms)
    from evstream.pipeline import stage_names

    try:
        names = stage_names(cfg)
    except ValueError as e:
        raise EvstreamError(f"--stages: {e}") from None
    if "source" in names and not spec:
        raise EvstreamError("no source: give a recording, --camera MODEL or a tcp:// stream")
    _check_free_ports(cfg.endpoints, names)
    return cfg


# the stage that connects to each endpoint (`publish`: `evstream view`, never a stage)
CONNECTED_BY = {"windows": "window", "predictions": "worker", "side": "source"}


def _check_free_ports(endpoints: dict, names) -> None:
    """`tcp://HOST:*` (a free port, printed once bound) only for an endpoint that no stage of
    this pipeline connects to: a stage here could not know the port."""
    for name, url in endpoints.items():
        if url.startswith("tcp://") and url.rsplit(":", 1)[-1] in ("*", "0") \
                and CONNECTED_BY.get(name) in names:
            raise EvstreamError(f"--bind {name}={url}: the {CONNECTED_BY[name]} stage here "
                                f"connects to {name}, so it needs a port, not a free one")


def _curve_keys(directory: str) -> dict:
    from evstream.stream.curve import load_or_create_keys

    return load_or_create_keys(directory)


def run_and_report(cfg: PipelineConfig, args) -> int:
    from evstream.pipeline import run_pipeline

    quiet = args.json or args.quiet or not args.status_every
    res = run_pipeline(cfg, status=None if not quiet else (lambda line: print(line, file=sys.stderr)))
    if res.exit_code:
        if res.user_error:
            raise EvstreamError(res.error)
        print(f"evstream: stage {res.error_stage!r} failed:\n{res.error}", file=sys.stderr)
        return res.exit_code
    s = res.summary
    if args.json:
        print(json.dumps(s, default=str))
    else:
        print(format_summary(s))
    return 0


def format_summary(s: dict) -> str:
    lat = s.get("latency_ms", {})
    rate = s["events_in"] / s["stream_s"] / 1e6 if s.get("stream_s") else 0.0
    lines = [
        f"source      {s.get('camera', '')} {s.get('width')}x{s.get('height')}",
        f"events      in {s['events_in']:,}  delivered in windows {s['events_out']:,}  "
        f"({rate:.2f} M ev/s over {s['stream_s']:.2f} s streaming, {s['wall_s']:.2f} s in all)",
        f"windows     {s['windows']:,} delivered, {s['dropped_windows']:,} dropped (live mode "
        f"keeps the newest; {s.get('dropped_window_events', 0):,} events in them)",
        f"drops       {s['dropped_events']:,} events lost before windowing",
        f"side        frames {s.get('frames', 0):,}  imu {s.get('imu', 0):,}  "
        f"triggers {s.get('triggers', 0):,}  (dropped {s.get('dropped_side', 0):,})",
    ]
    if "predictions" in s and s.get("model"):
        inf = s.get("infer_ms", {})
        trained = "" if s.get("trained") else "  [UNTRAINED: random weights]"
        lines.append(f"model       {s['model']} on {s.get('device', '?')}{trained}")
        lines.append(f"inference   {s['predictions']:,} predictions, forward p50 "
                     f"{inf.get('p50', 0):.1f} ms  p99 {inf.get('p99', 0):.1f} ms")
    if "frames_drawn" in s:
        lines.append(f"viewer      {s['frames_drawn']:,} frames drawn, "
                     f"{s.get('dropped_predictions', 0):,} stale predictions skipped (live mode "
                     f"draws the newest)")
    to = "drawn frame" if "frames_drawn" in s else "delivery"
    lines.append(f"latency     window end -> {to} p50 {lat.get('p50', 0):.2f} ms  "
                 f"p99 {lat.get('p99', 0):.2f} ms  max {lat.get('max', 0):.2f} ms")
    if s.get("malformed_messages") or s.get("rejected_peers"):
        over = s.get("oversized_messages", 0)
        lines.append(f"traffic     {s.get('malformed_messages', 0):,} malformed messages dropped"
                     + (f" ({over:,} oversized)" if over else "")
                     + f", {s.get('rejected_peers', 0):,} connections refused"
                     + (f"; last: {s['last_wire_error']}" if s.get("last_wire_error") else ""))
    if s.get("restarts"):
        lines.append(f"restarts    {s['restarts']}")
    if s.get("end_reason"):
        lines.append(f"ended       {s['end_reason']}")
    return "\n".join(lines)
