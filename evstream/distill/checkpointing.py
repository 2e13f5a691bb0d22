"""Resumable training state: atomic files, RNG capture, a sampler that can start mid-epoch.

What makes `--resume` continue bit for bit where a killed run stopped:
- everything that changes during training is saved together, atomically (temp file in the same
  directory, fsync, os.replace, fsync of the directory): model + BMR + discriminator weights and
  buffers, optimiser state (momentum), scheduler state, the iteration counter, and the RNG
  states of torch, numpy and python `random`. A kill at any instant leaves either the previous
  complete file or the new complete file, never a torn one.
- the data order is a pure function of (seed, epoch): `StageSampler` is a DistributedSampler
  whose permutation comes from a generator seeded with seed + epoch, and `set_start(batches)`
  skips the batches an interrupted epoch already used. The position is derived from the saved
  iteration (epoch = it // batches_per_epoch, offset = it % batches_per_epoch), so nothing about
  the loader itself needs pickling.
- per-iteration randomness of the trainer (augmentation) is drawn from generators seeded by
  (seed, iteration), never from a stream that a restart would rewind differently.
Files are loaded with torch.load(weights_only=True): RNG states are stored as tensors and plain
python values only (the numpy state as an int64 tensor), never as pickled objects.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from evstream.atomic import atomic_write
from evstream.errors import EvstreamError
from evstream.nn.checkpoint import save_torch

STATE_FORMAT = "evstream-train-state"
STATE_VERSION = 1


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save(obj) to path atomically and durably (nn.checkpoint.save_torch)."""
    save_torch(obj, path, what="training state")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


# -- RNG states ------------------------------------------------------------------------------

def capture_rng() -> dict:
    """The global RNG states (torch CPU [+ CUDA], numpy, python) as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- sampler ---------------------------------------------------------------------------------

class StageSampler(DistributedSampler):
    """DistributedSampler (shuffled, drop_last) that can skip the batches already used this epoch.

    With world size W and a per-rank batch b, rank r's k-th batch holds the epoch permutation's
    entries r, r+W, ..., so the union over ranks of everyone's k-th batch is exactly the k-th
    batch (entries kWb .. (k+1)Wb-1) of a single process using batch W*b: one global batch, the
    same in both runs.
    """

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, local_batch: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.local_batch = local_batch
        self.start_batch = 0

    def set_start(self, batches: int) -> None:
        """Skip the first `batches` local batches of the current epoch (resume mid-epoch)."""
        self.start_batch = batches

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.local_batch:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_batch * self.local_batch)


def batches_per_epoch(n_samples: int, world_size: int, local_batch: int) -> int:
    """Full per-rank batches in one epoch (sampler drop_last + loader drop_last)."""
    return (n_samples // world_size) // local_batch


# -- training state files ----------------------------------------------------------------------

def save_state(path, *, stage: int, iteration: int, modules: dict, optimizers: dict,
               schedulers: dict, config: dict, rng: list | None = None,
               extra: dict | None = None) -> None:
    """One resumable training state (see module doc), atomically. rng: one capture_rng() per
    DDP rank (default: this process's)."""
    atomic_torch_save({
        "format": STATE_FORMAT, "version": STATE_VERSION,
        "stage": int(stage), "iteration": int(iteration),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "rng": rng if rng is not None else [capture_rng()],
        "config": config,
        "extra": extra or {},
    }, path)


def load_state(path) -> dict:
    """A saved training state; a corrupt or foreign file is a one-line EvstreamError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EvstreamError(f"{path}: no such training state") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise EvstreamError(f"{path}: not a readable training state "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise EvstreamError(f"{path}: not an evstream training state")
    if state.get("version") != STATE_VERSION:
        raise EvstreamError(f"{path}: training state version {state.get('version')} "
                            f"(this evstream reads {STATE_VERSION})")
    return state


def apply_state(state: dict, *, modules: dict, optimizers: dict, schedulers: dict,
                path="training state", rank: int = 0, world: int = 1) -> None:
    """Load a saved state into live objects (strict; a mismatch is a one-line error) and
    restore this rank's RNG states (saved per rank; a run resumed with another world size
    gives every rank rank 0's, which continues correctly but not bit for bit)."""
    for kind, live in (("modules", modules), ("optimizers", optimizers),
                       ("schedulers", schedulers)):
        saved = state[kind]
        if set(saved) != set(live):
            raise EvstreamError(f"{path}: holds {kind} {sorted(saved)}, this run has "
                                f"{sorted(live)}")
        for k, obj in live.items():
            try:
                obj.load_state_dict(saved[k])
            except (RuntimeError, ValueError, KeyError) as e:
                raise EvstreamError(f"{path}: {kind[:-1]} {k!r} does not match this run "
                                    f"({str(e).splitlines()[0][:120]})") from None
    rngs = state["rng"]
    restore_rng(rngs[rank] if len(rngs) == world else rngs[0])
