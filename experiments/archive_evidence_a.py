"""Keep Experiment A's results and its unfinished state small and in the tree between sessions (issue "Evidence III",
item 6: run state needed to resume, the newest checkpoint only; removed once a seed's meta-tests are done).

    python experiments/archive_evidence_a.py runs/evidence-a [runs/evidence-b ...] docs/evidence/experiment-a  # save
    python experiments/archive_evidence_a.py --restore docs/evidence/experiment-a runs/evidence-a [runs/evidence-b]
    python experiments/evidence_a.py docs/evidence/experiment-a/out --final --dest ...      # read the finished seeds

Several OUT folders are the lanes of experiments/evidence_a_lanes.sh (seed s runs in lane s mod the number of lanes,
each lane its own OUT, so that no two evidence_a.sh drivers share a job list); --restore puts each unfinished seed's
state back in its lane's folder by the same rule (one folder: everything there).

A seed is finished when every method's envelope at 800 and 4,000 steps is complete and every meta-test it calls for
(scratch's included) has its results.json. DEST/out/ gains each finished seed, results only, in evidence_a.sh's
layout (per run folder sS/METHOD/meta_lr=BETA: config.yaml, init.json, summary.json, validation-snapshots.json; per
meta-test folder test/NAME: results.json, finished-seeds.jsonl): what `evidence_a.py --final` reads. Seeds archived
there by an earlier stop are kept. DEST/state/ is rewritten with the unfinished seeds: the same files, the
snapshots at the design's budgets (0, 800, 1,600, 4,000 inner steps: what validation and the meta-tests read) and,
for a run stopped mid-way (no summary.json), its newest checkpoint with its checksum (the run resumes from it).
Only state/ is restored: a finished seed's runs have no snapshots left, and `trajshift validate` would refuse them.
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


def _copy(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def restore(dest: Path, lanes: list[Path]) -> None:
    """DEST/state/ back into the lanes' OUT folders: seed s's runs and meta-tests into lanes[s % len(lanes)]."""
    state = dest / "state"
    if not state.is_dir():
        sys.exit(f"{state}: nothing to restore (no unfinished seed was archived)")
    def lane(name: str) -> Path:              # "s3" or "s3-cts-b0.02-at800"
        return lanes[int(name.split("-")[0][1:]) % len(lanes)]
    for seed in sorted(state.glob("s*")):
        shutil.copytree(seed, lane(seed.name) / seed.name, dirs_exist_ok=True)
    for test in sorted((state / "test").glob("s*")):
        shutil.copytree(test, lane(test.name) / "test" / test.name, dirs_exist_ok=True)
    for out in lanes:
        print(f"{out}: seeds {sorted(p.name for p in out.glob('s*') if p.is_dir()) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restore", action="store_true",
                    help="the other way: DEST first, then the lanes' OUT folders to fill from DEST/state/")
    ap.add_argument("folders", type=Path, nargs="+",
                    help="evidence_a.sh's OUT folders (runs/evidence-a [runs/evidence-b ...]), then DEST "
                         "(docs/evidence/experiment-a: DEST/out/ and DEST/state/ are written); with --restore DEST first")
    args = ap.parse_args()
    if len(args.folders) < 2:
        ap.error("give at least one OUT folder and DEST")
    if args.restore:
        return restore(args.folders[0], args.folders[1:])
    outs, dest = args.folders[:-1], args.folders[-1]
    finished = set().union(*(finished_seeds(out) for out in outs))
    results, state = dest / "out", dest / "state"
    if state.exists():
        shutil.rmtree(state)
    for seed in finished:                      # a finished seed's results replace what an older stop kept of it
        for old in [results / f"s{seed}", *(results / "test").glob(f"s{seed}-*")]:
            if old.is_dir():
                shutil.rmtree(old)
    for out, run in ((lane, run) for lane in outs for run in sorted(lane.glob("s*/*/meta_lr=*"))):
        if not run.is_dir():
            continue
        done = run.parents[1].name[1:] in finished
        target = (results if done else state) / run.relative_to(out)
        _copy(run, target, ("config.yaml", "init.json", "summary.json", "validation-snapshots.json"))
        if done:
            continue
        _copy(run / "snapshots", target / "snapshots",
              [f"step-{steps:08d}{ext}" for steps in (0, *BUDGETS) for ext in (".safetensors", ".json")])
        if not (run / "summary.json").is_file():
            ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            if ckpts:
                _copy(run / "checkpoints", target / "checkpoints", (ckpts[-1].name, ckpts[-1].name + ".sha256"))
    for test in (test for lane in outs for test in sorted((lane / "test").glob("*"))):
        if test.is_dir():
            done = test.name.split("-")[0][1:] in finished
            _copy(test, (results if done else state) / "test" / test.name, ("results.json", "finished-seeds.jsonl"))

    def mib(folder: Path) -> float:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2 ** 20 if folder.exists() else 0

    print(f"{results}: finished seeds {sorted(finished, key=int) or 'none'} added ({mib(results):.1f} MiB in all); "
          f"{state}: the unfinished ones ({mib(state):.1f} MiB)")


if __name__ == "__main__":
    main()
