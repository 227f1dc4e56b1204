"""Inner-step cost of trajshift against plain independent training of the same T learners (CPU by default).

plain:    T models and T torch.optim.SGD optimizers; per step, for each task: zero_grad, forward, backward, step
          (the code a user would write);
cts:      trajshift MetaTrainer, method cts (one inner step for all T tasks + meta-update + shift every step);
reptile:  trajshift MetaTrainer, method reptile (meta-update every K steps);
cts (one backward over all tasks): cts with ModuleLearners(backward="summed"), the alternative we measured against.

Each variant is built once, then the variants take turns running blocks of ``--block`` steps for ``--repeats`` rounds
on the same pre-generated batches; the reported ratio is the median over rounds of (variant time / plain time)
within the round, so the drifts of a shared machine largely cancel.

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
import trajshift as ts


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
    ap.add_argument("--block", type=int, default=5, help="inner steps per timed block")
    ap.add_argument("--repeats", type=int, default=40, help="rounds of blocks (variants take turns)")
    ap.add_argument("--inner-steps", type=int, default=100, help="K: reptile meta-updates every K steps")
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

    # Every variant is built once and then advanced in blocks of --block steps, the variants taking turns, for
    # --repeats rounds: slow drifts of a shared machine hit all variants of a round alike.
    def plain_stepper():
        ms = models()
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in ms]
        state = {"step": 0}

        def block(n):
            for _ in range(n):
                step = state["step"]
                for t, (m, o) in enumerate(zip(ms, opts)):
                    x, y = data[t][step % 8]
                    o.zero_grad()
                    nn.functional.cross_entropy(m(x), y).backward()
                    o.step()
                state["step"] += 1
        return block

    def trajshift_stepper(method: str, backward: str = "per-task"):
        learners = ts.ModuleLearners(models(), lambda t, step, split: data[t][step % 8], backward=backward)
        cfg = ts.MetaConfig(method=method, inner_steps=args.inner_steps, trajectories=10 ** 6, meta_lr=0.01,
                            inner_optimizer=opt, progress=False, log_every=10 ** 6)
        steps = ts.MetaTrainer(learners, cfg).steps()

        def block(n):
            for _ in range(n):
                next(steps)
        return block

    variants = {"plain": plain_stepper(), "cts": trajshift_stepper("cts"), "reptile": trajshift_stepper("reptile"),
                "cts (one backward over all tasks)": trajshift_stepper("cts", "summed")}
    for block in variants.values():                            # warm-up
        block(3)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, block in variants.items():
            t0 = time.perf_counter()
            block(args.block)
            times[name].append((time.perf_counter() - t0) / args.block)
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in variants}
    P = sum(p.numel() for n, p in template.named_parameters() if not n.startswith("fc"))
    result = {
        "benchmark": "inner_step", "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads},
        "setup": {"tasks": T, "batch": args.batch, "image_size": args.size, "meta_params": P, "block": args.block,
                  "repeats": args.repeats, "inner_steps_K": args.inner_steps, "model": "SmallCNN (4 x conv32-BN-ReLU-pool, heads of 10..25 classes)"},
        "ms_per_inner_step_median": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio_quartiles": {k: statistics.quantiles([a / b for a, b in zip(times[k], times["plain"])], n=4)
                            for k in variants if k != "plain"},
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
