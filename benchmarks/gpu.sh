#!/usr/bin/env bash
# Everything docs/PERFORMANCE.md's GPU section needs, on one GPU, in at most 8 minutes:
#   1. the cuda tests (loop == batched, cts == plain at beta = 0, bf16 ~ float32, no host sync, exact resume);
#   2. the throughput table: ResNet20, batch 128 per task, T = 1, 8; plain, cts-loop, cts-batched, +compile,
#      +bf16, +channels_last: ms per step, ratio to plain, peak memory (benchmarks/results/gpu_throughput.json);
#   3. a 90-second meta-train in the paper's configuration, cut short by SIGTERM, with snapshots, and the projected
#      wall time of the paper's full run at the best throughput measured (benchmarks/results/gpu_meta_train.json);
#   4. whether two runs of one config are bit-identical, with the default and with deterministic kernels
#      (benchmarks/results/gpu_determinism.json).
#
#   bash benchmarks/gpu.sh            # on a CUDA machine; writes benchmarks/results/gpu_*.json (or $RESULTS/)
#   bash benchmarks/gpu.sh --cpu      # a smoke run on CPU in seconds (CI runs it; writes benchmarks/out/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
if [[ ${1:-} == --cpu ]]; then
  DEV=cpu OUT=${RESULTS:-benchmarks/out} MODELS=conv4 TASKS=1,2 BATCH=4 REPEATS=1 IMAGES=64 MEM=--no-memory
  LIMIT="--max-steps 2"
  VARIANTS=plain,cts-loop,cts-batched DET="--steps 2 --batch 8"
else
  DEV=cuda OUT=${RESULTS:-benchmarks/results} MODELS=resnet20 TASKS=1,8 BATCH=128 REPEATS=3 IMAGES=1024
  LIMIT="--seconds 90"
  VARIANTS=plain,cts-loop,cts-batched,cts-batched-compile,cts-loop-bf16,cts-batched-bf16,cts-loop-channels_last
  # CUDA's peak allocation is the same in every child, so one each; a compiled variant's child would compile again.
  MEM="--memory-repeats 1 --memory-variants plain,cts-loop,cts-batched,cts-loop-bf16,cts-batched-bf16,cts-loop-channels_last"
  DET=
  CAP="timeout 240"    # the throughput step's share of the 8 minutes; its rows are saved as they come
fi
mkdir -p "$OUT"
# Every step runs even when one before it failed (one call on a lent GPU should bring back all it can); the exit
# status is the first failure's.
status=0
step() { local rc=0; "$@" || rc=$?; if [[ $rc != 0 && $status == 0 ]]; then status=$rc; fi; echo "(exit $rc)"; }
echo "== 1. cuda tests"
rc=0; ${CAP:+timeout 120} $PY -m pytest -q -m cuda tests/test_cuda.py -o addopts="" -p no:cacheprovider || rc=$?
[[ $rc == 0 || $rc == 5 ]] || { echo "cuda tests failed (exit $rc)"; status=$rc; }
echo "== 2. throughput"
step ${CAP:-} $PY benchmarks/throughput.py --device $DEV --models $MODELS --tasks $TASKS --batch $BATCH --variants $VARIANTS \
    --repeats $REPEATS $MEM --out $OUT/gpu_throughput.json
echo "== 3. meta-train in the paper's configuration, then the projection"
step $PY benchmarks/gpu_meta_train.py --device $DEV $LIMIT --images $IMAGES --batch $BATCH \
    --throughput $OUT/gpu_throughput.json --out $OUT/gpu_meta_train.json
echo "== 4. bit-identical reruns, default and deterministic kernels"
step ${CAP:+timeout 100} $PY benchmarks/gpu_determinism.py --device $DEV $DET --out $OUT/gpu_determinism.json
exit $status
