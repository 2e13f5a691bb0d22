"""Processes of a training run: one, or torchrun's DDP ranks (gloo on CPU, nccl on CUDA), and
how they compute (device, mixed precision, fp32 math).

    d = init_distributed(cfg)      # Dist: rank, world, local_rank, device, amp, main, barrier()
    check_device("cuda:7")         # the --device check the CLI runs before any data loads

Device: "auto" (cuda:LOCAL_RANK when torch sees a GPU, else cpu), "cpu", "cuda" or "cuda:N";
a GPU this machine does not have is a one-line EvstreamError. Under torchrun with more than one
process, LOCAL_RANK picks each rank's GPU (cuda:LOCAL_RANK) whatever index --device names: an
index there would put every rank on the same GPU. It is ignored with a one-line note from rank
0 (CUDA_VISIBLE_DEVICES is how to choose the GPUs of a multi-process run).

Mixed precision (`cfg.amp`, `resolve_amp`): "auto" is bf16 autocast on a CUDA device that has
bf16, else fp16 autocast with a GradScaler, and off on CPU; "bf16" also runs on CPU (slow, but
the same code path: the tests use it); "fp16" needs CUDA. `cfg.fp32_math` ("ieee" | "tf32",
evstream.infer.fp32_math) says how CUDA computes what stays in fp32. Both are reported in the
run's summary.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from evstream.distill import config as C
from evstream.errors import EvstreamError
from evstream.infer.fp32_math import set_fp32_math

AMP = ("auto", "off", "bf16", "fp16")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False          # we called init_process_group (and so destroy it)
    amp: torch.dtype | None = None  # autocast dtype of the training forward (None: fp32)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _cuda_index(name: str) -> int | None:
    if name == "cuda":
        return None
    try:
        return int(name.split(":", 1)[1])
    except ValueError:
        raise EvstreamError(f"--device {name!r}: expected cuda or cuda:N") from None


def pick_device(name: str, local_rank: int = 0, world: int = 1,
                note: bool = True) -> torch.device:
    """The torch device of this process (see the module comment); note: say on rank 0 when
    torchrun's LOCAL_RANK overrides the index given."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise EvstreamError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    index = _cuda_index(name)
    if not torch.cuda.is_available():
        raise EvstreamError(f"--device {name}: CUDA is not available to torch "
                            f"{torch.__version__} here; use --device cpu")
    count = torch.cuda.device_count()
    if world > 1:
        if note and index is not None and index != local_rank and local_rank == 0:
            print(f"note: --device {name} under torchrun: each of the {world} ranks uses "
                  f"cuda:LOCAL_RANK (set CUDA_VISIBLE_DEVICES to choose the GPUs)",
                  file=sys.stderr, flush=True)
        index = local_rank
        if index >= count:
            raise EvstreamError(f"torchrun rank with LOCAL_RANK {local_rank} needs cuda:"
                                f"{local_rank}, but this machine has {count} CUDA device(s)")
    elif index is None:
        index = local_rank if local_rank < count else 0
    if not 0 <= index < count:
        raise EvstreamError(f"--device {name}: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def check_device(name: str | None) -> torch.device:
    """This process's device, or a one-line EvstreamError for a --device it cannot use (the
    CLI's check before any data loads)."""
    return pick_device(name or "auto", int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("WORLD_SIZE", "1")), note=False)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training (see the module comment); None is plain fp32."""
    if amp not in AMP:
        raise EvstreamError(f"--amp {amp!r}: expected one of {', '.join(AMP)}")
    cuda = device.type == "cuda"
    bf16_ok = not cuda or torch.cuda.is_bf16_supported()
    if amp == "auto":
        return (torch.bfloat16 if bf16_ok else torch.float16) if cuda else None
    if amp == "off":
        return None
    if amp == "fp16":
        if not cuda:
            raise EvstreamError("--amp fp16 needs a CUDA device (on CPU use bf16 or off)")
        return torch.float16
    if not bf16_ok:
        raise EvstreamError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; "
                            f"use fp16")
    return torch.bfloat16


def amp_name(dtype: torch.dtype | None) -> str:
    return {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def init_distributed(cfg: C.TrainCfg) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local, world)
    d = Dist(rank=rank, world=world, local_rank=local, device=device,
             amp=resolve_amp(cfg.amp, device))
    if device.type == "cuda":
        set_fp32_math(cfg.fp32_math)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=10))
            d.started = True
        d.rank, d.world = dist.get_rank(), dist.get_world_size()
    return d
