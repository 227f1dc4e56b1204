"""Copy the image study's results from its run folders into docs/image-study/ (what the repository keeps): every
sweep's sweep.json and sweep.png, each run's validation.json, the chosen runs' init.pt (+ model spec), the common
random initialization (the scratch baseline), and the report's JSON, table and figures when the report has run.

    python experiments/collect_image_study.py [--runs runs/image-study] [--docs docs/image-study]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/image-study")
    ap.add_argument("--docs", default="docs/image-study")
    args = ap.parse_args()
    runs, docs = Path(args.runs), Path(args.docs)
    (docs / "inits").mkdir(parents=True, exist_ok=True)
    (docs / "sweeps").mkdir(exist_ok=True)
    table = []
    for sweep in sorted(runs.glob("sweep*/sweep.json")):
        name = sweep.parent.name
        shutil.copy(sweep, docs / "sweeps" / f"{name}.json")
        if (sweep.parent / "sweep.png").exists():
            shutil.copy(sweep.parent / "sweep.png", docs / "sweeps" / f"{name}.png")
        for method, entry in json.loads(sweep.read_text())["methods"].items():
            for p in entry["points"]:
                table.append({"sweep": name, "method": method, **p, "chosen": p["values"] == entry["chosen"]})
            if entry.get("chosen_run"):
                run = sweep.parent / entry["chosen_run"]
                for suffix in (".pt", ".json"):
                    src = run / f"init{suffix}"
                    if src.exists():
                        shutil.copy(src, docs / "inits" / f"{method}{suffix}")
                snap0 = run / "snapshots" / "step-00000000.pt"
                if snap0.exists() and not (docs / "inits" / "scratch.pt").exists():
                    shutil.copy(snap0, docs / "inits" / "scratch.pt")
                for src in (run / "config.yaml", run / "summary.json"):
                    if src.exists():
                        shutil.copy(src, docs / "inits" / f"{method}.{src.name}")
                import yaml
                model = yaml.safe_load((run / "config.yaml").read_text())["model"]
                spec = {"model": model, "head": "not included (fc.*)", "method": method,
                        "meta_lr": entry["chosen"], "run": str(run)}
                (docs / "inits" / f"{method}.json").write_text(json.dumps(spec, indent=1))
                if not (docs / "inits" / "scratch.json").exists():
                    (docs / "inits" / "scratch.json").write_text(json.dumps(
                        {"model": model, "head": "not included (fc.*)", "method": "none: the common random "
                         "initialization every method started from (seed 0)"}, indent=1))
    if (runs / "sweep" / "scratch-validation.json").exists():
        shutil.copy(runs / "sweep" / "scratch-validation.json", docs / "sweeps" / "scratch-validation.json")
    (docs / "validation.json").write_text(json.dumps(table, indent=1))
    for report in ("report", "report-partial"):
        folder = runs / report
        if folder.is_dir():
            target = docs if report == "report" else docs / "partial"
            target.mkdir(exist_ok=True)
            for f in folder.iterdir():
                if f.suffix in (".json", ".md", ".png"):
                    shutil.copy(f, target / f.name)
    print(f"collected {len(table)} sweep points into {docs}")


if __name__ == "__main__":
    main()
