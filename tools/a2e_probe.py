"""A2E alone, plain L1 against balanced L1: does it learn event windows or the empty answer?

    .venv/bin/python tools/a2e_probe.py DATA [--iterations 300] [--json]

Trains evstream's A2E (APS frame -> 5-bin voxel window, the U-Net of stage 2 at its default width)
by itself on the paired frames and windows of DATA's train split, once with each reconstruction
loss, same seed, data order and optimiser, at the cpu preset's geometry (96x128). Then, on 40
samples spread over the test split, it reports for each: the share of pixels where A2E's output
holds events (|sum over bins| above 5 % of the real window's 99th percentile, as
tools/show_bmr.py counts them), the same share in the real windows, and both losses. An A2E that
collapsed outputs nothing: share 0, plain L1 low all the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(data: str, kind: str, iterations: int, batch: int, seed: int) -> dict:
    import torch

    from evstream.distill import config as C
    from evstream.distill import losses as L
    from evstream.distill.data import collate, open_dataset
    from evstream.distill.evaluate import Parts
    from evstream.nn.registry import build_model

    cfg = C.preset("cpu")
    geo = {"crop": None, "resize": cfg.data.resize, "pad_multiple": cfg.data.pad_multiple}
    rep = dict(cfg.data.representation)
    train = Parts(open_dataset(data, split="train", representation=rep, input_cfg=geo),
                  ("events", "image"))
    test = Parts(open_dataset(data, split="test", representation=rep, input_cfg=geo),
                 ("events", "image"))
    torch.manual_seed(seed)
    a2e = build_model({"arch": "a2e", "in_channels": 1, "out_channels": 5, "width": 32})
    opt = torch.optim.Adam(a2e.parameters(), lr=1e-3)
    order = np.random.default_rng(seed).permutation(len(train))
    for it in range(iterations):
        idx = order[(it * batch) % len(order):][:batch]
        if len(idx) < batch:
            idx = order[:batch]
        b = collate([train[int(i)] for i in idx])
        loss = L.reconstruction(a2e(b["image"]), b["events"], kind)
        opt.zero_grad()
        loss.backward()
        opt.step()
    a2e.eval()
    shares, real_shares, l1, bal = [], [], [], []
    with torch.no_grad():
        for i in np.linspace(0, len(test) - 1, 40).round().astype(int):
            smp = test[int(i)]
            ev, im = smp["events"][None], smp["image"][None]
            out = a2e(im)
            real, fake = ev[0].sum(0).numpy(), out[0].sum(0).numpy()
            thr = 0.05 * max(float(np.percentile(np.abs(real), 99)), 1e-6)
            shares.append(float((np.abs(fake) > thr).mean()))
            real_shares.append(float((np.abs(real) > thr).mean()))
            l1.append(float(L.reconstruction(out, ev, "l1")))
            bal.append(float(L.reconstruction(out, ev, "balanced_l1")))
    return {"loss": kind, "iterations": iterations, "a2e_active": float(np.mean(shares)),
            "real_active": float(np.mean(real_shares)), "test_l1": float(np.mean(l1)),
            "test_balanced_l1": float(np.mean(bal))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = [run(args.data, k, args.iterations, args.batch, args.seed)
            for k in ("l1", "balanced_l1")]
    if args.json:
        print(json.dumps(rows))
        return 0
    print("| A2E loss | pixels with events, A2E | same, real windows | test L1 | test balanced L1 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['loss']} | {100 * r['a2e_active']:.1f} % | {100 * r['real_active']:.1f} % | "
              f"{r['test_l1']:.4f} | {r['test_balanced_l1']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
