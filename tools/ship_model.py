"""Put a trained student into models/<name>/: checkpoint, metrics.json and card.md.

    .venv/bin/python tools/ship_model.py --run RUN --name NAME --eval EVAL.json \
        --ci-eval CI.json --dataset-command "evstream synth ..." --ci-dataset-command "..." \
        --seed K --recipe models/NAME/recipe.sh [--ablation docs/results.md] [--margin 0.05]

The checkpoint is the run's exported student (`evstream export`: state dict + model config,
weights only) with the model's name set to NAME and the headline metrics stored in its config;
metrics.json holds the same numbers as the card (test split of the dataset that `dataset_command`
makes, plus the CI check: a small fresh held-out set that tests/test_models.py regenerates and
evaluates, which must stay above `ci_check` minus `margin`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recipe_words(run: str) -> str:
    """How the run's student was trained, in words, from its config.json."""
    cfg = json.loads((Path(run) / "config.json").read_text())
    setting, loss = cfg["setting"], cfg["loss"]
    teacher = ", from a teacher trained on labelled APS frames"
    if setting in ("paper", "unpaired"):
        return ("distilled with EvDistill, unpaired setting (events without labels and labelled "
                "images of other instants; BMR, pixel-wise and affinity KD; the student never "
                "sees an event label)" + teacher)
    if setting == "paired" and not loss["bmr"]:
        return ("distilled with EvDistill's paired KD without BMR (pixel-wise and affinity KD "
                "from the teacher's output on the APS frame of the same instant; no labels: "
                "the student never sees a label)" + teacher)
    if setting == "paired":
        return ("distilled with EvDistill, paired setting (events and APS frames of the same "
                "instant, no labels; BMR: the teacher distils on the real frame and on E2A's "
                "reconstruction, pixel-wise distribution matching and affinity KD)" + teacher)
    if setting == "pseudo_aps":
        return "trained on the teacher's pseudo-labels from the paired APS frames" + teacher
    return "trained on events with ground-truth labels (no teacher, no distillation)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--eval", required=True, help="evstream eval --json output on the test split")
    ap.add_argument("--ci-eval", required=True, help="the same on the CI held-out set")
    ap.add_argument("--dataset-command", required=True)
    ap.add_argument("--ci-dataset-command", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--train-command", required=True)
    ap.add_argument("--notes", default="", help="markdown appended to the card")
    ap.add_argument("--real-data", default="", help="the CI check runs on real recordings: their "
                    "folder relative to ../shared/realdata (e.g. nmnist_real), not on --ci-"
                    "dataset-command's synthetic set")
    ap.add_argument("--sensor", default="", help="WxH of the sensor (default: 346x260 for "
                    "segmentation, 128x128 for classification)")
    ap.add_argument("--eval-split", default="test", help="the split --eval was run on")
    ap.add_argument("--out-dir", default="", help="where to ship (default models/NAME), e.g. "
                    "models/baselines/NAME")
    ap.add_argument("--ci-split", default="test", help="the split of the CI set to evaluate")
    ap.add_argument("--limitations", default="", help="markdown replacing the default "
                    "limitations (which describe the procedural worlds)")
    args = ap.parse_args(argv)

    from evstream.nn.checkpoint import load_checkpoint, save_checkpoint

    out = Path(args.out_dir) if args.out_dir else ROOT / "models" / args.name
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "evstream", "export", args.run, "--out", str(out),
                        "--no-torchscript", "--json"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    ev = json.loads(Path(args.eval).read_text())
    ci = json.loads(Path(args.ci_eval).read_text())
    ckpt = load_checkpoint(out / "model.pt")
    cfg = dict(ckpt["config"], name=args.name, trained=True)
    seg = "miou" in ev
    key = "miou" if seg else "top1"
    headline = {"miou": ev["miou"], "pixel_acc": ev["pixel_acc"]} if seg else \
        {"top1": ev["top1"], "top5": ev["top5"]}
    cfg["metrics"] = dict(headline, split=args.eval_split)
    save_checkpoint(out / "model.pt", ckpt["state_dict"], cfg, ckpt.get("extra"))
    h, w = ev.get("sensor_hw", [260, 346] if seg else [128, 128])
    if args.sensor:
        w, h = (int(v) for v in args.sensor.lower().split("x"))
    metrics = {**headline, "per_class": ev.get("per_class"), "conditions": ev.get("conditions"),
               "samples": ev.get("samples"), "split": args.eval_split,
               "dataset_command": args.dataset_command, "seed": args.seed,
               "train_command": args.train_command,
               "sensor": {"width": w, "height": h},
               "ci_check": {key: ci[key], "margin": args.margin,
                            "dataset_command": args.ci_dataset_command,
                            "split": args.ci_split}}
    if args.real_data:
        metrics["ci_check"]["real_data"] = args.real_data
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    rep, win, inp = cfg["representation"], cfg["window"], cfg["input"]
    size_mb = (out / "model.pt").stat().st_size / 2**20
    params = sum(v.numel() for v in ckpt["state_dict"].values() if v.dtype.is_floating_point)
    lines = [f"# {args.name}", "",
             f"Event-only {cfg['task']} student ({cfg['arch']}, backbone {cfg['backbone']}, "
             f"{params / 1e6:.2f} M parameters, {size_mb:.1f} MB), {recipe_words(args.run)}.",
             "",
             "## Intended use", "",
             f"- Sensor: {w}x{h}{' (DAVIS346 geometry)' if (w, h) == (346, 260) else ''}; "
             + (f"input to the network: resized to {inp['resize']}, " if inp.get("resize") else
                "input to the network: the sensor frame at its own size, ")
             + f"padded to a multiple of {inp.get('pad_multiple')}"
             + ("; predictions are mapped back to sensor pixels." if seg else "."),
             f"- Representation: {rep['name']}, {rep.get('num_bins')} bins, normalize "
             f"{rep.get('normalize')}; windows of {win.get('window_us', 0) / 1000:.0f} ms.",
             f"- Classes: {', '.join(cfg['classes'])}.", "",
             f"## Metrics ({args.eval_split} split, `evstream eval`)", "",
             "| metric | value |", "|---|---:|"]
    for k, v in headline.items():
        lines.append(f"| {k} | {100 * v:.1f} |")
    if seg and ev.get("per_class"):
        lines += ["", "| class | IoU |", "|---|---:|"]
        for c, v in ev["per_class"].items():
            lines.append(f"| {c} | {'-' if v is None else f'{100 * v:.1f}'} |")
    if ev.get("conditions"):
        lines += ["", "| condition | " + key + " |", "|---|---:|"]
        for group, vals in ev["conditions"].items():
            for name, res in vals.items():
                lines.append(f"| {group}={name} | {100 * res[key]:.1f} |")
    lines += ["", f"CI check (tests/test_models.py): {key} {100 * ci[key]:.1f} on a fresh held-out "
              f"set (`{args.ci_dataset_command}`), must stay above {100 * (ci[key] - args.margin):.1f}.",
              "", "## Data and recipe", "",
              f"- Dataset: `{args.dataset_command}`"
              + (" (real recordings)." if args.real_data else " (procedural, see evstream/sim)."),
              f"- Training: `{args.train_command}` (full commands in `recipe.sh`).", "",
              "## Limitations", ""]
    lines += [args.limitations, ""] if args.limitations else [
              "- Trained only on evstream's procedural driving/object worlds, on a 2-core CPU in "
              "minutes: it shows the pipeline and the method working, not state-of-the-art "
              "accuracy on real DDD17/DSEC data. Fine-tune or distil your own teacher on real "
              "recordings (`evstream train --data YOUR_DATA`).",
              "- Sensor geometry other than the one above runs (the input is resized) but was "
              "not evaluated.", ""]
    if args.notes:
        lines += [args.notes, ""]
    (out / "card.md").write_text("\n".join(lines))
    print(f"shipped {args.name}: {key} {100 * ev[key]:.1f}, {size_mb:.1f} MB -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
