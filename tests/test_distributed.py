"""torch.distributed through torchrun: 2 gloo processes give the same initialization as 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_image_end_to_end import make_dataset

from trajshift.commands.cli import main
from trajshift.engine.comm import shard


def test_shards_are_contiguous_and_uneven():
    assert [list(shard(5, 2, r)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [len(shard(7, 3, r)) for r in range(3)] == [3, 2, 2]
    assert sorted(i for r in range(4) for i in shard(9, 4, r)) == list(range(9))


def torchrun(args, cwd, nproc=2, **env_vars):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_vars}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", "-m", "trajshift", *args], cwd=cwd, env=env,
                          capture_output=True, check=False, text=True, timeout=600)


@pytest.mark.parametrize("method", ["cts", "reptile", "leap"])
def test_two_gloo_processes_match_one(tmp_path, method):
    datasets = [make_dataset(tmp_path / f"ds{i}", classes=3 + i, per_class=10, seed=i) for i in range(3)]
    cfg = {"model": {"name": "conv4", "width": 8},
           "tasks": [{"dataset": str(d), "resolution": 12} for d in datasets],     # 3 tasks: shards of 2 and 1
           "batch_size": 8, "seed": 0, "cache_dir": str(tmp_path / "cache"),
           "meta": {"method": method, "inner_steps": 3, "trajectories": 2, "meta_lr": 0.3,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(path), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    proc = torchrun(["meta-train", str(path), "--out", str(tmp_path / "two"), "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(tmp_path / "one" / "init.safetensors")
    two = load_file(tmp_path / "two" / "init.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        assert (one[k].double() - two[k].double()).abs().max() <= 1e-6, k
    moved = load_file(tmp_path / "one" / "init.safetensors")["body.0.weight"]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    # Rank 1 logged its own task (index 2); rank 0 its two.
    rank1 = [json.loads(x) for x in (tmp_path / "two" / "metrics.rank1.jsonl").read_text().splitlines()]
    rank0 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert rank1[0]["tasks"] == [2] and rank0[0]["tasks"] == [0, 1]
    # Meta-training moved the body away from the common random initialization (rebuilt here from the seed).
    from trajshift.runs.experiment import build_models
    initial = build_models(cfg["model"], [3, 4, 5], cfg["seed"])[0].state_dict()["body.0.weight"]
    assert (moved - initial).abs().max() > 1e-4


def test_one_forced_rank_runs_the_process_group_path_and_matches_no_launcher(tmp_path):
    """TRAJSHIFT_DISTRIBUTED=1 under a one-rank torchrun takes the process group (gloo here, NCCL on CUDA:
    benchmarks/gpu.sh's check) and gives the initialization of a run without torchrun: the all-reduce of one rank
    is the sum itself."""
    datasets = [make_dataset(tmp_path / f"ds{i}", classes=3 + i, per_class=8, seed=i) for i in range(2)]
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12} for d in datasets],
           "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path / "cache"),
           "execution": {"backend": "loop"},        # auto's choice by timing could differ between the two runs
           "meta": {"method": "cts", "inner_steps": 2, "trajectories": 2, "meta_lr": 0.3}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for name, forced in (("local", "0"), ("group", "1")):        # the same launcher and threads, bit for bit
        proc = torchrun(["meta-train", str(path), "--out", str(tmp_path / name), "--quiet"], cwd=tmp_path, nproc=1,
                        TRAJSHIFT_DISTRIBUTED=forced)
        assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in ("local", "group")}
    assert summaries["local"]["comm"] == "local" and summaries["group"]["comm"] == "gloo"
    assert summaries["group"]["world_size"] == 1
    one, grouped = (load_file(tmp_path / n / "init.safetensors") for n in ("local", "group"))
    assert all(torch.equal(one[k], grouped[k]) for k in one)


def test_more_processes_than_tasks_is_a_clear_error(tmp_path):
    d = make_dataset(tmp_path / "ds", classes=3, per_class=6, seed=0)
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12}],
           "batch_size": 4, "cache_dir": str(tmp_path / "cache"),
           "meta": {"method": "cts", "inner_steps": 1, "trajectories": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = torchrun(["meta-train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")], cwd=tmp_path)
    assert proc.returncode != 0
    assert "2 processes for 1 tasks" in proc.stderr


def test_killed_rank_is_restarted_by_torchrun_and_the_run_completes_identically(tmp_path):
    """Rank 1 is SIGKILLed after step 11 (checkpoints every 4 steps); torchrun --max-restarts 1 restarts both
    ranks, which resume from their step-8 checkpoints; the result equals an uninterrupted 2-process run."""
    datasets = [make_dataset(tmp_path / f"ds{i}", classes=3, per_class=8, seed=i) for i in range(3)]
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12} for d in datasets],
           "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path / "cache"), "checkpoint_every": 4,
           # two separate runs compared bit for bit: "auto" could pick another backend in each
           "execution": {"backend": "loop"},
           "meta": {"method": "cts", "inner_steps": 5, "trajectories": 4, "meta_lr": 0.3,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert torchrun(["meta-train", str(path), "--out", str(tmp_path / "clean"), "--quiet"], tmp_path).returncode == 0
    # rank 1 is SIGKILLed once, right after loop step 11; torchrun restarts both ranks, which resume
    fault = [str(Path(__file__).parent / "fault_run.py"), "11", "1", str(tmp_path / "fault-fired"), "--"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "--max-restarts=1", *fault, "meta-train", str(path), "--out",
                           str(tmp_path / "faulty"), "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                          check=False, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fault-fired").exists()              # the fault really happened
    clean = load_file(tmp_path / "clean" / "init.safetensors")
    faulty = load_file(tmp_path / "faulty" / "init.safetensors")
    for k in clean:
        assert torch.equal(clean[k], faulty[k]), k
