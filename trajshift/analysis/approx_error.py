"""The approximation error of continual trajectory shifting (Section 3.3, Eq. 5, Figure 3).

    eps = U_k(phi + Delta_1 + ... + Delta_{k-1}) - U_1(... U_1(U_1(phi) + Delta_1) ... + Delta_{k-1})

The second term is what CTS computes: theta after its k-th inner step (before the k-th meta-update). The first is
the exact k-step trajectory from the current phi, re-run with the same batches and the same starting optimizer
state. We report ||eps|| (per task, averaged over tasks), with its mean and 95% confidence interval over draws
(a draw = a fresh initialization and data order), against alpha, beta and k, for ReLU and Softplus networks.
Beside it, the gate for any better shift: ||eps|| relative to the total shift ||Delta_1 + ... + Delta_{k-1}|| and
to the spread between two exact trajectories that differ only in their minibatch order; a ratio to the latter
below 1 means the shift's error is smaller than the noise a different batch order makes.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.atomic import write_json
from ..core.schema import Rule, opt, revalidate
from ..core.stats import mean_ci95
from ..engine.module_learners import ModuleLearners


@dataclass
class ApproxErrorConfig:
    """The approximation-error study's options: the one declaration (the command line derives its flags from it)."""
    datasets: list[str] = opt(factory=lambda: ["quickdraw", "omniglot"], doc="source tasks")
    resolution: int = opt(28, low=4, doc="image side in pixels")
    model: dict = opt(factory=lambda: {"name": "conv4", "width": 32})
    batch_size: int = opt(32, low=1)
    momentum: float = opt(0.9, low=0)
    alpha: float = opt(0.01, low=0, open_low=True, doc="base inner learning rate (the base point of every sweep)")
    beta: float = opt(0.01, low=0, doc="base meta learning rate")
    k: int = opt(50, low=1, doc="base trajectory length")
    alphas: list[float] = opt(factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1], items=Rule(low=0, open_low=True),
                              doc="alpha sweep")
    betas: list[float] = opt(factory=lambda: [0.001, 0.01, 0.1, 1.0], items=Rule(low=0), doc="beta sweep")
    ks: list[int] = opt(factory=lambda: [1, 5, 10, 25, 50, 100], items=Rule(low=1), doc="k sweep")
    activations: list[str] = opt(factory=lambda: ["relu", "softplus"])
    draws: int = opt(10, low=2, doc="draws per point (a confidence interval needs 2)")
    data_root: str | None = opt(None, doc="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, "
                                "../shared/data)")
    cache_dir: str | None = opt(None, doc="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")

    def validate(self, flags: bool = False) -> ApproxErrorConfig:
        return revalidate(self, flags=flags)


def approximation_error(tasks, model_spec: dict, alpha: float, beta: float, k: int, momentum: float,
                        seed: int, details: bool = False) -> float | dict:
    """||eps|| for one draw: mean over tasks of the per-task norm (float64 learners). With ``details``, also the
    two scales that say whether the error matters (a gate for any better shift, issue "Evidence III" item 5):
    ``shift``: ||Delta_1 + ... + Delta_{k-1}||, the total shift the approximation stands for; ``order``: the mean
    over tasks of ||U_k(phi') - U_k^reversed(phi')||, two exact trajectories from the same phi' that differ only in
    the order of their k minibatches (the noise a different batch order makes).

    The CTS side runs the library's own loop (trajshift.training.loop.MetaTrainer with method cts) for k - 1 inner steps,
    each followed by its meta-update and shift, then takes the k-th inner step; the exact side restores the state
    at the start and takes k inner steps from the final phi = phi + Delta_1 + ... + Delta_{k-1}."""
    from ..runs.experiment import build_models
    from ..training.config import MetaConfig
    from ..training.loop import MetaTrainer
    models = build_models(model_spec, [t.num_classes for t in tasks], seed)
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step + 7919 * seed, split))
    cfg = MetaConfig(method="cts", inner_steps=k, trajectories=1, meta_lr=beta, dtype="float64", progress=False,
                     inner_optimizer={"name": "sgd", "lr": alpha, "momentum": momentum})
    trainer = MetaTrainer(learners, cfg)
    pop = trainer.pop
    start, phi0 = pop.snapshot(), pop.phi.detach().clone()
    if k > 1:
        for _, step, _ in trainer.steps():      # Algorithm 2, l.8-13, k - 1 times
            if step == k - 1:
                break
    pop.inner_step(k - 1)                       # the k-th inner step, before its meta-update
    approx = pop.theta.detach().clone()
    shift = float((pop.phi.detach() - phi0).norm()) if details else None
    pop.restore(start)                          # the exact U_k from phi + Delta_1 + ... + Delta_{k-1}
    pop.reset()
    for j in range(k):
        pop.inner_step(j)
    error = float((pop.theta.detach() - approx).norm(dim=1).mean())
    if not details:
        return error
    exact = pop.theta.detach().clone()
    pop.restore(start)                          # the same k minibatches, in the reversed order
    pop.reset()
    for j in reversed(range(k)):
        pop.inner_step(j)
    order = float((pop.theta.detach() - exact).norm(dim=1).mean())
    return {"error": error, "shift": shift, "order": order}


def run_study(out: str | Path, cfg: ApproxErrorConfig, log=print) -> dict:
    from ..data.tasks import build_tasks
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks([{"dataset": d, "resolution": cfg.resolution} for d in cfg.datasets], cfg.batch_size, 0,
                        cfg.data_root, cfg.cache_dir)
    t0 = time.perf_counter()
    sweeps = {"alpha": cfg.alphas, "beta": cfg.betas, "k": cfg.ks}
    results: dict = {"config": asdict(cfg), "sweeps": {}}
    from ..training.progress import bar
    progress = bar(len(cfg.activations) * sum(len(v) for v in sweeps.values()) * cfg.draws, "approx-error", "draw")
    for act in cfg.activations:
        spec = {**cfg.model, "activation": act}
        for name, values in sweeps.items():
            rows = []
            for v in values:
                point = {"alpha": cfg.alpha, "beta": cfg.beta, "k": cfg.k, name: v}
                draws = []
                for seed in range(cfg.draws):
                    draws.append(approximation_error(tasks, spec, point["alpha"], point["beta"], int(point["k"]),
                                                     cfg.momentum, seed, details=True))
                    progress.update(1)
                errs = [d["error"] for d in draws]
                mean, ci = mean_ci95(errs)
                # The gate: the error against the shift it stands for and against batch-order noise (means of the
                # per-draw ratios; a draw with a zero scale, k = 1 or beta = 0, is left out).
                rel_shift = [d["error"] / d["shift"] for d in draws if d["shift"]]
                rel_order = [d["error"] / d["order"] for d in draws if d["order"]]
                row = {name: v, "mean": mean, "ci95": ci, "errors": errs,
                       "shift_norms": [d["shift"] for d in draws], "order_spreads": [d["order"] for d in draws],
                       "error_over_shift": sum(rel_shift) / len(rel_shift) if rel_shift else None,
                       "error_over_order_spread": sum(rel_order) / len(rel_order) if rel_order else None}
                rows.append(row)
                gate = "" if row["error_over_order_spread"] is None else (
                    f"; / ||sum Delta|| {row['error_over_shift']:.3f}, / batch-order spread "
                    f"{row['error_over_order_spread']:.3f}")
                log(f"{act:>8} {name}={v:<6}: ||eps|| = {mean:.3e} +- {ci:.1e}{gate}")
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
