"""Markdown tables for docs/results.md from `evstream eval --json` outputs.

    .venv/bin/python tools/results_table.py LABEL=EVAL.json [LABEL=EVAL.json ...]

Prints three tables: mIoU / pixel accuracy, per-class IoU, and mIoU per condition (illumination,
motion). Values are percentages with one decimal, exactly as the JSON has them.
"""

from __future__ import annotations

import json
import sys


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main(argv=None) -> int:
    rows = []
    for item in (argv if argv is not None else sys.argv[1:]):
        label, _, path = item.partition("=")
        with open(path) as f:
            rows.append((label, json.load(f)))
    classes = list(rows[0][1]["per_class"])
    print("| run | input | mIoU | pixel acc |")
    print("|---|---|---:|---:|")
    for label, d in rows:
        print(f"| {label} | {d['modality']} | {pct(d['miou'])} | {pct(d['pixel_acc'])} |")
    print()
    print("| run | " + " | ".join(classes) + " |")
    print("|---|" + "---:|" * len(classes))
    for label, d in rows:
        print(f"| {label} | " + " | ".join(pct(d["per_class"][c]) for c in classes) + " |")
    print()
    conds = [(g, v) for g, vals in rows[0][1]["conditions"].items() for v in sorted(vals)]
    print("| run | " + " | ".join(f"{g}={v}" for g, v in conds) + " |")
    print("|---|" + "---:|" * len(conds))
    for label, d in rows:
        cells = [pct(d["conditions"].get(g, {}).get(v, {}).get("miou")) for g, v in conds]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
