"""The inference worker: the Predictor on tiny real networks, the compatibility check, and
worker_stage in a real spawned process driven through a real control link and real sockets."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zmq

from evstream.config import InferConfig, PipelineConfig, SourceConfig, WindowConfig
from evstream.errors import EvstreamError
from evstream.infer.device import (configure_threads, physical_cores, resolve_device,
                                   resolve_precision)
from evstream.infer.predictor import Predictor, check_compatible
from evstream.nn.checkpoint import default_config, save_checkpoint
from evstream.nn.registry import build_model
from evstream.represent.preview import event_image
from evstream.stream import wire
from evstream.stream.control import LauncherLink

H, W = 36, 50            # a small sensor: the tiny networks run in milliseconds


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seg_config(**over) -> dict:
    return default_config(**{"name": "tiny-seg", "backbone": "tiny", "trained": True,
                             "input": {"height": H, "width": W}, **over})


def cls_config(**over) -> dict:
    classes = [f"c{i}" for i in range(7)]
    return default_config(**{"name": "tiny-cls", "arch": "classifier", "backbone": "tiny",
                             "task": "classification", "num_classes": 7, "classes": classes,
                             "colors": [[i, i, i] for i in range(7)], "trained": True, **over})


def build(cfg: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def windows(n: int, channels: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((channels, H, W)).astype(np.float32) for _ in range(n)]


def predictor(model, cfg, **kw) -> Predictor:
    kw = {"device": "cpu", "threads": 1, "warmup": 1, "sensor_hw": (H, W), **kw}
    return Predictor(model, cfg, **kw)


# -- the predictor -------------------------------------------------------------------------------

def reference_labels(model, x: np.ndarray, crop, resize, pad=16) -> np.ndarray:
    """The network's argmax at sensor size, written out by hand (255 outside the crop)."""
    y0, x0, h, w = crop or (0, 0, H, W)
    t = torch.from_numpy(x)[None, :, y0:y0 + h, x0:x0 + w]
    rh, rw = resize or (h, w)
    if resize:
        t = F.interpolate(t, size=(rh, rw), mode="bilinear", align_corners=False)
    ph, pw = -(-rh // pad) * pad, -(-rw // pad) * pad
    t = F.pad(t, (0, pw - rw, 0, ph - rh))
    with torch.no_grad():
        logits = model(t)[:, :, :rh, :rw]
    if resize:
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    out = np.full((H, W), 255, np.uint8)
    out[y0:y0 + h, x0:x0 + w] = logits[0].argmax(0).numpy()
    return out


@pytest.mark.parametrize("crop,resize", [(None, None), ([4, 6, 24, 32], None),
                                         ([2, 0, 30, 50], [20, 40])])
def test_segmentation_at_sensor_size(crop, resize):
    cfg = seg_config(input={"crop": crop, "resize": resize})
    model = build(cfg)
    p = predictor(model, cfg)
    x = windows(1)[0]
    before = x.copy()
    (r,) = p.predict([x])
    np.testing.assert_array_equal(x, before)                # the input is not modified
    labels, conf = r["labels"], r["confidence"]
    assert labels.shape == conf.shape == (H, W)
    assert labels.dtype == conf.dtype == np.uint8
    ref = reference_labels(model, x, crop, resize)
    outside = ref == 255
    assert (labels[outside] == 255).all() and (conf[outside] == 0).all()
    assert outside.any() == (crop is not None)
    inside = ~outside
    assert labels[inside].max() < 6
    # the max of K softmax probabilities is at least 1/K
    assert conf[inside].min() >= np.floor(255 / 6) and conf[inside].max() <= 255
    agree = (labels[inside] == ref[inside]).mean()
    assert agree > 0.999, agree
    assert set(r["timing_ms"]) == {"h2d", "forward", "d2h"}
    assert all(v >= 0 for v in r["timing_ms"].values())


def test_confidence_is_the_rounded_max_probability():
    cfg = seg_config()
    model = build(cfg)
    x = windows(1, seed=3)[0]
    (r,) = predictor(model, cfg).predict([x])
    t = F.pad(torch.from_numpy(x)[None], (0, 64 - W, 0, 48 - H))
    with torch.no_grad():
        prob = torch.softmax(model(t)[0, :, :H, :W], 0).max(0).values.numpy()
    assert np.abs(r["confidence"].astype(int) - np.round(255 * prob)).max() <= 1


def test_batch_of_three_equals_three_singles():
    cfg = seg_config(input={"crop": [4, 6, 24, 32]})
    p = predictor(build(cfg), cfg, max_batch=2)          # 3 windows: device batches of 2 + 1
    xs = windows(3, seed=1)
    batched = p.predict(xs)
    singles = [p.predict([x])[0] for x in xs]
    assert len(batched) == 3
    for b, s in zip(batched, singles):
        assert (b["labels"] != s["labels"]).mean() < 1e-3
        assert np.abs(b["confidence"].astype(int) - s["confidence"]).max() <= 1
    # the three windows differ, so their predictions must too (results are not aliased)
    assert not np.array_equal(batched[0]["confidence"], batched[1]["confidence"])


def test_classification_topk_sorted():
    cfg = cls_config()
    model = build(cfg)
    p = predictor(model, cfg, topk=5)
    xs = windows(2, seed=2)
    out = p.predict(xs)
    for x, r in zip(xs, out):
        ids, probs = r["topk_ids"], r["topk_probs"]
        assert ids.dtype == np.int32 and probs.dtype == np.float32
        assert ids.shape == probs.shape == (5,)
        assert (np.diff(probs) <= 0).all() and len(set(ids.tolist())) == 5
        with torch.no_grad():
            ref = torch.softmax(model(F.pad(torch.from_numpy(x)[None],
                                            (0, 64 - W, 0, 48 - H))), 1)[0]
        np.testing.assert_array_equal(ids, ref.argsort(descending=True)[:5].numpy())
        np.testing.assert_allclose(probs, ref.sort(descending=True).values[:5].numpy(),
                                   rtol=1e-4, atol=1e-6)
    # asking for more than there are classes gives them all
    (r,) = predictor(model, cfg, topk=50).predict(xs[:1])
    assert sorted(r["topk_ids"].tolist()) == list(range(7))
    assert abs(float(r["topk_probs"].sum()) - 1.0) < 1e-5


def test_untrained_resnet18_at_davis_size():
    p = Predictor.from_infer_config(InferConfig(model="untrained", device="cpu", threads=1,
                                                warmup=1), sensor_hw=(260, 346))
    assert p.info["model"] == "untrained-r18-seg" and p.info["trained"] is False
    assert p.info["device"] == "cpu" and p.info["precision"] == "fp32"
    rng = np.random.default_rng(0)
    (r,) = p.predict([rng.standard_normal((5, 260, 346)).astype(np.float32)])
    assert r["labels"].shape == (260, 346) and r["labels"].max() < 6


def test_bad_windows_and_configs_are_refused():
    cfg = seg_config()
    p = predictor(build(cfg), cfg)
    with pytest.raises(ValueError, match="channels"):
        p.predict([np.zeros((2, H, W), np.float32)])
    with pytest.raises(ValueError, match="sensor"):
        p.predict([np.zeros((5, H, W + 2), np.float32)])
    with pytest.raises(ValueError, match="float32"):
        p.predict([np.zeros((5, H, W), np.float64)])
    # a network that does not return what its config promises: one line, before streaming
    with pytest.raises(EvstreamError, match="output") as e:
        predictor(build(seg_config(num_classes=4)), cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(EvstreamError, match="does not fit"):
        predictor(build(cfg), seg_config(input={"crop": [0, 0, 40, 50]}))


def test_device_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvstreamError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(EvstreamError, match="needs a CUDA device"):
            resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(EvstreamError, match="expected"):
        resolve_device("tpu")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    before = torch.get_num_threads()
    try:
        n = configure_threads(0)
        assert n == max(1, min(physical_cores() - 1, 4)) == torch.get_num_threads()
        assert configure_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_bf16_autocast_on_cpu_agrees_with_fp32():
    cfg = seg_config()
    model = build(cfg)
    x = windows(1, seed=4)
    a = predictor(model, cfg)
    b = predictor(model, cfg, precision="bf16")
    assert b.info["precision"] == "bf16"
    ra, rb = a.predict(x)[0], b.predict(x)[0]
    assert (ra["labels"] == rb["labels"]).mean() > 0.9


# -- compatibility with the pipeline -------------------------------------------------------------

def test_check_compatible_messages():
    voxel5 = default_config(name="x", trained=True)
    with pytest.raises(EvstreamError) as e:
        check_compatible(voxel5, WindowConfig(representation="histogram", normalize=True))
    assert str(e.value) == ("model 'x' was trained on voxel with 5 bins; the pipeline makes "
                            "histogram (2 channels): use --representation voxel --bins 5")
    with pytest.raises(EvstreamError, match="voxel with 3 bins: use --representation voxel "
                                            "--bins 5"):
        check_compatible(voxel5, WindowConfig(num_bins=3, normalize=True))
    hist = default_config(name="h", in_channels=2, trained=True,
                          representation={"name": "histogram", "num_bins": None})
    with pytest.raises(EvstreamError, match="trained on histogram \\(2 channels\\); the pipeline "
                                            "makes timesurface \\(2 channels\\): use "
                                            "--representation histogram$"):
        check_compatible(hist, WindowConfig(representation="timesurface"))
    assert check_compatible(hist, WindowConfig(representation="histogram")) == []
    assert check_compatible(voxel5, WindowConfig(normalize=True)) == []
    # normalisation: an error for a trained model, a warning for an untrained one
    with pytest.raises(EvstreamError, match="use --normalize"):
        check_compatible(voxel5, WindowConfig(normalize=False))
    (warn,) = check_compatible(dict(voxel5, trained=False), WindowConfig(normalize=False))
    assert "normalized" in warn
    (warn,) = check_compatible(voxel5, WindowConfig(normalize=True, window_us=20_000))
    assert warn == "model 'x' was trained on 50 ms windows; the pipeline makes 20 ms windows"


# -- the worker process --------------------------------------------------------------------------

class FakeLauncher:
    """The launcher's side of one worker: control ROUTER, the viewer's PULL, a window PUSH."""

    def __init__(self, tmp_path, cfg: PipelineConfig):
        from evstream.stages.worker import worker_stage

        ctx = zmq.Context.instance()
        self.endpoints = {name: f"ipc://{tmp_path}/{name}"
                          for name in ("control", "windows", "predictions")}
        self.link = LauncherLink(self.endpoints["control"])
        self.preds = ctx.socket(zmq.PULL)
        self.preds.setsockopt(zmq.LINGER, 0)
        self.preds.bind(self.endpoints["predictions"])
        self.win = ctx.socket(zmq.PUSH)
        self.win.setsockopt(zmq.LINGER, 0)
        self.win.connect(self.endpoints["windows"])
        self.proc = mp.get_context("spawn").Process(target=worker_stage,
                                                    args=(cfg, self.endpoints))
        self.proc.start()
        self.final = None

    def expect(self, kind: str, timeout_s: float = 60.0) -> dict:
        while True:
            got = self.link.recv(timeout_s)
            assert got is not None, f"no {kind!r} from the worker within {timeout_s} s"
            stage, msg = got
            assert stage == "worker"
            if msg["kind"] == "telemetry" and msg.get("final"):
                self.final = msg["snapshot"]
            if msg["kind"] == kind:
                return msg
            assert msg["kind"] != "error", msg.get("traceback") or msg.get("message")

    def send_window(self, stream: str, seq: int, rep: np.ndarray, events: int = 100) -> None:
        t = time.monotonic_ns()
        wire.send(self.win, b"window", {"kind": "window", "stream": stream, "seq": seq,
                                        "t0_us": seq * 1000, "t1_us": (seq + 1) * 1000,
                                        "ts": {"window_end": t, "sent": t},
                                        "meta": {"events": events, "representation": "voxel"}},
                  [rep])

    def send_eos(self, stream: str, seq: int) -> None:
        wire.send(self.win, b"window", {"kind": "control", "stream": stream, "seq": seq,
                                        "meta": {"eos": True}})

    def recv(self, timeout_ms: int = 30_000) -> wire.Message:
        msg = wire.recv(self.preds, timeout_ms)
        assert msg is not None, "no message from the worker"
        return msg

    def close(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        for s in (self.preds, self.win):
            s.close()
        self.link.close()


@pytest.fixture
def checkpoint(tmp_path):
    cfg = seg_config(input={"crop": [4, 6, 24, 32]})
    path = tmp_path / "tiny" / "model.pt"
    save_checkpoint(path, build(cfg).state_dict(), cfg)
    return path


def pipeline(model: str, lossless: bool, **window) -> PipelineConfig:
    return PipelineConfig(source=SourceConfig(spec=""), lossless=lossless,
                          window=WindowConfig(normalize=True, **window), telemetry_interval_s=0,
                          infer=InferConfig(model=model, device="cpu", threads=1, warmup=1,
                                            max_batch=4))


@pytest.fixture
def launcher(tmp_path):
    made = []

    def make(cfg):
        made.append(FakeLauncher(tmp_path, cfg))
        return made[-1]
    yield make
    for fl in made:
        fl.close()


def test_worker_lossless_every_window_in_order(launcher, checkpoint):
    fl = launcher(pipeline(str(checkpoint), lossless=True))
    info = fl.expect("ready")["info"]
    assert (info["model"], info["device"], info["trained"], info["task"]) == \
        ("tiny-seg", "cpu", True, "segmentation")
    xs = windows(7, seed=5)
    # garbage and a window of the wrong size: counted, not fatal
    fl.win.send_multipart([b"window", b"{not json"])
    fl.send_window("cam0", 99, np.zeros((5, H + 1, W), np.float32))
    for i, x in enumerate(xs):
        fl.send_window("cam0", i, x, events=10 + i)
    fl.send_eos("cam0", len(xs))
    fl.link.send("worker", "start", info={"width": W, "height": H})
    local = Predictor.from_infer_config(pipeline(str(checkpoint), True).infer, sensor_hw=(H, W))
    for i, x in enumerate(xs):
        m = fl.recv()
        h = m.header
        assert (h["kind"], h["stream"], h["seq"], h["t0_us"]) == ("prediction", "cam0", i, i * 1000)
        ts = h["ts"]
        assert ts["window_end"] <= ts["sent"] <= ts["worker_recv"] <= ts["infer_start"] \
            <= ts["infer_end"] <= ts["pred_sent"]
        meta = h["meta"]
        assert meta["events"] == 10 + i and meta["model"] == "tiny-seg" and meta["trained"]
        assert meta["task"] == "segmentation" and meta["classes"][0] == "flat"
        assert meta["device"] == "cpu" and meta["representation"] == "voxel"
        assert 1 <= meta["batch"] <= 4 and set(meta["timing_ms"]) == {"h2d", "forward", "d2h"}
        img, labels, conf = m.arrays
        assert img.dtype == np.int8 and labels.dtype == conf.dtype == np.uint8
        np.testing.assert_array_equal(img, event_image("voxel", x))
        ref = local.predict([x])[0]
        assert (labels != ref["labels"]).mean() < 1e-3
        assert (labels[:4] == 255).all() and (conf[:4] == 0).all()    # above the crop
    eos = fl.recv()
    assert eos.header["kind"] == "control" and eos.header["meta"]["eos"]
    fl.expect("done")
    fl.proc.join(10)
    assert fl.proc.exitcode == 0
    c = fl.final["counters"]
    assert c["windows_in"] == c["predictions_out"] == 7 and c["events_in"] == sum(range(10, 17))
    assert c.get("dropped_windows", 0) == 0
    assert fl.final["wire"]["malformed"] == 2
    assert fl.final["latency"]["infer_ms"]["count"] == c["batches"]
    assert fl.final["latency"]["worker_latency_ms"]["count"] == 7


def test_worker_live_newest_per_stream_batched_and_drain(launcher, checkpoint):
    fl = launcher(pipeline(str(checkpoint), lossless=False))
    fl.expect("ready")
    per_stream = 15
    xs = windows(per_stream, seed=6)
    for i, x in enumerate(xs):                 # a burst of two interleaved streams
        fl.send_window("cam0", i, x)
        fl.send_window("cam1", i, x[::-1].copy())
    fl.link.send("worker", "start", info={"width": W, "height": H})
    got = {"cam0": [], "cam1": []}
    batches, ended, drained = [], set(), False
    while ended != {"cam0", "cam1"}:
        m = fl.recv()
        if m.header["kind"] == "control":       # the worker ends both streams itself on drain
            assert m.header["meta"]["eos"] and drained
            ended.add(m.header["stream"])
            continue
        got[m.header["stream"]].append(m.header["seq"])
        batches.append(m.header["meta"]["batch"])
        if not drained and all(s and s[-1] == per_stream - 1 for s in got.values()):
            fl.link.send("worker", "drain")    # upstream done; no end-of-stream was sent
            drained = True
    fl.expect("done")
    c = fl.final["counters"]
    for seqs in got.values():
        assert seqs == sorted(set(seqs)) and seqs[-1] == per_stream - 1   # newest always run
    run = sum(len(s) for s in got.values())
    assert c["windows_in"] == c["predictions_out"] == run
    assert c["dropped_windows"] == 2 * per_stream - run > 0
    assert c["dropped_window_events"] == 100 * c["dropped_windows"]
    assert 2 in batches                        # the two streams shared a forward pass


def test_worker_bad_checkpoint_is_a_one_line_user_error(launcher, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    fl = launcher(pipeline(str(bad), lossless=True))
    while True:
        got = fl.link.recv(60)
        assert got is not None
        stage, msg = got
        if msg["kind"] != "telemetry":
            break
    assert (stage, msg["kind"], msg["user"]) == ("worker", "error", True)
    assert "broken.pt" in msg["message"] and "\n" not in msg["message"]
    fl.proc.join(10)
    assert fl.proc.exitcode == 2


def test_worker_blocked_on_a_stuck_viewer_still_stops(launcher, checkpoint):
    """Lossless: a consumer that reads nothing makes the worker wait (bounded queues), and a
    `stop` from the launcher still ends it at once, with its final telemetry."""
    fl = launcher(pipeline(str(checkpoint), lossless=True))
    fl.preds.close()                           # rebind a consumer that queues next to nothing
    fl.preds = zmq.Context.instance().socket(zmq.PULL)
    fl.preds.setsockopt(zmq.RCVHWM, 1)
    fl.preds.setsockopt(zmq.LINGER, 0)
    fl.preds.bind(fl.endpoints["predictions"])
    fl.expect("ready")
    fl.link.send("worker", "start", info={"width": W, "height": H})
    x = windows(1)[0]
    for i in range(200):
        fl.send_window("cam0", i, x)
    # the worker runs windows until its output queue is full, then waits: wait for the counts
    # to stop growing (telemetry every 0.25 s) rather than for a fixed time
    last = -1
    while True:
        snap = fl.expect("telemetry")["snapshot"]
        out = snap["counters"].get("predictions_out", 0)
        if out == last and out > 0:
            break
        last = out
    assert out < 200
    t0 = time.monotonic()
    fl.link.send("worker", "stop")
    fl.expect("done", timeout_s=5)
    t_done = time.monotonic() - t0
    fl.proc.join(10)
    # done: measured 4-25 ms. The exit after it is the interpreter's teardown of torch and
    # numba (0.5-1.3 s on this 2-core machine under load), not the worker
    assert fl.proc.exitcode == 0 and t_done < 0.5
    assert fl.final["counters"]["predictions_out"] == out


def test_worker_classification_messages(launcher, tmp_path):
    cfg = cls_config()
    path = tmp_path / "cls.pt"
    save_checkpoint(path, build(cfg).state_dict(), cfg)
    fl = launcher(pipeline(str(path), lossless=True))
    assert fl.expect("ready")["info"]["task"] == "classification"
    fl.link.send("worker", "start", info={"width": W, "height": H})
    xs = windows(2, seed=8)
    for i, x in enumerate(xs):
        fl.send_window("cam0", i, x)
    fl.send_eos("cam0", 2)
    local = Predictor.from_infer_config(pipeline(str(path), True).infer, sensor_hw=(H, W))
    for x in xs:
        m = fl.recv()
        img, ids, probs = m.arrays
        meta = m.header["meta"]
        assert meta["task"] == "classification" and len(meta["classes"]) == 7
        assert img.shape == (H, W) and ids.dtype == np.int32 and probs.dtype == np.float32
        ref = local.predict([x])[0]
        np.testing.assert_array_equal(ids, ref["topk_ids"])
        np.testing.assert_allclose(probs, ref["topk_probs"], rtol=1e-4, atol=1e-6)
    assert fl.recv().header["kind"] == "control"
    fl.expect("done")
