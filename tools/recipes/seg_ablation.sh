#!/bin/sh
# The EvDistill segmentation ablation of docs/results.md: every row from the same frozen teacher,
# data, seed and budget, two runs at a time (one torch thread each, on a 2-core CPU), each
# resumable (rerun this script after a kill: finished rows are kept, started ones resume), then
# `evstream eval` on the test split. Usage:
#     DATA=data/seg3 RUNS=runs ITERS=600 PREFIX=abl TEACHER=T.pt sh tools/recipes/seg_ablation.sh [ROW ...]
# ROW: gt pseudo paired paired_nobmr paired_noaff paired_nodm paired_noclip paired_noa2e paired_detach
#      paired_detach_fill paired_norkd paired_conf paired_light paired_light01
#      paired_fill unpaired (default: all of them)
set -e
DATA=${DATA:-data/seg3}; RUNS=${RUNS:-runs}; ITERS=${ITERS:-600}; PREFIX=${PREFIX:-abl}
EVSTREAM=${EVSTREAM:-evstream}; JOBS=${JOBS:-2}
TEACHER=${TEACHER:-$RUNS/seg3_teacher/teacher/model.pt}
export DATA RUNS ITERS PREFIX EVSTREAM TEACHER

args_of() {
    case $1 in
        gt)           echo "--setting events_gt" ;;
        pseudo)       echo "--setting pseudo_aps" ;;
        paired)       echo "--setting paired" ;;
        paired_nobmr) echo "--setting paired --set loss.bmr=false" ;;
        paired_noaff) echo "--setting paired --set loss.affinity=0" ;;
        paired_nodm)  echo "--setting paired --set loss.pixel_kd=0" ;;
        paired_noclip) echo "--setting paired --set loss.frame_clip_mask=false" ;;
        paired_noa2e) echo "--setting paired --set loss.recon_a2e=false" ;;
        paired_detach) echo "--setting paired --set loss.e2a_detach=true" ;;
        paired_detach_fill) echo "--setting paired --set loss.e2a_detach=true --set loss.recon_kd_where=clipped" ;;
        paired_norkd) echo "--setting paired --set loss.recon_kd_where=none" ;;
        paired_conf) echo "--setting paired --set loss.recon_kd_min_conf=0.9" ;;
        paired_light) echo "--setting paired --set loss.recon=1 --set loss.consistency=1" ;;
        paired_light01) echo "--setting paired --set loss.recon=0.1 --set loss.consistency=0.1" ;;
        paired_fill)  echo "--setting paired --set loss.recon_kd_where=clipped" ;;
        unpaired)     echo "--setting unpaired" ;;
        *) echo "unknown row $1" >&2; exit 2 ;;
    esac
}

if [ "$1" = "--args" ]; then
    args_of "$2"
    exit 0
fi

if [ "$1" = "--one" ]; then
    row=$2; out=$RUNS/${PREFIX}_$row
    if [ ! -f "$out/student/model.pt" ]; then
        resume=""; [ -f "$out/config.json" ] && resume="--resume"
        # shellcheck disable=SC2046
        $EVSTREAM train --preset cpu --data "$DATA" --out "$out" --stage 2 --teacher "$TEACHER" \
            $(args_of "$row") --set stage2.iterations="$ITERS" --threads 1 --no-progress \
            --json $resume > "$out.train.json" 2> "$out.train.log"
    fi
    $EVSTREAM eval "$out" --data "$DATA" --split test --json > "$out.eval.json"
    echo "$row done"
    exit 0
fi

ROWS=${*:-paired pseudo unpaired paired_noaff paired_nodm paired_noclip paired_nobmr gt}
for row in $ROWS; do args_of "$row" > /dev/null; echo "$row"; done | xargs -P "$JOBS" -I{} sh "$0" --one {}
