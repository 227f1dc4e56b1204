"""experiments/image_study_seeds.py: intervals over meta-training seeds of the per-seed mean paired difference,
checked on a hand-made tree whose differences are known (the t-interval is computed here from its closed form)."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T_975_2DF = 4.302652729749464          # Student's t, 0.975 quantile, 2 degrees of freedom
METHODS = ("cts", "reptile", "cts-no-shift", "mtl", "cts-random-shift")
OTHERS = ("leap", "fomaml", "fomaml++", "imaml", "pretrain")


def by_size(cifar: list[float], mnist: list[float]) -> dict:
    return {n: {"targets": {"cifar10": {"accs": cifar}, "mnist": {"accs": mnist}}} for n in ("5", "20")}


def make_tree(tmp_path: Path, seeds=(0, 1, 2), tested=METHODS) -> Path:
    scratch_cifar = [0.30, 0.32, 0.28, 0.31, 0.29]
    scratch_mnist = [0.80, 0.82, 0.78, 0.81, 0.79]

    def method(seed, m):
        # CTS: +(seed + 1) points on CIFAR-10 over its seed's scratch, + 0 on MNIST; Leap -2 points on CIFAR-10 on
        # every seed; the others equal scratch
        lift = 0.01 * (seed + 1) if m == "cts" else -0.02 if m == "leap" else 0.0
        return by_size([a + lift for a in scratch_cifar], scratch_mnist)

    report = {"scratch": by_size(scratch_cifar, scratch_mnist),
              "runs": [{"method": m, "by_images_per_class": method(0, m)} for m in METHODS + OTHERS]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    for seed in seeds[1:]:
        for name in ("scratch",) + tested:
            d = tmp_path / "runs" / "test" / f"s{seed}-{name}"
            d.mkdir(parents=True)
            results = by_size(scratch_cifar, scratch_mnist) if name == "scratch" else method(seed, name)
            (d / "results.json").write_text(json.dumps({"by_images_per_class": results}))
    return tmp_path


def collect(tree: Path, *extra: str):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "image_study_seeds.py"), str(tree / "runs"),
                           "--report", str(tree / "report.json"), "--out", str(tree / "out.json"), *extra],
                          capture_output=True, text=True, check=False, timeout=60)


def test_intervals_are_over_meta_training_seeds(tmp_path):
    tree = make_tree(tmp_path)
    proc = collect(tree)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tree / "out.json").read_text())
    assert out["meta_training_seeds"] == [0, 1, 2]
    assert out["comparisons_read"] == 9 * 2 * 3     # 9 pairs, 2 sizes, average + 2 targets
    cifar = out["differences"]["cts - scratch"]["20"]["cifar10"]
    assert [round(v, 9) for v in cifar["per_meta_seed"]] == [1.0, 2.0, 3.0]
    assert math.isclose(cifar["mean"], 2.0)
    assert math.isclose(cifar["ci95"], T_975_2DF * 1.0 / math.sqrt(3), rel_tol=1e-6)   # sd of (1, 2, 3) is 1
    avg = out["differences"]["cts - reptile"]["5"]["average"]
    assert [round(v, 9) for v in avg["per_meta_seed"]] == [0.5, 1.0, 1.5]
    assert math.isclose(avg["ci95"], T_975_2DF * 0.5 / math.sqrt(3), rel_tol=1e-6)
    assert not avg["excludes_zero"]                  # 1.0 < 1.24
    assert out["differences"]["mtl - scratch"]["5"]["mnist"]["mean"] == 0.0
    assert math.isclose(out["accuracy"]["cts"]["20"]["cifar10"][0], 30.0 + 2.0)


def test_incomplete_seeds_are_left_out_and_seed_0_alone_is_refused(tmp_path):
    tree = make_tree(tmp_path, seeds=(0, 1))
    proc = collect(tree)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tree / "out.json").read_text())["meta_training_seeds"] == [0, 1]
    for d in (tree / "runs" / "test").iterdir():
        (d / "results.json").unlink()
    proc = collect(tree)
    assert proc.returncode != 0 and "only meta-training seed 0" in proc.stderr


def test_the_other_methods_are_collected_as_their_own_set(tmp_path):
    """--methods others: CTS with Leap, FOMAML, FOMAML++, iMAML and TIN pretraining, each against its seed's scratch
    and CTS against each; the core set's ablations are not read."""
    tree = make_tree(tmp_path, tested=("cts",) + OTHERS)
    assert collect(tree).returncode != 0                # the core set's meta-tests are missing: seed 0 alone
    proc = collect(tree, "--methods", "others")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tree / "out.json").read_text())
    assert out["methods"] == ["cts", *OTHERS] and out["meta_training_seeds"] == [0, 1, 2]
    assert out["comparisons_read"] == 11 * 2 * 3    # 6 against scratch, 5 of CTS against the others
    leap = out["differences"]["leap - scratch"]["20"]["cifar10"]
    assert [round(v, 9) for v in leap["per_meta_seed"]] == [-2.0, -2.0, -2.0] and leap["excludes_zero"]
    cts_leap = out["differences"]["cts - leap"]["5"]["average"]     # (seed + 1 + 2) / 2 points
    assert [round(v, 9) for v in cts_leap["per_meta_seed"]] == [1.5, 2.0, 2.5]
    assert "cts - reptile" not in out["differences"]
