"""The CUDA path (marked cuda; skipped without a GPU; benchmarks/gpu.sh runs them on one): the same mathematics as on
CPU, without host synchronisations in the inner step, and exact resume of a meta-train run on the device."""
import json
import signal

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_backends import make_batch_fn, make_modules

import trajshift as ts
from trajshift.commands.cli import main

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _cuda_batch_fn(dtype):
    cpu = make_batch_fn(dtype=dtype)
    cache = {}

    def batch_fn(t, step, split):
        if (t, step, split) not in cache:
            x, y = cpu(t, step, split)
            cache[(t, step, split)] = (x.cuda(), y.cuda())
        return cache[(t, step, split)]
    return batch_fn


def _train(backend, dtype=torch.float32, meta_lr=0.3, autocast=None, method="cts", sync_every=None, graphs=False):
    modules = [m.to(dtype).cuda() for m in make_modules(dtype=dtype)]
    learners = ts.ModuleLearners(modules, _cuda_batch_fn(dtype), backend=backend, autocast=autocast, graphs=graphs)
    cfg = ts.MetaConfig(method=method, inner_steps=4, trajectories=3, meta_lr=meta_lr,
                        dtype="float64" if dtype == torch.float64 else "float32", sync_every=sync_every,
                        inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    tr = ts.MetaTrainer(learners, cfg, graphs=graphs)
    return tr, tr.run()


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_cuda_graphs_equal_the_eager_loop_and_are_not_skipped(backend):
    """execution.graphs (the step graph, trajshift/training/step_graph.py, and the batched groups' graphs): the same
    phi as the eager loop in float64, and inductor recorded no skipped CUDA graph (a mutated input not marked static
    would make it run without them)."""
    from torch._dynamo.utils import counters
    counters.clear()
    _, eager = _train("loop", torch.float64)
    tr, graphed = _train(backend, torch.float64, graphs=True)
    assert tr.step_graph is not None and tr.step_graph.captures_meta_update
    torch.testing.assert_close(graphed.phi, eager.phi, rtol=0, atol=1e-10)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def test_loop_equals_batched_on_cuda():
    _, loop = _train("loop", torch.float64)
    _, batched = _train("batched", torch.float64)
    assert loop.phi.device.type == "cuda"
    torch.testing.assert_close(batched.phi, loop.phi, rtol=0, atol=1e-10)


def test_cts_with_beta_zero_is_plain_independent_training_on_cuda():
    """beta = 0: each row of theta follows its own plain module with its own torch.optim.SGD (one trajectory)."""
    modules = [m.cuda() for m in make_modules()]
    plain = [m.cuda() for m in make_modules()]
    batch_fn = _cuda_batch_fn(torch.float64)
    learners = ts.ModuleLearners(modules, batch_fn, backend="loop")
    cfg = ts.MetaConfig(method="cts", inner_steps=6, trajectories=1, meta_lr=0.0, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    tr = ts.MetaTrainer(learners, cfg)
    tr.run()
    for t, m in enumerate(plain):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for step in range(6):
            x, y = batch_fn(t, step, "train")
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        expected = learners.spec.flatten({n: p.detach() for n, p in m.named_parameters()})
        torch.testing.assert_close(tr.pop.theta[t].detach(), expected, rtol=0, atol=1e-10)


def test_bf16_is_close_to_float32_on_cuda():
    _, f32 = _train("batched")
    _, bf16 = _train("batched", autocast="bf16")
    rel = (bf16.phi - f32.phi).norm() / f32.phi.norm()
    assert rel < 0.03


def test_inner_step_has_no_host_sync_on_cuda():
    """torch.cuda.set_sync_debug_mode('error') raises at any synchronising call between read-backs."""
    tr, _ = _train("loop", sync_every=1000, method="cts")          # warm-up (the first step may allocate)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, _ in enumerate(tr.steps()):
            if i == 2:
                break
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_meta_train_on_cuda_resumes_bit_identically(tmp_path, monkeypatch):
    import faults
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (60, 12, 12, 3), dtype=np.uint8), y=np.arange(60) % 3)
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(data), "resolution": 12}] * 2,
           "batch_size": 8, "seed": 0, "cache_dir": str(tmp_path / "cache"), "checkpoint_every": 3, "device": "cuda",
           "execution": {"backend": "loop"},
           "meta": {"method": "cts", "inner_steps": 5, "trajectories": 2, "meta_lr": 0.3,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(path), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    faults.install(monkeypatch, 7, faults.send(signal.SIGINT))
    assert main(["meta-train", str(path), "--out", str(tmp_path / "cut"), "--quiet"]) == 130
    faults.uninstall(monkeypatch)
    assert main(["meta-train", str(path), "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    a = load_file(tmp_path / "full" / "init.safetensors")
    b = load_file(tmp_path / "cut" / "init.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]


def test_deterministic_reruns_on_cuda_are_bit_identical(tmp_path):
    """``deterministic: true``: two runs of one config on CUDA give the same init and metrics, bit for bit (the
    default kernels need not: benchmarks/gpu_determinism.py measures whether they do)."""
    rng = np.random.default_rng(1)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), y=np.arange(64) % 4)
    cfg = {"model": {"name": "resnet20"}, "tasks": [{"dataset": str(data), "resolution": 16}] * 2,
           "batch_size": 16, "seed": 0, "cache_dir": str(tmp_path / "cache"), "device": "cuda", "deterministic": True,
           "checkpoint_every": 0, "meta": {"method": "cts", "inner_steps": 6, "trajectories": 2, "meta_lr": 0.05,
                                           "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for name in ("a", "b"):
        assert main(["meta-train", str(path), "--out", str(tmp_path / name), "--quiet"]) == 0
    assert not torch.are_deterministic_algorithms_enabled()          # the caller's setting is back
    a, b = (load_file(tmp_path / n / "init.safetensors") for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
