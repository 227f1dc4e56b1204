#!/usr/bin/env bash
# The image study of docs/image-study.md. Every stage resumes where it stopped (run folders with checkpoints, cached
# validation and meta-test results), so run it again after an interruption. Needs ../shared/data.
#   bash experiments/image_study.sh            # everything; or one stage: bash experiments/image_study.sh sweep
# The study ran on fixed code while the library changed: a git worktree of one commit, imported first, e.g.
#   git worktree add /tmp/study <commit>; PYTHONPATH=/tmp/study PY=$PWD/.venv/bin/python OUT=$PWD/runs/image-study \
#     bash /tmp/study/experiments/image_study.sh STAGE
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TS=${TS:-$PY -m trajshift}
OUT=${OUT:-runs/image-study}
CFG=configs/image-study.yaml
JOBS=${JOBS:-2}
stage=${1:-all}

# 1. meta_lr on meta-validation (held-out source classes), 5 points, for the methods the issue names.
if [[ $stage == all || $stage == sweep ]]; then
  $TS sweep $CFG --out $OUT/sweep --grid meta.meta_lr=0.001,0.01,0.1,1,10 --methods cts,reptile,leap --jobs $JOBS
fi

# 2. The other methods: best of 3 points. The CTS ablations get CTS's chosen value and its two grid neighbours;
#    FOMAML, FOMAML++ and iMAML get 0.01, 0.1, 1 (the paper's iMAML value 0.1 in the middle).
if [[ $stage == all || $stage == sweep3 ]]; then
  around=$($PY - "$OUT/sweep/sweep.json" <<'PY'
import json, sys
grid = [0.001, 0.01, 0.1, 1, 10]
v = json.load(open(sys.argv[1]))["methods"]["cts"]["chosen"]["meta.meta_lr"]
i = min(max(grid.index(v), 1), len(grid) - 2)
print(",".join(str(x) for x in grid[i - 1:i + 2]))
PY
)
  $TS sweep $CFG --out $OUT/sweep-ablations --grid meta.meta_lr=$around --methods cts-no-shift,cts-random-shift \
      --jobs $JOBS
  $TS sweep $CFG --out $OUT/sweep-first-order --grid meta.meta_lr=0.01,0.1,1 --methods fomaml,fomaml++,imaml \
      --jobs $JOBS
  # Finetuning baselines: joint training has no meta learning rate (one point each). MTL on the five sources;
  # "pretrain" on the source Tiny ImageNet classes only (the paper's TIN finetuning baseline).
  $TS sweep $CFG --out $OUT/sweep-mtl --grid meta.meta_lr=0 --methods mtl --jobs 1
  $TS sweep $CFG --out $OUT/sweep-pretrain --grid meta.meta_lr=0 --methods pretrain --jobs 1 \
      --set 'tasks=[{dataset: tiny-imagenet, classes: "0:180", resolution: 32, val_fraction: 0.2}]'
fi

# 2b. Validation only: one more point where a choice fell on its grid's edge (the ablations chose 0.1, the top of
#     their grid; the first-order methods 0.01, the bottom). A better point found here changes the chosen run.
if [[ $stage == extend ]]; then
  $TS sweep $CFG --out $OUT/sweep-ablations --grid meta.meta_lr=0.001,0.01,0.1,1 \
      --methods cts-no-shift,cts-random-shift --jobs $JOBS
  $TS sweep $CFG --out $OUT/sweep-first-order --grid meta.meta_lr=0.001,0.01,0.1,1 --methods fomaml,fomaml++,imaml \
      --jobs $JOBS
fi

# 2c. Issue "Evidence II", item 1: the corrected explanation says CTS at beta is Reptile at beta K rho (about 1.44 for
#     the chosen CTS run). Reptile on a fine grid around it, validation only; meta_lr=1 is the sweep's run
#     (docs/image-study/inits/reptile.pt), not run again. Read by experiments/image_study_displacement.py
#     (displacement, cosine with CTS, validation).
if [[ $stage == fine ]]; then
  $TS sweep $CFG --out $OUT/sweep-reptile-fine --grid meta.meta_lr=0.3,0.5,1.5,2,3,5 --methods reptile --jobs $JOBS
fi

# 3. Meta-test (touched once, at the end): every chosen run, its snapshots (Fig. 7) and scratch (snapshot 0).
if [[ $stage == all || $stage == report ]]; then
  $TS report $OUT/sweep $OUT/sweep-ablations $OUT/sweep-first-order $OUT/sweep-mtl $OUT/sweep-pretrain \
      --targets cifar10,mnist --images-per-class 5,20,100 --curve-images-per-class 20 --seeds 5 --steps 200 \
      --protocol table1 --batch-size 64 --augment crop --out docs/image-study
fi
