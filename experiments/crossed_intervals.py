"""Intervals that cover the target subsamples (issue "Evidence III", item 3): the random-init study's 3-seed verdicts
read as a crossed design, meta-training seed x finetuning seed.

Every meta-training seed reused finetuning seeds 0-4, and finetuning seed f fixes the target's training subsample,
so the finetuning seeds are a factor shared by all meta-training seeds. The 3-seed interval (a t over the
meta-training seeds of each seed's mean paired difference) is conditional on those 5 subsamples. Read as a crossed
random-effects design, d_sf = mu + a_s + b_f + e_sf with S meta-training and F finetuning seeds:

    Var(mean) = sigma_a^2 / S + sigma_b^2 / F + sigma_e^2 / (S F) = (MS_A + MS_B - MS_E) / (S F)

(the expected mean squares E[MS_A] = sigma_e^2 + F sigma_a^2, E[MS_B] = sigma_e^2 + S sigma_b^2, E[MS_E] = sigma_e^2),
floored at MS_E / (S F), with Satterthwaite's degrees of freedom. Its half-width is printed beside the conditional
one; a verdict "survives" when its interval excludes 0 under both. Equivalence (two one-sided tests at 5% each):
"equivalent within +-0.44" (the paper's 9-target average Ours - Reptile gap) when the 90% interval lies inside
(-0.44, +0.44), under each reading.

Table 1's regime (``--regime pretrained``): the committed meta-tests of docs/evidence/pretrained-regime{,-fashion-mnist}/
(gains over None, CTS - Reptile, Fig. 9's gain at 250 minus 4,000 images and, once run, the gains over the control
"None, trained on"), into docs/evidence/pretrained-regime-crossed.json:

    python experiments/crossed_intervals.py --regime pretrained --out docs/evidence/pretrained-regime-crossed.json

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
MARGIN = 0.44          # the equivalence margin: the paper's 9-target average Ours - Reptile gap in Table 1 (points)
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
    # Two one-sided tests at 5% each: "equivalent within +-m" when the 90% interval lies inside (-m, +m).
    conditional90 = _t(0.95, S - 1) * math.sqrt(sum((r - grand) ** 2 for r in rows) / (S - 1) / S)
    half90 = _t(0.95, df) * math.sqrt(numerator / (S * F))
    return {"mean": grand, "ci95_over_meta_seeds": conditional, "ci95_crossed": half, "df_crossed": df,
            "ci90_over_meta_seeds": conditional90, "ci90_crossed": half90,
            f"equivalent_within_{MARGIN}": abs(grand) + conditional90 < MARGIN,
            f"equivalent_within_{MARGIN}_crossed": abs(grand) + half90 < MARGIN,
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


PRETRAINED = {"cifar10": "docs/evidence/pretrained-regime", "fashion-mnist": "docs/evidence/pretrained-regime-fashion-mnist"}
PRETRAINED_SIZES = ("25", "100", "400")         # images per class: 250, 1,000 and 4,000 training images


def pretrained_accuracies(target: str) -> dict:
    """Table 1's regime: {name: {size: [accuracy per finetuning seed 0-4, points]}} for none, s{seed}-{method} and
    control-s{seed} (Evidence III item 2), from the committed meta-tests."""
    folder = ROOT / PRETRAINED[target]
    out = {}
    for path in sorted(folder.glob("*-results.json")):
        res = json.loads(path.read_text())
        out[path.name[:-len("-results.json")]] = {
            n: [100 * v for v in res["by_images_per_class"][n]["targets"][target]["accs"]]
            for n in PRETRAINED_SIZES if n in res["by_images_per_class"]}
    return out


def pretrained_comparisons(target: str) -> dict:
    """Every 3-seed verdict of Table 1's regime (gain over None; CTS - Reptile) and, where the control's meta-tests
    exist, each method's gain over "None, trained on" and the control's own gain over None, as crossed designs.
    Meta-training seed s is paired with control seed s when the control has that seed, else with control seed 0
    (then the control's own training variance is not in the interval: "control_seeds" says which were used)."""
    acc = pretrained_accuracies(target)
    seeds = sorted({int(k[1]) for k in acc if k[:1] == "s" and k[1:2].isdigit()})
    controls = sorted(int(k.split("-s")[1]) for k in acc if k.startswith("control-s"))
    out = {}

    def add(key, rows, used):
        r = crossed(rows)
        out[key] = {**r, **used}
        flag = ("survives" if r["excludes_zero_crossed"] else "does not survive") if r["excludes_zero"] else ""
        eq = {(True, True): "equivalent (both)", (True, False): "equivalent (meta seeds only)"}.get(
            (r[f"equivalent_within_{MARGIN}"], r[f"equivalent_within_{MARGIN}_crossed"]), "")
        print(f"{target:13s} {key:44s} {r['mean']:+6.2f}  +-{r['ci95_over_meta_seeds']:5.2f} (meta seeds)  "
              f"+-{r['ci95_crossed']:5.2f} (crossed, df {r['df_crossed']:.1f})  {flag} {eq}")
    for n in PRETRAINED_SIZES:
        if "none" not in acc or n not in acc["none"]:
            continue
        for m in ("cts", "reptile", "mtl"):
            ms = [s for s in seeds if n in acc.get(f"s{s}-{m}", {})]
            if len(ms) >= 2:
                add(f"{m} - none, {n} per class", [[a - b for a, b in zip(acc[f"s{s}-{m}"][n], acc["none"][n])]
                                                   for s in ms], {"meta_seeds": ms})
            if controls and len(ms) >= 2:
                pair = {s: s if s in controls else controls[0] for s in ms}
                if all(n in acc[f"control-s{c}"] for c in pair.values()):
                    add(f"{m} - control, {n} per class",
                        [[a - b for a, b in zip(acc[f"s{s}-{m}"][n], acc[f"control-s{pair[s]}"][n])] for s in ms],
                        {"meta_seeds": ms, "control_seeds": [pair[s] for s in ms]})
        both = [s for s in seeds if n in acc.get(f"s{s}-cts", {}) and n in acc.get(f"s{s}-reptile", {})]
        if len(both) >= 2:
            add(f"cts - reptile, {n} per class", [[a - b for a, b in zip(acc[f"s{s}-cts"][n], acc[f"s{s}-reptile"][n])]
                                                  for s in both], {"meta_seeds": both})
        cs = [c for c in controls if n in acc[f"control-s{c}"]]
        if len(cs) >= 2:
            add(f"control - none, {n} per class", [[a - b for a, b in zip(acc[f"control-s{c}"][n], acc["none"][n])]
                                                   for c in cs], {"control_seeds": cs})
        elif len(cs) == 1:           # one control seed: the interval over finetuning seeds only
            d = [a - b for a, b in zip(acc[f"control-s{cs[0]}"][n], acc["none"][n])]
            mean = sum(d) / len(d)
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
            half = _t(0.975, len(d) - 1) * sd / math.sqrt(len(d))
            out[f"control - none, {n} per class"] = {"mean": mean, "ci95_over_finetuning_seeds": half,
                                                      "per_finetuning_seed": d, "control_seeds": cs}
            print(f"{target:13s} control - none, {n} per class {mean:+6.2f} +-{half:5.2f} (finetuning seeds, "
                  f"control seed {cs[0]} only)")
    for m in ("cts", "reptile", "mtl"):           # Fig. 9: the gain at 250 images minus the gain at 4,000
        lo, hi = PRETRAINED_SIZES[0], PRETRAINED_SIZES[-1]
        ms = [s for s in seeds if {lo, hi} <= set(acc.get(f"s{s}-{m}", {}))]
        if len(ms) >= 2 and {lo, hi} <= set(acc.get("none", {})):
            add(f"{m}: gain at {lo} - gain at {hi} per class",
                [[(a - b) - (c - d) for a, b, c, d in zip(acc[f"s{s}-{m}"][lo], acc["none"][lo], acc[f"s{s}-{m}"][hi],
                                                          acc["none"][hi])] for s in ms], {"meta_seeds": ms})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds-from", default="c94c979", help="the commit holding the seeds' meta-tests")
    p.add_argument("--out", type=Path, default=ROOT / "docs/image-study/crossed-intervals.json")
    p.add_argument("--regime", choices=("random-init", "pretrained"), default="random-init",
                   help="pretrained: Table 1's regime (docs/evidence/pretrained-regime*), with the control where run")
    args = p.parse_args()
    if args.regime == "pretrained":
        out = {"design": "meta-training seed x finetuning seed, crossed (module docstring)",
               "command": "python experiments/crossed_intervals.py --regime pretrained --out "
                          + str(args.out),
               "targets": {t: pretrained_comparisons(t) for t in PRETRAINED}}
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
        return
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
            eq = {(True, True): "equivalent (both)", (True, False): "equivalent (meta seeds only)"}.get(
                (r[f"equivalent_within_{MARGIN}"], r[f"equivalent_within_{MARGIN}_crossed"]), "")
            print(f"{key:38s} {r['mean']:+6.2f}  +-{r['ci95_over_meta_seeds']:5.2f} (meta seeds)  "
                  f"+-{r['ci95_crossed']:5.2f} (crossed, df {r['df_crossed']:.1f})  {flag} {eq}")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
