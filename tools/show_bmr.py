"""BMR on real DAVIS data: what a trained run's A2E makes of real APS frames, next to the real event
windows of the same instants, and what its E2A makes of those events, next to the frames.

    .venv/bin/python tools/show_bmr.py RUN --out docs/img/bmr/RUN_NAME.png \
        [--data ../shared/realdata/davis_aps/ni_joint | --dataset DATA --split test] [--json]

RUN is an `evstream train` run directory whose stage 2 trained E2A and A2E (settings paired or
unpaired with BMR): RUN/student/state.pt holds them, RUN/student/model.pt the student. For every
`<scene>.png` with a `<scene>_events.npz` (t, x, y, p, width, height) in --data, the events are
turned into the run's representation at the sensor size, both go through the run's input
geometry (resize, pad), and one row of the figure shows:

    real APS frame | E2A(student(events)) | real event window | A2E(real frame)

Event tensors are drawn as the sum over their channels (ON - OFF in the voxel's signed form):
white positive, black negative, grey 0, all on one scale per row, so an empty A2E output is a flat
grey panel. The script also prints, per scene, the share of pixels where the real window and A2E's
output hold events (|sum| > 0.05 of the row's scale): the numbers that say whether A2E collapsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_bmr(run: Path):
    import torch

    from evstream.distill import config as C
    from evstream.distill.checkpointing import load_state
    from evstream.distill.task import build_bmr
    from evstream.nn import load_model

    cfg = C.from_dict(json.loads((run / "config.json").read_text()))
    student, mconf = load_model(run / "student" / "model.pt", device="cpu")
    state = load_state(run / "student" / "state.pt")
    if not {"e2a", "a2e"} <= set(state["modules"]):
        raise SystemExit(f"{run}: stage 2 trained no E2A/A2E (setting {cfg.setting}, "
                         f"bmr {cfg.loss.bmr})")
    bmr = build_bmr({"e2a", "a2e"}, student, mconf["in_channels"], 1,
                    cfg.student.backbone == "tiny", cfg.loss.e2a_width, cfg.loss.a2e_width)
    for k in ("e2a", "a2e"):
        bmr[k].load_state_dict(state["modules"][k])
        bmr[k].eval()
    student.eval()
    torch.set_grad_enabled(False)
    return cfg, mconf, student, bmr


def scenes(folder: Path):
    for png in sorted(folder.glob("*.png")):
        npz = folder / f"{png.stem}_events.npz"
        if not npz.exists():
            npz = folder / f"{png.stem}1_events.npz"       # low_light_model1_events.npz
        if npz.exists():
            yield png.stem, png, npz


def rows_for(run: Path, data: Path):
    import cv2
    import torch

    from evstream.nn.geometry import to_network
    from evstream.represent import get_representation
    from evstream.types import EVENT_DTYPE

    cfg, mconf, student, bmr = load_bmr(run)
    rep = dict(mconf["representation"])
    kernel = get_representation(rep.pop("name"))
    inp = mconf["input"]
    ch, cw = mconf["input"]["height"], mconf["input"]["width"]
    out = []
    for name, png, npz in scenes(data):
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        z = np.load(npz)
        h, w = grey.shape
        ev = np.zeros(len(z["t"]), EVENT_DTYPE)
        ev["t"], ev["x"], ev["y"] = z["t"], z["x"], z["y"]
        ev["p"] = z["p"].astype(np.int8)
        keep = (ev["x"] < w) & (ev["y"] < h)
        ev = ev[keep][np.argsort(ev["t"][keep], kind="stable")]
        win = kernel.compute(ev, h, w, **rep)
        image = grey.astype(np.float32)[None] / 127.5 - 1.0
        x_ev = to_network(win[None], inp)
        x_im = to_network(image[None], inp)
        s = student.forward_features(x_ev)
        e2a = bmr["e2a"](s["feat"], s.get("low") if bmr["e2a"].low_channels else None,
                         size=tuple(x_im.shape[2:]))
        a2e = bmr["a2e"](x_im)
        crop = (slice(0, ch), slice(0, cw))
        real_ev = x_ev[0].sum(0)[crop].numpy()
        fake_ev = a2e[0].sum(0)[crop].numpy()
        scale = max(float(np.percentile(np.abs(real_ev), 99)), 1e-6)
        active = lambda a: float((np.abs(a) > 0.05 * scale).mean())  # noqa: E731
        out.append({"scene": name, "frame": x_im[0, 0][crop].numpy(),
                    "e2a": e2a[0, 0][crop].numpy(), "events": real_ev, "a2e": fake_ev,
                    "scale": scale, "active_real": active(real_ev),
                    "active_a2e": active(fake_ev)})
    return cfg, out


def rows_from_dataset(run: Path, root: Path, split: str, count: int):
    """The same panels for `count` samples of an evstream dataset split (one per sequence where
    it has that many): A2E and E2A in the domain they were trained on."""
    from evstream.distill.data import open_dataset

    cfg, mconf, student, bmr = load_bmr(run)
    ds = open_dataset(root, split=split, representation=dict(mconf["representation"]),
                      window_us=mconf["window"]["window_us"], input_cfg=mconf)
    ch, cw = mconf["input"]["height"], mconf["input"]["width"]
    crop = (slice(0, ch), slice(0, cw))
    out = []
    for i in np.linspace(0, len(ds) - 1, count).round().astype(int):
        smp = ds.get(int(i), ("events", "image", "meta"))
        x_ev, x_im = smp["events"][None], smp["image"][None]
        s = student.forward_features(x_ev)
        e2a = bmr["e2a"](s["feat"], s.get("low") if bmr["e2a"].low_channels else None,
                         size=tuple(x_im.shape[2:]))
        a2e = bmr["a2e"](x_im)
        real_ev, fake_ev = x_ev[0].sum(0)[crop].numpy(), a2e[0].sum(0)[crop].numpy()
        scale = max(float(np.percentile(np.abs(real_ev), 99)), 1e-6)
        active = lambda a: float((np.abs(a) > 0.05 * scale).mean())  # noqa: E731
        cond = smp["meta"].get("conditions", {})
        out.append({"scene": f"{smp['meta']['sequence']} {'/'.join(cond.values())}",
                    "frame": x_im[0, 0][crop].numpy(), "e2a": e2a[0, 0][crop].numpy(),
                    "events": real_ev, "a2e": fake_ev, "scale": scale,
                    "active_real": active(real_ev), "active_a2e": active(fake_ev)})
    return cfg, out


def draw(rows, path: Path) -> None:
    import cv2

    def img(a, lo, hi):
        return np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)

    tiles = []
    for r in rows:
        s = r["scale"]
        panels = [img(r["frame"], -1, 1), img(r["e2a"], -1, 1), img(r["events"], -s, s),
                  img(r["a2e"], -s, s)]
        tiles.append(np.concatenate([np.pad(p, 2, constant_values=255) for p in panels], 1))
    head = np.full((18, tiles[0].shape[1]), 255, np.uint8)
    for i, text in enumerate(("real APS frame", "E2A(events)", "real event window",
                              "A2E(frame)")):
        cv2.putText(head, text, (4 + i * tiles[0].shape[1] // 4, 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, 0, 1, cv2.LINE_AA)
    fig = np.concatenate([head, *tiles], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), fig, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--data", type=Path,
                    default=ROOT.parent / "shared" / "realdata" / "davis_aps" / "ni_joint")
    ap.add_argument("--dataset", type=Path, help="an evstream dataset (e.g. `evstream synth` "
                    "output) to draw instead of --data's real DAVIS scenes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--count", type=int, default=5, help="samples drawn from --dataset")
    ap.add_argument("--json", action="store_true", help="print the per-scene numbers as JSON")
    args = ap.parse_args(argv)
    if args.dataset:
        cfg, rows = rows_from_dataset(args.run, args.dataset, args.split, args.count)
    else:
        cfg, rows = rows_for(args.run, args.data)
    if not rows:
        raise SystemExit(f"{args.data}: no <scene>.png with <scene>_events.npz")
    draw(rows, args.out)
    stats = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
              if k in ("scene", "active_real", "active_a2e")} for r in rows]
    if args.json:
        print(json.dumps({"run": str(args.run), "setting": cfg.setting, "scenes": stats}))
    else:
        for s in stats:
            print(f"{s['scene']:>18}: pixels with events: real {100 * s['active_real']:.1f} %, "
                  f"A2E {100 * s['active_a2e']:.1f} %")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
