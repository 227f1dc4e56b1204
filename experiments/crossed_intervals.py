"""Intervals that cover the target subsamples (issue "Evidence III", item 3): the random-init study's 3-seed verdicts
read as a crossed design, meta-training seed x finetuning seed.

Every meta-training seed reused finetuning seeds 0-4, and finetuning seed f fixes the target's training subsample,
so the finetuning seeds are a factor shared by all meta-training seeds. The 3-seed interval (a t over the
meta-training seeds of each seed's mean paired difference) is conditional on those 5 subsamples. Read as a crossed
random-effects design, d_sf = mu + a_s + b_f + e_sf with S meta-training and F finetuning seeds:

    Var(mean) = sigma_a^2 / S + sigma_b^2 / F + sigma_e^2 / (S F) = (MS_A + MS_B - MS_E) / (S F)

(the expected mean squares E[MS_A] = sigma_e^2 + F sigma_a^2, E[MS_B] = sigma_e^2 + S sigma_b^2, E[MS_E] = sigma_e^2),
floored at MS_E / (S F), with Satterthwaite's degrees of freedom. Its half-width is printed beside the conditional
one; a verdict "survives" when its interval excludes 0 under both.

    python experiments/crossed_intervals.py --seeds-from c94c979 --out docs/image-study/crossed-intervals.json

Seed 0's per-finetuning-seed accuracies are in docs/image-study/report.json; seeds 1 and 2's meta-tests are read
from git (the run archive left the tree at commit c94c979's successor).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("5", "20", "100")
COMPARISONS = [("cts", "reptile"), ("cts", "leap"), ("cts", "mtl"), ("cts", "cts-no-shift"),
               ("cts", "cts-random-shift"), ("cts", "fomaml"), ("cts", "fomaml++"), ("cts", "imaml"),
               ("cts", "pretrain"), ("cts", "scratch"), ("reptile", "scratch"), ("leap", "scratch"),
               ("mtl", "scratch")]


def _t(q: float, df: float) -> float:
    from scipy.stats import t
    return float(t.ppf(q, df))


def crossed(d: list[list[float]]) -> dict:
    """Both intervals of the mean of an S x F matrix of paired differences (see the module docstring)."""
    S, F = len(d), len(d[0])
    grand = sum(map(sum, d)) / (S * F)
    rows = [sum(r) / F for r in d]
    cols = [sum(d[s][f] for s in range(S)) / S for f in range(F)]
    ms_a = F * sum((r - grand) ** 2 for r in rows) / (S - 1)
    ms_b = S * sum((c - grand) ** 2 for c in cols) / (F - 1)
    ss_e = sum((d[s][f] - rows[s] - cols[f] + grand) ** 2 for s in range(S) for f in range(F))
    ms_e = ss_e / ((S - 1) * (F - 1))
    conditional = _t(0.975, S - 1) * math.sqrt(sum((r - grand) ** 2 for r in rows) / (S - 1) / S)
    numerator = max(ms_a + ms_b - ms_e, ms_e)
    df = numerator ** 2 / (ms_a ** 2 / (S - 1) + ms_b ** 2 / (F - 1) + ms_e ** 2 / ((S - 1) * (F - 1)))
    half = _t(0.975, df) * math.sqrt(numerator / (S * F))
    return {"mean": grand, "ci95_over_meta_seeds": conditional, "ci95_crossed": half, "df_crossed": df,
            "per_meta_seed": rows, "per_finetuning_seed": cols,
            "excludes_zero": abs(grand) > conditional, "excludes_zero_crossed": abs(grand) > half}


def _git_json(commit: str, path: str) -> dict | None:
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, cwd=ROOT, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def accuracies(commit: str) -> dict:
    """{seed: {method: {size: [target-average accuracy per finetuning seed, points]}}}."""
    report = json.loads((ROOT / "docs/image-study/report.json").read_text())
    acc = {0: {r["method"]: {n: [100 * v for v in r["by_images_per_class"][n]["average"]["per_seed"]]
                             for n in SIZES} for r in report["runs"]}}
    acc[0]["scratch"] = {n: [100 * v for v in report["scratch"][n]["average"]["per_seed"]] for n in SIZES}
    methods = {m for pair in COMPARISONS for m in pair}
    for seed in (1, 2):
        acc[seed] = {}
        for m in methods:
            res = _git_json(commit, f"docs/image-study/runs/seeds/test/s{seed}-{m}/results.json")
            if res is not None:
                acc[seed][m] = {n: [100 * v for v in res["by_images_per_class"][n]["average"]["per_seed"]]
                                for n in SIZES}
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds-from", default="c94c979", help="the commit holding the seeds' meta-tests")
    p.add_argument("--out", type=Path, default=ROOT / "docs/image-study/crossed-intervals.json")
    args = p.parse_args()
    acc = accuracies(args.seeds_from)
    out = {"design": "meta-training seed x finetuning seed, crossed (module docstring)",
           "command": "python experiments/crossed_intervals.py --seeds-from " + args.seeds_from, "comparisons": {}}
    for a, b in COMPARISONS:
        for n in SIZES:
            seeds = [s for s in sorted(acc) if a in acc[s] and b in acc[s]]
            if len(seeds) < 2:
                continue
            d = [[x - y for x, y in zip(acc[s][a][n], acc[s][b][n])] for s in seeds]
            r = crossed(d)
            key = f"{a} - {b}, {n} per class"
            out["comparisons"][key] = {**r, "meta_seeds": seeds}
            flag = ("survives" if r["excludes_zero_crossed"] else "does not survive") if r["excludes_zero"] else ""
            print(f"{key:38s} {r['mean']:+6.2f}  +-{r['ci95_over_meta_seeds']:5.2f} (meta seeds)  "
                  f"+-{r['ci95_crossed']:5.2f} (crossed, df {r['df_crossed']:.1f})  {flag}")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
