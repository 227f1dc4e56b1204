"""The random-init image study over 3 meta-training seeds (experiments/image_study_seeds.sh) ->
docs/image-study/meta-seeds.json.

    python experiments/image_study_seeds.py runs/image-study/seeds [--report docs/image-study/report.json]
                                            [--out docs/image-study/meta-seeds.json]

Seed 0 is the study itself (its report.json: every method's and scratch's accuracy per finetuning seed); seeds 1
and 2 are the meta-tests of image_study_seeds.sh (OUT/test/sS-METHOD/results.json, OUT/test/sS-scratch/...).

Statistics (the Table 1 regime's, docs/pretrained.md):
* finetuning seeds 0-4 fix the target subsample, so within a meta-training seed every initialization is paired with
  that seed's scratch (its own random initial weights) and with the other methods by finetuning seed;
* per meta-training seed s the difference is d_s = mean over finetuning seeds of the paired difference, for one
  target or for the target average (mean of CIFAR-10 and MNIST per finetuning seed, as the study reads);
* the interval is a t-interval over the meta-training seeds of d_s (2 degrees of freedom with 3 seeds): it holds
  the meta-training variance (initial weights, heads, data order, validation split) and the finetuning variance
  averaged within each seed. Every interval printed is counted, and the Bonferroni interval for that count is given
  beside the 95% one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trajshift.core.stats import interval_over_seeds as interval
from trajshift.core.stats import mean_ci95

METHOD_SETS = {"core": ("cts", "reptile", "cts-no-shift", "mtl", "cts-random-shift"),
               "others": ("cts", "leap", "fomaml", "fomaml++", "imaml", "pretrain")}
METHODS = METHOD_SETS["core"]


def pairs(methods) -> list[tuple[str, str]]:
    """What the study's verdicts compare: each method with scratch, and CTS with each other method."""
    return [(m, "scratch") for m in methods] + [("cts", m) for m in methods if m != "cts"]


PAIRS = pairs(METHODS)



def accuracies(by_images_per_class: dict) -> dict[str, dict[str, list[float]]]:
    """{images per class: {target: [accuracy per finetuning seed]}}."""
    return {str(n): {t: list(v["accs"]) for t, v in r["targets"].items()} for n, r in by_images_per_class.items()}


def seed0(report_path: Path, methods=METHODS) -> dict[str, dict]:
    """The study's own meta-test (meta-training seed 0): {method or 'scratch': accuracies}."""
    report = json.loads(report_path.read_text())
    out = {"scratch": accuracies(report["scratch"])}
    for run in report["runs"]:
        if run["method"] in methods:
            out[run["method"]] = accuracies(run["by_images_per_class"])
    return out


def later_seed(test_dir: Path, seed: int, methods=METHODS) -> dict[str, dict] | None:
    """Seed S's meta-tests, or None while any of them is missing."""
    out = {}
    for name in ("scratch",) + tuple(methods):
        path = test_dir / f"s{seed}-{name}" / "results.json"
        if not path.is_file():
            return None
        out[name] = accuracies(json.loads(path.read_text())["by_images_per_class"])
    return out


def paired_mean(a: dict, b: dict, size: str, target: str | None) -> float:
    """d_s: the mean over finetuning seeds of a - b, for one target or (target None) the target average."""
    targets = sorted(a[size]) if target is None else [target]
    per_seed_a = [sum(a[size][t][f] for t in targets) / len(targets) for f in range(len(a[size][targets[0]]))]
    per_seed_b = [sum(b[size][t][f] for t in targets) / len(targets) for f in range(len(b[size][targets[0]]))]
    if len(per_seed_a) != len(per_seed_b):
        raise SystemExit(f"unpaired meta-tests at {size} per class: {len(per_seed_a)} and {len(per_seed_b)} seeds")
    return 100 * sum(x - y for x, y in zip(per_seed_a, per_seed_b)) / len(per_seed_a)


def mean_accuracy(accs: dict, size: str, scope: str, targets: list[str]) -> float:
    """The mean over finetuning seeds of one target's accuracy, or of the target average (scope 'average'), points."""
    chosen = targets if scope == "average" else [scope]
    return 100 * sum(sum(accs[size][t]) / len(accs[size][t]) for t in chosen) / len(chosen)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="OUT of experiments/image_study_seeds.sh")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "image-study" / "report.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "image-study" / "meta-seeds.json")
    ap.add_argument("--methods", choices=sorted(METHOD_SETS), default="core", help="core: CTS, Reptile, both "
                    "ablations, MTL; others: CTS with Leap, FOMAML, FOMAML++, iMAML, TIN pretraining")
    args = ap.parse_args()
    methods = METHOD_SETS[args.methods]
    seeds = {0: seed0(args.report, methods)}
    for s in (1, 2):
        found = later_seed(args.runs / "test", s, methods)
        if found is not None:
            seeds[s] = found
    if len(seeds) < 2:
        raise SystemExit(f"only meta-training seed 0 is complete; meta-test seeds 1, 2 first ({args.runs / 'test'})")
    sizes = sorted(seeds[0]["scratch"], key=int)
    targets = sorted(seeds[0]["scratch"][sizes[0]])
    scopes = ["average"] + targets
    compared = pairs(methods)
    comparisons = len(compared) * len(sizes) * len(scopes)
    out: dict = {"methods": list(methods), "meta_training_seeds": sorted(seeds), "sizes": sizes, "targets": targets,
                 "interval": "t over meta-training seeds of the per-seed mean paired difference (points)",
                 "comparisons_read": comparisons, "accuracy": {}, "differences": {}}
    for name in ("scratch",) + tuple(methods):
        out["accuracy"][name] = {n: {scope: mean_ci95([mean_accuracy(seeds[s][name], n, scope, targets)
                                                       for s in sorted(seeds)]) for scope in scopes} for n in sizes}
    for a, b in compared:
        key = f"{a} - {b}"
        out["differences"][key] = {
            n: {scope: interval([paired_mean(seeds[s][a], seeds[s][b], n, None if scope == "average" else scope)
                                 for s in sorted(seeds)], comparisons) for scope in scopes} for n in sizes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"meta-training seeds {sorted(seeds)}; {comparisons} intervals read (Bonferroni for {comparisons})")
    print("| difference (points) | " + " | ".join(f"{n}/class {scope}" for n in sizes for scope in scopes) + " |")
    for key, by_size in out["differences"].items():
        cells = []
        for n in sizes:
            for scope in scopes:
                d = by_size[n][scope]
                cell = f"{d['mean']:+.2f} ± {d['ci95']:.2f}"
                cells.append(f"**{cell}**" if d["excludes_zero"] else cell)
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
