#!/usr/bin/env bash
# Evidence III, Experiment A (docs/image-study.md, "Experiment A: the design", committed before any of its runs):
# CTS against Reptile where they can differ, in the random-init image study's regime (configs/image-study.yaml:
# conv4, the 5 heterogeneous sources, K = 200, M = 20, snapshots every 800 inner steps).
#
#   stage train:    per meta-training seed, CTS at beta 0.01 / 0.02 / 0.04, Reptile at 1 / 2 / 3 and Reptile toward
#                   the average iterate (reptile-average) at K beta_CTS = 2 / 4 / 8; the cheap check first (seeds 1
#                   and 2 of CTS 0.01 and Reptile 1), then seed by seed (SEEDS, default 0-9)
#   stage validate: the snapshots at 800, 1,600 and 4,000 inner steps of every run scored on meta-validation
#   stage test:     python experiments/evidence_a.py "$OUT" (envelopes; OUT/meta-test-jobs.txt, written only for
#                   complete envelopes), then those meta-tests: CIFAR-10 and MNIST at 5 and 20 images per class,
#                   Table 1 protocol, 200 steps, batch 64, crop, finetuning seeds 5s .. 5s+4 for meta-training seed s
#   then:           python experiments/evidence_a.py "$OUT" --final (docs/evidence/experiment-a.json); at any time
#                   before, it reads what has finished (the cheap check first)
#
# Every stage resumes (finished runs, scored snapshots and finished meta-tests are skipped; a stopped run resumes
# from its newest checkpoint). Run it from a fixed commit, in the background, e.g.
#   git worktree add /tmp/ea <commit>; cd /tmp/ea && TRAJSHIFT="$VENV/bin/python -m trajshift" PYTHONPATH=/tmp/ea \
#     OUT=/abs/runs/evidence-a nohup bash experiments/evidence_a.sh > /abs/runs/evidence-a.log 2>&1 &
# Smoke run: SEEDS=1 EXTRA="--set meta.trajectories=2 --set meta.inner_steps=4 --set snapshot_every=4" \
#   AT=4,8 TEST_EXTRA="--steps 2 --seeds 2" bash experiments/evidence_a.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/evidence-a}
TS=${TRAJSHIFT:-trajshift}
CFG=configs/image-study.yaml
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
JOBS=${JOBS:-1}
AT=${AT:-800,1600,4000}
ARMS=${ARMS:-cts:0.01 reptile:1 cts:0.02 reptile:2 reptile-average:2 cts:0.04 reptile:3 reptile-average:4 reptile-average:8}
CHECK=${CHECK:-1:cts:0.01 1:reptile:1 2:cts:0.01 2:reptile:1}
stage=${1:-all}
mkdir -p "$OUT"
export TS CFG OUT EXTRA="${EXTRA:-}" TEST_EXTRA="${TEST_EXTRA:-}" AT

if [[ $stage == all || $stage == train ]]; then
  jobs=$OUT/train-jobs.txt; : > "$jobs"
  for c in $CHECK; do [[ " $SEEDS " == *" ${c%%:*} "* ]] && echo "${c//:/ }" >> "$jobs"; done
  for seed in $SEEDS; do for a in $ARMS; do echo "$seed ${a//:/ }"; done; done | grep -vxF -f "$jobs" >> "$jobs" || true
  echo "== train $(date -u +%H:%M:%S): $(wc -l < "$jobs") runs"
  xargs -P "$JOBS" -L 1 bash -c 'd="$OUT/s$0/$1/meta_lr=$2"; [ -f "$d/summary.json" ] && exit 0; mkdir -p "$(dirname "$d")"
      OMP_NUM_THREADS=1 $TS meta-train $CFG --out "$d" --quiet --set seed=$0 --set meta.method=$1 \
      --set meta.meta_lr=$2 $EXTRA > "$d.log" 2>&1 || echo "failed: $d (see $d.log)"' < "$jobs"
fi

if [[ $stage == all || $stage == validate ]]; then
  echo "== validate $(date -u +%H:%M:%S)"
  for run in "$OUT"/s*/*/meta_lr=*/; do [ -f "$run/summary.json" ] && echo "$run"; done |
    xargs -P "$JOBS" -L 1 bash -c 'OMP_NUM_THREADS=1 $TS validate "$0" --snapshots --at "$AT" --quiet > /dev/null'
fi

if [[ $stage == all || $stage == test ]]; then
  python3 experiments/evidence_a.py "$OUT" --budgets "$AT"
  echo "== meta-test $(date -u +%H:%M:%S): $(wc -l < "$OUT/meta-test-jobs.txt") jobs"
  mkdir -p "$OUT/test"
  xargs -P "$JOBS" -L 1 bash -c '[ -f "$1/results.json" ] && exit 0; OMP_NUM_THREADS=1 $TS meta-test --init "$0" \
      --out "$1" --first-seed "$2" --targets cifar10,mnist --images-per-class 5,20 --protocol table1 --steps 200 \
      --seeds 5 --batch-size 64 --augment crop --quiet $TEST_EXTRA > "$1.log" 2>&1 || echo "failed: $1"' \
      < "$OUT/meta-test-jobs.txt"
fi
echo "== done $(date -u +%H:%M:%S)"
