"""The inner step and the meta-update force no host read: losses, ||Delta|| and the finiteness checks stay on the
device and come back in one transfer every sync_every steps (on a GPU, each host read stalls the pipeline)."""
import json

import pytest
import torch
from torch import nn

import trajshift as ts

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every Python-level host read of a tensor's values."""
    count = {"n": 0}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            count["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


def _learners(T=3, blow_up=None):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2 + t)) for t in range(T)]
    xs = torch.randn(T, 64, 4)
    ys = [torch.randint(0, 2 + t, (64,)) for t in range(T)]

    def batch(t, step, split):
        i = (step * 8) % 64
        x = xs[t, i:i + 8]
        if blow_up is not None and (t, step) == blow_up:
            x = x * float("inf")
        return x, ys[t][i:i + 8]
    # the per-task head is "2.*" (the last Linear): everything else is meta-learned
    return ts.ModuleLearners(models, batch, exclude=["2.*"])


def _trainer(tmp_path, sync_every, method="cts", name="m", **kw):
    cfg = ts.MetaConfig(method=method, inner_steps=10, trajectories=2, meta_lr=0.1, sync_every=sync_every,
                        progress=False, inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    return ts.MetaTrainer(kw.pop("learners", None) or _learners(), cfg, metrics_path=tmp_path / f"{name}.jsonl", **kw)


@pytest.mark.parametrize("method", ["cts", "reptile"])
def test_no_host_read_between_read_backs(tmp_path, host_reads, method):
    tr = _trainer(tmp_path, sync_every=5, method=method)
    per_step = []
    before = host_reads["n"]
    for m, k, _ in tr.steps():
        per_step.append((m * 10 + k, host_reads["n"] - before))
        before = host_reads["n"]
    # One read-back (one .tolist()) at steps 5, 10, 15, 20; the trajectory's end adds one, counted at step 11.
    expected = {5: 1, 10: 1, 11: 1, 15: 1, 20: 1}
    assert per_step == [(s, expected.get(s, 0)) for s in range(1, 21)]


def test_rows_and_results_do_not_depend_on_the_read_back_period(tmp_path):
    a = _trainer(tmp_path, sync_every=1, name="a").run()
    b = _trainer(tmp_path, sync_every=7, name="b").run()
    assert torch.equal(a.phi, b.phi)
    rows_a, rows_b = ((tmp_path / f"{n}.jsonl").read_text() for n in "ab")
    assert rows_a == rows_b and len(rows_a.splitlines()) == 22          # 20 step rows + 2 trajectory ends


def test_a_late_read_back_still_names_the_task_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from trajshift.training.checkpoint import list_checkpoints
    tr = _trainer(tmp_path, sync_every=10, learners=_learners(blow_up=(1, 2)), checkpoint_dir=tmp_path / "ckpt",
                  checkpoint_every=2)
    with pytest.raises(ts.DivergenceError, match=r"task 1: inner loss is (nan|inf) at data step 2\b"):
        tr.run()
    # The checkpoint at loop step 2 (data step 1) was taken before the bad step; the one due at step 4 was refused.
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["ckpt-0000000002.pt"]
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows[2]["loss"][1] is None                    # the bad loss is logged as null, not NaN


def test_image_batches_use_device_permutations_with_the_same_indices(tmp_path):
    """ImageTask draws batches from epoch permutations kept on its device (one copy per epoch, none per step):
    the indices are batch_indices', across epoch boundaries too."""
    import numpy as np

    from trajshift.data.cache import prepare
    from trajshift.data.tasks import ImageTask, TaskSpec
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), y=np.arange(50) % 5)
    prepared = prepare(str(data), 8, cache_dir=tmp_path / "c")
    task = ImageTask(TaskSpec.from_dict({"dataset": str(data), "resolution": 8}, "t"), prepared, 16, 3, 2)
    n = len(task.y["train"])
    seed = ts.core.sampling.stream_seed(3, 1)
    for step in range(12):                       # 16-image batches of 40 images: crossing epochs
        assert torch.equal(task.indices("train", n, seed, step), ts.batch_indices(n, 16, step, seed, 2))
