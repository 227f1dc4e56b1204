"""Inner-step cost of trajshift against plain independent training of the same T learners (CPU by default).

plain:    T models and T torch.optim.SGD optimizers; per step, for each task: zero_grad, forward, backward, step
          (the code a user would write);
cts:      trajshift MetaTrainer, method cts (one inner step for all T tasks + meta-update + shift every step);
reptile:  trajshift MetaTrainer, method reptile (meta-update every K steps).

The variants run interleaved, ``--repeats`` times each, on the same pre-generated batches; the reported ratio is the
median over repeats of (variant time / plain time) measured back to back, so machine noise largely cancels.

    python benchmarks/inner_step.py --out benchmarks/out/inner_step.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trajshift as ts  # noqa: E402


class SmallCNN(nn.Module):
    """Conv4-style: 4 x (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), then a linear head."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        layers, cin = [], 3
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width * 2 * 2, classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/inner_step.json")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40, help="inner steps per timed run")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T = args.tasks
    classes = [10 + 5 * t for t in range(T)]                 # heterogeneous heads
    gen = torch.Generator().manual_seed(0)
    data = [[(torch.randn(args.batch, 3, args.size, args.size, generator=gen),
              torch.randint(0, c, (args.batch,), generator=gen)) for _ in range(8)] for c in classes]
    torch.manual_seed(0)
    template = SmallCNN()
    opt = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}

    def models():
        out = []
        for c in classes:
            m = copy.deepcopy(template)
            m.fc = nn.Linear(m.fc.in_features, c)
            out.append(m)
        return out

    def run_plain() -> float:
        ms = models()
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in ms]
        t0 = time.perf_counter()
        for step in range(args.steps):
            for t, (m, o) in enumerate(zip(ms, opts)):
                x, y = data[t][step % 8]
                o.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
        return time.perf_counter() - t0

    def run_trajshift(method: str) -> float:
        learners = ts.ModuleLearners(models(), lambda t, step, split: data[t][step % 8])
        cfg = ts.MetaConfig(method=method, inner_steps=args.steps, trajectories=1, meta_lr=0.01,
                            inner_optimizer=opt, progress=False, log_every=args.steps)
        trainer = ts.MetaTrainer(learners, cfg)
        t0 = time.perf_counter()
        trainer.run()
        return time.perf_counter() - t0

    variants = {"plain": run_plain, "cts": lambda: run_trajshift("cts"), "reptile": lambda: run_trajshift("reptile")}
    for fn in variants.values():                               # warm-up
        fn()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(fn() / args.steps)
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in variants}
    P = sum(p.numel() for n, p in template.named_parameters() if not n.startswith("fc"))
    result = {
        "benchmark": "inner_step", "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads},
        "setup": {"tasks": T, "batch": args.batch, "image_size": args.size, "meta_params": P, "steps": args.steps,
                  "repeats": args.repeats, "model": "SmallCNN (4 x conv32-BN-ReLU-pool, heads of 10..25 classes)"},
        "ms_per_inner_step_median": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio_to_plain_median": ratios,
        "target": "cts <= 1.05 x plain",
        "target_met": ratios["cts"] <= 1.05,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
