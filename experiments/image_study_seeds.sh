#!/usr/bin/env bash
# Evidence II, item 2: meta-training seeds 1 and 2 of the random-init image study (docs/image-study.md), so that its
# verdicts rest on 3 meta-training seeds. Seed 0 is the study itself (docs/image-study/report.json).
#
#   stage train: CTS, Reptile, CTS without shift, MTL and CTS with a random shift on configs/image-study.yaml at
#                the meta learning rates seed 0 chose on meta-validation (docs/image-study/sweeps/*.json; not
#                chosen again per seed), with --set seed=S: each seed has its own random initial weights, heads,
#                validation split and data order, shared by its five methods and its scratch baseline;
#   stage test:  each seed's five final initializations and its scratch (the runs' common start,
#                snapshots/step-00000000) meta-tested once with the study's flags (CIFAR-10 and MNIST at 5 / 20 /
#                100 images per class, Table 1 protocol, 200 steps, batch 64, crop, finetuning seeds 0-4);
#   then:        python experiments/image_study_seeds.py "$OUT" (docs/image-study/meta-seeds.json);
#                SET=others: the other methods (Leap, FOMAML, FOMAML++, iMAML, TIN pretraining), then
#                python experiments/image_study_seeds.py "$OUT" --methods others --out docs/image-study/meta-seeds-others.json
#
# Every stage resumes (finished runs are skipped, unfinished ones resume from their checkpoints; a finished meta-test
# is skipped). Run it from a fixed commit, as the study did, e.g.
#   git worktree add /tmp/wt <commit>; cd /tmp/wt && PYTHONPATH=/tmp/wt TRAJSHIFT="$VENV/bin/python -m trajshift" \
#     OUT=/abs/runs/image-study/seeds nohup bash experiments/image_study_seeds.sh > seeds.log 2>&1 &
# Smoke run: SEEDS=1 EXTRA="--set meta.trajectories=1 --set meta.inner_steps=2" TEST_EXTRA="--steps 2 --seeds 1"
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/image-study/seeds}
TS=${TRAJSHIFT:-trajshift}
CFG=configs/image-study.yaml
SEEDS=${SEEDS:-1 2}
JOBS=${JOBS:-2}
SWEEPS=${SWEEPS:-docs/image-study/sweeps}
stage=${1:-all}
mkdir -p "$OUT/test"

chosen() {  # METHOD FILE: the meta_lr seed 0 chose on meta-validation
    python3 -c "import json; print(json.load(open('$SWEEPS/$2.json'))['methods']['$1']['chosen']['meta.meta_lr'])"
}
# SET=core (default): the five methods of the first pass; SET=others: Leap, FOMAML, FOMAML++, iMAML and TIN
# pretraining (the study's "pretrain" run: joint training on the source Tiny ImageNet classes alone), at seed 0's
# meta-tested choices. Both sets share each seed's scratch meta-test.
SET=${SET:-core}
case $SET in
  core) METHODS="cts:$(chosen cts sweep) reptile:$(chosen reptile sweep) \
cts-no-shift:$(chosen cts-no-shift sweep-ablations) mtl:$(chosen mtl sweep-mtl) \
cts-random-shift:$(chosen cts-random-shift sweep-ablations)" ;;
  others) METHODS="leap:$(chosen leap sweep) fomaml:$(chosen fomaml sweep-first-order) \
fomaml++:$(chosen fomaml++ sweep-first-order) imaml:$(chosen imaml sweep-first-order) pretrain:$(chosen pretrain sweep-pretrain)" ;;
  *) echo "SET must be core or others, not $SET" >&2; exit 2 ;;
esac
# experiments/image_study.sh's pretrain tasks: the source Tiny ImageNet classes as one task.
PRETRAIN_TASKS='tasks=[{dataset: tiny-imagenet, classes: "0:180", resolution: 32, val_fraction: 0.2}]'
export TS CFG OUT EXTRA="${EXTRA:-}" TEST_EXTRA="${TEST_EXTRA:-}" PRETRAIN_TASKS

if [[ $stage == all || $stage == train ]]; then
  echo "== train $(date -u +%H:%M:%S): $METHODS"
  # A finished run is skipped by its init file (an archived run has no checkpoint to resume from).
  for seed in $SEEDS; do for m in $METHODS; do echo "$seed ${m%%:*} ${m##*:}"; done; done |
    xargs -P "$JOBS" -L 1 bash -c '[ -f "$OUT/s$0/$1/init.safetensors" ] && exit 0
        tasks=(); [ "$1" = pretrain ] && tasks=(--set "$PRETRAIN_TASKS")
        OMP_NUM_THREADS=1 $TS meta-train $CFG --out "$OUT/s$0/$1" --quiet "${tasks[@]}" \
        --set seed=$0 --set meta.method=$1 --set meta.meta_lr=$2 $EXTRA > "$OUT/s$0-$1.log" 2>&1'
fi

if [[ $stage == all || $stage == test ]]; then
  echo "== meta-test $(date -u +%H:%M:%S)"
  for seed in $SEEDS; do
    echo "$OUT/s$seed/cts/snapshots/step-00000000.safetensors $OUT/test/s$seed-scratch"
    for m in $METHODS; do echo "$OUT/s$seed/${m%%:*} $OUT/test/s$seed-${m%%:*}"; done
  done |
    xargs -P "$JOBS" -L 1 bash -c '[ -f "$1/results.json" ] && exit 0; OMP_NUM_THREADS=1 $TS meta-test --init "$0" \
        --out "$1" --targets cifar10,mnist --images-per-class 5,20,100 --protocol table1 --steps 200 --seeds 5 \
        --batch-size 64 --augment crop --quiet $TEST_EXTRA > "$1.log" 2>&1'
fi
echo "== done $(date -u +%H:%M:%S)"
