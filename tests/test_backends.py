"""Execution backends and options (trajshift/engine/backends/, ModuleLearners): the batched (vmap) backend, backend
"auto", autocast, channels_last and torch.compile give the mathematics of plain per-task modules."""
import copy

import pytest
import torch
from torch import nn

import trajshift as ts
from trajshift.core.errors import ConfigError
from trajshift.runs.config import check_execution

CLASSES = [3, 5, 2]


class ConvNet(nn.Module):
    """Two conv + BatchNorm blocks and a head of ``classes`` outputs (input 1 x 8 x 8)."""

    def __init__(self, classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def make_modules(classes=CLASSES, dtype=torch.float64):
    torch.manual_seed(0)
    template = ConvNet(2)
    out = []
    for c in classes:
        m = copy.deepcopy(template)
        m.head = nn.Linear(6, c)
        out.append(m.to(dtype))
    return out


def make_batch_fn(classes=CLASSES, dtype=torch.float64, shapes=None):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 1, *(shapes[t] if shapes else (8, 8)), generator=g, dtype=dtype),
             torch.randint(0, c, (32,), generator=g)) for t, c in enumerate(classes)]

    def batch_fn(t, step, split):
        idx = ts.batch_indices(32, 8, step, seed=0, task=t)
        return data[t][0][idx], data[t][1][idx]
    return batch_fn


def train(method, backend, dtype="float64", **options):
    learners = ts.ModuleLearners(make_modules(dtype=getattr(torch, dtype)), make_batch_fn(dtype=getattr(torch, dtype)),
                                 backend=backend, **options)
    cfg = ts.MetaConfig(method=method, inner_steps=4, trajectories=3, meta_lr=0.3, dtype=dtype,
                        inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    trainer = ts.MetaTrainer(learners, cfg)
    trainer.run()
    return trainer, learners


def assert_same_run(a, b, atol):
    (ta, la), (tb, lb) = a, b
    torch.testing.assert_close(ta.phi, tb.phi, rtol=0, atol=atol)
    torch.testing.assert_close(ta.pop.theta.detach(), tb.pop.theta.detach(), rtol=0, atol=atol)
    for t in range(len(CLASSES)):
        sa, sb = la.modules[t].state_dict(), lb.modules[t].state_dict()
        for k in sa:                       # heads and BatchNorm running statistics of every task
            torch.testing.assert_close(sa[k].double(), sb[k].double(), rtol=0, atol=atol, msg=f"task {t} {k}")


@pytest.mark.parametrize("method", ["cts", "leap", "reptile", "fomaml++", "imaml", "mtl"])
def test_batched_backend_equals_loop(method):
    """Float64, heads of 3/5/2 classes (padded to 5, masked), per-task BatchNorm, 3 trajectories of 4 steps;
    validation batches (fomaml++), Hessian-vector products (imaml) and gradient averaging (mtl) included."""
    # iMAML's conjugate gradient on I + H / lambda amplifies float64 rounding (the backends sum in different
    # orders) by the system's condition number: 2e-11 on BatchNorm statistics after 3 meta-updates.
    atol = 1e-9 if method == "imaml" else 1e-12
    assert_same_run(train(method, "loop"), train(method, "batched"), atol=atol)


def test_padded_head_loss_is_each_tasks_own_cross_entropy():
    modules = make_modules()
    batch_fn = make_batch_fn()
    plain = [copy.deepcopy(m) for m in modules]
    learners = ts.ModuleLearners(modules, batch_fn, backend="batched")
    pop = ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    losses = pop.backward(0)
    for t, m in enumerate(plain):
        x, y = batch_fn(t, 0, "train")
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        torch.testing.assert_close(losses[t], loss.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(learners.modules[t].head.weight.grad, m.head.weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(pop.theta_grad[t], learners.spec.flatten(
            {n: p.grad for n, p in m.named_parameters()}), rtol=0, atol=1e-12)
    assert learners.engine.forwards[0].local_index["head.weight"].shape == (3, 5, 6)


def test_auto_measures_both_restores_state_and_matches_loop():
    auto = train("cts", "auto")
    assert auto[1].backend in ("loop", "batched")
    assert set(auto[1].backend_timings) == {"loop", "batched"}
    assert_same_run(train("cts", "loop"), auto, atol=1e-12)   # the timing runs left no trace


SHAPES = [(8, 8), (10, 10), (8, 8)]          # two input shapes; tasks 0 and 2 share one (a non-contiguous group)


def train_shapes(method, backend, checkpoint_dir=None, stop_at=None, modes=None, **options):
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(shapes=SHAPES), backend=backend, **options)
    cfg = ts.MetaConfig(method=method, inner_steps=4, trajectories=3, meta_lr=0.3, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})

    def stop(tr):
        if stop_at is not None and tr.inner_steps == stop_at:
            raise RuntimeError("stopped")
    trainer = ts.MetaTrainer(learners, cfg, checkpoint_dir=checkpoint_dir, checkpoint_every=1 if checkpoint_dir
                             else 0, step_callbacks=[stop])
    if modes is not None:               # the per-group modes "auto" would choose by timing, fixed here
        from trajshift.engine.backends import BatchedBackend
        learners.engine = BatchedBackend(learners.bound, group_modes=modes)
    if checkpoint_dir is not None:
        trainer.resume()
    trainer.run()
    return trainer, learners


@pytest.mark.parametrize("method", ["cts", "reptile", "mtl"])
def test_batched_groups_tasks_by_input_shape_and_equals_loop(method):
    """Float64: tasks at two input shapes (8 x 8 and 10 x 10) and heads of 3/5/2 classes run as two vmapped groups
    ({0, 2}, {1}); every parameter, head and BatchNorm statistic equals the loop backend's."""
    batched = train_shapes(method, "batched")
    assert batched[1].engine.groups == [[0, 2], [1]]
    assert_same_run(train_shapes(method, "loop"), batched, atol=1e-12)


def test_grouped_batched_resumes_mid_trajectory_bit_for_bit(tmp_path):
    with pytest.raises(RuntimeError, match="stopped"):
        train_shapes("cts", "batched", checkpoint_dir=tmp_path / "ck", stop_at=6)       # trajectory 2, step 2
    resumed = train_shapes("cts", "batched", checkpoint_dir=tmp_path / "ck")
    assert_same_run(train_shapes("cts", "batched"), resumed, atol=0)


def test_max_group_bounds_the_tasks_per_vmapped_call():
    from trajshift.engine.backends.batched import BatchedBackend
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(), backend="batched")
    pop = ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    pop.backward(0)
    reference = pop.theta_grad.clone()
    learners2 = ts.ModuleLearners(make_modules(), make_batch_fn(), backend="loop")
    pop2 = ts.Population(learners2, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    learners2.engine = BatchedBackend(learners2.bound, max_group=2)
    pop2.backward(0)
    assert learners2.engine.groups == [[0, 1], [2]]
    torch.testing.assert_close(pop2.theta_grad, reference, rtol=0, atol=1e-12)


def test_batched_refuses_learners_of_different_structure():
    modules = make_modules()
    modules[1].head = nn.Sequential(nn.Linear(6, 5))
    with pytest.raises(ConfigError, match="task 1's non-meta-learned parameters"):
        ts.ModuleLearners(modules, make_batch_fn(), backend="batched")


def test_resumed_auto_run_keeps_the_backend_it_chose():
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(), backend="auto")
    pop = ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    state = learners.state_dict()
    learners.load_state_dict({**state, "backend": "batched"})
    assert learners.backend == "batched"
    pop.backward(0)
    assert learners.backend_timings == {}                          # no new measurement


def test_channels_last_gives_the_same_run():
    assert_same_run(train("cts", "loop"), train("cts", "loop", channels_last=True), atol=1e-12)


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_bf16_autocast_losses_are_close_to_float32(backend):
    """bf16 has an 8-bit mantissa: the first-step losses agree with float32 to about 1e-2 relative."""
    ref = ts.ModuleLearners(make_modules(dtype=torch.float32), make_batch_fn(dtype=torch.float32))
    ref_losses = ts.Population(ref, {"name": "sgd", "lr": 0.1}).backward(0)
    half = ts.ModuleLearners(make_modules(dtype=torch.float32), make_batch_fn(dtype=torch.float32),
                             backend=backend, autocast="bf16")
    pop = ts.Population(half, {"name": "sgd", "lr": 0.1})
    losses = pop.backward(0)
    assert losses.dtype == torch.float32 and pop.theta_grad.dtype == torch.float32
    torch.testing.assert_close(losses, ref_losses, rtol=3e-2, atol=0)
    assert torch.isfinite(pop.theta_grad).all() and pop.theta_grad.abs().sum() > 0


@pytest.mark.slow
def test_compiled_batched_backend_equals_loop():
    """torch.compile of the vmapped forward (inductor, CPU): float32 results agree with the loop to 1e-5."""
    assert_same_run(train("cts", "loop", dtype="float32"),
                    train("cts", "batched", dtype="float32", compile=True), atol=1e-5)


@pytest.mark.parametrize("execution, message", [
    ({"backend": "gpu"}, "execution.backend: unknown value 'gpu'"),
    ({"autocast": "int8"}, "execution.autocast: unknown value 'int8'"),
    ({"compile": True, "backend": "loop"}, "execution.compile: torch.compile applies to the batched backend"),
    ({"chanels_last": True}, "execution.chanels_last: unknown key"),
    ({"channels_last": "yes"}, "execution.channels_last: expected true or false"),
])
def test_bad_execution_options_are_named(execution, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_execution(execution)
    assert check_execution({})["backend"] == "auto"


def test_batched_bf16_runs_the_convolutions_in_bf16():
    """Under vmap, autocast alone left conv2d in float32: the batched backend casts convolution inputs and weights
    explicitly (outputs back to float32 for BatchNorm), and the gradient still reaches the float32 theta."""
    learners = ts.ModuleLearners(make_modules(dtype=torch.float32), make_batch_fn(dtype=torch.float32),
                                 backend="batched", autocast="bf16")
    pop = ts.Population(learners, {"name": "sgd", "lr": 0.1})
    pop.backward(0)                     # builds the batched forward
    seen = []
    for mod in learners.engine.forwards[0].template.modules():
        if isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(lambda m, inp, out: seen.append(inp[0].dtype))
    pop.backward(1)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert pop.theta_grad.dtype == torch.float32 and pop.theta_grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["cts", "reptile", "mtl"])
def test_groups_in_mixed_modes_equal_the_loop(method):
    """Float64: group {0, 2} batched (vmapped, heads of 3 and 2 classes padded) and group {1} in loop mode, as auto
    may choose per group: every parameter, head and BatchNorm statistic equals the loop backend's."""
    mixed = train_shapes(method, "batched", modes=["batched", "loop"])
    assert mixed[1].engine.groups == [[0, 2], [1]] and mixed[1].engine.group_modes == ["batched", "loop"]
    assert_same_run(train_shapes(method, "loop"), mixed, atol=1e-12)


def test_group_modes_are_checkpointed_and_resumed(tmp_path):
    """A run stopped mid-trajectory with groups in mixed modes resumes on the same modes, bit for bit."""
    from trajshift.engine.backends import BatchedBackend

    with pytest.raises(RuntimeError, match="stopped"):
        train_shapes("cts", "batched", checkpoint_dir=tmp_path / "ck", stop_at=6, modes=["loop", "batched"])
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(shapes=SHAPES), backend="auto")
    ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    from trajshift.training.checkpoint import list_checkpoints
    state = torch.load(list_checkpoints(tmp_path / "ck")[-1], weights_only=False)
    learners.load_state_dict(state["learners"])
    assert isinstance(learners.engine, BatchedBackend) and learners.engine.group_modes == ["loop", "batched"]
    reference = train_shapes("cts", "batched", modes=["loop", "batched"])
    resumed = train_shapes("cts", "auto", checkpoint_dir=tmp_path / "ck")
    assert resumed[1].engine.group_modes == ["loop", "batched"]
    assert_same_run(reference, resumed, atol=0)


def test_auto_chooses_per_group_and_matches_the_loop():
    """auto times both modes per group (labels name the group), restores every side effect of the timing, and
    whatever it chose, the run equals the loop's."""
    auto = train_shapes("cts", "auto")
    timings = auto[1].backend_timings
    assert set(timings) == {f"group {i} (tasks {g}) {m}" for i, g in enumerate([[0, 2], [1]])
                            for m in ("loop", "batched")}
    assert auto[1].backend in ("loop", "batched")
    assert_same_run(train_shapes("cts", "loop"), auto, atol=1e-12)


@pytest.mark.parametrize("backend", ["batched", "loop"])
def test_cuda_graphs_are_refused_on_cpu_in_one_line(backend):
    # (graphs with the loop backend is a valid configuration: the step graph captures the work after the backward)
    check_execution({"backend": backend, "graphs": True})
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(), backend=backend, graphs=True)
    with pytest.raises(ConfigError, match=r"^execution.graphs: CUDA graphs need a CUDA device; this run is on cpu; "
                                          r"set execution.graphs: false$"):
        ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)


def test_backends_see_only_the_bound_replicas():
    """A backend receives BoundReplicas (a frozen description of the binding), never the ModuleLearners: no backend
    module imports or names it."""
    import ast
    import dataclasses
    import pathlib

    from trajshift.engine import backends
    folder = pathlib.Path(backends.__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
                {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        assert not any("module_learners" in m for m in imported), path.name
        assert not {"learners", "ModuleLearners", "ln"} & names, path.name
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(), backend="loop")
    ts.Population(learners, {"name": "sgd", "lr": 0.1}, dtype=torch.float64)
    assert learners.engine.bound is learners.bound
    with pytest.raises(dataclasses.FrozenInstanceError):
        learners.bound.theta = None


@pytest.mark.slow
def test_graphs_mode_group_forward_equals_loop_on_cpu():
    """The graphs option's code path (torch.compile in reduce-overhead mode; on CPU inductor skips the CUDA graphs
    themselves): float32 results agree with the loop to 1e-5. The option is refused on CPU for users; here the
    group forward is built directly."""
    from trajshift.engine.backends import BatchedBackend

    loop = train_shapes("cts", "loop")
    learners = ts.ModuleLearners(make_modules(), make_batch_fn(shapes=SHAPES), backend="loop")
    cfg = ts.MetaConfig(method="cts", inner_steps=4, trajectories=3, meta_lr=0.3, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    trainer = ts.MetaTrainer(learners, cfg)
    engine = BatchedBackend(learners.bound, compile=True)
    engine.graphs = True                 # the constructor refuses graphs off CUDA; the code path is the same
    learners.engine = engine
    trainer.run()
    assert_same_run(loop, (trainer, learners), atol=1e-9)
