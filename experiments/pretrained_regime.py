"""Collect the Table 1 / Fig. 9 regime (experiments/pretrained_regime.sh) into docs/evidence/pretrained-regime.json
and docs/evidence/pretrained-regime.png.

    python experiments/pretrained_regime.py runs/ev2 [--out docs/evidence]
    python experiments/pretrained_regime.py runs/ev2-fashion-mnist --target fashion-mnist   # a further target

A target other than CIFAR-10 (the meta-tests of experiments/pretrained_target.sh) is written to
pretrained-regime-TARGET.json and .png.

Statistics (fixed before the runs, docs/pretrained.md):
* each meta-test finetunes with seeds 0-4, and a seed fixes the training subsample, so every initialization is
  paired with None (the base) by finetuning seed;
* per meta-training seed s, the gain is d_s = mean over finetuning seeds f of (acc[s, f] - acc_None[f]);
* the interval is a t-interval over the meta-training seeds of d_s (n = 3, 2 degrees of freedom): it holds the
  meta-training variance (heads, data order) and the finetuning variance averaged within each seed;
* CTS - Reptile is paired by meta-training seed (same base, heads and data order) the same way;
* "the gain grows as the target shrinks" is read from g_s = d_s(250 images) - d_s(4,000 images) per method.
Every comparison read is counted, and the Bonferroni-corrected interval for that count is given beside the 95% one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trajshift.core.atomic import finite
from trajshift.core.stats import interval_over_seeds as interval
from trajshift.core.stats import mean_ci95

METHODS = ("cts", "reptile", "mtl")
SEEDS = (0, 1, 2)


def accs(test_dir: Path, target: str = "cifar10") -> dict[str, list[float]]:
    """{images per class: [accuracy per finetuning seed]} of one meta-test, on `target`."""
    report = json.loads((test_dir / "results.json").read_text())
    return {str(n): r["targets"][target]["accs"] for n, r in report["by_images_per_class"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence")
    ap.add_argument("--target", default="cifar10", help="the meta-test target (default: CIFAR-10, the design's first)")
    args = ap.parse_args()
    name = "pretrained-regime" if args.target == "cifar10" else f"pretrained-regime-{args.target}"
    none = accs(args.runs / "test" / "none", args.target)
    sizes = sorted(none, key=int)
    report = json.loads((args.runs / "test" / "none" / "results.json").read_text())
    test_images = f"{report['targets'][args.target]['test_images']:,}"
    found = {(s, m): accs(args.runs / "test" / f"s{s}-{m}", args.target) for s in SEEDS for m in METHODS
             if (args.runs / "test" / f"s{s}-{m}" / "results.json").is_file()}
    # The comparisons read: each method against None, and CTS against Reptile, at each size; and the trend per method.
    comparisons = len(sizes) * (len(METHODS) + 1) + (len(METHODS) if len(sizes) > 1 else 0)

    def gain(s, m, n):  # d_s: mean over finetuning seeds of the paired difference with None
        return sum(a - b for a, b in zip(found[(s, m)][n], none[n])) / len(none[n])

    out: dict = {"setting": {"base": "conv4 width 32, pretrain on Tiny ImageNet classes 0:160, 10,000 steps",
                             "sources": "4 groups of 40 classes of 0:160 (configs/tin-groups.csv)",
                             "meta_training": "configs/paper-4.3-cpu.yaml: K = 200, M = 10, batch 64, no weight decay",
                             "meta_validation": "Tiny ImageNet classes 160:200, 10 images per class, 200 steps, 5 seeds",
                             "target": f"{args.target} (test set {test_images} images), "
                                       f"{'/'.join(sizes)} images per class",
                             "meta_test": "table1 protocol, 500 steps, finetuning seeds 0-4",
                             "interval": "t over meta-training seeds of the per-seed mean paired gain",
                             "comparisons_read": comparisons},
                 "none": {n: mean_ci95(none[n]) for n in sizes}, "accuracy": {}, "gain_over_none": {},
                 "cts_minus_reptile": {}, "gain_250_minus_4000": {}}
    sweep = args.runs / "s0" / "sweep.json"
    if sweep.is_file():
        s0 = json.loads(sweep.read_text())["methods"]
        out["meta_validation_seed0"] = {m: {"chosen": v["chosen"], "points": [
            {"values": p["values"], "score": p.get("score"), "ci95": p.get("ci95")} for p in v["points"]]}
            for m, v in s0.items()}
    for m in METHODS:
        seeds = [s for s in SEEDS if (s, m) in found]
        if not seeds:
            continue
        out["accuracy"][m] = {n: {"per_meta_seed": [sum(found[(s, m)][n]) / len(found[(s, m)][n]) for s in seeds]}
                              for n in sizes}
        out["gain_over_none"][m] = {n: interval([gain(s, m, n) for s in seeds], comparisons) for n in sizes}
        # Within each meta-training seed: the paired interval over finetuning seeds (no meta-training variance).
        for n in sizes:
            out["gain_over_none"][m][n]["within_meta_seed"] = {
                str(s): mean_ci95([a - b for a, b in zip(found[(s, m)][n], none[n])]) for s in seeds}
        if len(sizes) > 1:
            out["gain_250_minus_4000"][m] = interval(
                [gain(s, m, sizes[0]) - gain(s, m, sizes[-1]) for s in seeds], comparisons)
    both = [s for s in SEEDS if (s, "cts") in found and (s, "reptile") in found]
    if both:
        out["cts_minus_reptile"] = {n: interval([gain(s, "cts", n) - gain(s, "reptile", n) for s in both],
                                                comparisons) for n in sizes}
        for n in sizes:
            out["cts_minus_reptile"][n]["within_meta_seed"] = {
                str(s): mean_ci95([a - b for a, b in zip(found[(s, "cts")][n], found[(s, "reptile")][n])])
                for s in both}
    args.out.mkdir(parents=True, exist_ok=True)
    # strict JSON: an interval over one meta-training seed is undefined, written null
    (args.out / f"{name}.json").write_text(json.dumps(finite(out), indent=1, allow_nan=False) + "\n")
    _plot(args.out / f"{name}.png", out, sizes, args.target)
    rows = {**{f"{m} - none": by_n for m, by_n in out["gain_over_none"].items()},
            **({"cts - reptile": out["cts_minus_reptile"]} if both else {})}
    for label, by_n in rows.items():
        print(label, "  ".join(f"{10 * int(n)} imgs: {_read(v)}" for n, v in by_n.items()))


def _read(v: dict) -> str:
    """'+0.86 points (± over meta-training seeds; within seed 0: ± ...)': the interval over meta-training seeds
    only where there are two or more, and each seed's own interval over its finetuning seeds beside it."""
    over = f" ± {100 * v['ci95']:.2f}" if len(v["per_meta_seed"]) > 1 else " (one meta-training seed: no interval over seeds)"
    own = ", ".join(f"seed {s} {100 * m:+.2f} ± {100 * c:.2f}" for s, (m, c) in v["within_meta_seed"].items())
    return f"{100 * v['mean']:+.2f}{over}; within {own}"


def _plot(path: Path, out: dict, sizes: list[str], target: str = "cifar10") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [10 * int(n) for n in sizes]
    for i, (m, by_n) in enumerate(out["gain_over_none"].items()):
        shift = 1 + 0.04 * (i - 1)                     # side by side on the log axis, so the bars do not overlap
        ax.errorbar([v * shift for v in x], [100 * by_n[n]["mean"] for n in sizes],
                    yerr=[100 * by_n[n]["ci95"] for n in sizes], marker="o", capsize=3, label=m)
    ax.axhline(0, color="k", lw=0.8, ls="--", label="None (the pretrained base)")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"{'CIFAR-10' if target == 'cifar10' else target} training images")
    ax.set_ylabel("test accuracy gain over None (points)")
    counts = ", ".join(f"{m} {len(by_n[sizes[0]]['per_meta_seed'])}" for m, by_n in out["gain_over_none"].items())
    ax.set_title(f"Gain over the pretrained base; 95% CI over meta-training seeds\n({counts}; none with 1)",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
