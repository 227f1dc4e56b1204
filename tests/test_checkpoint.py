"""Checkpoints: exact resume, corruption fallback, lock."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trajshift as ts
from trajshift.methods import METHODS
from trajshift.tasks.synthetic import HimmelblauTasks
from trajshift.training.checkpoint import (
    RunLock,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)


def make_trainer(method, tmp_path, every=7, **cfg):
    n = 1 if method == "pretrain" else 8                  # pretrain trains one task
    tasks = HimmelblauTasks.make(n, seed=1)
    learners = ts.FunctionLearners(tasks.learner_loss, torch.tensor([0.0, 12.0], dtype=torch.float64), n)
    config = ts.MetaConfig(method=method, inner_steps=10, trajectories=3, meta_lr=0.2, dtype="float64",
                           progress=False, **cfg)
    return ts.MetaTrainer(learners, config, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=every)


@pytest.mark.parametrize("method,cfg", [(name, {}) for name in METHODS.names()] +
                         [("reptile", {"meta_optimizer": {"name": "adam"}})])
def test_resume_mid_trajectory_is_bit_identical(tmp_path, method, cfg):
    full = make_trainer(method, tmp_path / "a", **cfg).run().phi
    interrupted = make_trainer(method, tmp_path / "b", **cfg)
    for i, _ in enumerate(interrupted.steps()):
        if i + 1 == 17:           # stop after step 17; the last checkpoint is at step 14 (mid-trajectory 2)
            break
    resumed = make_trainer(method, tmp_path / "b", **cfg)
    assert resumed.resume() and resumed.position == {"m": 1, "k": 4}
    assert torch.equal(resumed.run().phi, full)


@pytest.mark.parametrize("method", METHODS.names())
def test_a_method_carries_nothing_outside_its_state(tmp_path, method):
    """The method contract (methods/base.py): everything a method carries between calls is in the State the loop
    threads and checkpoints. So its attributes after a run are the very objects they were after setup, and its
    state is a dataclass that round-trips through a checkpoint's dict."""
    import dataclasses

    tr = make_trainer(method, tmp_path, every=0)
    before = dict(vars(tr.method))
    tr.run()
    after = vars(tr.method)
    assert after.keys() == before.keys(), f"{method} added attributes: {sorted(after.keys() - before.keys())}"
    assert all(after[k] is before[k] for k in before), [k for k in before if after[k] is not before[k]]
    assert dataclasses.is_dataclass(tr.method_state)
    saved = tr.method.state_to_dict(tr.method_state)
    assert type(tr.method.state_from_dict(saved)) is type(tr.method_state)


def test_a_checkpoint_of_another_method_state_is_refused_by_name(tmp_path):
    tr = make_trainer("leap", tmp_path)
    with pytest.raises(ts.ConfigError, match=r"method leap: the checkpoint's method state has the fields \['acc'\]"):
        tr.method.state_from_dict({"acc": torch.zeros(1)})


def test_corrupted_checkpoint_falls_back_to_the_previous(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([float(step)])}, keep=5)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:-10])            # truncated
    with pytest.warns(UserWarning, match=r"ckpt-0000000003.pt: skipping this checkpoint: its checksum does not"):
        state, path = load_latest(tmp_path)
    assert state["x"].item() == 2.0 and path.name == "ckpt-0000000002.pt"
    (tmp_path / "ckpt-0000000002.pt.sha256").unlink()         # a write that never finished
    with pytest.warns(UserWarning):
        state, _ = load_latest(tmp_path)
    assert state["x"].item() == 1.0


def test_keep_last_k(tmp_path):
    for step in range(6):
        save_checkpoint(tmp_path, step, {"s": step}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt-{s:010d}.pt" for s in (3, 4, 5)]


def test_resume_refuses_another_config(tmp_path):
    make_trainer("cts", tmp_path).run()
    tasks = HimmelblauTasks.make(8, seed=1)
    learners = ts.FunctionLearners(tasks.learner_loss, torch.tensor([0.0, 12.0], dtype=torch.float64), 8)
    cfg = ts.MetaConfig(method="cts", inner_steps=10, trajectories=3, meta_lr=0.5, dtype="float64")
    tr = ts.MetaTrainer(learners, cfg, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=7)
    with pytest.raises(ts.ConfigError, match=r"meta_lr = 0.2, the config says 0.5"):
        tr.resume()


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    in_use = r"the run folder is in use by another run \(pid \d+\)"
    with RunLock(tmp_path), pytest.raises(ts.ConfigError, match=in_use), RunLock(tmp_path):
        pass
    with RunLock(tmp_path):      # released: usable again
        pass


def _image_config(tmp_path, method="cts"):
    import yaml
    from test_image_end_to_end import make_dataset
    datasets = [make_dataset(tmp_path / f"ds{i}", classes=3, per_class=8, seed=i) for i in range(2)]
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12} for d in datasets],
           "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path / "cache"), "checkpoint_every": 4,
           "snapshot_every": 5,
           # two separate runs compared bit for bit: "auto" could pick another backend in each
           "execution": {"backend": "loop"},
           "meta": {"method": method, "inner_steps": 5, "trajectories": 4, "meta_lr": 0.3,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["cts", "leap"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, method):
    from trajshift.commands.cli import main
    cfg = _image_config(tmp_path, method)
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    args = ["meta-train", str(cfg), "--out", str(tmp_path / "killed"), "--quiet"]
    killed = [sys.executable, str(Path(__file__).parent / "fault_run.py"), "11", "0", "-", "--", *args]
    proc = subprocess.run(killed, capture_output=True, check=False, text=True, timeout=300)   # checkpoints 4, 8
    run = [sys.executable, "-m", "trajshift", *args]
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "killed" / "init.safetensors").exists()
    proc = subprocess.run(run, capture_output=True, check=False, text=True, timeout=300)          # automatic resume
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = load_file(tmp_path / "full" / "init.safetensors")
    resumed = load_file(tmp_path / "killed" / "init.safetensors")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    import json
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["inner_steps"] for r in rows if "step" in r]
    assert steps == list(range(1, 21))          # rows 9-11, logged before the kill, were not duplicated
    assert sorted(p.name for p in (tmp_path / "killed" / "snapshots").iterdir()) == \
        sorted(p.name for p in (tmp_path / "full" / "snapshots").iterdir())


def test_meta_train_refuses_a_folder_in_use(tmp_path, capsys):
    from trajshift.commands.cli import main
    cfg = _image_config(tmp_path)
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    assert "holds no checkpoint to resume from" in capsys.readouterr().err
    with RunLock(tmp_path / "busy"):
        assert main(["meta-train", str(cfg), "--out", str(tmp_path / "busy")]) == 2
    assert "the run folder is in use by another run" in capsys.readouterr().err


def test_resume_with_other_shards_is_refused(tmp_path):
    make_trainer("cts", tmp_path).run()
    tasks = HimmelblauTasks.make(8, seed=1)
    learners = ts.FunctionLearners(tasks.learner_loss, torch.tensor([0.0, 12.0], dtype=torch.float64), 8)
    cfg = ts.MetaConfig(method="cts", inner_steps=10, trajectories=3, meta_lr=0.2, dtype="float64", progress=False)
    tr = ts.MetaTrainer(learners, cfg, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=7,
                        task_ids=[4, 5, 6, 7, 8, 9, 10, 11])
    with pytest.raises(ts.ConfigError, match=r"resume with the same number of processes"):
        tr.resume()


def test_deterministic_option_is_on_during_the_run_only_and_changes_nothing_on_cpu(tmp_path, monkeypatch):
    """``deterministic: true`` turns torch.use_deterministic_algorithms on for the run (seen from inside it), gives
    back the caller's setting afterwards, also when the run fails, and on CPU (deterministic kernels already) gives
    the same init as the default, bit for bit."""
    import yaml

    from trajshift.commands.cli import main
    from trajshift.runs import train as mt
    from trajshift.runs.experiment import load_config, meta_train
    path = _image_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    det = tmp_path / "det.yaml"
    det.write_text(yaml.safe_dump({**cfg, "deterministic": True}))
    seen = []
    inner = mt._train

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return inner(*args, **kwargs)
    monkeypatch.setattr(mt, "_train", spy)
    assert main(["meta-train", str(path), "--out", str(tmp_path / "default"), "--quiet"]) == 0
    assert main(["meta-train", str(det), "--out", str(tmp_path / "det"), "--quiet"]) == 0
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    a, b = (load_file(tmp_path / n / "init.safetensors") for n in ("default", "det"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(mt, "_train", fail)
    with pytest.raises(RuntimeError, match="boom"):
        meta_train(load_config(det), tmp_path / "failed", log=lambda *_: None)
    assert not torch.are_deterministic_algorithms_enabled()
