"""Per-target gains over scratch in the image study (issue "Evidence II", item 6: per-target numbers beside the
averages), from docs/image-study/report.json: for each run, target and images per class, the paired difference
(run minus scratch, same finetuning seed) with its 95% t-interval over the 5 finetuning seeds of the one
meta-trained initialization. Also counts the paired comparisons the study's page reads.

    python experiments/image_study_per_target.py [--report docs/image-study/report.json] [--out docs/image-study/per-target.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trajshift.core.atomic import write_json
from trajshift.core.stats import mean_ci95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", default="docs/image-study/report.json")
    ap.add_argument("--out", default="docs/image-study/per-target.json")
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    scratch = report["scratch"]
    rows = []
    for run in report["runs"]:
        for n, block in run["by_images_per_class"].items():
            for target, res in block["targets"].items():
                base = scratch[n]["targets"][target]["accs"]
                diffs = [100 * (a - b) for a, b in zip(res["accs"], base)]
                mean, ci = mean_ci95(diffs)
                rows.append({"run": run["run"], "images_per_class": int(n), "target": target, "gain": mean,
                             "ci95": ci, "per_seed": diffs})
    # The comparisons of target averages the page reads: each run's gain over scratch and CTS minus each run, at
    # every size (paired.json), and CTS minus Reptile along the Fig. 7 curve. Which survive Bonferroni for all of them?
    paired = json.loads((Path(args.report).parent / "paired.json").read_text())
    average = []
    for run in report["runs"]:
        for n, g in run["gain_over_scratch"].items():
            average.append((f"{run['run']} minus scratch, {n}/class", [100 * v for v in g["per_seed"]]))
    for name, by_n in paired["by_images_per_class"].items():
        for n, d in by_n.items():
            average.append((f"cts minus {name}, {n}/class", d["per_seed"]))
    for name, curve in paired.get("curve", {}).items():
        if name == "reptile":
            average += [(f"cts minus reptile at {p['inner_steps']} inner steps", p["per_seed"]) for p in curve
                        if p.get("per_seed") and p["inner_steps"] not in (0, 4000)]
    from scipy.stats import t as student_t
    count = len(average)
    factor = float(student_t.ppf(1 - 0.05 / (2 * count), 4) / student_t.ppf(0.975, 4))
    survive = []
    for name, per_seed in average:
        mean, ci = mean_ci95(per_seed)            # points (paired.json is in points already)
        if abs(mean) > ci:
            survive.append({"comparison": name, "mean": mean, "ci95": ci, "bonferroni": abs(mean) > factor * ci})
    write_json(args.out, {"what": "run minus scratch, points, paired by finetuning seed (one meta-training seed)",
                          "rows": rows, "average_comparisons": count, "bonferroni_factor": factor,
                          "excluding_zero_at_95": survive})
    targets = sorted({r["target"] for r in rows})
    sizes = sorted({r["images_per_class"] for r in rows})
    print("| run | " + " | ".join(f"{t} {n}/class" for n in sizes for t in targets) + " |")
    print("|---|" + "---|" * (len(sizes) * len(targets)))
    for run in dict.fromkeys(r["run"] for r in rows):
        cells = []
        for n in sizes:
            for t in targets:
                r = next(x for x in rows if x["run"] == run and x["target"] == t and x["images_per_class"] == n)
                text = f"{r['gain']:+.2f} ± {r['ci95']:.2f}"
                cells.append(f"**{text}**" if abs(r["gain"]) > r["ci95"] else text)
        print(f"| {run} | " + " | ".join(cells) + " |")
    print(f"\n{count} paired comparisons of target averages; {len(survive)} exclude 0 at 95%, "
          f"{sum(x['bonferroni'] for x in survive)} after Bonferroni (intervals x {factor:.2f}):")
    for x in survive:
        print(f"  {x['comparison']}: {x['mean']:+.2f} ± {x['ci95']:.2f}{'  (Bonferroni)' if x['bonferroni'] else ''}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
