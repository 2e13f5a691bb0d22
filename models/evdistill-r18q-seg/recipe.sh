#!/bin/sh
# Reproduces models/evdistill-r18q-seg: EvDistill paired KD without BMR, the best EvDistill variant by validation mIoU of docs/results.md's ablation.
# Every number in card.md / metrics.json / docs/results.md comes from these commands (the
# steps and their times are in tools/recipes/seg_model.sh). Run from the repository root.
exec sh tools/recipes/seg_model.sh paired_nobmr evdistill-r18q-seg models/evdistill-r18q-seg
