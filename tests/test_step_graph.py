"""execution.graphs' step graph (trajshift/training/step_graph.py), traced on CPU with torch.compile's aot_eager
backend (the CUDA graphs of mode reduce-overhead need a GPU; the traced tail is the same): float64 equality with the
eager loop for methods whose meta-update is captured (cts, cts-no-shift) and those whose is not (reptile, the random
shift), with momentum, a learning-rate schedule and clipping; no recompilation from step to step; a resume
mid-trajectory; divergence still named; the refusals."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import trajshift as ts
from trajshift.core.errors import ConfigError, DivergenceError
from trajshift.training.step_graph import StepGraph

CLASSES = (3, 2)


class Net(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.head = nn.Linear(7, classes)

    def forward(self, x):
        return self.head(self.body(x))


def make_learners(poison_step=None):
    torch.manual_seed(0)
    template = Net(2)
    modules = []
    for c in CLASSES:
        m = copy.deepcopy(template)
        m.head = nn.Linear(7, c)
        modules.append(m.double())
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(24, 5, generator=g, dtype=torch.float64), torch.randint(0, c, (24,), generator=g))
            for c in CLASSES]

    def batch_fn(t, step, split):
        idx = ts.batch_indices(24, 6, step, seed=0, task=t)
        x = data[t][0][idx]
        if poison_step is not None and step >= poison_step and t == 1:
            x = x * float("nan")
        return x, data[t][1][idx]
    return ts.ModuleLearners(modules, batch_fn, backend="loop")


def config(method, **over):
    return ts.MetaConfig(**{"method": method, "inner_steps": 4, "trajectories": 3, "meta_lr": 0.3, "dtype": "float64",
                            "inner_optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                            "inner_lr_schedule": "cosine", "clip_grad_norm": 0.5, **over})


def trainer(method, graphs, counter=None, poison_step=None, **kw):
    tr = ts.MetaTrainer(make_learners(poison_step), config(method), **kw)
    if graphs:
        tr.step_graph = StepGraph(tr, {"backend": counter or "aot_eager"})
    return tr


def run(tr):
    rows = []
    for m, k, losses in tr.steps():
        rows.append((losses.clone(), tr.readback.delta_norm.clone(), tr.phi.clone()))
    return rows


def assert_same(a, b, rows_a, rows_b, atol=1e-10):
    torch.testing.assert_close(a.phi, b.phi, rtol=0, atol=atol)
    torch.testing.assert_close(a.pop.theta.detach(), b.pop.theta.detach(), rtol=0, atol=atol)
    torch.testing.assert_close(a.pop.learners.local, b.pop.learners.local, rtol=0, atol=atol)
    assert a.meta_updates == b.meta_updates and a.inner_steps == b.inner_steps
    for (la, da, pa), (lb, db, pb) in zip(rows_a, rows_b, strict=True):
        torch.testing.assert_close(la, lb, rtol=0, atol=atol)
        torch.testing.assert_close(da, db, rtol=0, atol=atol)
        torch.testing.assert_close(pa, pb, rtol=0, atol=atol)


@pytest.mark.parametrize("method,captured", [("cts", True), ("cts-no-shift", True), ("reptile", False),
                                             ("cts-random-shift", False)])
def test_step_graph_equals_the_eager_loop(method, captured):
    eager, graphed = trainer(method, False), trainer(method, True)
    assert graphed.step_graph.captures_meta_update is captured
    rows_e, rows_g = run(eager), run(graphed)
    assert_same(eager, graphed, rows_e, rows_g)
    assert eager.meta_updates == (12 if method.startswith("cts") else 3)


@pytest.mark.parametrize("optimizer,atol", [({"name": "sgd", "lr": 0.1, "momentum": 0.9, "foreach": True}, 1e-10),
                                            ({"name": "adam", "lr": 0.01}, 2e-6)])
def test_step_graph_with_foreach_sgd_and_adam(optimizer, atol):
    """SGD's foreach path (the CUDA default: the learning rate as a 0-d tensor multiplies the gradients), and Adam,
    whose compiled step (torch's own, as torch.compile(opt.step) alone) computes the bias corrections from its float32
    step counter where the eager step uses a Python float: about 1e-7 apart per step in float64 whatever we do, so
    Adam is compared to 2e-6 over the 12 steps."""
    def make(graphs):
        tr = ts.MetaTrainer(make_learners(), config("cts", inner_optimizer=optimizer))
        if graphs:
            tr.step_graph = StepGraph(tr, {"backend": "aot_eager"})
        return tr
    eager, graphed = make(False), make(True)
    assert_same(eager, graphed, run(eager), run(graphed), atol)


def test_step_graph_compiles_once_not_per_step():
    """Data step, update count and the scheduled learning rates are tensors: later steps replay what the first
    ones compiled (SGD's momentum buffers appear at the first step: at most one recompilation)."""
    counter = CompileCounterWithBackend("aot_eager")
    tr = trainer("cts", True, counter=counter)
    steps = tr.steps()
    for _ in range(3):
        next(steps)
    after_three = counter.frame_count
    for _ in steps:
        pass
    assert tr.inner_steps == 12 and 0 < after_three == counter.frame_count <= 6


def test_step_graph_resumes_mid_trajectory(tmp_path):
    straight = trainer("cts", True)
    rows = run(straight)

    def stop(tr):
        if tr.inner_steps == 6:
            raise RuntimeError("stopped")
    first = trainer("cts", True, checkpoint_dir=tmp_path, checkpoint_every=1, step_callbacks=[stop])
    with pytest.raises(RuntimeError, match="stopped"):
        run(first)
    resumed = trainer("cts", True, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert resumed.resume()
    tail = run(resumed)          # the stop came before step 6's checkpoint: the resume starts at step 6
    assert len(tail) == 7
    assert_same(straight, resumed, rows[5:], tail)


def test_step_graph_still_names_a_diverging_task():
    """The finiteness watches run inside the graph with the data step as a tensor: the same culprit and step."""
    messages = []
    for graphs in (False, True):
        with pytest.raises(DivergenceError, match=r"^task 1: inner loss is nan at data step \d+;") as caught:
            run(trainer("cts", graphs, poison_step=3))
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


def test_step_graph_refusals(caplog):
    with pytest.raises(ConfigError, match=r"^execution.graphs: CUDA graphs need a CUDA device; this run is on cpu; "
                                          r"set execution.graphs: false$"):
        ts.MetaTrainer(make_learners(), config("cts"), graphs=True)
    tr = ts.MetaTrainer(make_learners(), config("cts", reset_optimizer_state=True))
    with pytest.raises(ConfigError, match=r"^execution.graphs with meta.reset_optimizer_state: true would record"):
        StepGraph(tr, {"backend": "aot_eager"})
    with caplog.at_level(logging.WARNING):
        mtl = ts.MetaTrainer(make_learners(), config("mtl"), graphs=True)
    assert mtl.step_graph is None and "mtl transforms every gradient in Python" in caplog.text
