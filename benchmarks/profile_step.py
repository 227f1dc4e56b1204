"""Where the time of one inner step goes: torch.profiler over plain training steps of one model, self CPU time
grouped by operator family (convolution, BatchNorm, elementwise/activation, pooling, linear, optimizer, other).
Used for the "what limits it" analysis in docs/PERFORMANCE.md.

    python benchmarks/profile_step.py --out benchmarks/results/profile_cpu.json [--models conv4,resnet20]
        [--steps 5] [--batch 32] [--variant plain|cts-loop|cts-batched]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steppers import write_json
from throughput import build_variant, setup

FAMILIES = [  # first match wins; matched against the lower-cased aten operator name
    ("convolution", ("conv", "mkldnn_convolution")),
    ("batchnorm", ("batch_norm",)),
    ("pooling", ("pool",)),
    ("linear/matmul", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("optimizer/update", ("_foreach", "add_", "mul_", "lerp", "sgd")),
    ("activation/elementwise", ("relu", "threshold", "add", "mul", "sum", "mean", "div", "sub")),
    ("copies/layout", ("copy", "clone", "cat", "stack", "contiguous", "to", "empty", "zero", "fill", "index",
                       "view", "reshape", "permute", "transpose", "expand")),
]


def family(name: str) -> str:
    n = name.lower()
    for fam, keys in FAMILIES:
        if any(k in n for k in keys):
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/profile.json")
    ap.add_argument("--models", default="conv4,resnet20")
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variant", default="plain")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": "python " + " ".join(sys.argv), "threads": args.threads, "variant": args.variant,
              "batch": args.batch, "tasks": args.tasks, "models": {}}
    for model in args.models.split(","):
        data, models = setup(model, args.tasks, args.batch, "cpu")
        block = build_variant(args.variant, data, models, "cpu")
        block(3)                                              # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            block(args.steps)
        total = 0.0
        fams: dict[str, float] = defaultdict(float)
        ops: dict[str, float] = defaultdict(float)
        for ev in prof.key_averages():
            if not ev.key.startswith("aten::"):
                continue
            t = ev.self_cpu_time_total / 1e3 / args.steps         # ms per step
            fams[family(ev.key)] += t
            ops[ev.key] += t
            total += t
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
        result["models"][model] = {
            "aten_self_ms_per_step": total,
            "share_by_family": {k: v / total for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
            "top_ops_ms_per_step": dict(top)}
        print(model, f"{total:.1f} ms of aten self time per step;",
              ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["models"][model]["share_by_family"].items()))
    write_json(result, args.out)


if __name__ == "__main__":
    main()
