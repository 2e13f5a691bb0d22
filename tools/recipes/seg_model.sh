#!/bin/sh
# One shipped segmentation model of docs/results.md's comparison, end to end on a 2-core CPU:
# about 4 min of data, 9 min of teacher (both skipped when already there), then the stage-2 row
# (minutes for the baselines, about 30 min for a BMR row), its test evaluation and the shipping.
# Run from the repository root; DATA and RUNS can live anywhere. Usage:
#     sh tools/recipes/seg_model.sh ROW NAME OUT_DIR        (ROW: see seg_ablation.sh)
set -e
ROW=$1; NAME=$2; OUT=$3
DATA=${DATA:-data}; RUNS=${RUNS:-runs}
HERE=$(dirname "$0")

# 1. the procedural driving world with the calibrated APS model: 18 sequences x 5 s, 346x260,
#    split by sequence, one test sequence per condition
[ -f "$DATA/seg3/manifest.json" ] || \
    evstream synth seg "$DATA/seg3" --sequences 18 --seconds 5 --seed 1 --format h5 --workers 2

# 2. stage 1: the teacher (half-width ResNet-18 DeepLabv3+) on labelled APS frames at 96x128
[ -f "$RUNS/seg3_teacher/teacher/model.pt" ] || \
    evstream train --preset cpu --data "$DATA/seg3" --out "$RUNS/seg3_teacher" --stage 1 \
        --set stage1.iterations=2000 --set teacher.extra.input_norm=instance \
        --set 'loss.teacher_class_weights=[0.38, 0.41, 3.26, 0.82, 5.33, 1.39]' \
        --set stage1.eval_every=500 --threads 2

# 3. stage 2: the ablation row (600 iterations of batch 8) and its test evaluation
DATA=$DATA/seg3 RUNS=$RUNS ITERS=600 PREFIX=abl sh "$HERE/seg_ablation.sh" "$ROW"

# 4. ship: the fresh CI set, card and metrics
DATA=$DATA/seg3 RUNS=$RUNS PREFIX=abl sh "$HERE/seg_ship.sh" "$ROW" "$NAME" "$OUT"
