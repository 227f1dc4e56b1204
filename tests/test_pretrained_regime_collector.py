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
