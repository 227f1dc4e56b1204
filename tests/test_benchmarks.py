"""The throughput benchmark runs end to end (tiny sizes) and writes what docs/PERFORMANCE.md reads from it.
It checks structure and invariants only; its timings are never asserted (they are the benchmark's to report)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_benchmark_smoke(tmp_path):
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--out", str(out), "--models", "conv4",
           "--tasks", "2", "--batch", "4", "--repeats", "1", "--block", "1", "--memory-repeats", "1",
           "--memory-steps", "1", "--peak-n", "128", "--variants", "plain,reference,cts-loop,cts-batched",
           "--dist-model", "conv4", "--dist-tasks", "3", "--dist-steps", "2", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, check=False, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    row = res["rows"][0]
    assert set(row["ms_per_step"]) == {"plain", "reference", "cts-loop", "cts-batched"}
    assert row["ratio_to_plain"]["plain"] == 1.0
    assert all(v > 0 for v in row["memory_mib_above_data"].values())
    # conv4 (width 64): 3x3 convs 3->64 and 3 x 64->64 with biases, 4 BatchNorms (weight + bias)
    body = (3 * 64 * 9 + 64) + 3 * (64 * 64 * 9 + 64) + 4 * 2 * 64
    assert row["meta_params"] == body == 113088 and abs(row["phi_copy_mib"] - 4 * body / 2 ** 20) < 1e-9
    assert row["gflop_per_step"] > 0 and 0 < row["fraction_of_peak"]["plain"]
    dist = res["distributed"]
    assert [r["local_tasks"] for r in dist["ranks"]] == [2, 1]                 # uneven shards of 3 tasks
    # cts meta-updates after every inner step, and a meta-update is exactly one all-reduce
    assert all(r["allreduce_calls_per_step"] == 1.0 for r in dist["ranks"])
    assert 0 < dist["allreduce_share_mean"] < 1


@pytest.mark.slow
def test_gpu_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu.sh --cpu: every part of the GPU script on CPU, so it never rots between GPU sessions."""
    import os
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu"], capture_output=True, text=True,
                          check=False, timeout=900, env={**os.environ, "PY": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((ROOT / "benchmarks" / "out" / "gpu_meta_train.json").read_text())
    assert res["exit_code"] in (0, 130) and res["inner_steps_done"] >= 1 and res["tasks"] == 8
    assert res["snapshots"][0] == "step-00000000.safetensors"
    p = res["projection"]
    assert p["projected_full_run_hours"] == pytest.approx(8 * 200_000 / p["task_steps_per_s"] / 3600)
    mixed = json.loads((ROOT / "benchmarks" / "out" / "gpu_mixed_resolution.json").read_text())
    assert sorted({t["resolution"] for t in mixed["tasks"]}) == [28, 32, 64, 84]
    assert mixed["backends"]["cts-grouped"]["group_modes"] == ["batched"] * 4        # one group per resolution
    assert set(mixed["ratio_to_plain"]) == {"plain", "cts-loop", "cts-grouped", "cts-auto", "cts-grouped-max2"}
    for graphed in ("cts-grouped-graphs", "cts-loop-graphs"):     # (tests/test_step_graph.py traces it on CPU)
        assert mixed["errors"][graphed].startswith("ConfigError: execution.graphs: CUDA graphs need a CUDA")
    assert json.loads((ROOT / "benchmarks" / "out" / "gpu_nccl_one_rank.json").read_text())["comm"] == "gloo"
    det = json.loads((ROOT / "benchmarks" / "out" / "gpu_determinism.json").read_text())
    for backend in ("loop", "batched"):       # CPU kernels are deterministic: every pair identical, in either mode
        assert det["backends"][backend]["default"]["init_identical"]
        assert det["backends"][backend]["deterministic"]["metrics_identical"]


def test_identity_cost_benchmark_smoke(tmp_path):
    out = tmp_path / "identity.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "identity_cost.py"), "--items", "200",
                           "--repeats", "1", "--out", str(out)], capture_output=True, check=False, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["items"] == 200 and res["fingerprint_items"] == 16 and res["fingerprint"]["length"] == 200
