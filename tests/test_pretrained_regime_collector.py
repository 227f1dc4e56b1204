"""experiments/pretrained_regime.py on a hand-made tree of meta-tests of a further target (--target): the gains over
None are paired by finetuning seed and the interval is over meta-training seeds, computed here by hand."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, target: str, by_size: dict) -> None:
    folder.mkdir(parents=True)
    report = {"targets": {target: {"test_images": 4443}},
              "by_images_per_class": {n: {"targets": {target: {"accs": a}}} for n, a in by_size.items()}}
    (folder / "results.json").write_text(json.dumps(report))


def test_further_target_gains_paired_by_seed_with_the_interval_over_meta_training_seeds(tmp_path):
    none = [0.70, 0.72, 0.68, 0.71, 0.69]
    _write(tmp_path / "test" / "none", "fashion-mnist", {"100": none})
    lifts = {"cts": (0.01, 0.02, 0.03), "reptile": (0.01, 0.01, 0.01), "mtl": (0.0, 0.0, 0.03)}
    for m, per_seed in lifts.items():
        for s, lift in enumerate(per_seed):
            _write(tmp_path / "test" / f"s{s}-{m}", "fashion-mnist", {"100": [a + lift for a in none]})
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "pretrained_regime.py"), str(tmp_path),
                           "--target", "fashion-mnist", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out" / "pretrained-regime.json").exists()          # CIFAR-10's file is left alone
    out = json.loads((tmp_path / "out" / "pretrained-regime-fashion-mnist.json").read_text())
    assert out["setting"]["comparisons_read"] == 4                                 # 3 methods + CTS - Reptile; no trend
    cts = out["gain_over_none"]["cts"]["100"]
    assert [round(v, 9) for v in cts["per_meta_seed"]] == [0.01, 0.02, 0.03]
    assert abs(cts["ci95"] - 4.302652729749464 * 0.01 / 3 ** 0.5) < 1e-9          # t_{.975,2} * sd / sqrt(3)
    assert [round(v, 9) for v in out["cts_minus_reptile"]["100"]["per_meta_seed"]] == [0.0, 0.01, 0.02]
    assert out["gain_250_minus_4000"] == {}
    assert (tmp_path / "out" / "pretrained-regime-fashion-mnist.png").stat().st_size > 0


def test_one_meta_training_seed_gives_strict_json_and_each_seeds_own_interval(tmp_path):
    """While one meta-training seed is done, the interval over seeds is undefined: null in strict JSON (no NaN),
    and the paired interval over that seed's finetuning seeds stands beside it, for CTS - Reptile too."""
    none = [0.70, 0.72, 0.68, 0.71, 0.69]
    _write(tmp_path / "test" / "none", "fashion-mnist", {"100": none})
    cts, reptile = [0.72, 0.73, 0.70, 0.71, 0.70], [0.71, 0.73, 0.69, 0.72, 0.70]
    _write(tmp_path / "test" / "s0-cts", "fashion-mnist", {"100": cts})
    _write(tmp_path / "test" / "s0-reptile", "fashion-mnist", {"100": reptile})
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "pretrained_regime.py"), str(tmp_path),
                           "--target", "fashion-mnist", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "pretrained-regime-fashion-mnist.json").read_text()
    out = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))   # NaN would raise
    assert out["gain_over_none"]["cts"]["100"]["ci95"] is None
    diffs = [0.01, 0.0, 0.01, -0.01, 0.0]                                           # CTS - Reptile by finetuning seed
    mean, ci = out["cts_minus_reptile"]["100"]["within_meta_seed"]["0"]
    sd = (sum((d - sum(diffs) / 5) ** 2 for d in diffs) / 4) ** 0.5
    assert abs(mean - 0.002) < 1e-12 and abs(ci - 2.7764451051977987 * sd / 5 ** 0.5) < 1e-9   # t_{.975,4} * sd / sqrt(5)
    assert "cts - reptile 1000 imgs: +0.20 (one meta-training seed" in proc.stdout
