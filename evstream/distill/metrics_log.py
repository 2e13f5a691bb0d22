"""RUN/metrics.jsonl + RUN/metrics.csv (+ TensorBoard when installed), written by rank 0.

COLUMNS is the CSV's fixed column set: stage, iteration, epoch, lr, the weighted total loss,
every loss term UNweighted (TERMS: the names the step functions of task.py return), samples/s,
time, and the validation headline metrics. The JSON lines carry everything.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from evstream.distill import checkpointing as ck
from evstream.distill.task import DISC_KEY
from evstream.outpaths import output_errors

TERMS = ("ce", "pixel_kd", "pixel_kd/events", "pixel_kd/images", "pixel_kd/frame",
         "pixel_kd/recon", "pixel_kd/a2e", "affinity", "affinity/events", "affinity/images",
         "affinity/frame", "affinity/recon", "affinity/a2e", "recon/e2a", "recon/a2e",
         "consistency", "adversarial", DISC_KEY)
COLUMNS = ("stage", "iteration", "epoch", "lr", "loss") + TERMS + (
    "samples_per_s", "time_s", "val_miou", "val_pixel_acc", "val_top1", "val_top5")

class MetricsLog:
    """RUN/metrics.jsonl + RUN/metrics.csv (+ TensorBoard when installed); rank 0 only."""

    def __init__(self, run: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.jsonl = run / "metrics.jsonl"
        self.csv = run / "metrics.csv"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:          # tensorboard not installed: the files are enough
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run / "tb"))

    def truncate(self, stage: int, iteration: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint (stage, iteration)."""
        if not self.enabled or not self.jsonl.exists():
            return
        keep = []
        for line in self.jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:           # a line cut short by the kill
                continue
            if row.get("stage", 0) < stage or (row.get("stage") == stage
                                               and row.get("iteration", 0) <= iteration):
                keep.append(row)
        ck.atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep))
        ck.atomic_write_text(self.csv, self._csv_text(keep))

    @staticmethod
    def _csv_row(row: dict) -> dict:
        return {k: row.get(k, "") for k in COLUMNS}

    def _csv_text(self, rows) -> str:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(self._csv_row(r))
        return buf.getvalue()

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with output_errors(self.jsonl, "training log"):
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
        new = not self.csv.exists() or self.csv.stat().st_size == 0
        with output_errors(self.csv, "training log"):
            with open(self.csv, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
                if new:
                    w.writeheader()
                w.writerow(self._csv_row(row))
        if self.tb is not None:
            step = row["iteration"]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("stage", "iteration", "epoch"):
                    self.tb.add_scalar(f"stage{row['stage']}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
