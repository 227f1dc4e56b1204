#!/usr/bin/env bash
# Experiment A in lanes: seed s runs in lane s mod LANES, each lane one evidence_a.sh driver with one job and its own
# OUT folder (OUTS, one per lane), the lanes side by side. One driver with two jobs leaves a core idle at the tail of
# each stage (9 arms, 9 validations, 7 meta-tests per seed, each stage waiting for the last); two lanes keep both busy.
# The experiment itself is evidence_a.sh of the fixed commit in EA (a worktree of 38a2bbb), unchanged.
#
#   git worktree add /tmp/ea 38a2bbb
#   python experiments/archive_evidence_a.py --restore docs/evidence/experiment-a runs/evidence-a runs/evidence-b
#   EA=/tmp/ea SEEDS="2 3 4 5 6 7 8 9" TRAJSHIFT="$VENV/bin/python -m trajshift" nohup bash experiments/evidence_a_lanes.sh > runs/evidence-a-lanes.log 2>&1 &
#   ...  at a stop: pkill -f evidence_a_lanes.sh; pkill -f evidence_a.sh; pkill -f "trajshift (meta-train|validate|meta-test)"
#   python experiments/archive_evidence_a.py runs/evidence-a runs/evidence-b docs/evidence/experiment-a
set -euo pipefail
cd "$(dirname "$0")/.."
EA=${EA:?EA: a worktree of the fixed commit 38a2bbb (git worktree add /tmp/ea 38a2bbb)}
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9}
read -r -a outs <<< "${OUTS:-runs/evidence-a runs/evidence-b}"
for i in "${!outs[@]}"; do outs[$i]=$(realpath -m "${outs[$i]}"); done   # the drivers run in EA
TS=${TRAJSHIFT:-$(command -v python) -m trajshift}
read -r first rest <<< "$TS"; [[ $first == */* ]] && TS="$(cd "$(dirname "$first")" && pwd)/$(basename "$first") $rest"   # a relative path, from EA
for lane in "${!outs[@]}"; do
  (
    for s in $SEEDS; do
      (( s % ${#outs[@]} == lane )) || continue
      echo "=== lane $lane seed $s $(date -u +%H:%M:%S)"
      (cd "$EA" && TRAJSHIFT="$TS" PYTHONPATH="$EA" OUT="${outs[$lane]}" SEEDS=$s JOBS=1 CHECK="" \
        bash experiments/evidence_a.sh all)
    done
  ) &
done
wait
