"""``trajshift sweep``: choose a hyperparameter (the meta learning rate, Section 4.2's beta in {1e-3, ..., 10}) per
method by meta-validation, never by meta-test.

    trajshift sweep CONFIG --out DIR --grid meta.meta_lr=0.001,0.01,0.1,1,10 --methods cts,reptile --jobs 2

Every (method, grid point) is an ordinary meta-train run folder, DIR/<method>/<key>=<value>[,...]/, so an interrupted
sweep resumes where it stopped (finished runs are skipped, unfinished ones resume from their checkpoints). Each
finished run is scored on the config's ``validation`` block (trajshift.evaluation.validation: held-out source classes, never a
meta-test target), and the value with the best mean score is chosen per method. A run that fails (diverges) gets no
score and is never chosen.

Writes DIR/sweep.json ({config, grid, validation, methods: {M: {points: [{values, run, status, score, ci95,
per_seed}], chosen: {values}, chosen_run}}}) and DIR/sweep.png (score against the swept value, per method).
``trajshift meta-test --init DIR/<method>`` and ``trajshift report DIR`` take the chosen runs from there.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.atomic import write_json
from ..core.errors import ConfigError
from ..core.schema import Rule, check_value


def parse_grid(items: list[str]) -> dict[str, list]:
    """["meta.meta_lr=0.001,0.01", ...] -> {"meta.meta_lr": [0.001, 0.01]} (values parsed as YAML 1.2 numbers)."""
    from ..core.yamlio import load as _parse_value
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid: expected KEY=V1,V2,... (e.g. meta.meta_lr=0.01,0.1,1), got {item!r}")
        key, values = item.split("=", 1)
        parsed = [_parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ConfigError(f"--grid {key}: no values")
        if key.strip() in grid:
            raise ConfigError(f"--grid {key}: given twice")
        grid[key.strip()] = parsed
    if not grid:
        raise ConfigError("--grid: give at least one KEY=V1,V2,... (e.g. meta.meta_lr=0.001,0.01,0.1,1,10)")
    return grid


def point_name(values: dict) -> str:
    """A run folder name for a grid point: 'meta_lr=0.1' (the last part of each key)."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())


def chosen_run(folder: str | Path) -> Path | None:
    """The chosen run of a sweep's method folder (DIR/<method>), or None when ``folder`` is not one."""
    folder = Path(folder)
    sweep = folder.parent / "sweep.json"
    if not sweep.is_file():
        return None
    entry = json.loads(sweep.read_text()).get("methods", {}).get(folder.name)
    if not entry:
        return None
    if not entry.get("chosen_run"):
        raise ConfigError(f"{folder}: the sweep has no chosen run for {folder.name} yet (no point finished with a "
                          f"score); run the sweep to the end")
    return folder.parent / entry["chosen_run"]


def expand_runs(paths: list[str]) -> list[Path]:
    """Run folders from run folders, sweep method folders (their chosen run) and sweep folders (every method's
    chosen run, in the sweep's order)."""
    out = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            methods = json.loads((p / "sweep.json").read_text()).get("methods", {})
            out += [r for r in (chosen_run(p / m) for m in methods) if r is not None]
        else:
            out.append(chosen_run(p) or p)
    return out


def _last_error(proc: subprocess.CompletedProcess) -> str:
    """The last line a failed trajshift subprocess printed that is not a warning (its one-line error)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warning" not in line]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _run_point(config: str, run: Path, method: str, values: dict, overrides: list[str], threads: int,
               lock: threading.Lock, log) -> dict:
    """Meta-train one grid point (a subprocess: a crash or divergence stays in it), then score it."""
    from ..data.init_file import run_init
    done = run_init(run) is not None and (run / "summary.json").is_file()
    failed = run / "failed.json"
    if failed.is_file():          # a diverged point diverges again: not retried (delete failed.json to retry)
        return json.loads(failed.read_text())
    if not done:
        cmd = [sys.executable, "-m", "trajshift", "meta-train", config, "--out", str(run), "--quiet",
               "--set", f"meta.method={method}"]
        for k, v in values.items():
            cmd += ["--set", f"{k}={json.dumps(v)}"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with lock:
            log(f"{method} {point_name(values)}: meta-training in {run}")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason = _last_error(proc)
            with lock:
                log(f"{method} {point_name(values)}: failed: {reason}")
            point = {"values": values, "run": str(run), "status": "failed", "reason": reason, "score": None}
            write_json(failed, point)
            return point
    cmd = [sys.executable, "-m", "trajshift", "validate", str(run), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = _last_error(proc)
        return {"values": values, "run": str(run), "status": "failed", "reason": f"validation: {reason}",
                "score": None}
    result = json.loads((run / "validation.json").read_text())
    with lock:
        log(f"{method} {point_name(values)}: validation score {100 * result['score']:.2f}%")
    return {"values": values, "run": str(run), "status": "ok", "score": result["score"], "ci95": result["ci95"],
            "per_seed": result["per_seed"]}


def choose(points: list[dict]) -> dict | None:
    """The point with the highest mean validation score (the first of equal ones); failed points never."""
    scored = [p for p in points if p.get("status") == "ok" and p.get("score") is not None]
    return max(scored, key=lambda p: p["score"]) if scored else None


def run_sweep(config: str | Path, out: str | Path, grid: dict[str, list], methods: list[str] | None = None,
              jobs: int = 1, overrides: list[str] | None = None, log=print) -> dict:
    from ..core.yamlio import parse_overrides as _overrides
    from ..evaluation.validation import check_held_out
    from ..methods import METHODS
    from .config import load_config
    overrides = list(overrides or [])
    cfg = load_config(config, _overrides(overrides))      # every key checked before any work
    if cfg.validation is None:
        raise ConfigError(f"{config}: a sweep needs a validation block (held-out source classes to score each run "
                          f"on); see trajshift/evaluation/validation.py, e.g. validation: {{tasks: [{{dataset: tiny-imagenet, "
                          f"classes: '180:200'}}]}}")
    methods = methods or [cfg.meta.method]
    for m in methods:
        METHODS.get(m)
    for values in itertools.product(*grid.values()):      # every point's config is valid before any work
        load_config(config, {**_overrides(overrides), **dict(zip(grid, values))})
    from ..evaluation.validation import ValidationConfig
    check_held_out(cfg.tasks, ValidationConfig.from_dict(cfg.validation), cfg.data_root, cfg.cache_dir)
    check_value(jobs, int, Rule(low=1), "--jobs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = [(m, dict(zip(grid, values))) for m in methods for values in itertools.product(*grid.values())]
    results: dict[str, list] = {m: [None] * (len(todo) // len(methods)) for m in methods}
    lock = threading.Lock()
    # Methods swept earlier into the same folder (another grid, e.g. one per method) keep their entries.
    earlier = json.loads((out / "sweep.json").read_text()).get("methods", {}) if (out / "sweep.json").is_file() else {}
    report = {"config": str(config), "overrides": overrides, "grid": grid, "validation": cfg.validation,
              "methods": {m: v for m, v in earlier.items() if m not in methods}}

    def write():
        for m in methods:
            points = [p for p in results[m] if p is not None]
            best = choose(points)
            for p in points:
                report["methods"][m] = {"points": points, "chosen": best["values"] if best else None,
                                        "chosen_run": best["run"] if best else None, "grid": grid}
        write_json(out / "sweep.json", report)

    def job(i_m_values):
        i, (m, values) = i_m_values
        point = _run_point(str(config), out / m / point_name(values), m, values, overrides, threads, lock, log)
        point["run"] = str(Path(point["run"]).relative_to(out))
        with lock:
            results[m][i % len(results[m])] = point
            write()
        return point

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(job, enumerate(todo)))
    write()
    plot_sweep(report, out / "sweep.png")
    return report


def plot_sweep(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = next(iter(report["grid"]))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in report["grid"][key])
    for m, entry in report["methods"].items():
        pts = [p for p in entry["points"] if p["status"] == "ok"]
        if not pts:
            continue
        xs = [p["values"][key] for p in pts]
        if not numeric:
            xs = [str(x) for x in xs]
        ys = [100 * p["score"] for p in pts]
        es = [0 if p.get("ci95") is None else 100 * p["ci95"] for p in pts]
        line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        best = choose(pts)
        ax.plot([best["values"][key] if numeric else str(best["values"][key])], [100 * best["score"]], "*",
                markersize=12, color=line[0].get_color())
    if numeric:
        ax.set_xscale("log")
    ax.set_xlabel(f"{key} (star: chosen)")
    ax.set_ylabel("meta-validation accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
