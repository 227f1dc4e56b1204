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
#   stage validate: every snapshot of every run scored on meta-validation (trajshift validate RUN --snapshots)
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
read -r -a extra <<< "${EXTRA:-}"             # more --set overrides (a smoke run: tiny validation)
common=(--set init_from="$BASE" --set snapshot_every=$K --set checkpoint_every=$K --quiet "${extra[@]}")

if [[ $stage == all || $stage == train ]]; then
  for seed in $SEEDS; do
    $TS sweep $CFG --out "$OUT/s$seed/k$K" --methods cts --grid meta.meta_lr=$CTS_GRID --jobs $JOBS \
        --set seed=$seed --set meta.inner_steps=$K --set meta.trajectories=$M "${common[@]}"
    $TS sweep $CFG --out "$OUT/s$seed/k$K" --methods reptile --grid meta.meta_lr=$REPTILE_GRID --jobs $JOBS \
        --set seed=$seed --set meta.inner_steps=$K --set meta.trajectories=$M "${common[@]}"
    $TS sweep $CFG --out "$OUT/s$seed/k$K" --methods mtl --grid meta.meta_lr=1 --jobs 1 \
        --set seed=$seed --set meta.inner_steps=$K --set meta.trajectories=$M "${common[@]}"
    for k in $((K / 10)) $((3 * K / 10)); do      # Fig. 6c: the same budget with shorter trajectories
      [ "$k" -ge 1 ] || continue
      grid=$(python3 -c "print(','.join(f'{b * $K / $k:.6g}' for b in map(float, '$CTS_GRID'.split(','))))")
      $TS sweep $CFG --out "$OUT/s$seed/k$k" --methods cts --grid meta.meta_lr=$grid --jobs $JOBS \
          --set seed=$seed --set meta.inner_steps=$k --set meta.trajectories=$((budget / k)) \
          "${common[@]}"
    done
  done
fi

if [[ $stage == all || $stage == validate ]]; then
  for run in "$OUT"/s*/k*/*/meta_lr=*; do
    [ -f "$run/init.safetensors" ] || continue
    OMP_NUM_THREADS=$((2 / JOBS > 0 ? 2 / JOBS : 1)) $TS validate "$run" --snapshots --quiet
  done
fi

if [[ $stage == test ]]; then
  python3 experiments/convergence_regime.py "$OUT"
  mkdir -p "$OUT/test"
  export TS TEST_EXTRA="${TEST_EXTRA:-}"   # a smoke run: TEST_EXTRA="--steps 2"
  xargs -P "$JOBS" -L 1 bash -c '[ -f "$1/results.json" ] && exit 0; OMP_NUM_THREADS=1 $TS meta-test --init "$0" \
      --out "$1" --targets cifar10 --images-per-class 100 --protocol table1 --steps 500 --seeds 5 --quiet \
      $TEST_EXTRA > "$1.log" 2>&1' < "$OUT/meta-test-jobs.txt"
fi
