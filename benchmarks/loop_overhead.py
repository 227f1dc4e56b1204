"""The engine's own cost per inner step, where the model costs nothing: CTS (a meta-update and a shift every step)
and Reptile on a 2-parameter quadratic for T = 4 tasks, float64. What the model would cost on top (a forward and a
backward) is what benchmarks/inner_step.py measures against plain training; this isolates the loop, the method
contract and the population, to compare two versions of them. Run it under each checkout, alternating:

    for i in 1 2 3; do PYTHONPATH=/path/to/old python benchmarks/loop_overhead.py --out old-$i.json
                       python benchmarks/loop_overhead.py --out new-$i.json; done
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import trajshift as ts


def quad_learners(T: int = 4) -> ts.FunctionLearners:
    a = torch.linspace(1.0, 2.0, T, dtype=torch.float64).unsqueeze(1)

    def loss(theta, step, split):
        return 0.5 * (a * theta.pow(2)).sum(1)
    return ts.FunctionLearners(loss, torch.tensor([1.0, -1.0], dtype=torch.float64), T)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/out/loop_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"benchmark": "loop_overhead", "trajshift": ts.__file__, "torch": torch.__version__,
              "platform": platform.platform(), "steps": args.steps, "us_per_inner_step_median": {}}
    for method in ("cts", "reptile"):
        times = []
        for _ in range(args.repeats):
            cfg = ts.MetaConfig(method=method, inner_steps=100, trajectories=args.steps // 100, meta_lr=0.1,
                                dtype="float64", inner_optimizer={"name": "sgd", "lr": 0.1}, progress=False)
            tr = ts.MetaTrainer(quad_learners(), cfg)
            t0 = time.perf_counter()
            tr.run()
            times.append(1e6 * (time.perf_counter() - t0) / args.steps)
        result["us_per_inner_step_median"][method] = statistics.median(times)
    print(json.dumps(result, indent=1))
    from pathlib import Path
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
