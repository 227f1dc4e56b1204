#!/usr/bin/env bash
# Evidence II, items 4 and 5: meta-convergence at K = 1,000 (Figs. 6a, 7) with every method's curve the best over
# its meta learning rates at each budget, and meta-test accuracy against K at a fixed budget (Fig. 6c). The design,
# fixed before the runs, is in docs/pretrained.md ("Figs. 6a, 6c and 7: the design"). The regime is the Table 1
# regime's (configs/paper-4.3-cpu.yaml: the pretrained base, its 4 class groups as sources, classes 160:200 for
# meta-validation, CIFAR-10 as the target), so it needs the base of experiments/pretrained_regime.sh.
#
#   stage train:    for each meta-training seed, CTS and Reptile on beta grids whose effective Reptile steps overlap
#                   (CTS beta K rho with rho about 0.6), and MTL, K = 1,000, M = 10, a snapshot at every trajectory's
#                   end; for Fig. 6c, CTS at K = 100 and 300 over the same budget (10,000 inner steps per task)
#   stage validate: every snapshot of every K = 1,000 run scored on meta-validation (trajshift validate RUN
#                   --snapshots); for the shorter K, the snapshots nearest 1/5, 1/2 and all of the budget (--at)
#   then: python experiments/convergence_regime.py "$OUT" (envelopes; the snapshots to meta-test, meta-test-jobs.txt)
#   stage test:     the meta-tests of meta-test-jobs.txt (CIFAR-10, 100 images per class, Table 1 protocol, 500 steps,
#                   finetuning seeds 0-4: None's are the Table 1 regime's, docs/evidence/pretrained-regime)
#   then: python experiments/convergence_regime.py "$OUT" --final (docs/evidence/convergence-regime.{json,png})
#
# Every stage resumes (finished runs and scored snapshots are skipped). Sizes can be shrunk for a smoke run:
#   K=10 M=2 SEEDS=0 JOBS=1 OUT=runs/conv-smoke EXTRA="--set validation.steps=3 --set validation.seeds=2" \
#     bash experiments/convergence_regime.sh
set -euo pipefail
OUT=${OUT:-runs/conv}
TS=${TRAJSHIFT:-trajshift}
BASE=${BASE:-docs/evidence/pretrained-regime/runs/tin-base}   # the committed base of the Table 1 regime
CFG=configs/paper-4.3-cpu.yaml
K=${K:-1000}; M=${M:-10}; SEEDS=${SEEDS:-0 1 2}; JOBS=${JOBS:-2}
CTS_GRID=${CTS_GRID:-0.0005,0.0015,0.005}     # beta K rho = 0.3, 0.9, 3 at K = 1,000, rho 0.6
REPTILE_GRID=${REPTILE_GRID:-0.3,1,3}
stage=${1:-all}
budget=$((K * M))

if [[ $stage == all || $stage == train ]]; then
  # One job per run, two at a time, in an order that makes the early runs the most useful: for each seed, the
  # K = 1,000 CTS and Reptile grids interleaved (middle beta first), MTL, then Fig. 6c's shorter K. The run folders
  # are laid out as a sweep's (OUT/sS/kK/METHOD/meta_lr=BETA); a stopped run resumes from its newest checkpoint and a
  # finished one is skipped.
  jobs_file=$OUT/train-jobs.txt; mkdir -p "$OUT"; : > "$jobs_file"
  IFS=, read -r -a cts <<< "$CTS_GRID"; IFS=, read -r -a rep <<< "$REPTILE_GRID"
  middle_first() { python3 -c "n = $1; print(*sorted(range(n), key=lambda i: (abs(i - n // 2), i)))"; }
  read -r -a cts_order <<< "$(middle_first ${#cts[@]})"; read -r -a rep_order <<< "$(middle_first ${#rep[@]})"
  for seed in $SEEDS; do
    for ((j = 0; j < ${#cts[@]} || j < ${#rep[@]}; j++)); do
      if ((j < ${#cts[@]})); then echo "$seed $K $M cts ${cts[${cts_order[$j]}]}" >> "$jobs_file"; fi
      if ((j < ${#rep[@]})); then echo "$seed $K $M reptile ${rep[${rep_order[$j]}]}" >> "$jobs_file"; fi
    done
    echo "$seed $K $M mtl 1" >> "$jobs_file"
    for k in $((3 * K / 10)) $((K / 10)); do      # Fig. 6c: the same budget with shorter trajectories
      [ "$k" -ge 1 ] || continue
      for b in "${cts[@]}"; do
        echo "$seed $k $((budget / k)) cts $(python3 -c "print(f'{$b * $K / $k:.6g}')")" >> "$jobs_file"
      done
    done
  done
  export TS CFG BASE OUT EXTRA="${EXTRA:-}"
  xargs -P "$JOBS" -L 1 bash -c 'd="$OUT/s$0/k$1/$3/meta_lr=$4"; [ -f "$d/init.safetensors" ] && exit 0
      mkdir -p "$(dirname "$d")"; OMP_NUM_THREADS=1 $TS meta-train $CFG --out "$d" --quiet --set init_from="$BASE" \
      --set seed=$0 --set meta.inner_steps=$1 --set meta.trajectories=$2 --set meta.method=$3 --set meta.meta_lr=$4 \
      --set snapshot_every=$1 --set checkpoint_every=$1 $EXTRA > "$d.log" 2>&1' < "$jobs_file"
fi

if [[ $stage == all || $stage == validate ]]; then
  # finished runs, and the snapshots a stopped run has written (scores are cached per snapshot). Fig. 6c's shorter
  # K write a snapshot per trajectory too (100 at K = 100); only those nearest 1/5, 1/2 and all of the budget are
  # scored, the points its envelope and meta-test need.
  export TS AT="$((budget / 5)),$((budget / 2)),$budget"
  for run in "$OUT"/s*/k*/*/meta_lr=*/; do
    [ -d "$run/snapshots" ] || continue
    if [[ $run == "$OUT"/s*/k$K/* ]]; then echo "$run all"; else echo "$run $AT"; fi
  done | xargs -P "$JOBS" -L 1 bash -c 'at=(); [ "$1" = all ] || at=(--at "$1")
    OMP_NUM_THREADS=1 $TS validate "$0" --snapshots "${at[@]}" --quiet'
fi

if [[ $stage == test ]]; then
  python3 experiments/convergence_regime.py "$OUT"
  mkdir -p "$OUT/test"
  export TS TEST_EXTRA="${TEST_EXTRA:-}"   # a smoke run: TEST_EXTRA="--steps 2"
  xargs -P "$JOBS" -L 1 bash -c '[ -f "$1/results.json" ] && exit 0; OMP_NUM_THREADS=1 $TS meta-test --init "$0" \
      --out "$1" --targets cifar10 --images-per-class 100 --protocol table1 --steps 500 --seeds 5 --quiet \
      $TEST_EXTRA > "$1.log" 2>&1' < "$OUT/meta-test-jobs.txt"
fi
