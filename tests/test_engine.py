import json

import torch
from torch import nn

import trajshift as ts


def test_batch_indices_are_epochs_of_permutations_and_deterministic():
    idx = torch.cat([ts.batch_indices(10, 4, s, seed=3, task=1) for s in range(5)])      # 20 = two epochs
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))
    assert torch.equal(ts.batch_indices(10, 4, 3, seed=3, task=1), ts.batch_indices(10, 4, 3, seed=3, task=1))
    assert not torch.equal(ts.batch_indices(10, 4, 0, seed=3, task=1), ts.batch_indices(10, 4, 0, seed=3, task=2))


def test_module_views_share_storage_and_heads_stay_per_task():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    model.fc = nn.Linear(4, 2)
    learners = ts.ModuleLearners(model, lambda t, s, sp: None, num_tasks=3)
    assert learners.spec.names == ("0.weight", "0.bias")            # the head "fc.*" is not meta-learned
    pop = ts.Population(learners, {"name": "sgd", "lr": 0.1})
    with torch.no_grad():
        pop.theta[1].fill_(7.0)
    assert torch.all(learners.modules[1][0].weight == 7.0) and torch.all(learners.modules[0][0].bias != 7.0)
    assert learners.local.numel() == 3 * (4 * 2 + 2)
    sd = learners.task_state_dict(1, phi=torch.zeros(learners.meta_numel))
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    fresh.fc = nn.Linear(4, 2)
    fresh.load_state_dict(sd)                                       # a plain state_dict, no trajshift needed
    assert torch.all(fresh[0].weight == 0)


def test_metrics_jsonl(tmp_path):
    fn = lambda theta, step, split: (theta ** 2).sum(1)
    learners = ts.FunctionLearners(fn, torch.ones(3), 2)
    cfg = ts.MetaConfig(method="cts", inner_steps=4, trajectories=2, log_every=2)
    ts.MetaTrainer(learners, cfg, metrics_path=tmp_path / "m.jsonl").run()
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r]
    assert [(r["trajectory"], r["step"]) for r in steps] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert steps[-1]["inner_steps"] == 8 and steps[-1]["meta_updates"] == 8
    assert len(steps[0]["loss"]) == 2 and steps[0]["delta_norm"] > 0
    assert sum(r.get("event") == "trajectory_end" for r in rows) == 2


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.lin(x)))


def _bn_learners():
    model = BNNet()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)
    return ts.ModuleLearners(model, lambda t, s, sp: (x + s, y), num_tasks=2)


def test_reset_options_reset_exactly_what_they_name():
    results = {}
    for key in ("none", "reset_optimizer_state", "reset_heads", "reset_batchnorm"):
        learners = _bn_learners()
        initial_head = learners.modules[0].fc.weight.detach().clone()
        initial_mean = learners.modules[0].bn.running_mean.clone()
        cfg = ts.MetaConfig(method="reptile", inner_steps=3, trajectories=2,
                            **({} if key == "none" else {key: True}))
        tr = ts.MetaTrainer(learners, cfg)
        tr.run()
        tr.pop.reset(cfg.reset_optimizer_state, cfg.reset_heads, cfg.reset_batchnorm)
        m = learners.modules[0]
        results[key] = (torch.equal(m.fc.weight, initial_head), torch.equal(m.bn.running_mean, initial_mean),
                        len(tr.pop.optimizer.state) == 0 or all(
                            torch.count_nonzero(s["momentum_buffer"]) == 0 for s in tr.pop.optimizer.state.values()
                            if s.get("momentum_buffer") is not None))
    assert results["none"][:2] == (False, False)
    assert results["reset_heads"][:2] == (True, False)
    assert results["reset_batchnorm"][:2] == (False, True)
    assert results["reset_optimizer_state"] == (False, False, True)
    assert results["none"][2] is False
