"""Paired differences between the image study's initializations: for every run, CTS minus that run, seed by seed
(the same target subsample, head and batch order for both), at each images-per-class setting and at each snapshot of
the Fig. 7 curves; mean and 95% CI over the 5 seeds.

    python experiments/image_study_paired.py [--report docs/image-study/report.json] [--out docs/image-study/paired.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trajshift.core.atomic import write_json
from trajshift.core.stats import mean_ci95


def paired(a: list[float], b: list[float]) -> dict:
    diffs = [100 * (x - y) for x, y in zip(a, b)]
    mean, ci = mean_ci95(diffs)
    return {"mean": mean, "ci95": ci, "per_seed": diffs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", default="docs/image-study/report.json")
    ap.add_argument("--out", default="docs/image-study/paired.json")
    ap.add_argument("--reference", default="cts")
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    runs = {r["method"]: r for r in report["runs"]}
    ref = runs[args.reference]
    out: dict = {"reference": args.reference, "difference": f"{args.reference} minus the run, percentage points",
                 "by_images_per_class": {}, "curve": {}}
    print(f"| {args.reference} minus | " + " | ".join(f"{n}/class" for n in report["images_per_class"]) + " |")
    print("|---" * (len(report["images_per_class"]) + 1) + "|")
    for method, run in runs.items():
        if method == args.reference:
            continue
        row = {}
        for n in report["images_per_class"]:
            row[str(n)] = paired(ref["by_images_per_class"][str(n)]["average"]["per_seed"],
                                 run["by_images_per_class"][str(n)]["average"]["per_seed"])
        out["by_images_per_class"][method] = row
        steps = {p["inner_steps"]: p["per_seed"] for p in run.get("curve", [])}
        out["curve"][method] = [{"inner_steps": p["inner_steps"], **paired(p["per_seed"], steps[p["inner_steps"]])}
                                for p in ref.get("curve", []) if p["inner_steps"] in steps]
        print(f"| {method} | " + " | ".join(f"{v['mean']:+.2f} ± {v['ci95']:.2f}" for v in row.values()) + " |")
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
