"""Figures of the synthetic study (PNG, matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

COLORS = {"cts": "tab:blue", "cts-accurate": "tab:green", "reptile": "tab:red", "cts-no-shift": "tab:orange",
          "cts-random-shift": "tab:purple", "fomaml": "tab:brown", "fomaml++": "tab:pink", "leap": "tab:olive",
          "imaml": "tab:cyan"}


def _color(m: str) -> str:
    return COLORS.get(m, "k")


def _background(ax, points: torch.Tensor, qmap: torch.Tensor) -> None:
    n = math.isqrt(points.shape[0])           # the points form an n x n grid
    x = points[:, 0].reshape(n, n).numpy()
    y = points[:, 1].reshape(n, n).numpy()
    z = np.log10(np.clip(qmap.reshape(n, n).numpy(), 1e-6, None))
    cs = ax.contourf(x, y, z, levels=30, cmap="Greys_r")
    ax.set_xlim(x.min(), x.max())
    ax.set_ylim(y.min(), y.max())
    ax.set_aspect("equal")
    return cs


def trajectories(path, points, qmap, cfg, traces: dict, max_panels: int = 9) -> list:
    """Fig. 5c-d: meta-learning trajectories of phi over the map of initialization quality: every start up to
    ``max_panels`` (the default 3 x 3 grid is shown whole); beyond that, evenly spaced starts, and the title says how
    many (every start's numbers are in results.json)."""
    all_starts = sorted({s for s, _ in traces})
    starts = all_starts
    if len(starts) > max_panels:
        starts = [starts[round(i * (len(starts) - 1) / (max_panels - 1))] for i in range(max_panels)]
    cols = min(3, len(starts))
    rows = math.ceil(len(starts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    for ax, start in zip(axes.flat, starts):
        cs = _background(ax, points, qmap)
        for method in cfg.methods:
            phis = traces.get((start, method))
            if phis is None:
                continue
            p = phis.numpy()
            ax.plot(p[:, 0], p[:, 1], "-", color=_color(method), lw=1.4, label=method)
            ax.plot(p[-1, 0], p[-1, 1], "o", color=_color(method), ms=5, mec="w")
        ax.plot(*start, "k*", ms=10, mec="w")
        ax.set_title(f"start ({start[0]:g}, {start[1]:g})", fontsize=9)
        ax.set_xlabel("phi[0]", fontsize=8)
        ax.set_ylabel("phi[1]", fontsize=8)
    for ax in list(axes.flat)[len(starts):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=8)   # one legend for all panels
    fig.colorbar(cs, ax=axes, shrink=0.9, label=f"log10 task-average loss after K={cfg.inner_steps} steps")
    shown = "" if len(starts) == len(all_starts) else (f"; {len(starts)} of {len(all_starts)} starts shown, "
                                                       f"all in results.json")
    fig.suptitle(f"Meta-learning trajectories over initialization quality (task seed {cfg.task_seeds[0]}, "
                 f"{cfg.trajectories * cfg.inner_steps} meta-updates each; star: start, dot: end{shown})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return starts


def fixed_points(path, points, qmap, cfg, fixed: list[dict]) -> list[str]:
    """Fig. 5a-b: Reptile's meta-learning trajectories with inner length fixed to k, from a grid of phi; red dots
    are where they end (meta-level fixed points)."""
    fig, axes = plt.subplots(1, len(fixed), figsize=(4.6 * len(fixed) + 1, 4.3), squeeze=False,
                             layout="constrained")
    cs = None
    for ax, f in zip(axes.flat, fixed):
        cs = _background(ax, points, qmap)
        ax.set_xlabel("phi[0]")
        ax.set_ylabel("phi[1]")
        path_ = f["path"].numpy()          # [steps, G, 2]
        n = cfg.fixed_point_grid
        stride = max(1, n // 13)
        idx = [i * n + j for i in range(0, n, stride) for j in range(0, n, stride)]
        for g in idx:
            ax.plot(path_[:, g, 0], path_[:, g, 1], "-", color="tab:blue", lw=0.5, alpha=0.6)
        d = f["distinct"].numpy()
        ax.plot(d[:, 0], d[:, 1], "o", color="red", ms=5, mec="w", mew=0.5)
        ax.set_title(f"Reptile, k = {f['k']}: {len(d)} fixed points "
                     f"({100 * f['converged_fraction']:.0f}% of starts converged)", fontsize=9)
    if cs is not None:
        fig.colorbar(cs, ax=axes, shrink=0.9, label=f"log10 task-average loss after K={cfg.inner_steps} steps")
    fig.savefig(path, dpi=110)
    labels = [a.get_xlabel() or a.get_ylabel() for a in fig.axes]      # the panels' and the colour bar's
    plt.close(fig)
    return labels


def horizon(path, by_seed: dict) -> None:
    """Fig. 4c: task-average loss after K steps from phi*(k), the best initialization for horizon k (per seed)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.7))
    for seed, h in by_seed.items():
        ax.plot([r["k"] for r in h["rows"]], [r["loss_after_K"] for r in h["rows"]], "o-", lw=0.8, ms=3, alpha=0.5,
                label=f"task seed {seed}")
    if len(by_seed) > 1:          # the mean over task seeds: one seed's curve is not monotone in k (each phi*(k)
        ks = [r["k"] for r in next(iter(by_seed.values()))["rows"]]   # is a different local fixed point)
        mean = np.exp(np.mean([[math.log(r["loss_after_K"]) for r in h["rows"]] for h in by_seed.values()], 0))
        ax.plot(ks, mean, "k-", lw=2, label=f"geometric mean of {len(by_seed)} seeds")
    K = next(iter(by_seed.values()))["K"]
    note = "" if len(by_seed) > 1 else "\n(one task seed; --task-seeds 0,1,2 averages several)"
    ax.set_title(f"Fig. 4c: the best initialization for horizon k, tested at K = {K}{note}", fontsize=9)
    ax.legend(fontsize=7)
    ax.set_xlabel("k used to obtain phi* (inner steps of meta-training)")
    ax.set_ylabel(f"task-average loss after {K} steps from phi*")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost(path, runs: list[dict], curves: dict, cfg) -> None:
    """Fig. 4d: cumulative inner steps per task against meta-updates, per method (first run of each)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, items in curves.items():
        steps = items[0][0].numpy()
        ax.plot(np.arange(len(steps)), np.maximum(steps, 1), color=_color(method), label=method)
    ax.set_xlabel("meta-updates")
    ax.set_ylabel("cumulative inner steps per task")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    methods = list(curves)
    walls = [np.mean([r["wall_time"] for r in runs if r["method"] == m]) for m in methods]
    bx.bar(methods, walls, color=[_color(m) for m in methods])
    bx.set_ylabel("wall time per run (s)")
    bx.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def meta_test_curves(path, curves: dict, cfg) -> None:
    """Median meta-test loss of phi against cumulative inner steps spent on meta-training (all runs)."""
    fig, ax = plt.subplots(figsize=(5, 4.6))
    for method, items in curves.items():
        top = max(int(s[-1]) for s, _ in items)
        grid = np.unique(np.geomspace(1, max(top, 2), 60).astype(int))
        vals = []
        for steps, q in items:
            idx = np.searchsorted(steps.numpy(), grid, side="right") - 1
            vals.append(q.numpy()[np.clip(idx, 0, None)])
        ax.plot(grid, np.median(np.stack(vals), 0), color=_color(method), label=method)
    ax.axvline(cfg.trajectories * cfg.inner_steps, color="k", ls=":", lw=0.8,
               label=f"common budget: M x K = {cfg.trajectories * cfg.inner_steps} inner steps (all of CTS's run)")
    ax.set_title("Meta-test loss of phi against the inner steps spent", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cumulative inner steps per task")
    ax.set_ylabel("median meta-test loss of phi")
    # Below the axes, never over the curves (whose ends at the budget line are what the figure is read for).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
