#!/bin/sh
# Ship one row of the segmentation ablation (tools/recipes/seg_ablation.sh) as a model directory:
# its test-split evaluation, the small fresh set tests/test_models.py regenerates, card and
# metrics. Usage:
#     DATA=data/seg3 RUNS=runs PREFIX=abl sh tools/recipes/seg_ship.sh ROW NAME OUT_DIR
set -e
ROW=$1; NAME=$2; OUT=$3
DATA=${DATA:-data/seg3}; RUNS=${RUNS:-runs}; PREFIX=${PREFIX:-abl}; EVSTREAM=${EVSTREAM:-evstream}
PYTHON=${PYTHON:-python}
RUN=$RUNS/${PREFIX}_$ROW
CI=${CI_DATA:-$(dirname "$DATA")/ci_seg}
[ -f "$CI/manifest.json" ] || \
    $EVSTREAM synth seg "$CI" --sequences 2 --seconds 1 --seed 99 --split 0,0,1 --no-progress
[ -f "$RUN.eval.json" ] || $EVSTREAM eval "$RUN" --data "$DATA" --split test --json > "$RUN.eval.json"
$EVSTREAM eval "$RUN" --data "$CI" --split test --json > "$RUN.ci.json"
ARGS=$(sh "$(dirname "$0")/seg_ablation.sh" --args "$ROW")
$PYTHON tools/ship_model.py --run "$RUN" --name "$NAME" --out-dir "$OUT" \
    --eval "$RUN.eval.json" --ci-eval "$RUN.ci.json" --seed 1 \
    --dataset-command "evstream synth seg DATA --sequences 18 --seconds 5 --seed 1 --format h5" \
    --ci-dataset-command "evstream synth seg OUT --sequences 2 --seconds 1 --seed 99 --split 0,0,1" \
    --train-command "evstream train --preset cpu --stage 2 --teacher TEACHER $ARGS --set stage2.iterations=600" \
    --notes "${NOTES:-}"
