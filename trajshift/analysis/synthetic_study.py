"""The synthetic study of Section 4.1 (Figures 4c-d and 5a-d), end to end.

For every task seed and every starting point phi_0 of an N x N grid over [-5, 15]^2, each method meta-learns phi
over the 8 Himmelblau-template tasks. Every method is given as many meta-updates as CTS makes (M * K), so the
methods are compared
  * at an equal number of meta-updates (each method's final phi), and
  * at equal cumulative inner steps per task (each method's phi after at most M * K inner steps, CTS's budget).
The quality of an initialization ("meta-test loss") is the task-average loss after K inner steps from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.errors import ConfigError, DivergenceError
from ..core.schema import Rule, opt, revalidate
from ..core.stats import mean_ci95
from ..engine.learners import FunctionLearners
from ..methods import METHODS
from ..tasks.synthetic import TEMPLATES, HimmelblauTasks, adapt, meta_test_loss
from ..training.config import MetaConfig
from ..training.loop import MetaTrainer

BOX = (-5.0, 15.0)


def _non_empty(value, path):
    if not value:
        raise ConfigError(f"{path}: give at least one value")
    return value


def _points(value, path):
    if not value or any(len(p) != 2 for p in value):
        raise ConfigError(f"{path}: expected points x,y; got {value!r}")
    return value


@dataclass
class SyntheticStudyConfig:
    """The synthetic study's options: the one declaration (the command line derives its flags from it)."""
    methods: list[str] = opt(factory=lambda: ["cts", "cts-accurate", "reptile"], check=_non_empty,
                             doc="comma-separated method names (see `trajshift list`)")
    grid: int = opt(3, low=1, doc="N: starting points on an N x N grid over [-5, 15]^2")
    starts: list[list] | None = opt(None, check=_points, doc="explicit starting points [[x, y], ...]; replace grid")
    task_seeds: list[int] = opt(factory=lambda: [0], check=_non_empty, doc="seeds of the tasks' random rotations")
    num_tasks: int = opt(8, low=1)
    template: str = opt("scaled", choices=tuple(TEMPLATES), doc="the task template: scaled (the reference code's) "
                        "or paper")
    inner_steps: int = opt(100, low=1, doc="K, inner steps per trajectory")
    trajectories: int = opt(3, low=1, doc="M, trajectories for CTS; every method gets M*K meta-updates")
    alpha: float = opt(0.05, low=0, doc="inner learning rate")
    beta: float = opt(0.1, low=0, doc="meta learning rate")
    momentum: float = opt(0.9, low=0, doc="inner SGD momentum")
    reset_optimizer_state: bool = opt(True, doc="U_k(phi) starts from a fresh optimizer, as in the paper's notation")
    map_resolution: int = opt(100, low=1, doc="quality map: R x R grid (Fig. 5c-d background)")
    fixed_point_ks: list[int] = opt(factory=lambda: [10, 100], items=Rule(low=1),
                                    doc="Reptile inner lengths for Fig. 5a-b")
    fixed_point_grid: int = opt(41, low=1, doc="starting grid for Fig. 5a-b")
    fixed_point_iters: int = opt(1000, low=1, doc="max Reptile iterations for Fig. 5a-b")
    horizon_ks: list[int] = opt(factory=lambda: [1, 5, 10, 25, 50, 75, 100], items=Rule(low=1),
                                doc="meta-training horizons for Fig. 4c")
    optimizer: str = opt("sgd", doc="inner optimizer name; momentum applies to sgd only")

    def inner_optimizer(self) -> dict:
        spec = {"name": self.optimizer, "lr": self.alpha}
        if self.optimizer.lower() == "sgd":
            spec["momentum"] = self.momentum
        return spec

    def validate_fields(self, where):
        """Each method's full MetaConfig is checked too, before any work."""
        for m in self.methods:
            MetaConfig(method=m, inner_steps=self.inner_steps, trajectories=self.trajectories, meta_lr=self.beta,
                       inner_optimizer=self.inner_optimizer()).validate()

    def validate(self) -> SyntheticStudyConfig:
        return revalidate(self)


def grid_points(n: int, lo: float = BOX[0], hi: float = BOX[1], dtype=torch.float64) -> torch.Tensor:
    """n x n points over [lo, hi]^2, x varying fastest: [n*n, 2]."""
    axis = torch.linspace(lo, hi, n, dtype=dtype)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run_method(tasks: HimmelblauTasks, cfg: SyntheticStudyConfig, method: str, start: torch.Tensor) -> dict:
    """Meta-train one method from one start; returns its phi history (per meta-update) and totals."""
    target_updates = cfg.trajectories * cfg.inner_steps
    per_traj = METHODS.get(method).updates_per_trajectory(cfg.inner_steps)
    meta = MetaConfig(method=method, inner_steps=cfg.inner_steps, trajectories=math.ceil(target_updates / per_traj),
                      meta_lr=cfg.beta, inner_optimizer=cfg.inner_optimizer(), dtype="float64",
                      reset_optimizer_state=cfg.reset_optimizer_state, progress=False)
    learners = FunctionLearners(tasks.learner_loss, start.clone(), tasks.num_tasks, name="xy")
    trainer = MetaTrainer(learners, meta, record_phi=True)
    t0 = time.perf_counter()
    diverged = None
    try:
        trainer.run()
    except DivergenceError as err:      # a finding, not a crash: keep the phi history up to the divergence
        diverged = str(err)
    history = [h for h in trainer.history if torch.isfinite(h["phi"]).all()]
    steps = torch.tensor([0] + [h["inner_steps"] for h in history])
    phis = torch.stack([start] + [h["phi"] for h in history])
    return {"phis": phis, "steps": steps, "wall_time": time.perf_counter() - t0, "inner_steps": trainer.inner_steps,
            "meta_updates": trainer.meta_updates, "diverged": diverged}


def cluster_points(points: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy clustering: each point joins the first centre within ``radius``, else starts a new one.
    Returns the centres [C, 2] and how many points each holds [C]."""
    centres: list[torch.Tensor] = []
    counts: list[int] = []
    for p in points:
        for i, c in enumerate(centres):
            if float((p - c).norm()) <= radius:
                counts[i] += 1
                break
        else:
            centres.append(p.clone())
            counts.append(1)
    if not centres:
        return points.new_zeros(0, 2), torch.zeros(0, dtype=torch.long)
    return torch.stack(centres), torch.tensor(counts)


def reptile_fixed_points(tasks: HimmelblauTasks, cfg: SyntheticStudyConfig, k: int) -> dict:
    """Fig. 5a-b: iterate Reptile with inner length k, phi <- phi - beta (phi - mean_t U_k^(t)(phi)), from every
    point of a grid (vectorised over the grid) until no point moves more than 1e-6 or ``fixed_point_iters``
    iterations. Points that stopped moving are meta-level fixed points; they are clustered within 0.25."""
    phi = grid_points(cfg.fixed_point_grid)
    path = [phi.clone()]
    moved = torch.full((phi.shape[0],), math.inf, dtype=phi.dtype)
    iters = 0
    for iters in range(1, cfg.fixed_point_iters + 1):
        theta = adapt(tasks, phi, k, cfg.inner_optimizer())
        new = phi - cfg.beta * (phi - theta.mean(1))
        ok = torch.isfinite(new).all(1)
        moved = torch.where(ok, (new - phi).abs().amax(1), torch.full_like(moved, math.inf))
        phi = torch.where(ok.unsqueeze(1), new, phi)
        if iters % 10 == 0 or iters < 10:
            path.append(phi.clone())
        if not bool((moved > 1e-6).any()):
            break
    path.append(phi.clone())
    converged = moved <= 1e-6
    centres, counts = cluster_points(phi[converged], radius=0.25)
    quality = meta_test_loss(tasks, centres, cfg.inner_steps, cfg.inner_optimizer())
    return {"k": k, "iterations": iters, "path": torch.stack(path), "ends": phi,
            "converged_fraction": float(converged.double().mean()), "distinct": centres, "basin_sizes": counts,
            "distinct_quality": quality}


def horizon_study(tasks: HimmelblauTasks, cfg: SyntheticStudyConfig, points: torch.Tensor) -> dict:
    """Fig. 4c: phi*(k) = argmin over the map of the task-average loss after k steps; its loss after K steps."""
    opt = cfg.inner_optimizer()
    rows = []
    for k in cfg.horizon_ks:
        q_k = meta_test_loss(tasks, points, k, opt)
        best = int(torch.argmin(q_k))
        phi_star = points[best:best + 1]
        rows.append({"k": k, "phi_star": phi_star[0].tolist(), "loss_after_k": float(q_k[best]),
                     "loss_after_K": float(meta_test_loss(tasks, phi_star, cfg.inner_steps, opt)[0])})
    return {"K": cfg.inner_steps, "rows": rows}


def run_study(out: str | Path, cfg: SyntheticStudyConfig, log=print) -> dict:
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opt = cfg.inner_optimizer()
    budget = cfg.trajectories * cfg.inner_steps
    starts = grid_points(cfg.grid) if not cfg.starts else torch.tensor(cfg.starts, dtype=torch.float64)
    map_points = grid_points(cfg.map_resolution)
    runs, curves, traces, agreement, best_by_seed = [], {}, {}, [], {}
    t_start = time.perf_counter()
    for seed in cfg.task_seeds:
        tasks = HimmelblauTasks.make(cfg.num_tasks, seed=seed, template=cfg.template)
        seed_map = meta_test_loss(tasks, map_points, cfg.inner_steps, opt)
        best_by_seed[seed] = {"best_phi": map_points[int(torch.argmin(seed_map))].tolist(),
                              "best_loss": float(seed_map.min()), "median_loss": float(seed_map.median())}
        for start in starts:
            histories = {}
            for method in cfg.methods:
                r = run_method(tasks, cfg, method, start)
                histories[method] = r["phis"]
                quality = meta_test_loss(tasks, r["phis"], cfg.inner_steps, opt)
                within = int((r["steps"] <= budget).nonzero().max())
                final_quality = math.inf if r["diverged"] else float(quality[-1])
                row = {"task_seed": seed, "start": start.tolist(), "method": method, "diverged": r["diverged"],
                       "final_phi": r["phis"][-1].tolist(), "meta_test_loss": _finite(final_quality),
                       "inner_steps": r["inner_steps"], "meta_updates": r["meta_updates"],
                       "wall_time": r["wall_time"],
                       "at_equal_inner_steps": {"budget": budget, "inner_steps": int(r["steps"][within]),
                                                "meta_updates": within, "phi": r["phis"][within].tolist(),
                                                "meta_test_loss": _finite(float(quality[within]))}}
                row["loss_over_best"] = _finite(final_quality / best_by_seed[seed]["best_loss"])
                runs.append(row)
                curves.setdefault(method, []).append((r["steps"], quality))
                if seed == cfg.task_seeds[0]:
                    traces[(tuple(start.tolist()), method)] = r["phis"]
                log(f"seed {seed} start ({start[0]:.1f}, {start[1]:.1f}) {method:>16}: meta-test loss "
                    f"{_sci(row['meta_test_loss'])} at the end ({r['meta_updates']} meta-updates, {r['inner_steps']} "
                    f"inner steps per task), {_sci(row['at_equal_inner_steps']['meta_test_loss'])} at the common "
                    f"budget of {budget} inner steps; {r['wall_time']:.1f} s")
            if "cts" in histories and "cts-accurate" in histories:
                a, b = histories["cts"], histories["cts-accurate"]
                marks = [n for n in (10, 30, 100, 300) if n < min(len(a), len(b))]
                agreement.append({"task_seed": seed, "start": start.tolist(),
                                  "distance_after_meta_updates": {str(n): float((a[n] - b[n]).norm()) for n in marks},
                                  "cts_travel_after_meta_updates": {str(n): float((a[n] - a[0]).norm())
                                                                    for n in marks}})
    tasks0 = HimmelblauTasks.make(cfg.num_tasks, seed=cfg.task_seeds[0], template=cfg.template)
    qmap = meta_test_loss(tasks0, map_points, cfg.inner_steps, opt)
    fixed = [reptile_fixed_points(tasks0, cfg, k) for k in cfg.fixed_point_ks]
    distances: dict[str, list[float]] = {}
    travel: dict[str, list[float]] = {}
    for a in agreement:
        for n, d in a["distance_after_meta_updates"].items():
            distances.setdefault(n, []).append(d)
            travel.setdefault(n, []).append(a["cts_travel_after_meta_updates"][n])
    horizons = {str(seed): horizon_study(HimmelblauTasks.make(cfg.num_tasks, seed=seed, template=cfg.template), cfg,
                                         map_points) for seed in cfg.task_seeds}
    fixed_all = {seed: fixed if seed == cfg.task_seeds[0] else
                 [reptile_fixed_points(HimmelblauTasks.make(cfg.num_tasks, seed=seed, template=cfg.template), cfg, k)
                  for k in cfg.fixed_point_ks] for seed in cfg.task_seeds}
    summary = summarise(runs, cfg.methods)
    results = {
        "config": asdict(cfg),
        "runs": runs,
        "summary": summary,
        "quality_maps": {str(s): v for s, v in best_by_seed.items()},
        "cts_vs_accurate": {"median_distance_after_meta_updates": {
            n: float(torch.tensor(v).median()) for n, v in distances.items()},
            "median_cts_travel_after_meta_updates": {n: float(torch.tensor(v).median()) for n, v in travel.items()},
            "runs": agreement},
        "reptile_fixed_points": {str(seed): [{
            "k": f["k"], "iterations": f["iterations"], "converged_fraction": f["converged_fraction"],
            "distinct": f["distinct"].tolist(), "basin_sizes": f["basin_sizes"].tolist(),
            "distinct_meta_test_loss": [_finite(float(q)) for q in f["distinct_quality"]]} for f in fs]
            for seed, fs in fixed_all.items()},
        "horizon": horizons,
        "wall_time": time.perf_counter() - t_start,
    }
    from . import synthetic_plots as plots
    plots.trajectories(out / "trajectories.png", map_points, qmap, cfg, traces)
    plots.fixed_points(out / "reptile_fixed_points.png", map_points, qmap, cfg, fixed)
    plots.horizon(out / "horizon.png", horizons)
    plots.cost(out / "cost.png", runs, curves, cfg)
    plots.meta_test_curves(out / "meta_test_vs_inner_steps.png", curves, cfg)
    from ..core.atomic import write_json
    write_json(out / "results.json", results)        # atomic; a non-finite loss is written as null
    return results


def summarise(runs: list[dict], methods: list[str]) -> dict:
    """Per method: mean/median meta-test loss at equal meta-updates and at equal inner steps, over all runs; and
    against Reptile, how many (seed, start) pairs each method beats, ties (1e-9) or loses."""
    out = {}
    by = {(r["task_seed"], tuple(r["start"]), r["method"]): r for r in runs}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        row = {"runs": len(mine)}
        for key, get in (("equal_meta_updates", lambda r: r["meta_test_loss"]),
                         ("equal_inner_steps", lambda r: r["at_equal_inner_steps"]["meta_test_loss"])):
            vals = torch.tensor([get(r) if get(r) is not None else math.inf for r in mine], dtype=torch.float64)
            row[key] = {"mean": _finite(float(vals.mean())), "median": float(vals.median()),
                        "diverged": int((~torch.isfinite(vals)).sum())}
            if "reptile" in methods and m != "reptile":
                # Paired over (seed, start): log(loss / Reptile's loss); mean and 95% CI -> geometric-mean ratio.
                logs = []
                for r in mine:
                    ref = by[(r["task_seed"], tuple(r["start"]), "reptile")]
                    a, b = get(r), get(ref)
                    if a is not None and b is not None and a > 0 and b > 0:
                        logs.append(math.log(a / b))
                if len(logs) >= 2:
                    mu, half = mean_ci95(logs)
                    row[key]["ratio_to_reptile"] = {"geometric_mean": math.exp(mu), "ci95_low": math.exp(mu - half),
                                                    "ci95_high": math.exp(mu + half), "pairs": len(logs)}
                wins = ties = losses = 0
                for r in mine:
                    ref = by[(r["task_seed"], tuple(r["start"]), "reptile")]
                    a = get(r) if get(r) is not None else math.inf
                    b = get(ref) if get(ref) is not None else math.inf
                    if abs(a - b) <= 1e-9:
                        ties += 1
                    elif a < b:
                        wins += 1
                    else:
                        losses += 1
                row[key]["vs_reptile"] = {"better": wins, "tie": ties, "worse": losses}
        ratios = torch.tensor([r["loss_over_best"] if r["loss_over_best"] is not None else math.inf for r in mine])
        row["loss_over_best"] = {"median": float(ratios.median()),
                                 "within_2x_of_best": int((ratios <= 2).sum()), "runs": len(mine)}
        row["mean_inner_steps"] = sum(r["inner_steps"] for r in mine) / max(len(mine), 1)
        row["mean_meta_updates"] = sum(r["meta_updates"] for r in mine) / max(len(mine), 1)
        row["mean_wall_time"] = sum(r["wall_time"] for r in mine) / max(len(mine), 1)
        out[m] = row
    return out


def _sci(x) -> str:
    """A loss to 3 significant digits (the runs' spread supports no more), or its non-finite name."""
    return "n/a" if x is None else f"{x:.3g}"
