"""Keep the image study's run state in the repository between sessions, and put it back.

    python experiments/archive_image_study.py save     # runs/image-study -> docs/image-study/runs (compact)
    python experiments/archive_image_study.py restore  # docs/image-study/runs -> runs/image-study
    # any other tree of runs, e.g. the convergence regime, whose every snapshot can be meta-tested:
    python experiments/archive_image_study.py save --runs runs/conv --archive docs/evidence/convergence-regime/runs \
        --all-snapshots
    # ... and once snapshots are scored, only those a meta-test needs (the working tree stays small):
    python experiments/archive_image_study.py save --runs runs/conv --archive docs/evidence/convergence-regime/runs \
        --all-snapshots --scored-keep runs/conv/meta-test-jobs.txt runs/conv/meta-test-pending.txt

With --thin-metrics (the convergence regime, whose 10,000-step runs log about 2.5 MB each) every metrics row is kept,
so a resumed run's row count still matches its checkpoint, but without its per-task arrays ("loss", "tasks": read
only by the TensorBoard export) and with floats to 6 significant digits: the studies read loss_mean, gap_norm and
delta_norm, and the archive is about a sixth of the size. The full rows of runs archived before stay in git history.

A run folder keeps what the study needs from it: config.yaml, summary.json, validation.json, failed.json, its
report-cache (meta-test results), validation-snapshots.json, init.pt or init.safetensors (a finished run is then
skipped by the sweep), its snapshots (for the report's Fig. 7) and metrics.jsonl (gzip; Fig. 6a); an unfinished run
also keeps its newest checkpoint, so the sweep resumes it where it stopped. Sweep folders keep sweep.json and sweep.png.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

KEEP = ("config.yaml", "summary.json", "validation.json", "validation-snapshots.json", "failed.json", "init.pt",
        "init.safetensors", "init.json")


def _best_runs(runs: Path) -> set[Path]:
    """Per method folder, the run with the best validation score so far (only its snapshots can still be needed by
    the report), and every run not scored yet (it may become the best)."""
    keep, best = set(), {}
    for run in {p.parent for p in runs.rglob("config.yaml")}:
        val = run / "validation.json"
        if not val.exists():
            keep.add(run)
            continue
        score = json.loads(val.read_text())["score"]
        if run.parent not in best or score > best[run.parent][0]:
            best[run.parent] = (score, run)
    return keep | {run for _, run in best.values()}


def _scored_but_unneeded(runs: Path, keep_files: list[Path]) -> set[Path]:
    """Snapshot files (relative to runs, with their .json sidecars) that no line of the keep_files (e.g.
    meta-test-jobs.txt: "SNAPSHOT_FILE TEST_FOLDER", and meta-test-pending.txt: the scored snapshots of envelopes
    whose runs are still training) names and that are either scored in their run's
    validation-snapshots.json (the score is kept, the file is not needed any more) or left unscored on purpose: the
    run has finished and its last snapshot is scored, so its scoring is over (snapshots are scored in step order)
    and `validate --at` skipped the rest."""
    named = {Path(line.split()[0]).resolve() for keep_file in keep_files
             for line in keep_file.read_text().splitlines() if line.strip()}
    drop = set()
    for scored in runs.rglob("validation-snapshots.json"):
        run = scored.parent
        done = {run / "snapshots" / r["snapshot"] for r in json.loads(scored.read_text()).values()}
        written = sorted((run / "snapshots").glob("step-*.safetensors"))
        if (run / "summary.json").exists() and written and written[-1] in done:
            done |= set(written)
        for snap in done:
            if snap.resolve() not in named:
                drop |= {snap.relative_to(runs), snap.with_suffix(".json").relative_to(runs)}
    return drop


PER_TASK = ("loss", "tasks")


def thin_row(line: str) -> str:
    """One metrics row without its per-task arrays, every float to 6 significant digits (a cut line is kept as it
    is: a resumed run's truncation drops it by its row count)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return line
    return json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v
                       for k, v in row.items() if k not in PER_TASK})


def save(runs: Path, archive: Path, all_snapshots: bool = False, scored_keep: list[Path] | None = None,
         thin_metrics: bool = False) -> None:
    needed = {p.parent for p in runs.rglob("config.yaml")} if all_snapshots else _best_runs(runs)
    drop = _scored_but_unneeded(runs, scored_keep) if scored_keep else set()
    for f in runs.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(runs)
        parts = rel.parts
        target = archive / rel
        in_needed_run = any(f.is_relative_to(r) for r in needed)
        keep = (f.name in KEEP or f.name in ("sweep.json", "sweep.png", "scratch-validation.json")
                or "report-cache" in parts or ("snapshots" in parts and in_needed_run and rel not in drop))
        if f.name == "metrics.jsonl":
            target = target.with_name("metrics.jsonl.gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "rb") as src, open(target, "wb") as raw, \
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as dst:
                if thin_metrics:
                    dst.write("".join(thin_row(line) + "\n" for line in src.read().decode().splitlines()).encode())
                else:
                    shutil.copyfileobj(src, dst)
            continue
        if "checkpoints" in parts:
            run = f.parent.parent
            newest = sorted(p for p in f.parent.glob("ckpt-*.pt"))[-1:]
            unfinished = not (run / "summary.json").exists()
            keep = unfinished and newest and (f == newest[0] or f.name == newest[0].name + ".sha256")
        if keep:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    for rel in drop:                    # an earlier save may hold them
        (archive / rel).unlink(missing_ok=True)
    # An earlier save may have kept a checkpoint of a run that has finished since: drop it (copying only adds).
    for ckpt in list(archive.rglob("checkpoints/ckpt-*")):
        if (ckpt.parent.parent / "summary.json").exists():
            ckpt.unlink()
    print(f"saved {runs} into {archive}")


def restore(archive: Path, runs: Path) -> None:
    for f in archive.rglob("*"):
        if not f.is_file():
            continue
        target = runs / f.relative_to(archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.name == "metrics.jsonl.gz":
            with gzip.open(f, "rb") as src, open(target.with_name("metrics.jsonl"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        elif not target.exists():
            shutil.copy2(f, target)
    print(f"restored {archive} into {runs}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("--runs", default="runs/image-study")
    ap.add_argument("--archive", default="docs/image-study/runs")
    ap.add_argument("--all-snapshots", action="store_true",
                    help="keep every run's snapshots (default: only the best run's per method folder)")
    ap.add_argument("--scored-keep", type=Path, nargs="+", default=None, metavar="FILE",
                    help="drop the snapshots already scored on meta-validation unless a FILE names them (e.g. the "
                         "convergence regime's meta-test-jobs.txt and meta-test-pending.txt); unscored ones are kept")
    ap.add_argument("--thin-metrics", action="store_true",
                    help="archive metrics rows without per-task arrays, floats to 6 significant digits")
    args = ap.parse_args()
    if args.action == "save":
        save(Path(args.runs), Path(args.archive), args.all_snapshots, args.scored_keep, args.thin_metrics)
    else:
        restore(Path(args.archive), Path(args.runs))
