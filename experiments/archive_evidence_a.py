"""Keep Experiment A's unfinished state small and in the tree between sessions (issue "Evidence III", item 6: run
state needed to resume, the newest checkpoint only; removed once a seed's meta-tests are done).

    python experiments/archive_evidence_a.py runs/evidence-a docs/evidence/experiment-a/state      # save
    cp -r docs/evidence/experiment-a/state/. runs/evidence-a/                                     # restore

Per run folder OUT/sS/METHOD/meta_lr=BETA: config.yaml, init.json, summary.json and validation-snapshots.json when
present (what the envelopes read), then, unless seed S is finished, the snapshots at the design's budgets (800,
1,600, 4,000 inner steps: what the meta-tests read) and, for a run without summary.json (stopped mid-way), its
newest checkpoint with its checksum (the run then resumes from it). Per meta-test folder OUT/test/NAME:
results.json and finished-seeds.jsonl. A seed is finished when every method's envelope at 800 and 4,000 steps is
complete and every meta-test it calls for (scratch's included) has its results.json: its snapshots leave the tree
then, and `python experiments/evidence_a.py DEST --final` still reads its verdicts from what is kept.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_a import METHODS, envelopes, meta_test_jobs, primary

BUDGETS = (800, 1600, 4000)


def finished_seeds(out: Path, budgets=BUDGETS) -> set[str]:
    """The seeds whose envelopes are complete and whose every meta-test has finished."""
    env = envelopes(out, budgets)
    jobs = meta_test_jobs(out, env, budgets)
    done = set()
    for seed, by_method in env.items():
        complete = all(by_method.get(m, {}).get(str(b)) for m in METHODS for b in primary(budgets))
        mine = [folder for _, folder, first in jobs if first == 5 * int(seed)]
        if complete and mine and all((Path(folder) / "results.json").is_file() for folder in mine):
            done.add(seed)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--skip-seeds", default="", help="comma-separated seeds already archived as results")
    args = ap.parse_args()
    skip = {s for s in args.skip_seeds.split(",") if s}
    finished = finished_seeds(args.out)
    if args.dest.exists():
        shutil.rmtree(args.dest)
    kept = 0
    for run in sorted(args.out.glob("s*/*/meta_lr=*")):
        if not run.is_dir() or run.parents[1].name[1:] in skip:
            continue
        target = args.dest / run.relative_to(args.out)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "init.json", "summary.json", "validation-snapshots.json"):
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        if run.parents[1].name[1:] in finished:
            kept += 1
            continue
        for steps in (0, *BUDGETS):
            for ext in (".safetensors", ".json"):
                snap = run / "snapshots" / f"step-{steps:08d}{ext}"
                if snap.is_file():
                    (target / "snapshots").mkdir(exist_ok=True)
                    shutil.copy2(snap, target / "snapshots" / snap.name)
        if not (run / "summary.json").is_file():
            ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            if ckpts:
                (target / "checkpoints").mkdir(exist_ok=True)
                for f in (ckpts[-1], ckpts[-1].with_name(ckpts[-1].name + ".sha256")):
                    shutil.copy2(f, target / "checkpoints" / f.name)
        kept += 1
    for test in sorted((args.out / "test").glob("*")) if (args.out / "test").is_dir() else []:
        if test.is_dir() and test.name.split("-")[0][1:] not in skip:
            for name in ("results.json", "finished-seeds.jsonl"):
                if (test / name).is_file():
                    (args.dest / "test" / test.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(test / name, args.dest / "test" / test.name / name)
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file()) if args.dest.exists() else 0
    print(f"kept {kept} run folders in {args.dest} ({size / 2 ** 20:.1f} MiB; finished seeds, results only: "
          f"{sorted(finished, key=int) or 'none'})")


if __name__ == "__main__":
    main()
