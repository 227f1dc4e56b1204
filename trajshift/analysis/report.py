"""Compare meta-training runs (one folder per method): Figures 6a, 6b and 7 of the paper.

* Fig. 6a: meta-training loss (task-average inner loss, smoothed) against cumulative inner steps per task;
* Fig. 7: meta-test accuracy of each run's snapshots against the cumulative inner steps spent on meta-training,
  mean and 95% confidence interval over seeds, averaged over the targets;
* Fig. 6b: a table of every run's final meta-test accuracy per target (mean +- 95% CI).
Writes DIR/report.json, DIR/fig6a_meta_train_loss.png, DIR/fig7_meta_test_vs_inner_steps.png, DIR/table.md.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from ..evaluate import MetaTestConfig, meta_test
from ..stats import mean_ci95


def read_run(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss_mean" in r]
    snaps = sorted((run / "snapshots").glob("step-*.pt")) if (run / "snapshots").is_dir() else []
    return {"name": run.name, "method": cfg["meta"]["method"], "model": cfg["model"], "config": cfg,
            "loss_curve": [(r["inner_steps"], r["loss_mean"]) for r in steps], "snapshots": snaps,
            "init": run / "init.pt"}


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def make_report(runs: list[str | Path], targets: list[str], out: str | Path, seeds: int = 3,
                steps: int | None = None, protocol: str = "paper", every_snapshot: int = 1, resolution=None,
                data_root=None, cache_dir=None, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = [read_run(Path(r)) for r in runs]
    report = {"targets": targets, "seeds": seeds, "protocol": protocol, "steps": steps, "runs": []}
    settings = {"targets": targets, "seeds": seeds, "steps": steps, "protocol": protocol,
                "every_snapshot": every_snapshot, "resolution": resolution}
    for info, run in zip(infos, runs):
        # Each run's meta-test results are cached in the run folder, keyed by the evaluation settings and the
        # files evaluated, so adding a run to a comparison does not re-evaluate the others.
        cache = Path(run) / "report-cache" / (hashlib.sha1(json.dumps(
            {**settings, "files": [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                   for p in info["snapshots"] + [info["init"]]]}, sort_keys=True).encode())
            .hexdigest()[:16] + ".json")
        if cache.exists():
            entry = json.loads(cache.read_text())
            report["runs"].append({**entry, "loss_curve": info["loss_curve"]})
            log(f"{info['name']}: meta-test results from {cache}")
            continue
        curve = []
        snaps = info["snapshots"][::every_snapshot]
        if info["snapshots"] and snaps[-1] != info["snapshots"][-1]:
            snaps.append(info["snapshots"][-1])
        for snap in snaps:
            cfg = MetaTestConfig(targets=targets, init=str(snap), model=info["model"], protocol=protocol,
                                 steps=steps, seeds=seeds, resolution=resolution, data_root=data_root,
                                 cache_dir=cache_dir)
            res = meta_test(cfg, None, log=lambda *_: None)
            inner = int(snap.stem.split("-")[1])
            curve.append({"inner_steps": inner, "mean": res["average"]["mean"], "ci95": res["average"]["ci95"]})
            log(f"{info['name']} ({info['method']}) at {inner} inner steps: meta-test accuracy "
                f"{100 * res['average']['mean']:.2f} +- {100 * res['average']['ci95']:.2f}%")
        final = meta_test(MetaTestConfig(targets=targets, init=str(info["init"]), model=info["model"],
                                         protocol=protocol, steps=steps, seeds=seeds, resolution=resolution,
                                         data_root=data_root, cache_dir=cache_dir), None, log=lambda *_: None)
        entry = {"run": info["name"], "method": info["method"], "curve": curve,
                 "final": {t: {k: v for k, v in r.items() if k in ("mean", "ci95", "accs")}
                           for t, r in final["targets"].items()}, "final_average": final["average"]}
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(json.dumps(entry, indent=1))
        report["runs"].append({**entry, "loss_curve": info["loss_curve"]})
    _plots(out, report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(_table(report))
    return report


def _table(report: dict) -> str:
    targets = report["targets"]
    lines = ["| run (method) | " + " | ".join(targets) + " | average |", "|---" * (len(targets) + 2) + "|"]
    for r in report["runs"]:
        cells = [f"{100 * r['final'][t]['mean']:.2f} ± {100 * r['final'][t]['ci95']:.2f}" for t in targets]
        a = r["final_average"]
        lines.append(f"| {r['run']} ({r['method']}) | " + " | ".join(cells) +
                     f" | {100 * a['mean']:.2f} ± {100 * a['ci95']:.2f} |")
    return "\n".join(lines) + "\n"


def _plots(out: Path, report: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in report["runs"]:
        if r["loss_curve"]:
            xs, ys = zip(*r["loss_curve"])
            ax.plot(xs, smooth(list(ys), max(1, len(ys) // 50)), label=f"{r['run']} ({r['method']})")
    _finish(fig, ax, "cumulative inner steps per task", "meta-training loss (task average)", out / "fig6a_meta_train_loss.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in report["runs"]:
        if r["curve"]:
            xs = [c["inner_steps"] for c in r["curve"]]
            ms = [100 * c["mean"] for c in r["curve"]]
            cis = [0 if c["ci95"] != c["ci95"] else 100 * c["ci95"] for c in r["curve"]]
            ax.errorbar(xs, ms, yerr=cis, marker="o", capsize=3, label=f"{r['run']} ({r['method']})")
    _finish(fig, ax, "cumulative inner steps of meta-training", "meta-test accuracy (%), target average", out / "fig7_meta_test_vs_inner_steps.png")


__all__ = ["make_report", "mean_ci95"]


def _finish(fig, ax, xlabel: str, ylabel: str, path) -> None:
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
