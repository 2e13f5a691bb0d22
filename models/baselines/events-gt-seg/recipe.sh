#!/bin/sh
# Reproduces models/baselines/events-gt-seg: the baseline events + ground-truth labels.
# Every number in card.md / metrics.json / docs/results.md comes from these commands (the
# steps and their times are in tools/recipes/seg_model.sh). Run from the repository root.
exec sh tools/recipes/seg_model.sh gt events-gt-seg models/baselines/events-gt-seg
