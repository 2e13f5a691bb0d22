"""Where inference runs and how: the torch device, the autocast precision, the CPU threads.

    dev = resolve_device("auto")            # cuda:0 when torch sees a GPU, else cpu
    dtype = resolve_precision("auto", dev)  # None (fp32) on CPU, torch.float16 on CUDA
    n = configure_threads(0)                # min(physical cores - 1, 4), at least 1

Every bad value is a one-line EvstreamError naming the flag, raised before any process streams.

Threads: torch's default (one thread per logical CPU) oversubscribes a machine on which the
source, window and viewer processes also run, and hyper-threads add nothing to convolutions.
So 0 means min(physical cores available to this process - 1, 4), at least 1 (one core is left
to the other stages of the host), and the choice is always made
explicitly. Physical cores are counted from the CPU topology in sysfs over the CPUs this
process may run on (sched_getaffinity); where sysfs says nothing, logical CPUs are counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from evstream.errors import EvstreamError

MAX_AUTO_THREADS = 4
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = 0
        if name != "cuda":
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise EvstreamError(f"--device {name!r}: expected cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise EvstreamError(f"--device {name}: CUDA is not available to torch "
                                f"{torch.__version__} here; use --device cpu")
        if not 0 <= index < torch.cuda.device_count():
            raise EvstreamError(f"--device {name}: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise EvstreamError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise EvstreamError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return torch.float16 if device.type == "cuda" else None
    if p == "fp32":
        return None
    if p == "fp16":
        if device.type != "cuda":
            raise EvstreamError("--precision fp16 needs a CUDA device (on CPU use fp32 or bf16)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EvstreamError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                            f"support bfloat16; use fp16")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (logical CPUs where unknown)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))          # no topology: count it as its own core
    return max(1, len(cores))


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (0: automatic, see the module comment); returns the number."""
    if threads < 0:
        raise EvstreamError(f"--threads must be >= 0, not {threads}")
    # automatic: leave one core to the source, window and viewer processes of the same host
    # (on 2 cores a 2-thread forward contending with them ran 3-4x slower than 1 thread)
    n = threads or max(1, min(physical_cores() - 1, MAX_AUTO_THREADS))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)      # one forward at a time: no inter-op parallelism
    except RuntimeError:
        pass                                  # already set, or parallel work already ran
    return n
