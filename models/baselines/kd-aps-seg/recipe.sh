#!/bin/sh
# Reproduces models/baselines/kd-aps-seg: the baseline KD with APS frames (teacher pseudo-labels).
# Every number in card.md / metrics.json / docs/results.md comes from these commands (the
# steps and their times are in tools/recipes/seg_model.sh). Run from the repository root.
exec sh tools/recipes/seg_model.sh pseudo kd-aps-seg models/baselines/kd-aps-seg
