"""Inner-step throughput and peak memory: trajshift against plain independent learners and against the reference
code's update pattern, for Conv4 and ResNet20 with T tasks.

Variants (the same data, batch, inner optimizer: SGD momentum 0.9, weight decay 5e-4):
  plain      T models + T torch.optim.SGD; per step, per task: zero_grad, forward, backward, step
  cts        trajshift MetaTrainer, method cts (meta-update and shift after every step), loop backend
  reptile    trajshift MetaTrainer, method reptile (meta-update every K = 100 steps)
  reference  the reference code's pattern, written here: plain steps, then per step a clone of phi, a concatenation
             of every task's meta-learned tensors, the mean, and a Python loop over the parameter tensors adding
             the shift (REFERENCE-FACTS.md: "loops in Python over ~57 parameter tensors, clones phi, concatenates")
Timing: variants built once, then run in turns, blocks of --block steps, --repeats rounds; ratio to plain = median
over rounds. Peak memory: each variant again in a fresh child process, peak RSS (ru_maxrss) minus the peak of a
child that builds the same models and data but takes no step.

    python benchmarks/throughput.py --out benchmarks/results/throughput_cpu.json [--models conv4,resnet20]
        [--tasks 1,4,8] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trajshift as ts  # noqa: E402
from trajshift.models import build_model  # noqa: E402

SIZES = {"conv4": 28, "resnet20": 32}


def setup(model_name: str, T: int, batch: int, device: str):
    torch.manual_seed(0)
    classes = [10 + 5 * t for t in range(T)]
    gen = torch.Generator().manual_seed(0)
    size = SIZES[model_name]
    data = [[(torch.randn(batch, 3, size, size, generator=gen).to(device),
              torch.randint(0, c, (batch,), generator=gen).to(device)) for _ in range(4)] for c in classes]
    template = build_model({"name": model_name}, classes[0])

    def models():
        out = []
        for c in classes:
            m = copy.deepcopy(template)
            m.fc = nn.Linear(m.fc.in_features, c)
            out.append(m.to(device))
        return out
    return data, models


def steppers(model_name: str, T: int, batch: int, device: str, variants: list[str]):
    data, models = setup(model_name, T, batch, device)
    opt_kw = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)

    def plain(reference: bool):
        ms = models()
        opts = [torch.optim.SGD(m.parameters(), **opt_kw) for m in ms]
        meta = [[p for n, p in m.named_parameters() if not n.startswith("fc.")] for m in ms]
        phi = torch.cat([p.detach().reshape(-1) for p in meta[0]])
        state = {"step": 0, "phi": phi}

        def block(n):
            for _ in range(n):
                s = state["step"]
                for t, (m, o) in enumerate(zip(ms, opts)):
                    x, y = data[t][s % 4]
                    o.zero_grad()
                    nn.functional.cross_entropy(m(x), y).backward()
                    o.step()
                if reference:          # the reference code's per-step meta-update and shift
                    with torch.no_grad():
                        old = state["phi"].clone()
                        flat = torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in meta])
                        new = old - 0.01 * (old - flat.mean(0))
                        delta = new - old
                        for ps in meta:
                            off = 0
                            for p in ps:
                                p.add_(delta[off:off + p.numel()].view_as(p))
                                off += p.numel()
                        state["phi"] = new
                state["step"] += 1
        return block

    def ours(method: str):
        learners = ts.ModuleLearners(models(), lambda t, step, split: data[t][step % 4])
        cfg = ts.MetaConfig(method=method, inner_steps=100, trajectories=10 ** 6, meta_lr=0.01,
                            inner_optimizer={"name": "sgd", **opt_kw}, progress=False, log_every=10 ** 6)
        it = ts.MetaTrainer(learners, cfg).steps()

        def block(n):
            for _ in range(n):
                next(it)
        return block

    table = {"plain": lambda: plain(False), "reference": lambda: plain(True), "cts": lambda: ours("cts"),
             "reptile": lambda: ours("reptile"), "idle": lambda: (lambda n: None)}
    return {v: table[v]() for v in variants}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args) -> None:
    """Run one variant for --steps steps in this fresh process and print its peak RSS (KiB)."""
    block = steppers(args.model, args.T, args.batch, args.device, [args.variant])[args.variant]
    block(args.steps)
    out = {"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if args.device.startswith("cuda"):
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/throughput.json")
    ap.add_argument("--models", default="conv4,resnet20")
    ap.add_argument("--tasks", default="1,4,8")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--memory-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    variants = ["plain", "cts", "reptile", "reference"]
    rows = []
    for model in args.models.split(","):
        for T in [int(t) for t in args.tasks.split(",")]:
            runs = steppers(model, T, args.batch, args.device, variants)
            for b in runs.values():
                b(2)                                    # warm-up
            times = {v: [] for v in variants}
            for _ in range(args.repeats):
                for v, b in runs.items():
                    sync(args.device)
                    t0 = time.perf_counter()
                    b(args.block)
                    sync(args.device)
                    times[v].append((time.perf_counter() - t0) / args.block)
            del runs
            mem = {}
            for v in variants + ["idle"]:
                proc = subprocess.run([sys.executable, __file__, "--child", "--variant", v, "--model", model,
                                       "--T", str(T), "--batch", str(args.batch), "--device", args.device,
                                       "--steps", str(args.memory_steps), "--threads", str(args.threads)],
                                      capture_output=True, text=True, check=True)
                mem[v] = json.loads(proc.stdout.strip().splitlines()[-1])
            P = sum(p.numel() for n, p in build_model({"name": model}, 10).named_parameters()
                    if not n.startswith("fc."))
            row = {"model": model, "tasks": T, "meta_params": P,
                   "ms_per_step": {v: 1e3 * statistics.median(times[v]) for v in variants},
                   "ratio_to_plain": {v: statistics.median(a / b for a, b in zip(times[v], times["plain"]))
                                      for v in variants},
                   "peak_rss_mib_above_idle": {v: (mem[v]["peak_rss_kib"] - mem["idle"]["peak_rss_kib"]) / 1024
                                               for v in variants},
                   "phi_copy_mib": 4 * P / 2 ** 20}
            rows.append(row)
            print(json.dumps(row))
    result = {"benchmark": "throughput", "command": "python " + " ".join(sys.argv),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": args.threads, "device": args.device,
                          "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
              "batch": args.batch, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
