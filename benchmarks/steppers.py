"""What the benchmarks share: the variants as "run n inner steps" functions, interleaved timing, JSON output.

A stepper is ``block(n)``: it advances its variant by n inner steps of all its tasks. ``batch_of(t, step)`` gives
task t's batch at a step; every variant of one benchmark reads the same batches.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import trajshift as ts

Block = Callable[[int], None]
BatchOf = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
SGD_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def plain_stepper(models: list[nn.Module], batch_of: BatchOf, reference: bool = False,
                  meta_lr: float = 0.01) -> Block:
    """T models and T torch.optim.SGD: per step, per task, zero_grad, forward, backward, step. With
    ``reference``, then the reference code's per-step meta-update and shift (REFERENCE-FACTS.md): a clone of phi,
    a concatenation of every task's meta-learned tensors, the mean, and a Python loop over the parameter tensors."""
    opts = [torch.optim.SGD(m.parameters(), **SGD_KW) for m in models]
    meta = [[p for n, p in m.named_parameters() if not n.startswith("fc.")] for m in models]
    state = {"step": 0, "phi": torch.cat([p.detach().reshape(-1) for p in meta[0]])}

    def block(n: int) -> None:
        for _ in range(n):
            s = state["step"]
            for t, (m, o) in enumerate(zip(models, opts)):
                x, y = batch_of(t, s)
                o.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
            if reference:
                with torch.no_grad():
                    old = state["phi"].clone()
                    flat = torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in meta])
                    new = old - meta_lr * (old - flat.mean(0))
                    delta = new - old
                    for ps in meta:
                        off = 0
                        for p in ps:
                            p.add_(delta[off:off + p.numel()].view_as(p))
                            off += p.numel()
                    state["phi"] = new
            state["step"] += 1
    return block


def trajshift_stepper(models: list[nn.Module], batch_of: BatchOf, method: str, inner_steps: int = 100,
                      comm=None, task_ids=None, **learner_options) -> Block:
    """trajshift's MetaTrainer with ``method`` (meta_lr 0.01, the same SGD), advanced step by step."""
    learners = ts.ModuleLearners(models, lambda t, step, split: batch_of(t, step), **learner_options)
    cfg = ts.MetaConfig(method=method, inner_steps=inner_steps, trajectories=10 ** 6, meta_lr=0.01,
                        inner_optimizer={"name": "sgd", **SGD_KW}, progress=False, log_every=10 ** 6)
    steps = ts.MetaTrainer(learners, cfg, comm=comm, task_ids=task_ids,
                           graphs=learner_options.get("graphs", False)).steps()

    def block(n: int) -> None:
        for _ in range(n):
            next(steps)
    block.learners = learners           # for the benchmarks that report what backend "auto" chose
    return block


def interleaved_times(runs: dict[str, Block], repeats: int, block: int,
                      sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per step of each variant: the variants take turns running ``block`` steps, ``repeats`` rounds, so
    slow drifts of a shared machine hit all variants of a round alike (compare within rounds)."""
    times: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(repeats):
        for v, run in runs.items():
            sync()
            t0 = time.perf_counter()
            run(block)
            sync()
            times[v].append((time.perf_counter() - t0) / block)
    return times


def write_json(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
