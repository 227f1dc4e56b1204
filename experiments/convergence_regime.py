"""The envelopes of experiments/convergence_regime.sh (issue "Evidence II", item 4) and the meta-tests they call for.

For each meta-training seed, trajectory length K and method, the curve at budget b (cumulative inner steps per task)
is the best meta-validation score over the method's meta learning rates at b (every snapshot scored by
`trajshift validate RUN --snapshots`), so choosing beta at the end of the budget cannot hide a speed advantage.
Writes OUT/envelopes.json and OUT/meta-test-jobs.txt: for the longest K, the envelope's snapshot of every method at
1/5, 1/2 and all of the budget; for Fig. 6c, CTS's final-budget envelope snapshot at every K. Each job line is
"SNAPSHOT_FILE TEST_FOLDER", for `trajshift meta-test --init SNAPSHOT_FILE --out TEST_FOLDER ...` (as in
experiments/pretrained_regime.sh). An envelope with a run still training gets no job yet (its curve ends early); its
scored snapshots go to OUT/meta-test-pending.txt, which an archive's --scored-keep keeps.

    python experiments/convergence_regime.py runs/conv
    python experiments/convergence_regime.py runs/conv --final [--none FILE] [--dest FILE.json]

--final (after `bash experiments/convergence_regime.sh test` has run the jobs) reads the meta-tests
(OUT/test/NAME/results.json, CIFAR-10 at 100 images per class) and None's (the base's meta-test of the Table 1
regime, the same finetuning seeds, hence the same subsamples), and writes convergence-regime.json and .png:
* per meta-training seed s, d_s = mean over finetuning seeds of the paired difference, and a t-interval over the
  seeds (with Bonferroni for the 11 comparisons the design fixed: CTS - Reptile, CTS - None and Reptile - None at
  1/5, 1/2 and all of the budget; CTS at K = 1,000 minus CTS at each shorter K);
* Fig. 6a: the task-average adapted loss at each trajectory's K-th inner step (metrics.jsonl), for the beta each
  method's envelope holds at the end of the budget;
* Fig. 7: the envelopes (meta-validation against cumulative inner steps); Fig. 6c: meta-test accuracy against K.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = ("fifth", "half", "all")


def envelopes(out: Path) -> dict:
    """{seed: {K: {method: [{inner_steps, score, meta_lr, snapshot}, ...] in budget order}}}."""
    found: dict = {}
    for scored in sorted(out.glob("s*/k*/*/meta_lr=*/validation-snapshots.json")):
        run = scored.parent
        seed, k, method = run.parents[2].name[1:], run.parents[1].name[1:], run.parent.name
        beta = float(run.name.split("=", 1)[1])
        curve = found.setdefault(seed, {}).setdefault(k, {}).setdefault(method, {})
        for steps, r in json.loads(scored.read_text()).items():
            best = curve.get(int(steps))
            if best is None or r["score"] > best["score"]:
                curve[int(steps)] = {"inner_steps": int(steps), "score": r["score"], "meta_lr": beta,
                                     "snapshot": str(run / "snapshots" / r["snapshot"])}
    return {s: {k: {m: [c[b] for b in sorted(c)] for m, c in by_m.items()} for k, by_m in by_k.items()}
            for s, by_k in found.items()}


def unfinished_runs(out: Path, seed: str, k: str, method: str) -> list[Path]:
    """The runs of one envelope (seed, K, method: every beta) that have not finished (no summary.json)."""
    return [run for run in sorted((out / f"s{seed}" / f"k{k}" / method).glob("meta_lr=*"))
            if run.is_dir() and not (run / "summary.json").is_file()]


def meta_test_jobs(env: dict, out: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(jobs, pending). An envelope is only meta-tested once every run of it has finished: while one is still
    training, its curve ends early and its best beta may change, so a meta-test of its "all" (or "half") snapshot
    would be of the wrong budget and, having a results.json, would never be rerun. Such an envelope's scored
    snapshots are listed as pending instead (SNAPSHOT, the unfinished run), so that an archive keeps them
    (`archive_image_study.py save --scored-keep meta-test-jobs.txt meta-test-pending.txt`)."""
    jobs, pending = [], []

    def complete(seed: str, k: str, method: str) -> bool:
        waiting = unfinished_runs(out, seed, k, method)
        if waiting:                   # keep every scored snapshot of the envelope: which one it needs is not known yet
            for scored in sorted((out / f"s{seed}" / f"k{k}" / method).glob("meta_lr=*/validation-snapshots.json")):
                pending.extend((str(scored.parent / "snapshots" / r["snapshot"]), f"unfinished:{waiting[0]}")
                               for r in json.loads(scored.read_text()).values())
        return not waiting

    for seed, by_k in env.items():
        longest = max(by_k, key=int)
        for method, curve in by_k[longest].items():
            if not complete(seed, longest, method):
                continue
            budget = curve[-1]["inner_steps"]
            for fraction, label in ((5, "fifth"), (2, "half"), (1, "all")):
                target = budget // fraction
                point = min(curve, key=lambda p: abs(p["inner_steps"] - target))
                jobs.append((point["snapshot"], str(out / "test" / f"s{seed}-k{longest}-{method}-{label}")))
        for k, by_m in by_k.items():
            if k != longest and "cts" in by_m and complete(seed, k, "cts"):
                jobs.append((by_m["cts"][-1]["snapshot"], str(out / "test" / f"s{seed}-k{k}-cts-all")))
    return jobs, pending


def _accs(path: Path, images_per_class: str = "100") -> list[float]:
    """CIFAR-10 accuracy per finetuning seed of one meta-test."""
    report = json.loads(path.read_text())
    return report["by_images_per_class"][images_per_class]["targets"]["cifar10"]["accs"]


def adapted_loss(run: Path, k: int) -> list[tuple[int, float]]:
    """Fig. 6a: (cumulative inner steps, task-average training loss) at each trajectory's K-th inner step."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("step") == k and "loss_mean" in r:
            points.append((int(r["inner_steps"]), float(r["loss_mean"])))
    return points


def final(out: Path, none_results: Path, dest: Path) -> dict:
    """The design's 11 comparisons over meta-training seeds, Fig. 6a's losses, and the figure."""
    sys.path.insert(0, str(ROOT))       # imported here: the envelope step runs without torch (python3 in the script)
    from trajshift.core.atomic import finite
    from trajshift.core.stats import interval_over_seeds as interval
    from trajshift.core.stats import mean_ci95
    env = json.loads((out / "envelopes.json").read_text())
    none = _accs(none_results)
    test = out / "test"
    seeds = sorted(s for s, by_k in env.items()
                   if all((test / f"s{s}-k{max(by_k, key=int)}-{m}-{b}" / "results.json").is_file()
                          for m in ("cts", "reptile") for b in BUDGETS))
    if not seeds:
        raise SystemExit(f"no meta-training seed has its CTS and Reptile meta-tests in {test}; run the test stage")

    def paired(name: str) -> list[float] | None:
        path = test / name / "results.json"
        if not path.is_file():
            return None
        accs = _accs(path)
        if len(accs) != len(none):
            raise SystemExit(f"{path}: {len(accs)} finetuning seeds, None has {len(none)}; they must be paired")
        return accs

    def acc(name: str) -> float | None:
        accs = paired(name)
        return None if accs is None else 100 * sum(accs) / len(accs)

    def per_finetuning_seed(name: str, minus: str | None = None) -> list[float] | None:
        """100 * (name's accuracy - minus's, or None's) per finetuning seed: the paired differences."""
        a, b = paired(name), (none if minus is None else paired(minus))
        return None if a is None or b is None else [100 * (x - y) for x, y in zip(a, b)]

    longest = {s: max(env[s], key=int) for s in seeds}
    shorter = sorted({k for s in seeds for k in env[s] if k != longest[s]}, key=int)
    comparisons = 3 * len(BUDGETS) + len(shorter)
    # name -> {seed: paired differences per finetuning seed}; the interval over meta-training seeds is of their means
    named: dict = {}
    for b in BUDGETS:
        for s in seeds:
            c, r = f"s{s}-k{longest[s]}-cts-{b}", f"s{s}-k{longest[s]}-reptile-{b}"
            named.setdefault(f"cts - none @ {b}", {})[s] = per_finetuning_seed(c)
            named.setdefault(f"reptile - none @ {b}", {})[s] = per_finetuning_seed(r)
            named.setdefault(f"cts - reptile @ {b}", {})[s] = per_finetuning_seed(c, r)
    top = max(longest.values(), key=int)
    for k in shorter:
        by_seed = {s: per_finetuning_seed(f"s{s}-k{longest[s]}-cts-all", f"s{s}-k{k}-cts-all") for s in seeds}
        if any(v is not None for v in by_seed.values()):
            named[f"cts K={top} - K={k}"] = by_seed
    # MTL is trained by the design (once, no beta) but is in none of its comparisons; where its meta-tests exist,
    # MTL - None and CTS - MTL at each budget are reported beside them, with a Bonferroni count that includes them.
    beside: dict = {}
    for b in BUDGETS:
        for s in seeds:
            c, m = f"s{s}-k{longest[s]}-cts-{b}", f"s{s}-k{longest[s]}-mtl-{b}"
            if (test / m / "results.json").is_file():
                beside.setdefault(f"mtl - none @ {b}", {})[s] = per_finetuning_seed(m)
                beside.setdefault(f"cts - mtl @ {b}", {})[s] = per_finetuning_seed(c, m)

    def intervals(by_key: dict, count: int) -> dict:
        return {key: interval([sum(v) / len(v) for v in by_seed.values() if v is not None], count)
                for key, by_seed in by_key.items()}

    def within_seed(by_key: dict) -> dict:
        # Each seed's own interval over its finetuning seeds: it leaves the meta-training variance out (the issue's
        # point 2), so it is only what one seed can say, and the only interval while one seed has been run.
        return {key: {s: dict(zip(("mean", "ci95"), mean_ci95(v))) for s, v in by_seed.items() if v is not None}
                for key, by_seed in by_key.items()}

    diffs, within = intervals(named, comparisons), within_seed(named)
    fig6a: dict = {}
    for s in seeds:
        for method, curve in env[s][longest[s]].items():
            beta = curve[-1]["meta_lr"]
            run = Path(curve[-1]["snapshot"]).parent.parent
            fig6a.setdefault(method, {})[s] = {"meta_lr": beta, "points": adapted_loss(run, int(longest[s]))}
    fig6c = {k: [acc(f"s{s}-k{k}-cts-all") for s in seeds] for k in shorter}
    fig6c[max(longest.values(), key=int)] = [acc(f"s{s}-k{longest[s]}-cts-all") for s in seeds]
    result = {"meta_training_seeds": seeds, "none_mean": 100 * sum(none) / len(none),
              "interval": "t over meta-training seeds of the per-seed mean paired difference (points)",
              "comparisons_read": comparisons, "differences": diffs,
              "within_meta_seed": {"interval": "t over the finetuning seeds of one meta-training seed (leaves the "
                                   "meta-training variance out)", "differences": within},
              "beside_the_design": {
                  "note": "MTL's meta-tests: not among the design's comparisons; Bonferroni counts them too",
                  "comparisons_read_with_them": comparisons + len(beside),
                  "differences": intervals(beside, comparisons + len(beside)), "within_meta_seed": within_seed(beside)},
              "fig6a_adapted_loss": fig6a,
              "fig6c_meta_test_by_k": fig6c, "envelopes": {s: env[s] for s in seeds}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".json").write_text(json.dumps(finite(result), indent=1, allow_nan=False) + "\n")
    _figure(result, dest.with_suffix(".png"))
    return result


def _figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, by_seed in result["fig6a_adapted_loss"].items():
        for i, (seed, r) in enumerate(sorted(by_seed.items())):
            xs, ys = zip(*r["points"]) if r["points"] else ((), ())
            axes[0].plot(xs, ys, color="C0" if method == "cts" else "C1" if method == "reptile" else "C2",
                         alpha=0.8, label=method if i == 0 else None)
    axes[0].set(title="Fig. 6a: adapted loss at each trajectory's end", xlabel="inner steps per task",
                ylabel="task-average training loss")
    for method in ("cts", "reptile", "mtl"):
        for i, (seed, by_k) in enumerate(sorted(result["envelopes"].items())):
            curve = by_k[max(by_k, key=int)].get(method)
            if curve:
                axes[1].plot([p["inner_steps"] for p in curve], [100 * p["score"] for p in curve],
                             color={"cts": "C0", "reptile": "C1", "mtl": "C2"}[method], alpha=0.8,
                             label=method if i == 0 else None)
    axes[1].set(title="Fig. 7: best-over-beta meta-validation", xlabel="inner steps per task",
                ylabel="meta-validation accuracy (%)")
    ks = sorted(result["fig6c_meta_test_by_k"], key=int)
    for k in ks:
        values = [v for v in result["fig6c_meta_test_by_k"][k] if v is not None]
        axes[2].scatter([int(k)] * len(values), values, color="C0")
    axes[2].axhline(result["none_mean"], color="k", linestyle=":", label="None (the base)")
    axes[2].set(title="Fig. 6c: meta-test against K (same budget)", xlabel="K", ylabel="CIFAR-10 accuracy (%)",
                xscale="log")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--final", action="store_true", help="collect the meta-tests (after the test stage)")
    ap.add_argument("--none", type=Path, default=ROOT / "docs" / "evidence" / "pretrained-regime" / "none-results.json",
                    help="None's meta-test (the base; default: the Table 1 regime's)")
    ap.add_argument("--dest", type=Path, default=ROOT / "docs" / "evidence" / "convergence-regime.json")
    args = ap.parse_args()
    if args.final:
        result = final(args.out, args.none, args.dest)
        beside = result["beside_the_design"]
        for key, d in [*result["differences"].items(), *beside["differences"].items()]:
            own = ", ".join(f"{w['mean']:+.2f} ± {w['ci95']:.2f}" for w in
                            {**result["within_meta_seed"]["differences"], **beside["within_meta_seed"]}[key].values())
            over = ("no interval over meta-training seeds (one seed)" if len(d["per_meta_seed"]) < 2 else
                    f"± {d['ci95']:.2f}, Bonferroni ± {d['ci95_bonferroni']:.2f} over meta-training seeds")
            print(f"{key}: {d['mean']:+.2f} ({over}; seeds {', '.join(f'{v:+.2f}' for v in d['per_meta_seed'])}; "
                  f"within each seed {own})")
        print(f"wrote {args.dest} and {args.dest.with_suffix('.png')}")
        return
    env = envelopes(args.out)
    (args.out / "envelopes.json").write_text(json.dumps(env, indent=1) + "\n")
    jobs, pending = meta_test_jobs(env, args.out)
    (args.out / "meta-test-jobs.txt").write_text("".join(f"{a} {b}\n" for a, b in jobs))
    (args.out / "meta-test-pending.txt").write_text("".join(f"{a} {b}\n" for a, b in pending))
    for seed, by_k in env.items():
        for k, by_m in sorted(by_k.items(), key=lambda kv: int(kv[0])):
            for m, curve in by_m.items():
                points = ", ".join(f"{p['inner_steps']}: {100 * p['score']:.2f} (beta {p['meta_lr']:g})" for p in curve)
                print(f"seed {seed} K {k} {m}: {points}")
    waiting = sorted({b.split(":", 1)[1] for _, b in pending})
    if waiting:
        print(f"not meta-tested until they finish (their envelopes' snapshots are in meta-test-pending.txt): "
              f"{', '.join(waiting)}")
    print(f"wrote {args.out / 'envelopes.json'} and {len(jobs)} meta-test jobs in {args.out / 'meta-test-jobs.txt'}")


if __name__ == "__main__":
    main()
