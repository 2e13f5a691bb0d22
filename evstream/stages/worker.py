"""The inference worker process: windows in (zmq PULL) -> predictions out (zmq PUSH).

    windows  (bound here, PULL)       <- the window stage(s) of one or several cameras
    predictions (connected, PUSH)     -> the viewer or a sink
    publish  (optional, bound, PUB)   -> every prediction again, for `evstream view URL`

Start-up: the model is loaded (infer/backends.make_predictor: the torch Predictor or, with
--backend onnxruntime or where `auto` measured it faster, the OnnxPredictor of the same
interface), checked against the pipeline's representation and warmed up before `ready`, so a
bad checkpoint is a one-line user error before anything streams and the first window does not
pay for lazy initialisation. The ready info carries {"model", "device", "backend", "trained",
"task", "classes", "colors", "precision", "threads", "warnings"}. The sensor size comes
with `start`; if it differs from the size guessed for the warm-up, the worker warms up again
for the real one before taking windows.

Each wake-up (poll <= 20 ms) takes what is queued:
- lossless: windows in arrival order, at most `max_batch`, stopping after an end-of-stream
  message; every window gets exactly one prediction, in order. Taking no more than a batch at a
  time keeps zmq's queues, and so the backpressure to the window stage, bounded end to end.
- live: everything queued; only the newest window of each stream is run, the others are counted
  as dropped_windows / dropped_window_events (the same accounting as the sink).
The windows taken are run in batches of up to `max_batch` (several streams share one forward
pass), then one prediction message per window goes out (format: docs in evstream.stream.wire
and the contract: kind "prediction", arrays [event_img, labels, confidence] or [event_img,
topk_ids, topk_probs], ts = the window's plus worker_recv / infer_start / infer_end / pred_sent).
Live sends never block (a full queue drops the prediction, counted as dropped_predictions);
lossless sends wait, checking for `stop` every 20 ms.

A message that is not a well-formed window of the right shape is counted (wire "malformed",
with its reason in last_error) and skipped, and so is a peer refused at a bound tcp endpoint
(wire "rejected_peers"; every socket comes from stream/sockets.py); only streams that sent a
good window are waited for. A stream's end-of-stream control message is
forwarded after that stream's last prediction; the worker ends when every stream it has seen
has ended, or, on `drain` (upstream is done; its end-of-stream message may have been dropped in
live mode), once nothing is queued, after sending an end-of-stream message itself.

Telemetry (counters): windows_in / events_in (windows run), predictions_out, dropped_windows,
dropped_window_events, dropped_predictions, dropped_eos, batches; latencies: infer_ms (the device
forward), h2d_ms, d2h_ms, worker_latency_ms (window_end -> prediction sent), batch (windows per
forward); gauge queue_depth (messages taken at the last wake-up).
"""

from __future__ import annotations

import logging
import time

import zmq

from evstream.config import InferConfig, PipelineConfig
from evstream.stream.stage import stage_context
from evstream.stream.telemetry import StageTelemetry

log = logging.getLogger("evstream.infer")

POLL_MS = 20
LIVE_DRAIN_LIMIT = 4096        # messages taken per wake-up in live mode (bounds one pass)
EOS_SEND_TIMEOUT_MS = 1000


def guess_sensor_hw(cfg: PipelineConfig, model_config: dict) -> tuple[int, int]:
    """The sensor size to warm up for before `start` says the real one: the pipeline's when
    given, else the size the model was made for (at least as large as its crop)."""
    if cfg.window.height > 0 and cfg.window.width > 0:
        return cfg.window.height, cfg.window.width
    inp = model_config.get("input") or {}
    h, w = int(inp.get("height") or 260), int(inp.get("width") or 346)
    crop = inp.get("crop")
    if crop:
        h, w = max(h, crop[0] + crop[2]), max(w, crop[1] + crop[3])
    return h, w


class _Worker:
    def __init__(self, cfg: PipelineConfig, endpoints: dict, link):
        from evstream.stream import sockets, wire

        self.cfg = cfg
        self.link = link
        self.lossless = cfg.lossless
        self.infer = cfg.infer or InferConfig()
        self.stats = wire.WireStats()
        self.tel = StageTelemetry("worker")
        self.pull = self.push = self.pub = None
        self.pull = sockets.open_endpoint(endpoints, "windows", "bind",
                                          hwm=16 if self.lossless else 4, linger=0,
                                          stats=self.stats)
        self.push = sockets.open_endpoint(endpoints, "predictions", "connect",
                                          hwm=16 if self.lossless else 4,
                                          linger=-1 if self.lossless else 1000)
        if endpoints.get("publish"):
            self.pub = sockets.open_endpoint(endpoints, "publish", "bind", hwm=4, linger=0,
                                             stats=self.stats)
        self.predictor = None
        self.next_report = float("inf")      # telemetry starts with the loop
        self.meta_base: dict = {}
        self.seen: set[str] = set()           # streams that sent anything
        self.ended: set[str] = set()          # streams whose end-of-stream was forwarded

    # -- start-up ---------------------------------------------------------------------------------

    def load(self) -> dict:
        from evstream.infer.backends import make_predictor
        from evstream.infer.predictor import check_compatible

        p = make_predictor(self.infer)
        warnings = check_compatible(p.config, self.cfg.window)
        for w in warnings:
            log.warning("%s", w)
        p.prepare(guess_sensor_hw(self.cfg, p.config))
        self.predictor = p
        info = p.info
        self.meta_base = {"representation": self.cfg.window.representation,
                          "model": info["model"], "trained": info["trained"],
                          "device": info["device"], "task": info["task"],
                          "classes": info["classes"], "colors": info["colors"]}
        return dict(info, warnings=warnings, warmup_s=round(p.warmup_s, 3))

    def start(self, start_info: dict) -> None:
        h, w = start_info.get("height"), start_info.get("width")
        if h and w:
            self.predictor.prepare((int(h), int(w)))

    # -- receiving --------------------------------------------------------------------------------

    def receive(self, timeout_ms: int) -> list:
        """[(message, recv monotonic ns)] per the module comment (lossless / live)."""
        from evstream.stream import wire

        out = []
        limit = self.infer.max_batch if self.lossless else LIVE_DRAIN_LIMIT
        windows = 0
        msg = wire.recv(self.pull, timeout_ms, self.stats)
        while msg is not None:
            out.append((msg, time.monotonic_ns()))
            if msg.header["kind"] == "window":
                windows += 1
            elif self.lossless:
                break                   # an end of stream: run what came before it first
            if windows >= limit:
                break
            msg = wire.recv(self.pull, 0, self.stats)
        return out

    def reject(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.last_error = reason[:200]
        if self.stats.malformed <= 3:
            log.warning("dropped a message: %s", reason)

    def sort(self, got: list) -> tuple[list, list]:
        """Split into (windows to run, control messages); reject bad ones; live: newest per
        stream, the rest counted as dropped."""
        windows, controls = [], []
        rep_name = self.cfg.window.representation
        for msg, t_ns in got:
            h = msg.header
            if h["kind"] == "control":
                controls.append(msg)
                continue
            if h["kind"] != "window":
                self.reject(f"unexpected message kind {h['kind']!r:.40} on the windows socket")
                continue
            if len(msg.arrays) != 1:
                self.reject(f"window with {len(msg.arrays)} arrays, expected 1")
                continue
            sent_rep = h["meta"].get("representation", rep_name)
            if sent_rep != rep_name:
                self.reject(f"window of representation {sent_rep!r:.40}, the model takes "
                            f"{rep_name!r}")
                continue
            try:
                self.predictor.check_window(msg.arrays[0])
            except ValueError as e:
                self.reject(str(e))
                continue
            self.seen.add(h["stream"])      # a stream is one that sent a good window
            windows.append((msg, t_ns))
        self.tel.gauge("queue_depth", len(got))
        if self.lossless or len(windows) <= 1:
            return windows, controls
        newest: dict[str, tuple] = {}
        for item in windows:
            newest[item[0].header["stream"]] = item
        keep = list(newest.values())
        stale = len(windows) - len(keep)
        if stale:
            kept = {id(item[0]) for item in keep}
            self.tel.count("dropped_windows", stale)
            self.tel.count("dropped_window_events", sum(
                _events(m) for m, _ in windows if id(m) not in kept))
        return keep, controls

    # -- running and sending ----------------------------------------------------------------------

    def run_batch(self, items: list) -> None:
        from evstream.represent.preview import event_image

        t_start = time.monotonic_ns()
        results = self.predictor.predict([m.arrays[0] for m, _ in items])
        t_end = time.monotonic_ns()
        timing = results[0]["timing_ms"]
        tel = self.tel
        tel.count("batches", 1)
        tel.latency("batch", len(items))
        tel.latency("infer_ms", timing["forward"])
        tel.latency("h2d_ms", timing["h2d"])
        tel.latency("d2h_ms", timing["d2h"])
        seg = self.predictor.task == "segmentation"
        for (msg, t_recv), r in zip(items, results):
            h = msg.header
            rep = msg.arrays[0]
            arrays = [event_image(self.cfg.window.representation, rep)]
            arrays += [r["labels"], r["confidence"]] if seg else [r["topk_ids"], r["topk_probs"]]
            header = {"kind": "prediction", "stream": h["stream"], "seq": h["seq"],
                      "t0_us": h["t0_us"], "t1_us": h["t1_us"],
                      "ts": dict(h["ts"], worker_recv=t_recv, infer_start=t_start,
                                 infer_end=t_end),
                      "meta": dict(self.meta_base, events=_events(msg), batch=len(items),
                                   timing_ms={k: round(v, 4) for k, v in timing.items()})}
            tel.count("windows_in", 1)
            tel.count("events_in", _events(msg))
            if self.send(header, arrays):
                tel.count("predictions_out", 1)
                end = h["ts"].get("window_end")
                if end is not None:
                    tel.latency("worker_latency_ms", (header["ts"]["pred_sent"] - end) / 1e6)
            elif self.link.stopping:
                return

    def send(self, header: dict, arrays: list, timeout_ms: int | None = None,
             dropped: str = "dropped_predictions") -> bool:
        """Live: never blocks (a full queue drops the message, counted as `dropped`). Lossless
        (or with timeout_ms): waits for room, checking for `stop`. True when sent."""
        from evstream.stream import wire

        blocking = self.lossless or timeout_ms is not None
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            header["ts"]["pred_sent"] = time.monotonic_ns()
            try:
                wire.send(self.push, b"prediction", header, arrays, flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                if not blocking:
                    self.tel.count(dropped, 1)
                    return False
            if deadline is not None and time.monotonic() >= deadline:
                self.tel.count(dropped, 1)
                return False
            self.push.poll(POLL_MS, zmq.POLLOUT)
            if self.link.should_stop():
                return False
            self.tick()
        if self.pub is not None:
            try:
                wire.send(self.pub, b"prediction", header, arrays, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        return True

    def end_stream(self, stream: str, seq: int = 0, ts: dict | None = None,
                   meta: dict | None = None) -> None:
        """Send an end-of-stream control message (the window stage's, forwarded as it came)."""
        header = {"kind": "control", "stream": stream, "seq": seq, "t0_us": 0, "t1_us": 0,
                  "ts": dict(ts or {}), "meta": dict(meta or {}, eos=True)}
        self.send(header, [], timeout_ms=None if self.lossless else EOS_SEND_TIMEOUT_MS,
                  dropped="dropped_eos")
        self.ended.add(stream)

    # -- the loop ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Periodic telemetry (also while waiting to send)."""
        if time.monotonic() >= self.next_report:
            self.link.telemetry(self.snapshot())
            self.next_report = time.monotonic() + max(self.cfg.telemetry_interval_s / 2, 0.25)

    def loop(self) -> None:
        self.next_report = time.monotonic() + max(self.cfg.telemetry_interval_s / 2, 0.25)
        max_batch = self.infer.max_batch
        while not self.link.should_stop():
            got = self.receive(POLL_MS)
            if self.link.drain_done(bool(got)):   # upstream is done and nothing more comes
                for stream in (self.seen - self.ended) or {self.cfg.stream_id}:
                    self.end_stream(stream)
                return
            if got:
                windows, controls = self.sort(got)
                for i in range(0, len(windows), max_batch):
                    self.run_batch(windows[i:i + max_batch])
                    if self.link.stopping:
                        return
                for msg in controls:
                    h = msg.header
                    # the end of a stream that sent windows, or of this pipeline's own
                    # (an empty one); another is a stray peer's and would end the consumer
                    if h["meta"].get("eos") and (h["stream"] in self.seen
                                                 or h["stream"] == self.cfg.stream_id):
                        self.end_stream(h["stream"], h["seq"], h["ts"], h["meta"])
                    elif h["meta"].get("eos"):
                        self.reject(f"end of stream {h['stream']!r:.40}, which sent no window")
                if self.ended and self.seen <= self.ended:
                    return
            self.tick()

    def snapshot(self) -> dict:
        from evstream.stream import sockets

        sockets.poll_monitors()         # peers refused at a bound tcp endpoint
        snap = self.tel.snapshot()
        snap["wire"] = self.stats.as_dict()
        return snap

    def close(self) -> None:
        if self.link.stopping and self.push is not None:
            self.push.setsockopt(zmq.LINGER, 0)   # stop: what the consumer has not taken
        for sock in (self.pull, self.push, self.pub):
            if sock is not None:
                sock.close()


def _events(msg) -> int:
    n = msg.header["meta"].get("events", 0)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def worker_stage(cfg: PipelineConfig, endpoints: dict) -> None:
    with stage_context(endpoints, "worker") as link:
        worker = _Worker(cfg, endpoints, link)
        try:
            link.ready(**worker.load())
            worker.start(link.wait_start())
            worker.loop()
        finally:
            link.telemetry(worker.snapshot(), final=True)
            worker.close()
