"""Invariants of the method: linear losses make the shift exact; beta = 0 is independent training; CTS with
meta_every = K is Reptile; one optimizer over [T, P] is T optimizers."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import trajshift as ts
from trajshift.tasks.synthetic import HimmelblauTasks

OPTIMIZERS = [
    {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"name": "adam", "lr": 0.01},
]


def linear_loss(a, b):
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    return lambda theta, step, split: (theta * a).sum(1) + b


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("metagrad", ["reptile", "gradient"])
def test_linear_losses_make_cts_exact(optimizer, metagrad):
    """Zero Hessian: U_k(phi + Delta) = U_k(phi) + Delta, so Eq. (1) holds exactly and cts == cts-accurate."""
    rng = np.random.default_rng(1)
    fn = linear_loss(rng.normal(size=(4, 5)), rng.normal(size=4))
    phis = {}
    for method in ("cts", "cts-accurate"):
        learners = ts.FunctionLearners(fn, torch.tensor(rng.normal(size=5) * 0 + 0.5), 4)
        cfg = ts.MetaConfig(method=method, inner_steps=7, trajectories=2, meta_lr=0.2, dtype="float64",
                            inner_optimizer=optimizer, options={"metagrad": metagrad})
        phis[method] = ts.MetaTrainer(learners, cfg).run().phi
    assert torch.allclose(phis["cts"], phis["cts-accurate"], rtol=0, atol=1e-12)
    assert (phis["cts"] - 0.5).abs().max() > 1e-2       # phi did move


def test_curved_losses_make_cts_approximate():
    """The converse: with a non-zero Hessian the two differ (so the test above can fail)."""
    tasks = HimmelblauTasks.make(4, seed=0)
    phis = {}
    for method in ("cts", "cts-accurate"):
        learners = ts.FunctionLearners(tasks.learner_loss, torch.tensor([1.0, 2.0], dtype=torch.float64), 4)
        cfg = ts.MetaConfig(method=method, inner_steps=10, trajectories=1, meta_lr=0.1, dtype="float64")
        phis[method] = ts.MetaTrainer(learners, cfg).run().phi
    assert (phis["cts"] - phis["cts-accurate"]).abs().max() > 1e-6


@pytest.mark.parametrize("carry", [True, False])
def test_cts_with_meta_every_K_is_reptile(carry):
    tasks = HimmelblauTasks.make(8, seed=3)
    phis = {}
    for method, options in (("cts", {"meta_every": 25}), ("reptile", {})):
        learners = ts.FunctionLearners(tasks.learner_loss, torch.tensor([-5.0, 15.0], dtype=torch.float64), 8)
        cfg = ts.MetaConfig(method=method, inner_steps=25, trajectories=4, meta_lr=0.5, dtype="float64",
                            options=options, reset_optimizer_state=not carry)
        phis[method] = ts.MetaTrainer(learners, cfg).run().phi
    assert torch.equal(phis["cts"], phis["reptile"]) or torch.allclose(phis["cts"], phis["reptile"], rtol=0,
                                                                       atol=1e-13)
    assert (phis["cts"] - torch.tensor([-5.0, 15.0], dtype=torch.float64)).abs().max() > 0.1


@pytest.mark.parametrize("optimizer", OPTIMIZERS + [{"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                     "weight_decay": 5e-3}],
                         ids=["momentum", "nesterov", "adam", "weight-decay"])
def test_one_optimizer_over_rows_equals_T_optimizers(optimizer):
    tasks = HimmelblauTasks.make(5, seed=2)
    start = torch.tensor([2.0, 7.0], dtype=torch.float64)
    pop = ts.Population(ts.FunctionLearners(tasks.learner_loss, start, 5), optimizer, dtype=torch.float64)
    for step in range(30):
        pop.inner_step(step)
    for t in range(5):
        x = start.clone().requires_grad_(True)
        opt = getattr(torch.optim, {"sgd": "SGD", "adam": "Adam"}[optimizer["name"]])(
            [x], **{k: v for k, v in optimizer.items() if k != "name"})
        for _ in range(30):
            opt.zero_grad()
            full = torch.zeros(5, 2, dtype=torch.float64)
            full = full.index_put((torch.tensor([t]),), x.unsqueeze(0))
            tasks.loss(full)[t].backward()
            opt.step()
        torch.testing.assert_close(pop.theta[t].detach(), x.detach(), rtol=0, atol=1e-12)


class Net(nn.Module):
    """A tiny conv net with BatchNorm and a task-specific head of ``classes`` outputs."""

    def __init__(self, classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make_data(classes, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, c, (n,), generator=g)) for c in classes]


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_beta_zero_is_independent_training_of_modules(backend):
    """beta = 0: phi does not move and every task learner (meta part, head, BN statistics) equals a plain module
    trained with its own torch.optim optimizer on the same batches. With the batched backend this also checks the
    padded heads (3, 5 and 2 classes) and the stacked BatchNorm statistics against plain modules."""
    classes = [3, 5, 2]
    data = make_data(classes)
    torch.manual_seed(0)
    template = Net(4).double()
    modules = []
    for c in classes:
        m = copy.deepcopy(template)
        m.head = nn.Linear(4, c).double()
        modules.append(m)
    plain = [copy.deepcopy(m) for m in modules]

    def batch_fn(t, step, split):
        idx = ts.batch_indices(40, 8, step, seed=0, task=t)
        return data[t][0][idx], data[t][1][idx]

    opt_spec = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    learners = ts.ModuleLearners(modules, batch_fn, backend=backend)
    cfg = ts.MetaConfig(method="cts", inner_steps=12, trajectories=1, meta_lr=0.0, dtype="float64",
                        inner_optimizer=opt_spec)
    trainer = ts.MetaTrainer(learners, cfg)
    phi0 = trainer.phi.clone()
    trainer.run()
    assert torch.equal(trainer.phi, phi0)
    for t, m in enumerate(plain):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for step in range(12):
            x, y = batch_fn(t, step, "train")
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        ours = learners.modules[t].state_dict()
        for name, value in m.state_dict().items():
            torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-12, msg=f"task {t} {name}")
        torch.testing.assert_close(trainer.pop.theta[t].detach(),
                                   learners.spec.flatten(dict(m.named_parameters())).detach(), rtol=0, atol=1e-12)


def test_summed_and_per_task_backward_agree():
    classes = [3, 2]
    data = make_data(classes)
    grads = []
    for mode in ("per-task", "summed"):
        torch.manual_seed(0)
        modules = [Net(c).double() for c in classes]
        learners = ts.ModuleLearners(modules, lambda t, s, sp: (data[t][0][:8], data[t][1][:8]), backward=mode)
        pop = ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
        losses = pop.backward(0)
        grads.append((losses, pop.theta_grad.clone(), learners.local_grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_per_task_clipping_equals_clip_grad_norm_on_each_model():
    classes = [3, 5]
    data = make_data(classes)
    torch.manual_seed(0)
    modules = [Net(c).double() for c in classes]
    for m in modules[1:]:                       # one shared initial body (phi_0), per-task heads
        m.conv.load_state_dict(modules[0].conv.state_dict())
        m.bn.load_state_dict(modules[0].bn.state_dict())
    plain = [copy.deepcopy(m) for m in modules]
    batch_fn = lambda t, step, split: (data[t][0][:16], data[t][1][:16])
    learners = ts.ModuleLearners(modules, batch_fn)
    cfg = ts.MetaConfig(method="cts", inner_steps=5, trajectories=1, meta_lr=0.0, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1}, clip_grad_norm=0.05)
    ts.MetaTrainer(learners, cfg).run()
    for t, m in enumerate(plain):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for step in range(5):
            x, y = batch_fn(t, step, "train")
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            assert torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05) > 0.05   # clipping really happens
            opt.step()
        for name, value in m.state_dict().items():
            torch.testing.assert_close(learners.modules[t].state_dict()[name], value, rtol=0, atol=1e-12)


def test_non_finite_parameters_stop_the_run():
    learners = ts.FunctionLearners(lambda th, s, sp: (th * th).sum(1), torch.tensor([1.0]), 2)
    cfg = ts.MetaConfig(method="reptile", inner_steps=3, trajectories=1, inner_optimizer={"name": "sgd",
                                                                                            "lr": 3e38})  # 1 - 6e38 overflows float32
    with pytest.raises(ts.DivergenceError, match=r"task 0: parameters became non-finite at data step 0"):
        ts.MetaTrainer(learners, cfg).run()
