"""experiments/convergence_regime.py: the best-over-beta envelope per budget and the meta-tests it calls for,
checked on a hand-made tree of scored snapshots (the envelope is computed here by hand, independently)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_envelope_takes_the_best_beta_at_each_budget(tmp_path):
    scores = {("cts", 0.001): [0.10, 0.30, 0.35, 0.40], ("cts", 0.01): [0.10, 0.35, 0.33, 0.20],
              ("reptile", 1.0): [0.10, 0.20, 0.30, 0.45]}
    steps = [0, 100, 200, 500]
    for (method, beta), values in scores.items():
        run = tmp_path / "s0" / "k100" / method / f"meta_lr={beta}"
        run.mkdir(parents=True)
        (run / "validation-snapshots.json").write_text(json.dumps(
            {str(s): {"score": v, "snapshot": f"step-{s:08d}.safetensors"} for s, v in zip(steps, values)}))
        (run / "summary.json").write_text("{}")                                  # finished
    short = tmp_path / "s0" / "k10" / "cts" / "meta_lr=0.01"
    short.mkdir(parents=True)
    (short / "summary.json").write_text("{}")
    (short / "validation-snapshots.json").write_text(json.dumps(
        {"0": {"score": 0.1, "snapshot": "step-00000000.safetensors"},
         "500": {"score": 0.2, "snapshot": "step-00000500.safetensors"}}))
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "convergence_regime.py"), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    env = json.loads((tmp_path / "envelopes.json").read_text())["0"]["100"]
    assert [p["score"] for p in env["cts"]] == [0.10, 0.35, 0.35, 0.40]          # max over the two betas
    assert [p["meta_lr"] for p in env["cts"]][1:] == [0.01, 0.001, 0.001]
    jobs = [line.split() for line in (tmp_path / "meta-test-jobs.txt").read_text().splitlines()]
    by_name = {Path(out).name: Path(snap) for snap, out in jobs}
    assert by_name["s0-k100-cts-fifth"].name == "step-00000100.safetensors"   # 500 / 5 = 100
    assert by_name["s0-k100-cts-half"].name == "step-00000200.safetensors"    # nearest to 250
    assert by_name["s0-k100-cts-all"].parent.parent.name == "meta_lr=0.001"
    assert by_name["s0-k10-cts-all"].name == "step-00000500.safetensors"
    assert len(jobs) == 7



def test_an_envelope_is_meta_tested_only_once_all_its_runs_have_finished(tmp_path):
    """A K = 300 grid with one beta still training: its curve ends early (the finished beta's 9,900 would be called
    "all"), so it gets no meta-test job; every scored snapshot of that grid is listed as pending, and an archive
    with --scored-keep keeps them. The finished grid beside it (K = 1,000) gets its 3 jobs as before."""
    def scored_run(path, steps, finished):
        path.mkdir(parents=True)
        (path / "snapshots").mkdir()
        for step in steps:
            (path / "snapshots" / f"step-{step:08d}.safetensors").write_bytes(b"s")
        (path / "validation-snapshots.json").write_text(json.dumps(
            {str(n): {"score": 0.2 + n / 1e5, "snapshot": f"step-{n:08d}.safetensors"} for n in steps}))
        (path / "config.yaml").write_text("seed: 0\n")
        if finished:
            (path / "summary.json").write_text("{}")
    runs = tmp_path / "runs"
    scored_run(runs / "s0" / "k1000" / "cts" / "meta_lr=0.001", [2000, 5000, 10000], True)
    scored_run(runs / "s0" / "k300" / "cts" / "meta_lr=0.003", [2100, 5100, 9900], True)
    scored_run(runs / "s0" / "k300" / "cts" / "meta_lr=0.01", [2100], False)
    script = str(ROOT / "experiments" / "convergence_regime.py")
    proc = subprocess.run([sys.executable, script, str(runs)], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "meta_lr=0.01" in proc.stdout                                  # it says which run it waits for
    jobs = [line.split() for line in (runs / "meta-test-jobs.txt").read_text().splitlines()]
    assert sorted(Path(out).name for _, out in jobs) == ["s0-k1000-cts-all", "s0-k1000-cts-fifth", "s0-k1000-cts-half"]
    pending = sorted(Path(line.split()[0]).name for line in (runs / "meta-test-pending.txt").read_text().splitlines())
    assert pending == ["step-00002100.safetensors", "step-00002100.safetensors", "step-00005100.safetensors",
                       "step-00009900.safetensors"]
    archive = tmp_path / "archive"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "archive_image_study.py"), "save", "--runs",
                           str(runs), "--archive", str(archive), "--all-snapshots", "--scored-keep",
                           str(runs / "meta-test-jobs.txt"), str(runs / "meta-test-pending.txt")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kept = archive / "s0" / "k300" / "cts" / "meta_lr=0.003" / "snapshots"
    assert sorted(p.name for p in kept.iterdir()) == [f"step-{n:08d}.safetensors" for n in (2100, 5100, 9900)]
    assert (archive / "s0" / "k300" / "cts" / "meta_lr=0.01" / "snapshots" / "step-00002100.safetensors").exists()
    # the finished K = 1,000 grid: every scored snapshot is named by a job, so every one is kept too
    assert len(list((archive / "s0" / "k1000" / "cts" / "meta_lr=0.001" / "snapshots").iterdir())) == 3

def _results(accs):
    return json.dumps({"by_images_per_class": {"100": {"targets": {"cifar10": {"accs": accs}}}}})


def test_final_reads_the_meta_tests_paired_with_none_over_meta_training_seeds(tmp_path):
    none = [0.50, 0.52, 0.48, 0.51, 0.49]
    (tmp_path / "none.json").write_text(_results(none))
    for seed in (0, 1, 2):
        for k, methods in ((100, ("cts", "reptile")), (10, ("cts",))):
            for method in methods:
                run = tmp_path / f"s{seed}" / f"k{k}" / method / "meta_lr=0.01"
                run.mkdir(parents=True)
                (run / "validation-snapshots.json").write_text(json.dumps(
                    {"0": {"score": 0.1, "snapshot": "step-00000000.safetensors"},
                     "500": {"score": 0.3, "snapshot": f"step-{500:08d}.safetensors"}}))
                # two trajectories of K steps; the adapted loss is the loss_mean at step K
                lines = [{"step": s, "inner_steps": t * k + s, "loss_mean": 2.0 - t - s / (10 * k)}
                         for t in range(2) for s in range(1, k + 1)]
                (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        for method, lift in (("cts", 0.01 * (seed + 1)), ("reptile", 0.01), ("mtl", 0.02)):  # 1, 2, 3 / 1 / 2
            for budget in ("fifth", "half", "all"):
                d = tmp_path / "test" / f"s{seed}-k100-{method}-{budget}"
                d.mkdir(parents=True)
                (d / "results.json").write_text(_results([a + lift for a in none]))
        d = tmp_path / "test" / f"s{seed}-k10-cts-all"
        d.mkdir(parents=True)
        (d / "results.json").write_text(_results(none))                           # K = 10: None's accuracy
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "experiments" / "convergence_regime.py"), *args],
                              capture_output=True, text=True, check=False, timeout=120)
    assert run(str(tmp_path)).returncode == 0
    proc = run(str(tmp_path), "--final", "--none", str(tmp_path / "none.json"), "--dest", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["comparisons_read"] == 3 * 3 + 1
    d = out["differences"]["cts - reptile @ fifth"]
    assert [round(v, 9) for v in d["per_meta_seed"]] == [0.0, 1.0, 2.0]
    assert abs(d["ci95"] - 4.302652729749464 / 3 ** 0.5) < 1e-6                 # t_{.975,2} * sd 1 / sqrt 3
    assert [round(v, 9) for v in out["differences"]["cts K=100 - K=10"]["per_meta_seed"]] == [1.0, 2.0, 3.0]
    assert out["fig6a_adapted_loss"]["cts"]["0"]["points"] == [[100, 1.9], [200, 0.9]]
    beside = out["beside_the_design"]                     # MTL: 2 points over None; CTS - MTL -1, 0, +1 by seed
    assert beside["comparisons_read_with_them"] == 10 + 6
    assert [round(v, 9) for v in beside["differences"]["mtl - none @ half"]["per_meta_seed"]] == [2.0, 2.0, 2.0]
    d = beside["differences"]["cts - mtl @ all"]
    assert [round(v, 9) for v in d["per_meta_seed"]] == [-1.0, 0.0, 1.0] and abs(d["mean"]) < 1e-9
    q = 1 - 0.025 / 16                      # the t quantile at 2 degrees of freedom in closed form, Bonferroni 16
    t_q = (2 * q - 1) * (2 / (4 * q * (1 - q))) ** 0.5
    assert abs(d["ci95_bonferroni"] - t_q / 3 ** 0.5) < 1e-6                       # t * sd 1 / sqrt 3
    assert (tmp_path / "c.png").stat().st_size > 0


def test_final_with_one_meta_training_seed_gives_only_the_within_seed_interval(tmp_path):
    """One seed: the interval over meta-training seeds is undefined (null in strict JSON); the seed's own interval
    over its finetuning seeds is t_{.975,4} * sd / sqrt(5) of the paired differences, computed here by hand."""
    none = [0.50, 0.52, 0.48, 0.51, 0.49]
    lift = [0.01, 0.03, 0.02, 0.00, 0.04]                       # CTS - None: 1, 3, 2, 0, 4 points; Reptile = None
    (tmp_path / "none.json").write_text(_results(none))
    run = tmp_path / "s0" / "k100" / "cts" / "meta_lr=0.01"
    run.mkdir(parents=True)
    (run / "validation-snapshots.json").write_text(json.dumps({"500": {"score": 0.3, "snapshot": "s.safetensors"}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "inner_steps": 100, "loss_mean": 1.0}) + "\n")
    rep = tmp_path / "s0" / "k100" / "reptile" / "meta_lr=1"
    rep.mkdir(parents=True)
    (rep / "validation-snapshots.json").write_text(json.dumps({"500": {"score": 0.2, "snapshot": "r.safetensors"}}))
    (rep / "metrics.jsonl").write_text("")
    for method, accs in (("cts", [a + d for a, d in zip(none, lift)]), ("reptile", none)):
        for budget in ("fifth", "half", "all"):
            d = tmp_path / "test" / f"s0-k100-{method}-{budget}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(_results(accs))
    script = str(ROOT / "experiments" / "convergence_regime.py")
    assert subprocess.run([sys.executable, script, str(tmp_path)], check=False, timeout=60).returncode == 0
    proc = subprocess.run([sys.executable, script, str(tmp_path), "--final", "--none", str(tmp_path / "none.json"),
                           "--dest", str(tmp_path / "c.json")], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "c.json").read_text())             # strict JSON: json.loads accepts no bare NaN
    assert out["differences"]["cts - reptile @ all"]["ci95"] is None
    own = out["within_meta_seed"]["differences"]["cts - reptile @ all"]["0"]
    sd = (sum((x - 2.0) ** 2 for x in (1, 3, 2, 0, 4)) / 4) ** 0.5      # mean 2, sd sqrt(2.5)
    assert abs(own["mean"] - 2.0) < 1e-9
    assert abs(own["ci95"] - 2.7764451051977987 * sd / 5 ** 0.5) < 1e-9     # t_{.975,4}
    assert "NaN" not in (tmp_path / "c.json").read_text()


def test_nearest_snapshots_picks_each_budget_once_in_step_order():
    """Fig. 6c's K = 300 run has snapshots every 300 steps: 2,000 -> 2,100, 5,000 -> 5,100, 10,000 -> 9,900 (the
    last); a tie goes to the earlier snapshot, and two counts near one snapshot score it once."""
    from pathlib import Path

    from trajshift.evaluation.validation import nearest_snapshots
    files = [Path(f"snapshots/step-{n:08d}.safetensors") for n in range(0, 10_000, 300)]
    picked = nearest_snapshots(files[::-1], [10_000, 2_000, 5_000, 5_050])
    assert [p.name for p in picked] == [f"step-{n:08d}.safetensors" for n in (2_100, 5_100, 9_900)]
    assert [p.name for p in nearest_snapshots(files, [150])] == ["step-00000000.safetensors"]


def test_crossed_interval_of_an_additive_matrix_is_the_two_variances_by_hand():
    """d_sf = a_s + b_f exactly: MS_E = 0, so Var(mean) = var(a)/S + var(b)/F (sample variances), computed here by
    hand; the conditional interval is the t over the row means alone."""
    import math
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from crossed_intervals import crossed
    from scipy.stats import t
    a, b = [0.0, 1.0, 3.0], [0.5, -0.5, 1.0, 0.0, 2.0]
    d = [[x + y for y in b] for x in a]
    r = crossed(d)
    var_a = sum((x - sum(a) / 3) ** 2 for x in a) / 2
    var_b = sum((y - sum(b) / 5) ** 2 for y in b) / 4
    variance = var_a / 3 + var_b / 5
    ms_a, ms_b = 5 * var_a, 3 * var_b
    df = (ms_a + ms_b) ** 2 / (ms_a ** 2 / 2 + ms_b ** 2 / 4)
    assert abs(r["mean"] - (sum(a) / 3 + sum(b) / 5)) < 1e-12
    assert abs(r["ci95_crossed"] - t.ppf(0.975, df) * math.sqrt(variance)) < 1e-9
    assert abs(r["ci95_over_meta_seeds"] - t.ppf(0.975, 2) * math.sqrt(var_a / 3)) < 1e-9
