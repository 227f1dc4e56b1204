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
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steppers import interleaved_times, plain_stepper, trajshift_stepper, write_json


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

    def models():
        out = []
        for c in classes:
            m = copy.deepcopy(template)
            m.fc = nn.Linear(m.fc.in_features, c)
            out.append(m)
        return out

    # Every variant is built once and then advanced in blocks of --block steps, the variants taking turns, for
    # --repeats rounds: slow drifts of a shared machine hit all variants of a round alike.
    def batch_of(t, step):
        return data[t][step % 8]

    variants = {
        "plain": plain_stepper(models(), batch_of),
        "cts": trajshift_stepper(models(), batch_of, "cts", inner_steps=args.inner_steps),
        "reptile": trajshift_stepper(models(), batch_of, "reptile", inner_steps=args.inner_steps),
        "cts (one backward over all tasks)": trajshift_stepper(models(), batch_of, "cts",
                                                               inner_steps=args.inner_steps, backward="summed")}
    for block in variants.values():                            # warm-up
        block(3)
    times = interleaved_times(variants, args.repeats, args.block)
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
    print(json.dumps(result, indent=1))
    write_json(result, args.out)


if __name__ == "__main__":
    main()
