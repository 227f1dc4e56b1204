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
import math
from pathlib import Path

import yaml

from ..core.atomic import write_json, write_text
from ..core.errors import ConfigError
from ..core.stats import mean_ci95
from ..evaluation.meta_test import MetaTestConfig, meta_test


def read_run(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss_mean" in r]
    from ..data.init_file import run_init, snapshot_files
    snaps = snapshot_files(run)
    # A run folder of a sweep is named after its grid point (meta_lr=0.1): name it with its method folder.
    name = f"{run.parent.name} {run.name}" if "=" in run.name else run.name
    return {"name": name, "method": cfg["meta"]["method"], "model": cfg["model"], "config": cfg,
            "loss_curve": loss_curve(steps), "snapshots": snaps,
            "init": run_init(run) or run / "init.safetensors"}


def loss_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(cumulative inner steps, mean task loss) per logged step, the loss to 6 significant digits: what Fig. 6a
    plots, at a size that keeps report.json under 1 MB for ten 4,000-step runs."""
    return [(r["inner_steps"], None if r["loss_mean"] is None else float(f"{r['loss_mean']:.6g}")) for r in rows]


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _entry_settings(images_per_class, curve_images_per_class):
    """(the settings of the final meta-tests: a list of images-per-class values or [None] for the whole training
    sets, the one setting of the snapshot curves and of the bar charts)."""
    finals = list(images_per_class) if images_per_class else [None]
    curve = curve_images_per_class if curve_images_per_class is not None else finals[0]
    return finals, curve


def _setting(report: dict, n) -> dict:
    return report["by_images_per_class"][str(n)] if n is not None else report


def _evaluate(init: Path, targets, n_list, common: dict) -> dict:
    """The meta-test of one file under the report's common settings: explicit flags, else (resolved the same way
    as ``trajshift meta-test``) the init's own records (trajshift/evaluation/settings.py)."""
    cfg = MetaTestConfig(targets=targets, init=str(init), images_per_class=None if n_list == [None] else n_list,
                         **common)
    res = meta_test(cfg, None, log=lambda *_: None)
    return {str(n): {"targets": {t: {k: v for k, v in r.items() if k in ("mean", "ci95", "accs")}
                                 for t, r in _setting(res, n)["targets"].items()},
                     "average": _setting(res, n)["average"]} for n in n_list}


def make_report(runs: list[str | Path], targets: list[str], out: str | Path, seeds: int = 5,
                steps: int | None = None, protocol: str | None = None, every_snapshot: int = 1, resolution=None,
                data_root=None, cache_dir=None, images_per_class: list[int] | None = None,
                curve_images_per_class: int | None = None, batch_size: int | None = None,
                augment: str | None = None, log=print) -> dict:
    """Meta-test every run's snapshots (Fig. 7) and final init.pt (Figs. 6b, 8, 9), and the common random
    initialization (snapshot 0: the scratch baseline, the same weights every method started from), all with the
    same seeds, so that differences to scratch are paired by seed. Settings not given (protocol, augment,
    resolution, model) are resolved from each run's records as ``trajshift meta-test`` resolves them; runs whose
    resolved settings differ are refused (they would not be compared alike)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = [read_run(Path(r)) for r in runs]
    protocol, augment, resolution, settings_by_run = _common_settings(infos, protocol, augment, resolution, targets,
                                                                      log)
    finals, curve_n = _entry_settings(images_per_class, curve_images_per_class)
    common = {"protocol": protocol, "steps": steps, "seeds": seeds, "resolution": resolution,
              "batch_size": batch_size, "augment": augment, "data_root": data_root, "cache_dir": cache_dir}
    report = {"targets": targets, "seeds": seeds, "protocol": protocol, "steps": steps, "batch_size": batch_size,
              "augment": augment, "images_per_class": finals, "curve_images_per_class": curve_n, "runs": [],
              "settings": settings_by_run}
    settings = {"targets": targets, "seeds": seeds, "steps": steps, "protocol": protocol,
                "every_snapshot": every_snapshot, "resolution": resolution, "images_per_class": finals,
                "curve": curve_n, "batch_size": batch_size, "augment": augment}
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
            res = _evaluate(snap, targets, [curve_n], common)[str(curve_n)]["average"]
            inner = int(snap.stem.split("-")[1])
            curve.append({"inner_steps": inner, **res})
            log(f"{info['name']} ({info['method']}) at {inner} inner steps: meta-test accuracy "
                f"{100 * res['mean']:.2f} +- {_ci(res['ci95'])}%")
        by_n = _evaluate(info["init"], targets, finals, common)
        scratch = None
        if info["snapshots"] and int(info["snapshots"][0].stem.split("-")[1]) == 0:
            scratch = {"file_sha256": hashlib.sha256(info["snapshots"][0].read_bytes()).hexdigest(),
                       "by_images_per_class": _evaluate(info["snapshots"][0], targets, finals, common)}
        entry = {"run": info["name"], "path": str(run), "method": info["method"],
                 "meta_lr": info["config"]["meta"]["meta_lr"], "curve": curve, "by_images_per_class": by_n,
                 "final": by_n[str(curve_n)]["targets"], "final_average": by_n[str(curve_n)]["average"],
                 "initial": scratch, "init_from": info["config"].get("init_from")}
        cache.parent.mkdir(exist_ok=True)
        write_json(cache, entry)
        report["runs"].append({**entry, "loss_curve": info["loss_curve"]})
    _add_scratch_and_gains(report)
    _plots(out, report)
    write_json(out / "report.json", report, compact=True)    # (table.md is the readable summary)
    write_text(out / "table.md", _table(report))
    return report


def _common_settings(infos: list[dict], protocol, augment, resolution, targets, log) -> tuple:
    """The protocol, augmentation and resolution every run is scored with: the flags, else each run's records
    (resolved as meta-test resolves them), which must then agree across the runs."""
    from ..evaluation.meta_test import resolve_settings
    chosen, records = {}, {}
    for info in infos:
        s = resolve_settings(MetaTestConfig(targets=targets, init=str(info["init"]), protocol=protocol,
                                            augment=augment, resolution=resolution))
        log(f"{info['name']}: meta-test settings: {s.describe()}")
        records[info["name"]] = s.record()
        for key in ("protocol", "augment", "resolution"):
            if key in chosen and chosen[key][0] != s[key]:
                raise ConfigError(f"report: {chosen[key][1]} is scored with {key} {chosen[key][0]!r} and "
                                  f"{info['name']} with {s[key]!r} (from their records); give --{key} to score "
                                  f"every run alike")
            chosen.setdefault(key, (s[key], info["name"]))
    return (*(chosen[k][0] if k in chosen else None for k in ("protocol", "augment", "resolution")), records)


def _ci(ci) -> str:
    return "n/a" if ci is None or math.isnan(ci) else f"{100 * ci:.2f}"


def _add_scratch_and_gains(report: dict) -> None:
    """The scratch baseline is the runs' common snapshot 0 (the same random weights; checked by hash). Gains over
    scratch are paired by seed: mean and 95% CI of acc(run, seed) - acc(scratch, seed)."""
    initials = [r["initial"] for r in report["runs"] if r.get("initial")]
    if not initials:
        report["scratch"] = None
        return
    hashes = {i["file_sha256"] for i in initials}
    report["common_initialization"] = len(hashes) == 1
    # Runs that started from a pretrained body (init_from) have it as snapshot 0: the baseline is then the pretrained
    # model itself, Table 1's "None" row, not a random initialization.
    starts = {r.get("init_from") for r in report["runs"]}
    pretrained = next(iter(starts)) if len(starts) == 1 else None
    report["baseline_label"] = (f"None (the pretrained start, {pretrained})" if pretrained else
                                "scratch (the common random initialization)")
    scratch = initials[0]["by_images_per_class"]
    report["scratch"] = scratch
    for r in report["runs"]:
        r["gain_over_scratch"] = {}
        for n, res in r["by_images_per_class"].items():
            diffs = [a - b for a, b in zip(res["average"]["per_seed"], scratch[n]["average"]["per_seed"])]
            mean, ci = mean_ci95(diffs)
            r["gain_over_scratch"][n] = {"mean": mean, "ci95": ci, "per_seed": diffs}
    reptile = [r for r in report["runs"] if r["method"] == "reptile"]
    if reptile:
        goal = reptile[0]["final_average"]["mean"]
        for r in report["runs"]:
            reached = [c["inner_steps"] for c in r["curve"] if c["mean"] >= goal]
            r["steps_to_reptile_final"] = reached[0] if reached else None


def _pm(r: dict | None) -> str:
    return "n/a" if r is None else f"{100 * r['mean']:.2f} ± {_ci(r['ci95'])}"


def _table(report: dict) -> str:
    """Fig. 6b as a table (per target at the curve setting), then the target average and the paired gain over
    scratch at every images-per-class setting (Fig. 9)."""
    targets, n = report["targets"], str(report["curve_images_per_class"])
    per = f" ({n} images per class)" if n != "None" else ""
    lines = [f"Final initializations{per}: meta-test accuracy (%), mean ± 95% CI over {report['seeds']} seeds.", "",
             "| run (method) | " + " | ".join(targets) + " | average |", "|---" * (len(targets) + 2) + "|"]
    rows = [(f"{r['run']} ({r['method']})", r["by_images_per_class"][n]) for r in report["runs"]]
    if report.get("scratch"):
        rows.append((report.get("baseline_label", "scratch (the common random initialization)"), report["scratch"][n]))
    for label, res in rows:
        lines.append(f"| {label} | " + " | ".join(_pm(res["targets"][t]) for t in targets) +
                     f" | {_pm(res['average'])} |")
    if report.get("scratch"):
        ns = [str(v) for v in report["images_per_class"]]
        lines += ["", "Target average and gain over scratch (paired by seed; percentage points), per images per class:",
                  "", "| run (method) | " + " | ".join(f"{v}/class: accuracy | gain" for v in ns) + " |",
                  "|---" * (2 * len(ns) + 1) + "|"]
        for r in report["runs"]:
            lines.append(f"| {r['run']} ({r['method']}) | " + " | ".join(
                f"{_pm(r['by_images_per_class'][v]['average'])} | {_pm(r['gain_over_scratch'][v])}" for v in ns) + " |")
        label = report.get("baseline_label", "scratch").split(" (")[0]
        lines.append(f"| {label} | " + " | ".join(f"{_pm(report['scratch'][v]['average'])} | 0" for v in ns) + " |")
    return "\n".join(lines) + "\n"


ABLATION_METHODS = ("cts", "cts-no-shift", "cts-random-shift", "reptile")


def _plots(out: Path, report: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in report["runs"]:
        if r["loss_curve"]:
            xs, ys = zip(*r["loss_curve"])
            ax.plot(xs, smooth(list(ys), max(1, len(ys) // 50)), label=f"{r['run']} ({r['method']})")
    _finish(fig, ax, "cumulative inner steps per task", "meta-training loss (task average)",
            out / "fig6a_meta_train_loss.png")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in report["runs"]:
        if r["curve"]:
            xs = [c["inner_steps"] for c in r["curve"]]
            ms = [100 * c["mean"] for c in r["curve"]]
            ax.errorbar(xs, ms, yerr=_clipped_errors(ms, [c["ci95"] for c in r["curve"]]), marker="o", capsize=3,
                        label=f"{r['run']} ({r['method']})")
    n = report["curve_images_per_class"]
    _finish(fig, ax, "cumulative inner steps of meta-training",
            "meta-test accuracy (%), target average" + (f"\n{n} images per class" if n is not None else ""),
            out / "fig7_meta_test_vs_inner_steps.png")
    key = str(n)
    bars = [(f"{r['run']}", r["by_images_per_class"][key]["average"]) for r in report["runs"]]
    if report.get("scratch"):
        bars.append(("scratch", report["scratch"][key]["average"]))
    setting = (f"{n} images per class" if n is not None else "whole training sets") + \
        f", {report['protocol']} protocol, {report['seeds']} seeds, mean and 95% CI"
    _bars(bars, out / "fig6b_final_meta_test.png", "meta-test accuracy (%), target average",
          f"Fig. 6b: final initializations\n{setting}")
    ablation = [(r["run"], r["by_images_per_class"][key]["average"]) for r in report["runs"]
                if r["method"] in ABLATION_METHODS]
    if len(ablation) >= 2:
        _bars(ablation, out / "fig8_ablation.png", "meta-test accuracy (%), target average",
              f"Fig. 8: what the shift adds (CTS, no shift, random shift, Reptile)\n{setting}")
    if report.get("scratch") and report["images_per_class"] != [None]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ns = report["images_per_class"]
        for i, r in enumerate(report["runs"]):
            g = [r["gain_over_scratch"][str(v)] for v in ns]
            xs = [v * (1 + 0.02 * (i - len(report["runs"]) / 2)) for v in ns]    # a small offset per run
            ax.errorbar(xs, [100 * x["mean"] for x in g], yerr=[0 if x["ci95"] is None or math.isnan(x["ci95"])
                                                                 else 100 * x["ci95"] for x in g],
                        marker="o", capsize=3, label=f"{r['run']} ({r['method']})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
        ax.xaxis.set_major_locator(FixedLocator(ns))          # every measured size labelled as the number it is
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(f"Fig. 9: gain against images per class\n{report['protocol']} protocol, {report['seeds']} "
                     f"seeds, mean and 95% CI", fontsize=9)
        _finish(fig, ax, "training images per class of each target",
                "gain over scratch (points), paired by seed", out / "fig9_gain_vs_images_per_class.png")


def _clipped_errors(means: list[float], cis: list) -> list[list[float]]:
    """Asymmetric error bars of mean +- CI clipped to [0, 100] (an accuracy interval never leaves it)."""
    lo, hi = [], []
    for m, c in zip(means, cis):
        c = 0.0 if c is None or math.isnan(c) else 100 * c
        lo.append(min(c, m))
        hi.append(min(c, 100 - m))
    return [lo, hi]


def _bars(items: list[tuple[str, dict]], path: Path, ylabel: str, title: str = "") -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(items) + 1.5), 4.2))
    ms = [100 * r["mean"] for _, r in items]
    errors = _clipped_errors(ms, [r["ci95"] for _, r in items])
    ax.bar(range(len(items)), ms, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(items)), [name for name, _ in items], rotation=35, ha="right", fontsize=7)
    # Bars start at 0 (a cut axis would exaggerate differences); the top leaves room for every whisker.
    top = max(m + e for m, e in zip(ms, errors[1]))
    ax.set_ylim(0.0, min(100.0, top * 1.05 + 1))
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
