"""Why two runs of the same algorithm diverge: Reptile at beta 1 and the no-shift ablation at beta 1 are the same
algorithm on the same data order (phi <- mean_t theta_K at every trajectory's end), yet the image study's twins
logged different losses from step 2 on. This runs the twins, and reruns, under controlled thread counts, on the
offline digits config, and records where each pair first differs.

    python experiments/twin_runs.py --out docs/evidence/twin-runs.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "offline-digits.yaml"


def run(out: Path, method: str, threads: int, backend: str = "loop", dtype: str = "float32", config: Path = CONFIG,
        extra: tuple = ()) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "trajshift", "meta-train", str(config), "--out", str(out), "--quiet", *extra,
           "--set", f"meta.method={method}", "--set", "meta.meta_lr=1.0", "--set", "meta.trajectories=3",
           "--set", "meta.inner_steps=20", "--set", "snapshot_every=0", "--set", "checkpoint_every=0",
           "--set", f"execution.backend={backend}", "--set", f"meta.dtype={dtype}"]
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in rows if "loss" in r], "init": load_file(out / "init.safetensors")}


def compare(a: dict, b: dict) -> dict:
    # The first logged step at which a task's loss differs, and by how much at that step (the seed of the gap).
    first = next((i + 1 for i, (x, y) in enumerate(zip(a["losses"], b["losses"])) if x != y), None)
    loss_gap = max(abs(x - y) for la, lb in zip(a["losses"], b["losses"]) for x, y in zip(la, lb))
    param_gap = max(float((a["init"][k].double() - b["init"][k].double()).abs().max()) for k in a["init"]
                    if a["init"][k].is_floating_point())
    at_first = (max(abs(x - y) for x, y in zip(a["losses"][first - 1], b["losses"][first - 1])) if first else 0.0)
    return {"first_differing_step": first, "difference_at_first_step": at_first, "max_loss_difference": loss_gap, "max_init_difference": param_gap,
            "bit_identical": first is None and param_gap == 0.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs/evidence/twin-runs.json")
    p.add_argument("--config", type=Path, default=CONFIG, help="another config (e.g. configs/paper-4.3-cpu.yaml with "
                   "--set init_from=runs/ev2/tin-base --set validation=null: a conv4 on images, where intra-op "
                   "threads change the summation order)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = p.parse_args()
    extra = tuple(x for kv in args.set for x in ("--set", kv))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        runs = {name: run(t / name, method, threads, dtype=dtype, config=args.config, extra=extra) for name, method, threads, dtype in (
            ("reptile-1thread", "reptile", 1, "float32"), ("reptile-1thread-again", "reptile", 1, "float32"),
            ("no-shift-1thread", "cts-no-shift", 1, "float32"), ("reptile-2threads", "reptile", 2, "float32"),
            ("no-shift-2threads", "cts-no-shift", 2, "float32"), ("reptile-float64", "reptile", 1, "float64"),
            ("no-shift-float64", "cts-no-shift", 1, "float64"))}
    pairs = {"rerun, same threads": ("reptile-1thread", "reptile-1thread-again"),
             "reptile vs no-shift, same threads (1)": ("reptile-1thread", "no-shift-1thread"),
             "reptile vs no-shift, same threads (2)": ("reptile-2threads", "no-shift-2threads"),
             "reptile, 1 vs 2 threads": ("reptile-1thread", "reptile-2threads"),
             "reptile 1 thread vs no-shift 2 threads": ("reptile-1thread", "no-shift-2threads"),
             "reptile vs no-shift, float64": ("reptile-float64", "no-shift-float64")}
    result = {"config": str(args.config), "overrides": args.set, "setting": "K = 20, M = 3, beta = 1, loop backend",
              "torch": torch.__version__, "pairs": {k: compare(runs[a], runs[b]) for k, (a, b) in pairs.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result["pairs"].items():
        print(f"{k}: first differing logged step {v['first_differing_step']}, max loss difference "
              f"{v['max_loss_difference']:.2e}, max init difference {v['max_init_difference']:.2e}")


if __name__ == "__main__":
    main()
