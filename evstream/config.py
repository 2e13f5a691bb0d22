"""Stage configurations: frozen dataclasses, one per stage, printed and dumped as plain dicts.

A stage process receives its config and endpoint URLs and nothing else, so every field here must
pickle cleanly across the `spawn` start method (plain values only: no sockets, no dv objects).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from evstream.sources.options import SourceOptions


@dataclass(frozen=True)
class SourceConfig:
    spec: str                                   # path, tcp://..., camera:MODEL, synthetic:...
    options: SourceOptions = field(default_factory=SourceOptions)  # reader, camera, filters
    speed: float | None = 1.0                   # replay speed factor; None = as fast as possible
    loop: bool = False
    start_s: float | None = None
    end_s: float | None = None
    ring_capacity_events: int = 1 << 22         # 4 Mi events = 64 MiB of shared memory
    ring_name: str = ""                         # filled in by the launcher
    record_path: str = ""                       # also write what the source reads (.aedat4)


@dataclass(frozen=True)
class WindowConfig:
    mode: str = "time"                          # "time" | "count"
    window_us: int = 50_000
    stride_us: int | None = None                # None: back-to-back windows
    count: int = 100_000
    stride_count: int | None = None
    representation: str = "voxel"               # a name from evstream.represent's registry
    num_bins: int = 5                           # voxel bins (ignored by 2-channel representations)
    normalize: bool = False
    tau_us: float = 50_000.0                    # time-surface decay constant
    deadline_ms: float = 10.0                   # sparse scenes: emit a window this long after its
                                                # end in (estimated) source time even if no later
                                                # event has arrived; 0 disables
    width: int = 0                              # sensor size, from the source's ready message
    height: int = 0


@dataclass(frozen=True)
class InferConfig:
    model: str = "untrained"                    # a name under models/, a checkpoint path, or a dir
                                                # (or an .onnx / a dir with model.onnx)
    backend: str = "auto"                       # "torch" | "onnxruntime" | "auto" (onnxruntime
                                                # where measured faster: infer/backends.py)
    device: str = "auto"                        # "auto" (cuda if available) | "cpu" | "cuda[:N]"
    threads: int = 0                            # CPU torch threads; 0 = chosen from the cores
    precision: str = "auto"                     # "auto" (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    fp32_math: str = "ieee"                     # CUDA fp32 convs/matmuls: "ieee" (strict) | "tf32"
    cuda_graphs: bool = False                   # capture the forward pass (CUDA, fixed batch)
    compile: bool = False                       # torch.compile the model
    max_batch: int = 8                          # windows of several streams batched together
    warmup: int = 3                             # forward passes before the first real window
    topk: int = 5                               # classification: labels sent per prediction


@dataclass(frozen=True)
class ViewerConfig:
    window: bool = True                         # an OpenCV window (False: headless)
    video: str = ""                             # write an MP4 with one frame per drawn prediction
    png_dir: str = ""                           # write every drawn frame as PNG here
    snapshot_dir: str = "."                     # where `s` saves snapshots and `r` recordings
    alpha: float = 0.5                          # segmentation overlay opacity
    on_close: str = "stop"                      # closing the window: "stop" the pipeline | "continue"
    scale: float = 2.0                          # display scale of the sensor image
    video_fps: float = 0.0                      # 0: 1e6 / window stride (source time)
    title: str = "evstream"


@dataclass(frozen=True)
class PipelineConfig:
    source: SourceConfig
    window: WindowConfig = field(default_factory=WindowConfig)
    lossless: bool = False                      # False: live (newest window wins, drops counted)
    consumer: str = "sink"                      # "sink" (no model, no viewer) | "viewer"
    infer: InferConfig | None = None            # None: no inference worker (--no-model)
    viewer: ViewerConfig | None = None          # None with consumer "sink"
    endpoints: dict = field(default_factory=dict)  # --bind/--connect overrides by endpoint name
    stages: tuple = ()                          # which stages run here (() = all); a split
                                                # pipeline runs the rest on other hosts
    restart_worker: bool = False                # restart a worker that dies (--restart)
    window_transport: str = "auto"              # "auto": shared-memory window slots when every
                                                # stage runs here | "zmq": tensors in messages
    curve: dict = field(default_factory=dict)   # CURVE keys for tcp endpoints (see pipeline)
    telemetry_interval_s: float = 2.0           # periodic one-line status on stderr; 0 = quiet
    stream_id: str = "cam0"
    dump_windows: str = ""                      # sink: write every received window to this .npz
    slow_consumer_ms: float = 0.0               # sink: pretend each window takes this long (tests)

    def as_dict(self) -> dict:
        return asdict(self)
