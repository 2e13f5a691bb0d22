#!/bin/sh
# Reproduces models/evdistill-r18q-seg on a 2-core CPU (about 45 minutes in all, most of it the
# distillation stage). Every number in card.md / metrics.json / docs/results.md comes from these
# commands; DATA and RUNS can live anywhere.
set -e
DATA=${DATA:-data}; RUNS=${RUNS:-runs}

# 1. the procedural driving dataset: 18 sequences x 5 s, 346x260, APS 25 fps; split by sequence
evstream synth seg $DATA/seg --sequences 18 --seconds 5 --seed 1 --format h5 --workers 2

# 2. stage 1: the teacher (half-width ResNet-18 DeepLabv3+) on labelled APS frames
evstream train --preset cpu --data $DATA/seg --out $RUNS/teacher --stage 1

# 3. stage 2: EvDistill, paper setting (unpaired events without labels; BMR E2A/A2E, pixel-wise
#    KD, affinity KD, reconstruction and consistency), teacher frozen
evstream train --preset cpu --data $DATA/seg --out $RUNS/full --stage 2 --setting paper \
    --teacher $RUNS/teacher/teacher/model.pt --set stage2.iterations=300

# 4. evaluation on the held-out test split, and the small fresh set the CI test regenerates
evstream eval $RUNS/full --data $DATA/seg --split test --json > $RUNS/full.eval.json
evstream synth seg $DATA/ci_seg --sequences 2 --seconds 1 --seed 99 --split 0,0,1
evstream eval $RUNS/full --data $DATA/ci_seg --split test --json > $RUNS/full.ci.json

# 5. ship: export the student alone and write card.md / metrics.json
python tools/ship_model.py --run $RUNS/full --name evdistill-r18q-seg \
    --eval $RUNS/full.eval.json --ci-eval $RUNS/full.ci.json --seed 1 \
    --dataset-command "evstream synth seg DATA --sequences 18 --seconds 5 --seed 1 --format h5" \
    --ci-dataset-command "evstream synth seg OUT --sequences 2 --seconds 1 --seed 99 --split 0,0,1" \
    --train-command "evstream train --preset cpu --stage 2 --setting paper --set stage2.iterations=300"
