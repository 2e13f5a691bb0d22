#!/bin/sh
# Reproduces models/evdistill-r18q-cls on a 2-core CPU (about 25 minutes of data and training
# on a quiet machine: 1.5 min of data, 11 min of teacher, 13 min of distillation). Every number
# in card.md / metrics.json / docs/results.md comes from these commands; DATA and RUNS can live
# anywhere.
set -e
DATA=${DATA:-data}; RUNS=${RUNS:-runs}
N="--set data.resize=null"      # train at the world's native 128x128

# 1. the object world: 1500 sequences x 0.3 s (three saccades each), 128x128, split by sequence
evstream synth cls $DATA/cls2 --sequences 1500 --seconds 0.3 --seed 3 --format h5 --workers 1

# 2. stage 1: the teacher (half-width ResNet-18 classifier) on labelled APS frames, each frame
#    standardised (brightness and contrast vary tenfold between low light and over-exposure;
#    on raw frames this teacher stayed at chance)
evstream train --preset cpu --data $DATA/cls2 --out $RUNS/cls2_teacher --stage 1 $N \
    --set stage1.iterations=3000 --set stage1.batch_size=16 --set teacher.extra.input_norm=instance

# 3. stage 2: EvDistill's paired KD (pixel-wise + affinity KD on the APS frame of the same
#    instant; no BMR, no labels). The paper setting (unpaired, BMR) stayed at chance here:
#    see docs/results.md
evstream train --preset cpu --data $DATA/cls2 --out $RUNS/cls2_paired --stage 2 --setting paired $N \
    --teacher $RUNS/cls2_teacher/teacher/model.pt --set stage2.iterations=3000 \
    --set stage2.batch_size=16 --set loss.bmr=false --set loss.ce=0

# 4. evaluation on the held-out test split, and the small fresh set the CI test regenerates
evstream eval $RUNS/cls2_paired --data $DATA/cls2 --split test --json > $RUNS/cls2_paired.eval.json
evstream synth cls $DATA/ci_cls2 --sequences 30 --seconds 0.3 --seed 99 --split 0,0,1
evstream eval $RUNS/cls2_paired --data $DATA/ci_cls2 --split test --json > $RUNS/cls2_paired.ci.json

# 5. ship: export the student alone and write card.md / metrics.json
python tools/ship_model.py --run $RUNS/cls2_paired --name evdistill-r18q-cls \
    --eval $RUNS/cls2_paired.eval.json --ci-eval $RUNS/cls2_paired.ci.json --seed 3 \
    --dataset-command "evstream synth cls DATA --sequences 1500 --seconds 0.3 --seed 3 --format h5" \
    --ci-dataset-command "evstream synth cls OUT --sequences 30 --seconds 0.3 --seed 99 --split 0,0,1" \
    --train-command "evstream train --preset cpu --stage 2 --setting paired --set data.resize=null --set stage2.iterations=3000 --set stage2.batch_size=16 --set loss.bmr=false --set loss.ce=0" \
    --notes "$NOTES"
