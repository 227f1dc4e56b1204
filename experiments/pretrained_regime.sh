#!/usr/bin/env bash
# Evidence II, item 3: the regime of Table 1 / Fig. 9 (the paper's Section 4.3) at CPU scale, offline on the data
# folder. The design, and what would confirm or refute each claim, is in docs/pretrained.md ("Table 1's regime").
#
#   1. the base: `pretrain` of conv4 (width 32) on Tiny ImageNet classes 0:160 (configs/tin-base-cpu.yaml);
#   2. meta-training seed 0: beta chosen on meta-validation (classes 160:200, never a target) by `trajshift sweep`,
#      CTS over {0.0003, 0.001, 0.003, 0.01} (around the paper's 0.001), Reptile over {0.3, 1, 3} (around 1); a
#      choice at the grid's upper edge adds one point above it (CTS 0.03, Reptile 10) and chooses again;
#      MTL has no beta;
#   3. meta-training seeds 1 and 2 at the chosen betas (each seed: its own heads and data order; the same base);
#   4. meta-test of the base ("None") and of every run on CIFAR-10 at 25, 100 and 400 images per class
#      (250 / 1,000 / 4,000 training images), Table 1 protocol, 500 steps, finetuning seeds 0-4 (the same
#      seeds, hence the same subsamples, for every initialization: paired by seed);
#   5. experiments/pretrained_regime.py collects docs/evidence/pretrained-regime.json.
#
# Every step resumes: finished runs and finished meta-test seeds are skipped, unfinished runs resume from their
# checkpoints. Run it from the repository root, with the data folder found as usual ($TRAJSHIFT_DATA):
#   nohup bash experiments/pretrained_regime.sh > runs/ev2.log 2>&1 &
set -euo pipefail
OUT=${OUT:-runs/ev2}
TS=${TRAJSHIFT:-trajshift}
CFG=configs/paper-4.3-cpu.yaml
mkdir -p "$OUT"
BASE=$(cd "$OUT" && pwd)/tin-base

echo "== base $(date -u +%H:%M:%S)"
$TS meta-train configs/tin-base-cpu.yaml --out "$BASE" --quiet

chosen() {  # the chosen meta_lr of METHOD in the seed-0 sweep
    python3 -c "import json,sys; print(json.load(open('$OUT/s0/sweep.json'))['methods']['$1']['chosen']['meta.meta_lr'])"
}
sweep() {  # METHOD GRID NEXT: sweep GRID; a choice at its upper edge extends it by NEXT (validation decides again)
    $TS sweep $CFG --out "$OUT/s0" --methods "$1" --grid "meta.meta_lr=$2" --jobs 2 \
        --set init_from="$BASE" --set seed=0 --quiet
    if [ -n "${3:-}" ] && python3 -c "import sys; sys.exit(float('$(chosen "$1")') != max(map(float, '$2'.split(','))))"; then
        echo "$1: chosen at the grid's upper edge; adding $3"
        sweep "$1" "$2,$3"
    fi
}

echo "== seed 0: beta by meta-validation $(date -u +%H:%M:%S)"
sweep cts 0.0003,0.001,0.003,0.01 0.03
sweep reptile 0.3,1,3 10
$TS sweep $CFG --out "$OUT/s0" --methods mtl --grid meta.meta_lr=1 --jobs 1 \
    --set init_from="$BASE" --set seed=0 --quiet

CTS_BETA=$(chosen cts); REPTILE_BETA=$(chosen reptile)
echo "== chosen on meta-validation: cts beta=$CTS_BETA, reptile beta=$REPTILE_BETA $(date -u +%H:%M:%S)"

echo "== seeds 1, 2 $(date -u +%H:%M:%S)"
jobs_file=$OUT/seed-jobs.txt; : > "$jobs_file"
for seed in 1 2; do
    echo "$seed cts $CTS_BETA" >> "$jobs_file"
    echo "$seed reptile $REPTILE_BETA" >> "$jobs_file"
    echo "$seed mtl 1" >> "$jobs_file"
done
export TS CFG BASE OUT
xargs -P 2 -L 1 bash -c 'OMP_NUM_THREADS=1 $TS meta-train $CFG --out "$OUT/s$0/$1" --quiet \
    --set init_from="$BASE" --set seed=$0 --set meta.method=$1 --set meta.meta_lr=$2 > "$OUT/s$0-$1.log" 2>&1' \
    < "$jobs_file"

mkdir -p "$OUT/test"
echo "== meta-tests $(date -u +%H:%M:%S)"
inits_file=$OUT/meta-test-jobs.txt
{ echo "$BASE $OUT/test/none"
  for m in cts reptile mtl; do echo "$OUT/s0/$m $OUT/test/s0-$m"; done
  for seed in 1 2; do for m in cts reptile mtl; do echo "$OUT/s$seed/$m $OUT/test/s$seed-$m"; done; done
} > "$inits_file"
xargs -P 2 -L 1 bash -c 'OMP_NUM_THREADS=1 $TS meta-test --init "$0" --out "$1" --targets cifar10 \
    --images-per-class 25,100,400 --protocol table1 --steps 500 --seeds 5 --quiet > "$1.log" 2>&1' \
    < "$inits_file"

echo "== collect $(date -u +%H:%M:%S)"
python3 experiments/pretrained_regime.py "$OUT"
echo "== done $(date -u +%H:%M:%S)"
