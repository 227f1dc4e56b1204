"""The numbers users read, each against an independent computation: meta-test finetuning against plain torch (the
schedule, Nesterov, weight decay, Adam), the initialization's BatchNorm rule, ``loss_mean``, every augmentation mode."""
import json

import numpy as np
import pytest
import torch

import trajshift as ts
from trajshift.evaluation.protocols import PROTOCOLS, train_and_evaluate


class _FixedTask:
    """Batches drawn once from a seeded generator; ``evaluate`` returns nothing useful (the weights are compared)."""
    label = "fixed"

    def __init__(self, steps, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(steps)]

    def batch(self, step, split="train"):
        return self.batches[step]

    def evaluate(self, model):
        return 0.0


def _model(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


@pytest.mark.parametrize("protocol", ["paper", "table1", "reference"])
def test_meta_test_finetuning_is_plain_torch_with_the_protocols_schedule(protocol):
    p, steps = PROTOCOLS.get(protocol), 20
    task = _FixedTask(steps)
    ours = _model()
    train_and_evaluate(ours, task, p, steps, seed=0)
    # The protocol written out with torch's own classes: the optimizer, MultiStepLR at round(fraction * steps).
    ref = _model()
    kw = {k: v for k, v in p.optimizer.items() if k != "name"}
    opt = (torch.optim.SGD if p.optimizer["name"] == "sgd" else torch.optim.Adam)(ref.parameters(), **kw)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [round(f * steps) for f in p.milestones], gamma=p.gamma)
    for x, y in task.batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
        sched.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # ... and without the schedule the weights are elsewhere: the comparison can tell.
    flat = _model()
    opt = (torch.optim.SGD if p.optimizer["name"] == "sgd" else torch.optim.Adam)(flat.parameters(), **kw)
    for x, y in task.batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(flat(x), y).backward()
        opt.step()
    assert max((a - b).abs().max() for a, b in zip(ours.parameters(), flat.parameters())) > 1e-5


def test_the_initialization_holds_the_task_mean_of_batchnorm_statistics():
    from trajshift.engine.module_learners import ModuleLearners
    from trajshift.engine.population import Population
    from trajshift.runs.train import init_state_dict
    mods = []
    for t in range(3):
        torch.manual_seed(t)
        m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(2, 2))
        m[1].running_mean.copy_(torch.tensor([1.0, -2.0]) * (t + 1))    # task t: (t+1, -2(t+1))
        m[1].running_var.copy_(torch.tensor([0.5, 4.0]) + t)
        m[1].num_batches_tracked.fill_(10 * t + 1)
        mods.append(m)
    learners = ModuleLearners(mods, lambda task, step, split: (torch.zeros(1, 1, 3, 3), torch.zeros(1).long()),
                              exclude=["3.*"])
    sd = init_state_dict(learners, Population(learners, {"name": "sgd", "lr": 0.1}).phi)
    torch.testing.assert_close(sd["1.running_mean"], torch.tensor([2.0, -4.0]))      # (1 + 2 + 3) / 3
    torch.testing.assert_close(sd["1.running_var"], torch.tensor([1.5, 5.0]))
    assert int(sd["1.num_batches_tracked"]) == 11                                    # (1 + 11 + 21) / 3
    assert "3.weight" not in sd                                                      # the head is not in it


def test_loss_mean_is_the_mean_over_tasks_of_the_logged_losses(tmp_path, quad):
    phi0 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    cfg = ts.MetaConfig(method="cts", inner_steps=3, trajectories=2, meta_lr=0.1, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1})
    path = tmp_path / "m.jsonl"
    ts.MetaTrainer(ts.FunctionLearners(quad.loss_fn, phi0, quad.T), cfg, metrics_path=path).run()
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
    assert len(rows) == 6
    # The first step's losses are those of phi0 for every task (independent: the closed form).
    np.testing.assert_allclose(rows[0]["loss"], quad.loss(np.tile(phi0.numpy(), (quad.T, 1))), rtol=1e-12)
    for r in rows:
        assert len(r["loss"]) == quad.T
        assert r["loss_mean"] == pytest.approx(sum(r["loss"]) / quad.T, rel=1e-12)
    assert any(abs(r["loss_mean"] - r["loss"][0]) > 1e-6 for r in rows)        # task 0 alone would differ


def _images(tmp_path, seed=0):
    from trajshift.data.cache import prepare
    from trajshift.data.tasks import ImageTask, TaskSpec
    rng = np.random.default_rng(seed)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 256, (400, 16, 16), dtype=np.uint8), y=np.arange(400) % 4)
    prepared = prepare(str(data), 16, cache_dir=tmp_path / "c")

    def task(augment):
        return ImageTask(TaskSpec.from_dict({"dataset": str(data), "resolution": 16, "augment": augment}, "t"),
                         prepared, 200, 3, 0)
    return task


def _windows(x, padding):
    """Every crop of the zero-padded image: [(2p+1)^2, C, H, W]."""
    _, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    return torch.stack([padded[:, i:i + H, j:j + W] for i in range(2 * padding + 1) for j in range(2 * padding + 1)])


@pytest.mark.parametrize("mode", ["none", "flip", "crop", "crop+flip"])
def test_every_augmentation_mode_does_what_it_says(tmp_path, mode):
    task = _images(tmp_path)(mode)
    g = torch.Generator().manual_seed(0)
    raw = task.x["train"][:200]
    plain = task.prepare_images(raw, augment=False, generator=None)
    out = task.prepare_images(raw, augment=True, generator=g)
    flipped = unflipped = 0
    for a, b in zip(plain, out):
        if mode == "none":
            assert torch.equal(a, b)
            continue
        # Crops of the normalized image pad with the normalized zero: compare in the raw scale instead.
        candidates = [a] if "crop" not in mode else None
        if "crop" in mode:
            mean = torch.as_tensor(task.mean, dtype=a.dtype).view(-1, 1, 1)
            std = torch.as_tensor(task.std, dtype=a.dtype).view(-1, 1, 1)
            raw_a, raw_b = a * std + mean, b * std + mean
            candidates, b = list(_windows(raw_a, task.padding)), raw_b
        same = any(torch.allclose(c, b, atol=1e-5) for c in candidates)
        mirrored = "flip" in mode and any(torch.allclose(c.flip(-1), b, atol=1e-5) for c in candidates)
        assert same or mirrored
        flipped += mirrored and not same
        unflipped += same
    if "flip" in mode:
        assert 0.35 < flipped / 200 < 0.65, flipped             # a fair coin per image, not always, not never
    elif mode == "crop":
        assert not torch.equal(plain, out)                       # moved, not flipped
