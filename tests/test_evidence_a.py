"""experiments/evidence_a.py (Experiment A's envelopes, meta-test jobs and pre-registered decision rule) and
experiments/archive_evidence_a.py (results of finished seeds apart from the unfinished seeds' state, over one or more
lanes), checked on hand-made trees; the expected envelopes, intervals and verdicts are computed here by hand."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import evidence_a

BUDGETS = (800, 1600, 4000)
GRID = {"cts": ("0.01", "0.02", "0.04"), "reptile": ("1", "2", "3"), "reptile-average": ("2", "4", "8")}


def make_run(out: Path, seed: int, method: str, beta: str, scores: dict | None, finished=True, checkpoints=()):
    """A run folder as evidence_a.sh leaves it: snapshots at 0 and every budget, scores of the budgets in `scores`."""
    run = out / f"s{seed}" / method / f"meta_lr={beta}"
    (run / "snapshots").mkdir(parents=True)
    for steps in (0, 400, *BUDGETS):
        for ext in (".safetensors", ".json"):
            (run / "snapshots" / f"step-{steps:08d}{ext}").write_text("x")
    for name in ("config.yaml", "init.json"):
        (run / name).write_text("{}")
    if scores is not None:
        (run / "validation-snapshots.json").write_text(json.dumps(
            {str(b): {"score": s, "snapshot": f"step-{b:08d}.safetensors"} for b, s in scores.items()}))
    if finished:
        (run / "summary.json").write_text("{}")
    if checkpoints:
        (run / "checkpoints").mkdir()
        for steps in checkpoints:
            (run / "checkpoints" / f"ckpt-{steps:010d}.pt").write_text("c")
            (run / "checkpoints" / f"ckpt-{steps:010d}.pt.sha256").write_text("h")
    return run


def make_seed(out: Path, seed: int, best: dict, finished=True):
    """Every arm of a seed; `best[method]` gets the top score at every budget (0.5), the others 0.3 / 0.2."""
    for method, betas in GRID.items():
        others = iter((0.3, 0.2))
        for beta in betas:
            score = 0.5 if beta == best[method] else next(others)
            make_run(out, seed, method, beta, {b: score for b in BUDGETS}, finished=finished)


def finish_meta_tests(out: Path, accuracy: dict):
    """results.json of every meta-test the jobs list asks for; accuracy[(seed, method)] = per-finetuning-seed values."""
    env = evidence_a.envelopes(out)
    for _, folder, first in evidence_a.meta_test_jobs(out, env):
        name = Path(folder).name                                # sS-scratch or sS-METHOD-bBETA-atSTEPS
        seed, rest = name[1:].split("-", 1)
        method = rest if rest == "scratch" else rest.rsplit("-at", 1)[0].rsplit("-b", 1)[0]
        per_seed = accuracy[(seed, method)]
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "results.json").write_text(json.dumps({"by_images_per_class": {
            size: {"average": {"per_seed": [v / 100 for v in per_seed]}} for size in ("5", "20")}}))
        (Path(folder) / "finished-seeds.jsonl").write_text("{}\n")


def test_envelope_is_the_best_beta_per_budget_and_waits_for_every_arm(tmp_path):
    make_seed(tmp_path, 0, {"cts": "0.04", "reptile": "2", "reptile-average": "2"})
    make_run(tmp_path, 1, "cts", "0.01", {800: 0.4}, finished=True)
    make_run(tmp_path, 1, "cts", "0.02", {800: 0.6}, finished=False)       # still training: no envelope yet
    env = evidence_a.envelopes(tmp_path)
    assert env["0"]["cts"]["800"]["meta_lr"] == "0.04" and env["0"]["reptile"]["4000"]["meta_lr"] == "2"
    assert env["0"]["cts"]["4000"]["snapshot"].endswith("s0/cts/meta_lr=0.04/snapshots/step-00004000.safetensors")
    assert env["1"]["cts"]["800"] is None
    jobs = evidence_a.meta_test_jobs(tmp_path, env)
    names = {Path(folder).name: first for _, folder, first in jobs}
    # seed 0: scratch + 3 methods x {800, 4000}; seed 1: scratch and the cheap check's CTS 0.01 at 800 only
    assert names == {"s0-scratch": 0, "s0-cts-b0.04-at800": 0, "s0-cts-b0.04-at4000": 0,
                     "s0-reptile-b2-at800": 0, "s0-reptile-b2-at4000": 0, "s0-reptile-average-b2-at800": 0,
                     "s0-reptile-average-b2-at4000": 0, "s1-scratch": 5, "s1-cts-b0.01-at800": 5}


@pytest.mark.parametrize("values, verdict", [
    ([1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95], "reproduced"),
    ([0.05, -0.05, 0.1, -0.1, 0.0, 0.02, -0.02, 0.0], "equivalent within +-0.44"),
    ([-1.0, -1.2, -0.8, -1.1, -0.9, -1.0, -1.05, -0.95], "not reproduced"),
    ([2.0, -2.0, 1.5, -1.5, 0.5, -0.5, 1.0, -1.0], "inconclusive"),
])
def test_decision_rule(values, verdict):
    """The t quantiles for 7 degrees of freedom from tables: t_.975 = 2.3646, t_.95 = 1.8946, t_.8 = 0.8960."""
    r = evidence_a.summarize(values)
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    assert r["mean"] == pytest.approx(mean)
    assert r["ci95"] == pytest.approx(2.3646 * se, rel=1e-4)
    assert r["ci90"] == pytest.approx(1.8946 * se, rel=1e-4)
    assert r["detectable"] == pytest.approx((2.3646 + 0.8960) * se, rel=1e-3)
    assert r["verdict"] == verdict


def test_no_verdict_before_the_designs_eight_seeds():
    r = evidence_a.summarize([1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05])             # 7 seeds, interval far above 0
    assert r["mean"] - r["ci95"] > 0 and r["verdict"].startswith("none yet")


def test_final_pairs_each_seed_on_its_own_finetuning_seeds(tmp_path):
    for seed in (0, 1):
        make_seed(tmp_path, seed, {"cts": "0.02", "reptile": "1", "reptile-average": "4"})
    acc = {(str(s), m): [50 + s + k + (2.0 if m == "cts" else 0) for k in range(5)]
           for s in (0, 1) for m in ("scratch", "cts", "reptile", "reptile-average")}
    acc[("1", "cts")] = [51 + k + 1.0 for k in range(5)]                         # seed 1: CTS +1 only
    finish_meta_tests(tmp_path, acc)
    result = evidence_a.final(tmp_path, evidence_a.envelopes(tmp_path))
    r = result["comparisons"]["cts - reptile @ 800 steps, 5 per class"]
    assert r["per_meta_seed"] == pytest.approx([2.0, 1.0]) and r["meta_seeds"] == ["0", "1"]
    assert r["ci95"] == pytest.approx(12.7062 * 0.5, rel=1e-4)                    # sd 0.7071, n 2: t_.975(1) se


def test_final_reports_the_meta_validation_envelopes_in_points(tmp_path):
    for seed in (0, 1):
        make_seed(tmp_path, seed, {"cts": "0.02", "reptile": "1", "reptile-average": "4"})
    scores = {800: 0.56, 1600: 0.5, 4000: 0.47}                                       # seed 0's CTS 0.02, by hand
    (tmp_path / "s0" / "cts" / "meta_lr=0.02" / "validation-snapshots.json").write_text(json.dumps(
        {str(b): {"score": s, "snapshot": f"step-{b:08d}.safetensors"} for b, s in scores.items()}))
    mv = evidence_a.final(tmp_path, evidence_a.envelopes(tmp_path))["meta_validation"]
    r = mv["cts - reptile @ 800 steps"]                                               # 56 - 50 and 50 - 50 points
    assert r["per_meta_seed"] == pytest.approx([6.0, 0.0]) and r["mean"] == pytest.approx(3.0)
    assert r["ci95"] == pytest.approx(12.7062 * 3.0, rel=1e-4)                        # sd 4.243, n 2: se 3
    # at 4,000 steps 0.47 is still CTS's best beta (the others score 0.3, 0.2): 47 - 50 points
    assert mv["cts - reptile @ 4000 steps"]["per_meta_seed"] == pytest.approx([-3.0, 0.0])
    assert mv["reptile-average - reptile @ 1600 steps"]["per_meta_seed"] == pytest.approx([0.0, 0.0])
    assert not any("scratch" in key for key in mv)


def test_archive_splits_finished_and_unfinished_seeds_over_lanes_and_restores_them(tmp_path):
    lanes = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    make_seed(lanes[0], 0, {"cts": "0.01", "reptile": "3", "reptile-average": "8"})
    acc = {("0", m): [60.0] * 5 for m in ("scratch", "cts", "reptile", "reptile-average")}
    finish_meta_tests(lanes[0], acc)                                             # seed 0: finished
    make_run(lanes[1], 1, "cts", "0.01", {b: 0.3 for b in BUDGETS})             # seed 1: one arm done,
    make_run(lanes[1], 1, "cts", "0.02", None, finished=False, checkpoints=(400, 800, 1200))  # one stopped mid-way
    dest = tmp_path / "docs"
    script = str(ROOT / "experiments" / "archive_evidence_a.py")
    proc = subprocess.run([sys.executable, script, *map(str, lanes), str(dest)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "finished seeds ['0']" in proc.stdout
    done = dest / "out" / "s0" / "cts" / "meta_lr=0.01"
    assert sorted(p.name for p in done.iterdir()) == ["config.yaml", "init.json", "summary.json",
                                                      "validation-snapshots.json"]          # results only
    assert (dest / "out" / "test" / "s0-scratch" / "results.json").is_file()
    stopped = dest / "state" / "s1" / "cts" / "meta_lr=0.02"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == [
        "ckpt-0000001200.pt", "ckpt-0000001200.pt.sha256"]                     # the newest checkpoint only
    assert sorted(p.name for p in (stopped / "snapshots").iterdir()) == sorted(
        f"step-{s:08d}{e}" for s in (0, *BUDGETS) for e in (".safetensors", ".json"))   # not step 400
    assert not (dest / "state" / "s0").exists()
    fresh = [tmp_path / "again" / "a", tmp_path / "again" / "b"]
    proc = subprocess.run([sys.executable, script, "--restore", str(dest), *map(str, fresh)], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (fresh[1] / "s1" / "cts" / "meta_lr=0.02" / "checkpoints" / "ckpt-0000001200.pt").is_file()  # 1 % 2
    assert not (fresh[0] / "s1").exists() and not (fresh[0] / "s0").exists()
