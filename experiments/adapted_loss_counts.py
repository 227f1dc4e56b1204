"""Fig. 6a at K = 1,000 as measured (docs/pretrained.md): in how many trajectories after the first is CTS's adapted
loss (the task-average `loss_mean` at each trajectory's step 1,000) above Reptile's, at equal effective steps, on
each meta-training seed. Reads the archived metrics from git (they left the tree after commit c94c979).

    python experiments/adapted_loss_counts.py [--commit c94c979]
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("0.0015", "1"), ("0.0005", "0.3"), ("0.005", "3"))      # CTS beta, Reptile beta (equal effective steps)


def adapted(commit: str, seed: int, method: str, beta: str) -> list[float]:
    path = f"docs/evidence/convergence-regime/runs/s{seed}/k1000/{method}/meta_lr={beta}/metrics.jsonl.gz"
    data = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, check=True, cwd=ROOT).stdout
    rows = (json.loads(line) for line in gzip.decompress(data).decode().splitlines())
    return [r["loss_mean"] for r in rows if r.get("step") == 1000 and "loss_mean" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="c94c979")
    args = ap.parse_args()
    for cts, reptile in PAIRS:
        total = higher = 0
        for seed in (0, 1, 2):
            c, r = adapted(args.commit, seed, "cts", cts), adapted(args.commit, seed, "reptile", reptile)
            h = sum(a > b for a, b in zip(c[1:], r[1:]))
            total, higher = total + len(c) - 1, higher + h
            print(f"CTS {cts} vs Reptile {reptile}, seed {seed}: CTS higher in {h} of {len(c) - 1}")
        print(f"CTS {cts} vs Reptile {reptile}: CTS higher in {higher} of {total} trajectories after the first")


if __name__ == "__main__":
    main()
