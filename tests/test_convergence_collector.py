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
    short = tmp_path / "s0" / "k10" / "cts" / "meta_lr=0.01"
    short.mkdir(parents=True)
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
