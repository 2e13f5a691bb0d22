"""DDP harness: DistributedDataParallel (and SyncBatchNorm on CUDA) over a real process group,
checked against one process doing the same steps.

    python -m torch.distributed.run --standalone --nproc_per_node N tools/ddp_check.py \\
        --out ddp.json [--device auto|cpu|cuda] [--steps 6] [--size 64x96]

Why a harness: evstream's trainer creates a process group only when WORLD_SIZE > 1, so on a
machine with one GPU nothing it runs touches nccl, DDP's gradient all-reduce or SyncBatchNorm.
This script always creates the group (nccl on CUDA, gloo on CPU), even for one process, and
trains the shipped CPU student's network (quarter-width ResNet-18 DeepLabv3+ with BatchNorm,
dropout off) for a few SGD steps on a fixed random global batch split evenly over the ranks.
Rank 0 then repeats the same steps alone, without DDP, on the whole batch, and compares:

- CUDA: the network's BatchNorm layers become SyncBatchNorm (as the trainer's sync_bn does), in
  training mode: W ranks of batch B/W then normalise by the statistics of the whole batch B,
  which is what one process with plain BatchNorm computes. With a single rank torch's
  SyncBatchNorm runs plain BatchNorm (its all-gather needs 2 ranks or more): the result says
  so ("sync_bn_gathered": false).
- CPU: SyncBatchNorm has no CPU implementation; BatchNorm is kept in eval mode (the trainer's
  freeze_bn), which makes the ranks' sum exactly the single process's.
Reported (rank 0 writes --out as JSON): the backend, world size, a collective check (all_reduce
and broadcast), the largest parameter difference between ranks (0 expected: DDP keeps them
identical), the largest difference to the single process relative to the largest parameter,
and the losses of both. Tolerances: CPU 1e-5 relative; CUDA 1e-3 (strict fp32, TF32 off; the
all-reduce and SyncBatchNorm sum in another order than one process, and six steps of momentum
SGD carry those differences forward). Exit 0 when everything is within them, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOLERANCE = {"cpu": 1e-5, "cuda": 1e-3}
CLASSES = 6
CHANNELS = 5


def build(seed: int) -> nn.Module:
    from evstream.nn.checkpoint import default_config
    from evstream.nn.registry import build_model

    torch.manual_seed(seed)
    net = build_model(default_config(backbone="resnet18q", head_channels=64,
                                     low_proj_channels=24, in_channels=CHANNELS,
                                     num_classes=CLASSES))
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0                    # per-rank RNGs: no dropout in a comparison
    return net


def batch(step: int, n: int, hw: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn((n, CHANNELS, *hw), generator=g)
    y = torch.randint(0, CLASSES, (n, *hw), generator=g)
    return x.to(device), y.to(device)


def train(net: nn.Module, steps: int, global_batch: int, hw, device, part: slice,
          bn_train: bool) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for step in range(steps):
        net.train()
        if not bn_train:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        x, y = batch(step, global_batch, hw, device)
        loss = F.cross_entropy(net(x[part]), y[part])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return [float(v) for v in torch.stack(losses).cpu()]


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result (written by rank 0)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", default="64x96", help="HxW of the random inputs")
    ap.add_argument("--per-rank-batch", type=int, default=2)
    args = ap.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        from evstream.infer.fp32_math import set_fp32_math

        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        set_fp32_math("ieee")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    backend = "nccl" if cuda else "gloo"
    hw = tuple(int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    if "MASTER_ADDR" not in os.environ:                # started without torchrun: one process
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")
    kw = {"device_id": device} if cuda else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=3), **kw)
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        # a collective first: every rank's rank + 1, summed; rank 0's tensor broadcast
        t = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(t)
        b = torch.tensor([42.0 if rank == 0 else -1.0], device=device)
        dist.broadcast(b, 0)
        collectives_ok = float(t) == world * (world + 1) / 2 and float(b) == 42.0

        base = build(seed=0)
        reference = copy.deepcopy(base) if rank == 0 else None
        net = base
        if cuda:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(device)
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[local] if cuda else None)
        per = args.per_rank_batch
        global_batch = per * world
        losses = train(ddp, args.steps, global_batch, hw, device,
                       slice(rank * per, (rank + 1) * per), bn_train=cuda)
        mean_losses = torch.tensor(losses, device=device)
        dist.all_reduce(mean_losses)
        mean_losses = (mean_losses / world).cpu().tolist()
        mine = flat(net)
        first = mine.clone()
        dist.broadcast(first, 0)
        rank_diff = (mine - first).abs().max()
        dist.all_reduce(rank_diff, op=dist.ReduceOp.MAX)
        result = None
        if rank == 0:
            reference = reference.to(device)
            ref_losses = train(reference, args.steps, global_batch, hw, device,
                               slice(0, global_batch), bn_train=cuda)
            ref = flat(reference)
            rel = float((mine - ref).abs().max() / ref.abs().max())
            loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(mean_losses,
                                                                              ref_losses))
            tol = TOLERANCE["cuda" if cuda else "cpu"]
            result = {
                "backend": backend, "world_size": world, "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
                "torch": torch.__version__, "steps": args.steps, "global_batch": global_batch,
                "input_hw": list(hw), "sync_bn": cuda, "sync_bn_gathered": cuda and world > 1,
                "batchnorm": "SyncBatchNorm, training mode" if cuda else "BatchNorm, eval mode",
                "collectives_ok": collectives_ok,
                "max_param_diff_between_ranks": float(rank_diff),
                "max_param_rel_diff_vs_one_process": rel,
                "max_loss_rel_diff_vs_one_process": loss_rel,
                "losses_ddp": mean_losses, "losses_one_process": ref_losses,
                "tolerance": tol, "seconds": round(time.perf_counter() - t0, 3),
            }
            result["passed"] = bool(collectives_ok and float(rank_diff) == 0.0 and rel <= tol
                                    and loss_rel <= tol)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0 if result is None or result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
