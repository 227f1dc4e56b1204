#!/usr/bin/env bash
# Evidence II, item 3, a further target for the Table 1 / Fig. 9 regime: meta-test the committed initializations of
# experiments/pretrained_regime.sh (docs/evidence/pretrained-regime/runs: the base "None" and CTS, Reptile and MTL
# of meta-training seeds 0-2) on TARGET, with the protocol of the CIFAR-10 meta-tests (Table 1 protocol, 500 steps,
# finetuning seeds 0-4, paired by seed). The design of the second target is in docs/pretrained.md ("A second
# target"). SIZES are images per class, run in the order given; a meta-test resumes seed by seed and size by size,
# so SIZES=100 first and SIZES=25,100,400 later reuses the finished 100s.
#
# The finished finetuning seeds and results are copied to ARCHIVE (docs/evidence/pretrained-regime-TARGET) at the end
# and put back at the start; after a stop, copy OUT/test/NAME/finished-seeds.jsonl there by hand the same way.
#
#   TARGET=fashion-mnist SIZES=100 nohup bash experiments/pretrained_target.sh > runs/ev2-fashion-mnist.log 2>&1 &
#   python experiments/pretrained_regime.py runs/ev2-fashion-mnist --target fashion-mnist
set -euo pipefail
TARGET=${TARGET:?name the target dataset, e.g. TARGET=fashion-mnist}
SIZES=${SIZES:-25,100,400}
OUT=${OUT:-runs/ev2-$TARGET}
TS=${TRAJSHIFT:-trajshift}
INITS=${INITS:-docs/evidence/pretrained-regime/runs}
JOBS=${JOBS:-2}
# Finished finetuning seeds kept between sessions (NAME-finished-seeds.jsonl) come back first, so a meta-test resumes.
ARCHIVE=${ARCHIVE:-docs/evidence/pretrained-regime-$TARGET}
mkdir -p "$OUT/test"
for kept in "$ARCHIVE"/*-finished-seeds.jsonl; do
  [ -f "$kept" ] || continue
  name=$(basename "$kept" -finished-seeds.jsonl); mkdir -p "$OUT/test/$name"
  [ -f "$OUT/test/$name/finished-seeds.jsonl" ] || cp "$kept" "$OUT/test/$name/finished-seeds.jsonl"
done
jobs_file=$OUT/meta-test-jobs.txt
{ echo "$INITS/tin-base/init.safetensors $OUT/test/none"
  for seed in 0 1 2; do for m in cts reptile mtl; do
    echo "$INITS/s$seed-$m/init.safetensors $OUT/test/s$seed-$m"; done; done
} > "$jobs_file"
export TS TARGET SIZES EXTRA="${EXTRA:-}"
xargs -P "$JOBS" -L 1 bash -c 'OMP_NUM_THREADS=1 $TS meta-test --init "$0" --out "$1" --targets "$TARGET" \
    --images-per-class "$SIZES" --protocol table1 --steps 500 --seeds 5 --quiet $EXTRA > "$1.log" 2>&1' < "$jobs_file"
for d in "$OUT"/test/*/; do     # keep what finished (small) for a later session, and each results.json
  name=$(basename "$d"); mkdir -p "$ARCHIVE"
  [ -f "$d/finished-seeds.jsonl" ] && cp "$d/finished-seeds.jsonl" "$ARCHIVE/$name-finished-seeds.jsonl"
  [ -f "$d/results.json" ] && cp "$d/results.json" "$ARCHIVE/$name-results.json"
done
echo "== done $(date -u +%H:%M:%S): python experiments/pretrained_regime.py $OUT --target $TARGET"
