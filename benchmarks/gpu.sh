#!/usr/bin/env bash
# Everything docs/PERFORMANCE.md's GPU section needs, on one GPU, in at most 10 minutes (each step capped; its JSON
# written as it goes, so a step cut short keeps what it measured):
#   1. the cuda tests (loop == batched, cts == plain at beta = 0, bf16 ~ float32, no host sync, exact resume);
#   2. what users run: the paper's 8 source tasks at their own resolutions (28, 32, 64, 84 px), ResNet20, batch 128:
#      plain, cts-loop, cts-grouped (tasks batched by input shape), + compile, + CUDA graphs, auto (per group),
#      max_group 2: ms per step, ratio to plain, peak memory, projected hours of the paper's full run
#      (benchmarks/results/gpu_mixed_resolution.json);
#   3. the throughput table at one resolution: ResNet20, batch 128, T = 1, 8, with cts-loop-graphs (the step graph:
#      CTS at T = 1 against plain, target 1.05x) (benchmarks/results/gpu_throughput.json);
#   4. a meta-train in the paper's configuration (mixed resolutions, backend auto), cut short by SIGTERM, with
#      snapshots: the projection of the full run from its steady rate (benchmarks/results/gpu_meta_train.json);
#      then a one-rank torchrun meta-train with the process group forced, so the NCCL path runs
#      (benchmarks/results/gpu_nccl_one_rank.json: its "comm" says nccl);
#   5. whether two runs of one config are bit-identical, default and deterministic kernels
#      (benchmarks/results/gpu_determinism.json).
#
#   bash benchmarks/gpu.sh            # on a CUDA machine; writes benchmarks/results/gpu_*.json (or $RESULTS/)
#   bash benchmarks/gpu.sh --cpu      # a smoke run of every step on CPU (CI runs it; writes benchmarks/out/): the
#                                     # graphs variant is refused there (recorded under "errors"), gloo for NCCL
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
if [[ ${1:-} == --cpu ]]; then
  DEV=cpu OUT=${RESULTS:-benchmarks/out} MODELS=conv4 TASKS=1,2 BATCH=4 REPEATS=1 IMAGES=64 MEM=--no-memory
  LIMIT="--max-steps 2"
  VARIANTS=plain,cts-loop,cts-batched DET="--steps 2 --batch 8"
  MIXED="--model conv4 --batch 2 --repeats 1 --block 1 --variants cts-loop,cts-grouped,cts-grouped-graphs,cts-loop-graphs,cts-auto,cts-grouped-max2"
else
  DEV=cuda OUT=${RESULTS:-benchmarks/results} MODELS=resnet20 TASKS=1,8 BATCH=128 REPEATS=3 IMAGES=1024
  LIMIT="--seconds 75"
  VARIANTS=plain,cts-loop,cts-loop-graphs,cts-batched,cts-batched-compile,cts-loop-bf16,cts-batched-bf16
  # CUDA's peak allocation is the same in every child, so one each; a compiled variant's child would compile again.
  MEM="--memory-repeats 1 --memory-variants plain,cts-loop,cts-batched,cts-loop-bf16,cts-batched-bf16"
  DET=
  MIXED="--model resnet20 --batch 128 --repeats 3 --block 3"
  CAP=timeout
fi
mkdir -p "$OUT"
# Every step runs even when one before it failed (one call on a lent GPU should bring back all it can); the exit
# status is the first failure's.
status=0
step() { local rc=0; "$@" || rc=$?; if [[ $rc != 0 && $status == 0 ]]; then status=$rc; fi; echo "(exit $rc)"; }
cap() { if [[ -n ${CAP:-} ]]; then timeout "$@"; else shift; "$@"; fi; }
echo "== 1. cuda tests"
rc=0; cap 90 $PY -m pytest -q -m cuda tests/test_cuda.py -o addopts="" -p no:cacheprovider || rc=$?
[[ $rc == 0 || $rc == 5 ]] || { echo "cuda tests failed (exit $rc)"; status=$rc; }
echo "== 2. the paper's mixed resolutions: loop, grouped, compile, graphs, auto"
step cap 170 $PY benchmarks/mixed_resolution.py --device $DEV $MIXED --out $OUT/gpu_mixed_resolution.json
echo "== 3. throughput at one resolution"
step cap 150 $PY benchmarks/throughput.py --device $DEV --models $MODELS --tasks $TASKS --batch $BATCH --variants $VARIANTS \
    --repeats $REPEATS $MEM --out $OUT/gpu_throughput.json
echo "== 4. meta-train in the paper's configuration, the projection; a one-rank NCCL meta-train"
step $PY benchmarks/gpu_meta_train.py --device $DEV $LIMIT --images $IMAGES --batch $BATCH \
    --throughput $OUT/gpu_throughput.json --out $OUT/gpu_meta_train.json
step cap 60 $PY benchmarks/gpu_meta_train.py --device $DEV --max-steps 4 --images $IMAGES --batch $BATCH --torchrun \
    --work benchmarks/out/gpu-nccl --out $OUT/gpu_nccl_one_rank.json
echo "== 5. bit-identical reruns, default and deterministic kernels"
step cap 70 $PY benchmarks/gpu_determinism.py --device $DEV $DET --out $OUT/gpu_determinism.json
exit $status
