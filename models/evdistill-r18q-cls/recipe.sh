#!/bin/sh
# Reproduces models/evdistill-r18q-cls on a 2-core CPU (about 15 minutes).
set -e
DATA=${DATA:-data}; RUNS=${RUNS:-runs}

# 1. the object-recognition world: 300 samples of 0.3 s (three saccades), 128x128, ten classes
evstream synth cls $DATA/cls --sequences 300 --seconds 0.3 --seed 2 --format h5 --workers 1

# 2. both stages: teacher (half-width ResNet-18 classifier) on APS frames, then EvDistill
#    (paper setting) into the quarter-width ResNet-18 student on events; no resize at 128x128
evstream train --preset cpu --data $DATA/cls --out $RUNS/cls --stage all --setting paper \
    --set data.resize=null --set stage1.iterations=300 --set stage2.iterations=300

# 3. evaluation and the CI set
evstream eval $RUNS/cls --data $DATA/cls --split test --json > $RUNS/cls.eval.json
evstream synth cls $DATA/ci_cls --sequences 30 --seed 98 --split 0,0,1
evstream eval $RUNS/cls --data $DATA/ci_cls --split test --json > $RUNS/cls.ci.json

# 4. ship
python tools/ship_model.py --run $RUNS/cls --name evdistill-r18q-cls \
    --eval $RUNS/cls.eval.json --ci-eval $RUNS/cls.ci.json --seed 2 \
    --dataset-command "evstream synth cls DATA --sequences 300 --seconds 0.3 --seed 2 --format h5" \
    --ci-dataset-command "evstream synth cls OUT --sequences 30 --seed 98 --split 0,0,1" \
    --train-command "evstream train --preset cpu --stage all --setting paper --set data.resize=null --set stage1.iterations=300 --set stage2.iterations=300"
