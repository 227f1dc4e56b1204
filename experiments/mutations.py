"""Deliberate mutations of the code users' numbers depend on, and whether the tests nearest to each catch it.

    python experiments/mutations.py [--out docs/evidence/mutations.json]

Each mutation is one text replacement in a copy of the repository (the working tree is never touched); the copy's
tests named for it run, and the mutation is "caught" when they fail. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEAR = ["tests/test_evaluation_numbers.py", "tests/test_methods_closed_form.py", "tests/test_checkpoint.py",
        "tests/test_invariants.py"]

# (name, file, original text, mutated text)
MUTATIONS = [
    ("meta-test learning-rate schedule deleted", "trajshift/evaluation/protocols.py",
     "        schedule.step()\n", "        pass\n"),
    ("init's BatchNorm statistics: task 0's, not the task mean", "trajshift/runs/train.py",
     "mean = comm.task_mean(values.sum(0, keepdim=True), len(learners.modules))[0]", "mean = values[0]"),
    ("loss_mean written as task 0's loss", "trajshift/training/readback.py",
     "mean = sum(per_task) / len(per_task) if per_task else math.nan", "mean = per_task[0]"),
    ("an augmentation that always flips", "trajshift/data/augment.py",
     "device=where) < 0.5)", "device=where) < 2.0)"),
    ("the shift's sign flipped", "trajshift/methods/shifts.py",
     "    return delta, state\n", "    return -delta, state\n"),
    ("a method whose state is not saved (Leap)", "trajshift/methods/leap.py",
     "    name = \"leap\"\n", ("    name = \"leap\"\n    state_to_dict = staticmethod(lambda state: dict.fromkeys("
                              "(\"acc\", \"prev_theta\", \"prev_loss\", \"prev_grad\")))\n")),
]


def run_one(name: str, rel: str, old: str, new: str, tests: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "docs", "__pycache__",
                                                                  "*.egg-info", ".pytest_cache"))
        path = copy / rel
        text = path.read_text()
        if text.count(old) != 1:
            return {"mutation": name, "file": rel, "applied": False, "caught": None,
                    "note": f"the original text occurs {text.count(old)} times"}
        path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(copy)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              check=False, cwd=copy, env=env, capture_output=True, text=True)
        failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in proc.stdout.splitlines()
                  if line.startswith("FAILED")]
        return {"mutation": name, "file": rel, "applied": True, "caught": proc.returncode != 0,
                "first_failing_test": failed[0] if failed else None, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "evidence" / "mutations.json"))
    args = ap.parse_args()
    rows = [run_one(*m, NEAR) for m in MUTATIONS]
    Path(args.out).write_text(json.dumps({"tests": NEAR, "rows": rows}, indent=1) + "\n")
    print("| mutation | caught | first failing test |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['mutation']} | {'yes' if r['caught'] else 'NO'} | {r.get('first_failing_test') or ''} |")


if __name__ == "__main__":
    main()
