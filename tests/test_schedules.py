"""meta.inner_lr_schedule: the inner rate over the run's K * M steps, checked against closed forms."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch

import trajshift as ts
from tests.test_checkpoint import make_trainer
from trajshift.core.errors import ConfigError

G = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def _linear_run(schedule, **cfg):
    # A linear loss g . theta: plain SGD moves theta by -lr_s g at step s, whatever theta is, so after N steps
    # theta_N = theta_0 - g * sum_s lr_s, the sum computed here from the schedule's formula (not from the library).
    learners = ts.FunctionLearners(lambda theta, step, split: theta @ G, torch.zeros(3, dtype=torch.float64), 1)
    config = ts.MetaConfig(method="pretrain", inner_steps=5, trajectories=3, dtype="float64", progress=False,
                           inner_optimizer={"name": "sgd", "lr": 0.1}, inner_lr_schedule=schedule, **cfg)
    return ts.MetaTrainer(learners, config).run().phi


@pytest.mark.parametrize("schedule,factor", [
    ("constant", lambda s, n: 1.0),
    ("cosine", lambda s, n: (1 + math.cos(math.pi * s / n)) / 2),
    ("linear", lambda s, n: (n - s) / n),
])
def test_schedule_matches_its_closed_form_over_the_whole_run(schedule, factor):
    n = 15
    total = sum(0.1 * factor(s, n) for s in range(n))
    assert torch.allclose(_linear_run(schedule), -G * total, rtol=0, atol=1e-12)


def test_schedule_survives_optimizer_state_resets():
    # reset_optimizer_state reloads the optimizer's initial state (its configured lr) at every trajectory's start:
    # the schedule still holds.
    n = 15
    total = sum(0.1 * (1 + math.cos(math.pi * s / n)) / 2 for s in range(n))
    assert torch.allclose(_linear_run("cosine", reset_optimizer_state=True), -G * total, rtol=0, atol=1e-12)


def test_scheduled_run_resumes_bit_identically_and_refuses_to_grow(tmp_path):
    cfg = {"inner_lr_schedule": "cosine", "inner_optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}}
    full = make_trainer("cts", tmp_path / "a", **cfg).run().phi
    interrupted = make_trainer("cts", tmp_path / "b", **cfg)
    for i, _ in enumerate(interrupted.steps()):
        if i + 1 == 17:
            break
    resumed = make_trainer("cts", tmp_path / "b", **cfg)
    assert resumed.resume() and torch.equal(resumed.run().phi, full)
    more = make_trainer("cts", tmp_path / "b", **cfg)
    more.cfg = dataclasses.replace(more.cfg, trajectories=4)
    with pytest.raises(ConfigError, match="inner_lr_schedule"):
        more.resume()


def test_checkpoint_without_the_key_resumes_at_the_default(tmp_path):
    # A checkpoint written before inner_lr_schedule existed has no such key: it is the constant schedule.
    full = make_trainer("reptile", tmp_path / "a").run().phi
    interrupted = make_trainer("reptile", tmp_path / "b")
    for i, _ in enumerate(interrupted.steps()):
        if i + 1 == 17:
            break
    from trajshift.training.checkpoint import list_checkpoints
    for path in list_checkpoints(tmp_path / "b" / "ckpt"):
        state = torch.load(path, weights_only=False)
        del state["config"]["inner_lr_schedule"]
        torch.save(state, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".sha256").write_text(digest)
    resumed = make_trainer("reptile", tmp_path / "b")
    assert resumed.resume() and torch.equal(resumed.run().phi, full)
