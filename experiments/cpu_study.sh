#!/usr/bin/env bash
# The CPU-scale image study (docs/image-study.md): meta-train each method on configs/cpu-study.yaml, then compare
# them by meta-testing every snapshot on QuickDraw and MNIST (Figs. 6a, 6b, 7 of the paper at CPU scale).
# Two methods run at a time, one thread each. Usage: bash experiments/cpu_study.sh [RUNS_DIR] [REPORT_DIR]
set -euo pipefail
runs=${1:-runs/cpu-study}
report=${2:-docs/image-study}
export OMP_NUM_THREADS=1
ts=.venv/bin/trajshift
train() {   # method, meta_lr
  $ts meta-train configs/cpu-study.yaml --out "$runs/$1" --quiet --set meta.method="$1" --set meta.meta_lr="$2"
}
# Meta learning rates: the paper's tuned values where it gives them (Reptile 1.0, Leap 0.1); CTS 0.01 (the
# reference code); FOMAML 0.1; MTL has none.
(train cts 0.01; train leap 0.1) &
(train reptile 1.0; train mtl 0.0) &
wait
# Meta-test: the paper's protocol (Nesterov SGD, lr 0.1, weight decay 5e-4) scaled to 200 finetuning steps, 3 seeds,
# every second snapshot (0, 2000, 4000, 6000 inner steps) and the final initialization.
$ts report "$runs/cts" "$runs/reptile" "$runs/mtl" "$runs/leap" --targets quickdraw,mnist --out "$report" \
  --seeds 3 --steps 200 --protocol paper --every-snapshot 2 --quiet
