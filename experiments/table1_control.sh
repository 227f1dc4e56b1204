#!/usr/bin/env bash
# Evidence III item 2: Table 1's gain over None, against a control. "None, trained on" (configs/tin-control-cpu.yaml:
# the base continued by plain pretraining on the union of the source groups, as many images as one meta-training
# run, the rate annealed by a cosine) for control seeds $SEEDS, then its meta-tests exactly as None's and the
# meta-learners' (CIFAR-10 and Fashion-MNIST, 25 / 100 / 400 images per class, Table 1 protocol, 500 steps,
# finetuning seeds 0-4: paired with every committed meta-test by finetuning seed). Resumes; archives as it goes
# into docs/evidence/pretrained-regime{,-fashion-mnist}/ and docs/evidence/pretrained-regime/runs/control-sS/.
# Then: python experiments/crossed_intervals.py --regime pretrained --out docs/evidence/pretrained-regime-crossed.json
#   nohup bash experiments/table1_control.sh > runs/table1-control.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/table1-control}
TS=${TRAJSHIFT:-trajshift}
SEEDS=${SEEDS:-0 1 2}
EV=${EV:-docs/evidence}       # where finished results are archived (a smoke run points it elsewhere)
BASE=docs/evidence/pretrained-regime/runs/tin-base
mkdir -p "$OUT"
for seed in $SEEDS; do
  name=control-s$seed; run=$OUT/$name
  echo "== $name: train $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=1 $TS meta-train configs/tin-control-cpu.yaml --out "$run" --quiet --set seed=$seed \
      --set init_from="$BASE" ${EXTRA:-}
  mkdir -p "$EV/pretrained-regime/runs/$name"
  for f in init.safetensors init.json config.yaml summary.json; do cp "$run/$f" "$EV/pretrained-regime/runs/$name/"; done
  gzip -c "$run/metrics.jsonl" > "$EV/pretrained-regime/runs/$name/metrics.jsonl.gz"
  for target in cifar10 fashion-mnist; do
    archive=$EV/pretrained-regime; [ $target = cifar10 ] || archive=$EV/pretrained-regime-$target
    test=$OUT/test-$target/$name; mkdir -p "$test"
    [ -f "$archive/$name-finished-seeds.jsonl" ] && [ ! -f "$test/finished-seeds.jsonl" ] && \
        cp "$archive/$name-finished-seeds.jsonl" "$test/finished-seeds.jsonl"
    echo "== $name: meta-test $target $(date -u +%H:%M:%S)"
    OMP_NUM_THREADS=1 $TS meta-test --init "$run" --out "$test" --targets $target --images-per-class 25,100,400 \
        --protocol table1 --steps 500 --seeds 5 --quiet ${TEST_EXTRA:-} > "$test.log" 2>&1 || echo "failed: $test"
    mkdir -p "$archive"; [ -f "$test/finished-seeds.jsonl" ] && cp "$test/finished-seeds.jsonl" "$archive/$name-finished-seeds.jsonl"
    [ -f "$test/results.json" ] && cp "$test/results.json" "$archive/$name-results.json"
  done
done
echo "== done $(date -u +%H:%M:%S): python experiments/crossed_intervals.py --regime pretrained --out docs/evidence/pretrained-regime-crossed.json"
