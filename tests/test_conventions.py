"""Everyday PyTorch conventions: the inputs, options, errors and help texts a PyTorch user expects. Expected values
come from the inputs themselves (the items' own fields, the caller's own thread count and generator states)."""
import functools
import os
import signal

import numpy as np
import pytest
import torch
from front_door_models import SeqNet, seq_net
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trajshift as ts
from trajshift.commands.cli import main
from trajshift.core.errors import ConfigError

QUIET = {"log": lambda *_: None, "backend": "loop"}


def _vectors(counts=(3, 3), n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, c, (n,), generator=gen)) for c in counts]


class DictItems(Dataset):
    """Hugging Face style items."""

    def __init__(self, base: TensorDataset, input_key="pixel_values", label_key="labels"):
        self.base, self.input_key, self.label_key = base, input_key, label_key

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {self.input_key: x, self.label_key: y, "id": i}


class IndexedItems(Dataset):
    """(index, x, y) items."""

    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return i, x, y


# --- data as PyTorch and Hugging Face users hand it over ----------------------------------------------------------
def test_dict_and_indexed_items_train_exactly_like_plain_pairs():
    base = _vectors()
    kw = {"inner_steps": 3, "trajectories": 2, "batch_size": 8, "head": "top.1", **QUIET}
    plain = ts.fit(seq_net, base, **kw).phi
    assert torch.equal(ts.fit(seq_net, [DictItems(d) for d in base], **kw).phi, plain)        # common names
    assert torch.equal(ts.fit(seq_net, [DictItems(d, "image", "label") for d in base], **kw).phi, plain)
    assert torch.equal(ts.fit(seq_net, [DictItems(d, "feats", "cls") for d in base], input_key="feats",
                              label_key="cls", **kw).phi, plain)
    assert torch.equal(ts.fit(seq_net, [IndexedItems(d) for d in base], input_key=1, label_key=2, **kw).phi, plain)


def test_items_of_an_unknown_structure_are_refused_naming_it():
    base = _vectors()
    with pytest.raises(ConfigError, match=r"items are a tuple of 3 fields \(int, Tensor, Tensor\).*input_key=1, "
                                          r"label_key=2"):
        ts.fit(seq_net, [IndexedItems(d) for d in base], inner_steps=1, trajectories=1, batch_size=8, **QUIET)
    with pytest.raises(ConfigError, match=r"items are a dict with keys 'feats', 'cls', 'id'; give input_key="):
        ts.fit(seq_net, [DictItems(d, "feats", "cls") for d in base], inner_steps=1, trajectories=1, batch_size=8,
               num_classes=[3, 3], **QUIET)


def test_a_dataloader_gives_its_dataset_and_collate_fn_and_says_what_it_replaces():
    base = _vectors()

    def collate(items):                       # the user's collate: dict items to (inputs, labels)
        return torch.stack([i["feats"] for i in items]), torch.stack([i["cls"] for i in items])
    loaders = [DataLoader(DictItems(d, "feats", "cls"), batch_size=5, shuffle=True, collate_fn=collate) for d in base]
    kw = {"inner_steps": 3, "trajectories": 2, "batch_size": 8, "head": "top.1", **QUIET}
    with pytest.warns(UserWarning, match="sampler, shuffle, batch size and workers are replaced"):
        got = ts.fit(seq_net, loaders, **kw).phi
    assert torch.equal(got, ts.fit(seq_net, base, **kw).phi)


# --- fit and finetune as counterparts -------------------------------------------------------------------------------
def test_fit_options_threads_callbacks_silence_and_did_you_mean(capsys):
    data = _vectors()
    seen, before = [], torch.get_num_threads()
    result = ts.fit(seq_net, data, inner_steps=2, trajectories=2, batch_size=8, head="top.1", threads=1,
                    callbacks=[lambda tr: seen.append((tr.meta_updates, torch.get_num_threads()))], log=None,
                    backend="loop")
    assert seen == [(1, 1), (2, 1), (3, 1), (4, 1)] and torch.get_num_threads() == before
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""                              # log=None: nothing at all
    assert result.learners.requested_backend == "loop"
    default = ts.fit(seq_net, data, inner_steps=1, trajectories=1, batch_size=8, head="top.1", log=None)
    from trajshift.engine.module_learners import ExecutionConfig
    assert default.learners.requested_backend == ExecutionConfig().backend        # the CLI's default
    with pytest.raises(ConfigError, match=r"unexpected keyword 'reset_optimiser_state'; did you mean "
                                          r"'reset_optimizer_state'"):
        ts.fit(seq_net, data, reset_optimiser_state=True)
    with pytest.warns(UserWarning, match=r"batch_size 64 is more than datasets\[0\] \(24 items\)"):
        ts.fit(seq_net, data, inner_steps=1, trajectories=1, batch_size=64, head="top.1", **QUIET)


def test_ctrl_c_in_the_api_is_a_keyboard_interrupt(tmp_path):
    assert issubclass(ts.Interrupted, KeyboardInterrupt)

    def stop(tr):
        if tr.meta_updates == 2:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="run the same command again to resume") as caught:
        ts.fit(seq_net, _vectors(), inner_steps=2, trajectories=3, batch_size=8, head="top.1", callbacks=[stop],
               out=tmp_path / "run", checkpoint_every=1, **QUIET)
    assert isinstance(caught.value, ts.Interrupted)


def test_finetune_takes_an_optimizer_and_a_scheduler_and_returns_meta_tests_record():
    data = _vectors()
    fitted = ts.fit(seq_net, data, inner_steps=2, trajectories=1, batch_size=8, head="top.1", **QUIET)
    sched = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.0)   # lr 0 after step 1
    frozen = ts.finetune(fitted, seq_net, data[0], data[0], steps=5, seeds=2,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.5), scheduler=sched)
    one_step = ts.finetune(fitted, seq_net, data[0], data[0], steps=1, seeds=2,
                           optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    assert frozen["accs"] == one_step["accs"]            # after step 1 nothing moves: the scheduler was used
    for key in ("init", "protocol", "steps", "seeds", "settings", "targets", "average", "by_images_per_class"):
        assert key in frozen                             # meta-test's results.json shape
    assert frozen["average"]["per_seed"] == frozen["accs"]
    with pytest.warns(UserWarning, match="needs at least 2 seeds"):
        one = ts.finetune(fitted, seq_net, data[0], data[0], steps=1, seeds=1)
    assert one["ci95"] is None


def test_finetune_names_a_test_class_the_training_split_lacks():
    gen = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(12, 6, generator=gen), torch.tensor([0, 1, 2] * 4))
    test = TensorDataset(torch.randn(8, 6, generator=gen), torch.tensor([0, 1, 2, 3] * 2))
    with pytest.warns(UserWarning, match=r"test_dataset has class\(es\) 3 that train_dataset lacks"):
        ts.finetune(None, lambda t, c: SeqNet(4), train, test, steps=1, seeds=2, num_classes=4)


# --- one-line errors -------------------------------------------------------------------------------------------------
def test_a_changed_class_count_when_resuming_is_one_line(tmp_path):
    kw = {"inner_steps": 2, "trajectories": 2, "batch_size": 8, "head": "top.1", "out": tmp_path / "run", **QUIET}
    ts.fit(seq_net, _vectors(), **kw)
    with pytest.raises(ConfigError, match=r"data\[0\]\.classes = 3, the config says 4"):
        ts.fit(seq_net, _vectors(), num_classes=[4, 3], **kw)


def test_an_unknown_option_names_the_command_and_the_closest(capsys):
    assert main(["meta-test", "--from", "scratch", "--targets", "x", "--out", "y", "--seedz", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("trajshift meta-test: error: unknown option '--seedz'; did you mean '--seeds'? see trajshift "
                   "meta-test --help")


def test_a_head_the_default_rule_misses_is_one_error_with_the_fix_when_class_counts_differ():
    class OutHead(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body, self.out = torch.nn.Linear(6, 4), torch.nn.Linear(4, c)

        def forward(self, x):
            return self.out(self.body(x))
    with pytest.warns(UserWarning, match="out.weight, out.bias change shape"), \
            pytest.raises(ConfigError, match=r"out.weight changes shape .* tasks have \[3, 4\] classes; name the "
                                             r"head \(head='out'"):
        ts.fit(lambda t, c: OutHead(c), _vectors(counts=(3, 4)), inner_steps=1, trajectories=1, batch_size=8,
               **QUIET)


def test_mtl_says_meta_lr_is_unused_and_diagnose_says_not_applicable(tmp_path):
    lines = []
    ts.fit(seq_net, _vectors(), method="mtl", inner_steps=2, trajectories=1, batch_size=8, head="top.1",
           log=lines.append, backend="loop")
    assert any("mtl: meta_lr (0.01) is not used" in line for line in lines)
    from trajshift.analysis.diagnose import format_table
    text = format_table({"run": "r", "method": "mtl", "beta": 0.01, "K": 2, "trajectories": [],
                         "effective_step": None, "rho": None})
    assert "not applicable" in text and len(text.splitlines()) == 1


# --- help texts --------------------------------------------------------------------------------------------------
def test_help_texts_say_what_the_flags_do(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% CIs" in text and "95%%" not in text
    with pytest.raises(SystemExit):
        main(["synthetic", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--carry-optimizer-state carry the inner optimizer's state" in text


def test_threads_flag_sets_torchs_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(["list", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["list", "--threads", "0"]) == 2
    finally:
        torch.set_num_threads(before)


# --- a Meta-Album reader for local files ---------------------------------------------------------------------------
def _meta_album(root, classes=("Acer", "Quercus", "Betula"), per_class=6, seed=0):
    """Meta-Album's layout: images/ and labels.csv with FILE_NAME, CATEGORY and SUPER_CATEGORY."""
    import numpy as np
    from image_files import png_bytes
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = ["FILE_NAME,CATEGORY,SUPER_CATEGORY"]
    for c, name in enumerate(classes):
        for i in range(per_class):
            img = np.clip(rng.integers(0, 256, (3,)) + rng.normal(0, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
            file = f"{c}_{i}.png"
            (root / "images" / file).write_bytes(png_bytes(img))
            rows.append(f"{file},{name},Trees")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_meta_album_folder_is_a_task_source(tmp_path):
    import yaml

    from trajshift.data.formats import read_image_tree
    album = _meta_album(tmp_path / "PLT_NET_Mini")
    data = read_image_tree(album, resolution=10)
    assert sorted(data.classes) == ["Acer", "Betula", "Quercus"]              # CATEGORY, not SUPER_CATEGORY
    labels = np.concatenate([split.labels for split in data.splits.values()])
    assert np.bincount(labels).tolist() == [6, 6, 6]
    other = _meta_album(tmp_path / "OTHER", classes=("a", "b"), seed=1)
    cfg = {"model": {"name": "conv4", "width": 4}, "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path / "c"),
           "tasks": [{"dataset": str(album), "resolution": 10}, {"dataset": str(other), "resolution": 10}],
           "meta": {"method": "cts", "inner_steps": 2, "trajectories": 1, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "init.safetensors").is_file()


def test_colour_image_folders_as_one_channel_images(tmp_path):
    import yaml
    from test_image_end_to_end import make_dataset

    from trajshift.data.cache import prepare
    from trajshift.data.tasks import ImageTask, TaskSpec
    folder = make_dataset(tmp_path / "colour", classes=3, per_class=8, seed=0)
    data = prepare(str(folder), 12, None, tmp_path / "c")
    grey = ImageTask(TaskSpec.from_dict({"dataset": str(folder), "resolution": 12, "channels": 1, "augment": "none"},
                                        "t"), data, 4, 0, 0)
    x = grey.prepare_images(grey.x["train"], False, None)
    rgb = grey.x["train"].double() / 255                                  # [N, H, W, 3], computed here
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).unsqueeze(1)
    mean = sum(w * m for w, m in zip((0.299, 0.587, 0.114), data.mean))
    std = sum(w * s for w, s in zip((0.299, 0.587, 0.114), data.std))
    assert x.shape[1] == 1 and torch.allclose(x.double(), (luma - mean) / std, atol=1e-5)
    cfg = {"model": {"name": "conv4", "width": 4, "in_channels": 1}, "batch_size": 4, "cache_dir": str(tmp_path / "c"),
           "tasks": [{"dataset": str(folder), "resolution": 12, "channels": 1}] * 2,
           "meta": {"method": "cts", "inner_steps": 2, "trajectories": 1, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_the_dict_items_and_dataloader_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "examples" / "dict_items_and_dataloader.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'factory': 'examples_models:SmallConvNet'" in proc.stdout and "paired difference" in proc.stdout


def test_fit_probes_the_model_on_a_real_batch_and_names_the_shape():
    class WantsSeven(torch.nn.Module):
        def __init__(self, num_classes: int = 3):
            super().__init__()
            self.body, self.fc = torch.nn.Linear(7, 4), torch.nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.body(x))
    with pytest.raises(ConfigError, match=r"its forward fails on an input of shape \(2, 6\)"):
        ts.fit(lambda t, c: WantsSeven(c), _vectors(), inner_steps=1, trajectories=1, batch_size=8, **QUIET)


def test_a_finished_run_asked_again_says_so_and_init_json_has_the_final_steps(tmp_path, capsys):
    import json

    import yaml
    from test_image_end_to_end import make_dataset
    sources = [make_dataset(tmp_path / f"s{i}", classes=3, per_class=6, seed=i) for i in range(2)]
    cfg = {"model": {"name": "conv4", "width": 4}, "batch_size": 4, "cache_dir": str(tmp_path / "c"),
           "tasks": [{"dataset": str(s), "resolution": 12} for s in sources], "checkpoint_every": 1,
           "meta": {"method": "cts", "inner_steps": 2, "trajectories": 3, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["meta-train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "init.json").read_text())["inner_steps"] == 6
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "finished at inner step 6; nothing to run" in text and "trajectory 4" not in text


def test_worker_processes_fetch_the_same_batches_as_the_main_process():
    """num_workers=2: training batches decoded in worker processes, each under its own seed: the fit is the same
    bit for bit as with none, random transforms (NumPy's) included; a step asked out of order restarts the stream."""
    from front_door_models import NumpyAugmented

    from trajshift.data.torch_datasets import DatasetTask
    data = [NumpyAugmented(*d.tensors) for d in _vectors()]
    kw = {"inner_steps": 3, "trajectories": 2, "batch_size": 8, "head": "top.1", **QUIET}
    assert torch.equal(ts.fit(seq_net, data, num_workers=2, **kw).phi, ts.fit(seq_net, data, **kw).phi)
    task, ref = DatasetTask(data[0], 8, 0, 0, num_workers=2), DatasetTask(data[0], 8, 0, 0)
    for step in (0, 1, 2, 7, 3):
        a, b = task.batch(step), ref.batch(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
