"""A batch of representation windows -> per-window predictions at sensor resolution.

    p = Predictor.from_infer_config(InferConfig(model="untrained"), sensor_hw=(260, 346))
    out = p.predict([voxels_a, voxels_b])      # float32 (C, H, W) each, sensor size
    out[0]["labels"], out[0]["confidence"]    # segmentation: uint8 (H, W) each
    out[0]["topk_ids"], out[0]["topk_probs"]  # classification: int32 (k,), float32 (k,)
    out[0]["timing_ms"]                       # {"h2d", "forward", "d2h"} of the whole batch

Contracts:
- Input windows are (C, H, W) float32 at the sensor size, C = the model's in_channels; they are
  copied into a staging buffer and never modified. Results are new arrays owned by the caller.
- Segmentation: the model config's input geometry (evstream.nn.geometry) maps the sensor tensor
  to what the network sees and its logits back (bilinear); labels = argmax, confidence =
  round(255 * max softmax probability). Pixels the network does not see (outside the crop) get
  label 255 and confidence 0. Classification: the top-k classes by softmax probability,
  highest first.
- Timing, per batch, in ms: "h2d" = staging copy + transfer to the device, "forward" = geometry,
  network and post-processing (argmax, softmax, top-k) on the device, "d2h" = transfer back and
  unpacking. On CUDA the device parts are measured with CUDA events, so they are device time,
  not the launch time the host sees.
- Inference always runs under torch.inference_mode, the model in eval mode.
- Before the first real window, `prepare(sensor_hw)` allocates the buffers for that sensor size
  and runs max(warmup, 1) forward passes; the first checks that the network's output has the
  shape its config promises (a wrong checkpoint is a one-line EvstreamError before streaming).

The CUDA path is built for latency: host staging buffers are pinned and reused (inputs and
outputs), copies are non_blocking on the current stream with one synchronisation per batch (the
end of the output copy, which also makes the input staging buffer free for the next batch),
the model and its input are channels_last, autocast runs the network in fp16 / bf16 per
`precision` (post-processing in fp32), cuDNN autotuning is on and the warm-up covers every batch
size up to `max_batch` so no autotuning happens while streaming. With `cuda_graphs` the whole
device part (geometry, network, post-processing) is captured once per batch size 1..max_batch,
each graph with its own static input and output tensors and its own memory pool (graphs are
replayed in any order, so they must not share one); a batch is then one copy into the static
input, one replay and one copy out. `fp32_math` says how CUDA computes what runs in fp32 (the
whole network with precision fp32, the parts autocast leaves in fp32 otherwise): "ieee" (strict,
the default) or "tf32" (evstream.infer.fp32_math; torch's own default would be TF32 convolutions).

`compile` wraps the model in torch.compile (dynamic=False: one specialised graph per batch size
and network input size, all compiled during the warm-up; True means the inductor backend, a
string names another). dynamo keeps at most `recompile_limit` graphs per function (8 by default)
and past that runs the function eagerly with one log line. A worker warms up twice (at the size
it guesses, then at the real sensor size) and max_batch is 8, so the default limit was spent by
the first warm-up: the predictor raises the limit to cover every shape compiled in this process,
and during its warm-up a limit hit raises instead of falling back; if that still happens it runs
eagerly on purpose and says so in `info["compile_status"]` and a warning, never silently.

`check_compatible(model_config, window_cfg)` is what the launcher calls before any process
starts: the pipeline must compute the representation the model was trained on.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from evstream.errors import EvstreamError
from evstream.infer.device import (configure_threads, precision_name, resolve_device,
                                   resolve_precision)
from evstream.infer.fp32_math import check_fp32_math, set_fp32_math

log = logging.getLogger("evstream.infer")

TASKS = ("segmentation", "classification")
IGNORE_LABEL = 255
# network input shapes compiled in this process, per (model class, precision, device): dynamo's
# recompile limit counts the graphs of one function (the model class's forward), whatever the
# instance, so the budget is counted the same way
_COMPILED: dict[tuple, set] = {}


# -- compatibility with the pipeline ---------------------------------------------------------------

def _describe(name: str, channels: int, num_bins: int | None) -> str:
    return f"{name} with {num_bins} bins" if name == "voxel" else f"{name} ({channels} channels)"


def pipeline_channels(window_cfg) -> int:
    """Channels the window stage computes for this WindowConfig."""
    from evstream.represent import get_representation, representation_params

    return get_representation(window_cfg.representation).channels(
        **representation_params(window_cfg))


def check_compatible(model_config: dict, window_cfg) -> list[str]:
    """Raise a one-line EvstreamError when the pipeline's representation (WindowConfig) is not
    the one the model was trained on; return warnings (strings) for softer differences (window
    length; voxel normalisation of an untrained model)."""
    name = model_config.get("name", "?")
    rep = model_config.get("representation") or {}
    m_rep = rep.get("name")
    m_bins = rep.get("num_bins")
    m_channels = model_config.get("in_channels")
    if not m_rep or not isinstance(m_channels, int):
        raise EvstreamError(f"model {name!r}: its config lacks representation.name or "
                            f"in_channels")
    p_rep = window_cfg.representation
    p_channels = pipeline_channels(window_cfg)
    p_bins = window_cfg.num_bins if p_rep == "voxel" else None
    if m_rep != p_rep or m_channels != p_channels:
        fix = f"--representation {m_rep}" + (f" --bins {m_bins}" if m_rep == "voxel" else "")
        raise EvstreamError(
            f"model {name!r} was trained on {_describe(m_rep, m_channels, m_bins)}; the pipeline "
            f"makes {_describe(p_rep, p_channels, p_bins)}: use {fix}")
    warnings = []
    if m_rep == "voxel" and "normalize" in rep and bool(rep["normalize"]) != window_cfg.normalize:
        said = "normalized" if rep["normalize"] else "unnormalized"
        makes = "normalized" if window_cfg.normalize else "unnormalized"
        flag = "--normalize" if rep["normalize"] else "--no-normalize"
        msg = (f"model {name!r} was trained on {said} voxel grids; the pipeline makes them "
               f"{makes}: use {flag}")
        if model_config.get("trained", False):
            raise EvstreamError(msg)
        warnings.append(msg)
    win = model_config.get("window") or {}
    m_mode, m_us = win.get("mode", "time"), win.get("window_us")
    if m_mode == "time" and m_us and (window_cfg.mode != "time" or window_cfg.window_us != m_us):
        makes = (f"{window_cfg.window_us / 1000:g} ms windows" if window_cfg.mode == "time"
                 else f"windows of {window_cfg.count} events")
        warnings.append(f"model {name!r} was trained on {m_us / 1000:g} ms windows; the "
                        f"pipeline makes {makes}")
    return warnings


def cover_recompile_limit(graphs: int) -> int:
    """Raise dynamo's per-function recompile limit to at least `graphs`; returns the limit."""
    import torch._dynamo as dynamo

    key = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") \
        else "cache_size_limit"                           # its name before torch 2.6
    if getattr(dynamo.config, key) < graphs:
        setattr(dynamo.config, key, graphs)
    return getattr(dynamo.config, key)


# -- the predictor ---------------------------------------------------------------------------------

class Predictor:
    backend = "torch"           # what runs the network (infer/onnx_backend.py: "onnxruntime")

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "auto",
                 precision: str = "auto", threads: int = 0, cuda_graphs: bool = False,
                 compile: bool | str = False, warmup: int = 3, topk: int = 5,
                 max_batch: int = 8, sensor_hw: tuple[int, int] | None = None,
                 fp32_math: str = "ieee"):
        self.config = config
        self.name = str(config.get("name", "?"))
        self.task = config.get("task")
        if self.task not in TASKS:
            raise EvstreamError(f"model {self.name!r}: task must be one of {', '.join(TASKS)}, "
                                f"got {self.task!r}")
        self.in_channels = config.get("in_channels")
        self.num_classes = config.get("num_classes")
        for key in ("in_channels", "num_classes"):
            v = config.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EvstreamError(f"model {self.name!r}: config {key} must be a positive "
                                    f"integer, got {v!r}")
        if self.task == "segmentation" and self.num_classes >= IGNORE_LABEL:
            raise EvstreamError(f"model {self.name!r}: {self.num_classes} classes do not fit "
                                f"uint8 labels (at most {IGNORE_LABEL - 1})")
        if topk < 1:
            raise EvstreamError(f"top-k must be >= 1, not {topk}")
        if max_batch < 1:
            raise EvstreamError(f"--max-batch must be >= 1, not {max_batch}")
        self.input_cfg = config.get("input") or {}
        self.trained = bool(config.get("trained", False))
        self.k = min(topk, self.num_classes)
        self.max_batch = int(max_batch)
        self.warmup_passes = max(int(warmup), 1)
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.threads = configure_threads(threads)
        self.cuda = self.device.type == "cuda"
        self.use_graphs = bool(cuda_graphs)
        if self.use_graphs and not self.cuda:
            raise EvstreamError("--cuda-graphs needs a CUDA device")
        self.compiled = bool(compile)
        self.compile_backend = compile if isinstance(compile, str) else "inductor"
        self.compile_status = "off"
        self.fp32_math = check_fp32_math(fp32_math, "--fp32-math") if self.cuda else "ieee"
        if self.cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True     # shapes are fixed per batch size
            set_fp32_math(self.fp32_math)
        model = model.eval().to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self._eager_model = model
        if self.compiled:
            model = torch.compile(model, dynamic=False, backend=self.compile_backend)
        self.model = model
        self.sensor_hw: tuple[int, int] | None = None
        self.last_timing_ms: dict = {}
        self.warmup_s = 0.0
        self._graphs: dict[int, tuple] = {}
        if sensor_hw is not None:
            self.prepare(sensor_hw)

    @classmethod
    def from_infer_config(cls, infer_cfg, sensor_hw=None) -> "Predictor":
        """Load infer_cfg.model (evstream.nn.checkpoint.load_model) and wrap it."""
        from evstream.nn.checkpoint import load_model

        resolve_device(infer_cfg.device)          # a bad --device fails before the load
        model, config = load_model(infer_cfg.model, device="cpu")
        return cls(model, config, device=infer_cfg.device, precision=infer_cfg.precision,
                   threads=infer_cfg.threads, cuda_graphs=infer_cfg.cuda_graphs,
                   compile=infer_cfg.compile, warmup=infer_cfg.warmup, topk=infer_cfg.topk,
                   max_batch=infer_cfg.max_batch, sensor_hw=sensor_hw,
                   fp32_math=getattr(infer_cfg, "fp32_math", "ieee"))

    @property
    def info(self) -> dict:
        """What the worker announces and stamps on its messages (JSON-able)."""
        return {"model": self.name, "device": str(self.device), "trained": self.trained,
                "backend": self.backend, "task": self.task,
                "precision": precision_name(self.autocast_dtype),
                "fp32_math": self.fp32_math, "threads": self.threads,
                "cuda_graphs": self.use_graphs, "compile": self.compiled,
                "compile_status": self.compile_status, "max_batch": self.max_batch,
                "classes": list(self.config.get("classes") or []),
                "colors": [list(c) for c in self.config.get("colors") or []]}

    # -- set-up for one sensor size ---------------------------------------------------------------

    def prepare(self, sensor_hw) -> None:
        """Allocate buffers for this sensor size and warm up (no-op when already done)."""
        from evstream.nn.geometry import coverage_mask

        hw = (int(sensor_hw[0]), int(sensor_hw[1]))
        if hw == self.sensor_hw:
            return
        if hw[0] < 1 or hw[1] < 1:
            raise EvstreamError(f"sensor size {hw[1]}x{hw[0]} is not valid")
        try:
            mask = coverage_mask(self.input_cfg, hw)      # checks that the crop fits
        except EvstreamError as e:
            raise EvstreamError(f"model {self.name!r}: {e}") from None
        self.sensor_hw = hw
        self._graphs = {}
        self._valid = None if mask.all() else torch.from_numpy(mask).to(self.device)
        shape = (self.max_batch, self.in_channels, *hw)
        self._in_host = torch.empty(shape, dtype=torch.float32, pin_memory=self.cuda)
        self._in_np = self._in_host.numpy()
        self._out_host: list[torch.Tensor] | None = None
        if self.cuda:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.compiled and self.model is not self._eager_model:
                self._warm_up_compiled()
            else:
                self._warm_up()
        self.warmup_s = time.perf_counter() - t0

    def _warm_up_compiled(self) -> None:
        """The warm-up with torch.compile: every shape compiled now, within a recompile limit
        raised to cover them, or a visible fallback to eager (see the module comment)."""
        import torch._dynamo as dynamo
        from evstream.nn.geometry import network_input_hw

        key = (type(self._eager_model).__qualname__, precision_name(self.autocast_dtype),
               str(self.device))
        shapes = _COMPILED.setdefault(key, set())
        hw = network_input_hw(self.input_cfg, self.sensor_hw)
        shapes.update((n, self.in_channels, *hw) for n in range(1, self.max_batch + 1))
        limit = cover_recompile_limit(len(shapes))
        fail_key = next((k for k in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")
                         if hasattr(dynamo.config, k)), None)
        strict = dynamo.config.patch(**{fail_key: True}) if fail_key else contextlib.nullcontext()
        try:
            with strict:
                self._warm_up()
        except Exception as e:  # noqa: BLE001 - dynamo's limit exception, whatever its module
            said = f"{type(e).__name__}: {e}"              # (the first pass wraps it in a line)
            if not any(k in said for k in ("RecompileLimitHit", "CacheLimitHit")):
                raise
            self.model = self._eager_model
            self.compile_status = (f"eager: torch.compile hit its recompile limit "
                                   f"({limit} graphs) at "
                                   f"{self.sensor_hw[1]}x{self.sensor_hw[0]}")
            log.warning("model %r: %s", self.name, self.compile_status)
            self._graphs = {}
            self._warm_up()
            return
        batches = "batch 1" if self.max_batch == 1 else f"batch 1-{self.max_batch}"
        self.compile_status = (f"compiled ({self.compile_backend}): {batches} at network input "
                               f"{hw[1]}x{hw[0]}")

    def _warm_up(self) -> None:
        gen = torch.Generator(device="cpu").manual_seed(0)
        sample = torch.randn((self.max_batch, self.in_channels, *self.sensor_hw), generator=gen)
        x = sample.to(self.device)
        for i in range(self.warmup_passes):
            outs = self._run_device(x[:1], check=i == 0)
        # pinned output staging, shaped after what the device part returns
        self._out_host = [torch.empty((self.max_batch, *o.shape[1:]), dtype=o.dtype,
                                      pin_memory=self.cuda) for o in outs]
        if self.cuda or self.compiled:
            # cuDNN autotuning / compilation happens per input shape: do every batch size now
            for n in range(2, self.max_batch + 1):
                self._run_device(x[:n])
        if self.use_graphs:
            for n in range(1, self.max_batch + 1):
                self._graphs[n] = self._capture(x[:n])
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _capture(self, example: torch.Tensor) -> tuple:
        """One CUDA graph for this batch size: (graph, static input, static outputs)."""
        static_in = example.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):                 # warm-up off the capture stream
            for _ in range(2):
                self._run_device(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._run_device(static_in)
        return graph, static_in, static_out

    # -- the device part --------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              cache_enabled=not self.use_graphs)

    def _run_device(self, x: torch.Tensor, check: bool = False) -> tuple[torch.Tensor, ...]:
        """(n, C, H, W) float32 on the device -> output tensors on the device:
        segmentation (labels uint8 (n,H,W), confidence uint8 (n,H,W)),
        classification (topk ids int32 (n,k), topk probs float32 (n,k))."""
        from evstream.nn.geometry import to_network, to_sensor

        with self._autocast():
            xn = to_network(x, self.input_cfg)
            if self.cuda:
                xn = xn.contiguous(memory_format=torch.channels_last)
            try:
                out = self.model(xn)
            except Exception as e:  # noqa: BLE001 - the first pass: out of memory, no compiler
                if not check:
                    raise
                log.debug("first forward pass failed", exc_info=True)
                what = "torch.compile of model" if self.compiled else "model"
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise EvstreamError(f"{what} {self.name!r} fails on a {tuple(xn.shape)} input on "
                                    f"{self.device}: {type(e).__name__}: {first}") from None
        if check:
            self._check_output(out, xn)
        out = out.float()
        if self.task == "classification":
            probs, ids = torch.softmax(out, dim=1).topk(self.k, dim=1)   # sorted, highest first
            return ids.to(torch.int32), probs
        logits = to_sensor(out, self.input_cfg, self.sensor_hw)
        conf, labels = torch.softmax(logits, dim=1).max(dim=1)
        labels = labels.to(torch.uint8)
        conf = (conf * 255.0).round_().to(torch.uint8)
        if self._valid is not None:
            labels = torch.where(self._valid, labels, IGNORE_LABEL)
            conf = torch.where(self._valid, conf, 0)
        return labels, conf

    def _check_output(self, out, xn) -> None:
        n, _, h, w = xn.shape
        want = (n, self.num_classes) if self.task == "classification" \
            else (n, self.num_classes, h, w)
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != want:
            raise EvstreamError(f"model {self.name!r}: its config says {self.task} with "
                                f"{self.num_classes} classes (output {want}) but the network "
                                f"returns {got}")

    # -- the host part ----------------------------------------------------------------------------

    def check_window(self, rep: np.ndarray) -> None:
        """ValueError unless rep is a float32 (C, H, W) window this predictor takes."""
        if not isinstance(rep, np.ndarray) or rep.dtype != np.float32 or rep.ndim != 3:
            raise ValueError(f"a window must be a float32 (C, H, W) array, got "
                             f"{getattr(rep, 'dtype', type(rep).__name__)} "
                             f"{getattr(rep, 'shape', '')}")
        if rep.shape[0] != self.in_channels:
            raise ValueError(f"window has {rep.shape[0]} channels, the model takes "
                             f"{self.in_channels}")
        if self.sensor_hw is not None and rep.shape[1:] != self.sensor_hw:
            raise ValueError(f"window is {rep.shape[2]}x{rep.shape[1]}, the sensor is "
                             f"{self.sensor_hw[1]}x{self.sensor_hw[0]}")

    def predict(self, batch: list[np.ndarray]) -> list[dict]:
        """One result dict per window (see the module comment); batches larger than
        max_batch run as several device batches."""
        if not batch:
            return []
        if self.sensor_hw is None:
            self.prepare(np.shape(batch[0])[1:])
        for rep in batch:
            self.check_window(rep)
        results = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.max_batch):
                results += self._predict_chunk(batch[i:i + self.max_batch])
        return results

    def _predict_chunk(self, chunk: list[np.ndarray]) -> list[dict]:
        n = len(chunk)
        t0 = time.perf_counter()
        for i, rep in enumerate(chunk):
            np.copyto(self._in_np[i], rep)
        if self.cuda:
            return self._predict_cuda(n, t0)
        t1 = time.perf_counter()
        outs = self._run_device(self._in_host[:n])
        t2 = time.perf_counter()
        arrays = [o.numpy() for o in outs]       # fresh tensors each batch: no copy needed
        results = self._unpack(arrays, n)
        t3 = time.perf_counter()
        return self._stamp(results, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def _predict_cuda(self, n: int, t0: float) -> list[dict]:
        e_start, e_h2d, e_fwd, e_d2h = self._events
        host_ms = (time.perf_counter() - t0) * 1e3
        e_start.record()
        if self.use_graphs:
            graph, static_in, static_out = self._graphs[n]
            static_in.copy_(self._in_host[:n], non_blocking=True)
            e_h2d.record()
            graph.replay()
            outs = static_out
        else:
            x = self._in_host[:n].to(self.device, non_blocking=True)
            e_h2d.record()
            outs = self._run_device(x)
        e_fwd.record()
        staged = [h[:n] for h in self._out_host]
        for h, o in zip(staged, outs):
            h.copy_(o, non_blocking=True)
        e_d2h.record()
        e_d2h.synchronize()         # outputs are on the host; the input staging buffer is free
        t3 = time.perf_counter()
        results = self._unpack([h.numpy().copy() for h in staged], n)   # staging is reused
        unpack_ms = (time.perf_counter() - t3) * 1e3
        return self._stamp(results, host_ms + e_start.elapsed_time(e_h2d),
                           e_h2d.elapsed_time(e_fwd), e_fwd.elapsed_time(e_d2h) + unpack_ms)

    def _unpack(self, arrays: list[np.ndarray], n: int) -> list[dict]:
        a, b = arrays
        if self.task == "classification":
            return [{"topk_ids": a[i], "topk_probs": b[i]} for i in range(n)]
        return [{"labels": a[i], "confidence": b[i]} for i in range(n)]

    def _stamp(self, results: list[dict], h2d: float, forward: float, d2h: float) -> list[dict]:
        timing = {"h2d": h2d, "forward": forward, "d2h": d2h}
        self.last_timing_ms = timing
        for r in results:
            r["timing_ms"] = timing
        return results
