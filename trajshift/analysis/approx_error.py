"""The approximation error of continual trajectory shifting (Section 3.3, Eq. 5, Figure 3).

    eps = U_k(phi + Delta_1 + ... + Delta_{k-1}) - U_1(... U_1(U_1(phi) + Delta_1) ... + Delta_{k-1})

The second term is what CTS computes: theta after its k-th inner step (before the k-th meta-update). The first is
the exact k-step trajectory from the current phi, re-run with the same batches and the same starting optimizer
state. We report ||eps|| (per task, averaged over tasks), with its mean and 95% confidence interval over draws
(a draw = a fresh initialization and data order), against alpha, beta and k, for ReLU and Softplus networks.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_json
from ..learners import ModuleLearners
from ..methods.rules import meta_delta, reptile_metagrad
from ..population import Population
from ..stats import mean_ci95


@dataclass
class ApproxErrorConfig:
    datasets: list[str] = field(default_factory=lambda: ["quickdraw", "omniglot"])
    resolution: int = 28
    model: dict = field(default_factory=lambda: {"name": "conv4", "width": 32})
    batch_size: int = 32
    momentum: float = 0.9
    alpha: float = 0.01          # the base point of every sweep
    beta: float = 0.01
    k: int = 50
    alphas: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1])
    betas: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 25, 50, 100])
    activations: list[str] = field(default_factory=lambda: ["relu", "softplus"])
    draws: int = 10
    data_root: str | None = None
    cache_dir: str | None = None


def approximation_error(tasks, model_spec: dict, alpha: float, beta: float, k: int, momentum: float,
                        seed: int) -> float:
    """||eps|| for one draw: mean over tasks of the per-task norm (float64 learners)."""
    from ..experiment import build_models
    models = build_models(model_spec, [t.num_classes for t in tasks], seed)
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step + 7919 * seed, split))
    pop = Population(learners, {"name": "sgd", "lr": alpha, "momentum": momentum}, dtype=torch.float64)
    start = pop.snapshot()
    for j in range(1, k + 1):                       # continual trajectory shifting (Algorithm 2, l.8-13)
        pop.inner_step(j - 1)
        if j < k:
            with torch.no_grad():
                delta = meta_delta(reptile_metagrad(pop.phi, pop.theta.mean(0)), beta)
                pop.phi.add_(delta)
                pop.theta.add_(delta)
    approx = pop.theta.detach().clone()
    pop.restore(start)                              # the exact U_k from phi + Delta_1 + ... + Delta_{k-1}
    with torch.no_grad():
        pop.theta.copy_(pop.phi.expand_as(pop.theta))
    for j in range(1, k + 1):
        pop.inner_step(j - 1)
    return float((pop.theta.detach() - approx).norm(dim=1).mean())


def run_study(out: str | Path, cfg: ApproxErrorConfig, log=print) -> dict:
    from ..data.tasks import build_tasks
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks([{"dataset": d, "resolution": cfg.resolution} for d in cfg.datasets], cfg.batch_size, 0,
                        cfg.data_root, cfg.cache_dir)
    t0 = time.perf_counter()
    sweeps = {"alpha": cfg.alphas, "beta": cfg.betas, "k": cfg.ks}
    results: dict = {"config": asdict(cfg), "sweeps": {}}
    from ..progress import bar
    progress = bar(len(cfg.activations) * sum(len(v) for v in sweeps.values()) * cfg.draws, "approx-error", "draw")
    for act in cfg.activations:
        spec = {**cfg.model, "activation": act}
        for name, values in sweeps.items():
            rows = []
            for v in values:
                point = {"alpha": cfg.alpha, "beta": cfg.beta, "k": cfg.k, name: v}
                errs = []
                for seed in range(cfg.draws):
                    errs.append(approximation_error(tasks, spec, point["alpha"], point["beta"], int(point["k"]),
                                                    cfg.momentum, seed))
                    progress.update(1)
                mean, ci = mean_ci95(errs)
                rows.append({name: v, "mean": mean, "ci95": ci, "errors": errs})
                log(f"{act:>8} {name}={v:<6}: ||eps|| = {mean:.3e} +- {ci:.1e}")
            results["sweeps"].setdefault(act, {})[name] = rows
    progress.close()
    results["wall_time"] = time.perf_counter() - t0
    plot(out / "approx_error.png", results)
    write_json(out / "results.json", results)
    return results


def plot(path: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = results["config"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, name in zip(axes, ("alpha", "beta", "k")):
        for act, sweeps in results["sweeps"].items():
            rows = sweeps[name]
            x = [r[name] for r in rows]
            m = [r["mean"] for r in rows]
            ci = [0 if r["ci95"] is None or math.isnan(r["ci95"]) else r["ci95"] for r in rows]
            # An error of exactly 0 (k = 1: no shift yet) has no place on a log axis: drawn on the axis floor.
            floor = min([v for v in m if v > 0] or [1e-12]) / 10
            shown = [v if v > 0 else floor for v in m]
            line = ax.errorbar(x, shown, yerr=[[min(c, v - floor * 0.999) if v > 0 else 0 for c, v in zip(ci, m)],
                                               ci], marker="o", capsize=3, label=act)
            zeros = [xi for xi, v in zip(x, m) if v == 0]
            if zeros:
                ax.plot(zeros, [floor] * len(zeros), "v", color=line[0].get_color(), markersize=8,
                        label=f"{act}: exactly 0")
        ax.set_xscale("log")
        ax.set_yscale("log")
        fixed = ", ".join(f"{k}={cfg[k]}" for k in ("alpha", "beta", "k") if k != name)
        ax.set_xlabel(name)
        ax.set_title(f"||eps|| vs {name} ({fixed})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("approximation error ||eps||")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
