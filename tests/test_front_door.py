"""One front door: the Python API, the command line and ``report`` share one run orchestration, one run identity, one
evaluation-settings resolver and one head rule, so no path gives a silently different result. Every expected value
here is computed independently of the code under test (the model's own named parameters, a direct rerun, the
command's own output)."""
import json
import random

import numpy as np
import pytest
import torch
import yaml
from front_door_models import (
    ImageNet,
    NumpyAugmented,
    PythonAugmented,
    SeqNet,
    TimmLike,
    image_net,
    seq_net,
)
from safetensors.torch import load_file
from test_image_end_to_end import make_dataset
from torch.utils.data import TensorDataset

import trajshift as ts
from trajshift.commands.cli import main
from trajshift.core.errors import ConfigError

# backend "auto" (the default) picks by timing: tests that compare two separate runs bit for bit fix the backend.
QUIET = {"log": lambda *_: None, "backend": "loop"}


def _vectors(counts=(3, 3), n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, c, (n,), generator=gen)) for c in counts]


# --- S1: heads by name, as users write them ------------------------------------------------------------------------
def test_a_nested_head_by_module_path_is_left_out_of_the_init_and_recorded():
    result = ts.fit(seq_net, _vectors(), inner_steps=2, trajectories=1, batch_size=8, head="top.1", **QUIET)
    model = SeqNet(3)
    head = {n for n, _ in model.named_parameters() if n.startswith("top.1.")}        # by the model's own names
    assert head == {"top.1.weight", "top.1.bias"}
    assert set(result.learners.spec.names) == {n for n, _ in model.named_parameters()} - head
    assert set(result.init_state_dict()) == set(model.state_dict()) - head
    assert set(result.info["head"]) == head and set(result.head) == head
    assert "top.0.weight" in result.init_state_dict()                # the rest of the Sequential is body


def test_finetune_never_loads_the_head_of_the_init_and_says_it_dropped_it(tmp_path):
    from trajshift.evaluation.meta_test import load_body
    source = SeqNet(3)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(5.0)
    fresh = SeqNet(3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    dropped = load_body(fresh, source.state_dict(), "source", "top.1")
    assert dropped == ["top.1.bias", "top.1.weight"]
    after = fresh.state_dict()
    assert torch.equal(after["top.1.weight"], before["top.1.weight"])             # the fresh head stays
    assert torch.equal(after["top.0.weight"], source.state_dict()["top.0.weight"])  # the body is loaded
    # Through the API, with the head the fit recorded: a warning that names what was dropped.
    data = _vectors()
    fitted = ts.fit(seq_net, data, inner_steps=2, trajectories=1, batch_size=8, head="top.1", **QUIET)
    with pytest.warns(UserWarning, match=r"holds 2 tensors of the target model's head \(top\.1\.bias, top\.1\.weight"):
        report = ts.finetune(source.state_dict(), seq_net, data[0], data[0], steps=2, seeds=2, head="top.1")
    assert len(report["accs"]) == 2
    quiet = ts.finetune(fitted, seq_net, data[0], data[0], steps=2, seeds=2)        # the fit's own head: nothing
    assert quiet["settings"]["head"]["source"] == "init.json"


def test_heads_by_timm_convention_glob_module_or_name_and_unknown_names_refused():
    from trajshift.models.heads import head_from_meta_params, head_parameter_names
    assert head_parameter_names(TimmLike()) == ["proj.weight", "proj.bias"]                 # get_classifier()
    net = SeqNet(3)
    assert head_parameter_names(net, net.top[1]) == ["top.1.weight", "top.1.bias"]         # the module itself
    assert head_parameter_names(net, ["top.1.weight"]) == ["top.1.weight"]                 # a parameter name
    assert head_parameter_names(net, "top.*") == [n for n, _ in net.named_parameters() if n.startswith("top.")]
    assert head_from_meta_params(net, {"include": ["*"], "exclude": ["top.1"]}) == ["top.1.weight", "top.1.bias"]
    with pytest.raises(ConfigError, match=r"head 'tops': no module or parameter of SeqNet.*body, top"):
        head_parameter_names(net, "tops")
    with pytest.raises(ConfigError, match=r"meta_params.exclude: 'topp' matches no module"):
        head_from_meta_params(net, {"exclude": ["topp"]})


# --- S2: one run identity ----------------------------------------------------------------------------------------
def test_fit_refuses_a_run_folder_of_other_inputs_naming_the_first_difference(tmp_path):
    run = tmp_path / "run"
    kw = {"inner_steps": 2, "trajectories": 2, "batch_size": 8, "head": "top.1", "out": run, **QUIET}
    first = ts.fit(seq_net, _vectors(seed=0), **kw)
    with pytest.raises(ConfigError, match=r"data\[0\]\.sample_sha256"):       # other data of the same sizes
        ts.fit(seq_net, _vectors(seed=7), **kw)
    with pytest.raises(ConfigError, match=r"with init_from = None"):            # another starting point
        ts.fit(seq_net, _vectors(seed=0), init_from=first.init_state_dict(), **kw)
    with pytest.raises(ConfigError, match=r"with head = \['top.1.weight', 'top.1.bias'\]"):
        ts.fit(seq_net, _vectors(seed=0), **{**kw, "head": "top"})
    again = ts.fit(seq_net, _vectors(seed=0), **kw)                            # the same inputs: the same run
    assert torch.equal(again.phi, first.phi)


# --- S4: randomness users actually use ---------------------------------------------------------------------------
@pytest.mark.parametrize("augmented", [NumpyAugmented, PythonAugmented])
def test_numpy_and_python_random_transforms_resume_bit_identically(tmp_path, augmented):
    base = _vectors()
    data = [augmented(*ds.tensors) for ds in base]
    kw = {"inner_steps": 3, "batch_size": 8, "head": "top.1", "checkpoint_every": 1, **QUIET}
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    full = ts.fit(seq_net, data, trajectories=4, out=tmp_path / "full", **kw)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before  # restored
    ts.fit(seq_net, data, trajectories=2, out=tmp_path / "cut", **kw)
    resumed = ts.fit(seq_net, data, trajectories=4, out=tmp_path / "cut", **kw)      # resumes at step 6
    assert torch.equal(resumed.phi, full.phi)
    # cts-accurate re-runs the trajectory's first steps: with beta = 0 its re-run must land exactly where the plain
    # run is, which it does only if every replayed batch is the original one.
    plain = ts.fit(seq_net, data, method="cts", meta_lr=0.0, trajectories=1, dtype="float64", **kw)
    exact = ts.fit(seq_net, data, method="cts-accurate", meta_lr=0.0, trajectories=1, dtype="float64", **kw)
    assert torch.equal(plain.learners.theta, exact.learners.theta)


# --- models crossing doors -------------------------------------------------------------------------------------------
def _images(n=16, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 12, 12, generator=gen), torch.randint(0, classes, (n,), generator=gen))


@pytest.mark.parametrize("factory,call", [(image_net, "task, num_classes"), (ImageNet, "num_classes=")])
def test_a_model_given_to_fit_by_import_path_is_rebuilt_by_meta_test(tmp_path, factory, call, capsys):
    run = tmp_path / "run"
    ts.fit(factory, [_images(seed=0), _images(seed=1)], inner_steps=2, trajectories=1, batch_size=8, out=run, **QUIET)
    info = json.loads((run / "init.json").read_text())
    assert info["model"] == {"factory": f"front_door_models:{factory.__qualname__}", "call": call}
    target = make_dataset(tmp_path / "target", classes=3, per_class=6, seed=3)
    assert main(["meta-test", "--init", str(run), "--targets", str(target), "--seeds", "2", "--steps", "2",
                 "--resolution", "12", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "mt")]) == 0
    assert "model {'factory': 'front_door_models:" in capsys.readouterr().out       # from init.json, printed


def test_a_lambda_made_init_is_refused_in_one_line_saying_how_to_name_the_model(tmp_path, capsys):
    run = tmp_path / "run"
    ts.fit(lambda t, c: ImageNet(c), [_images(seed=0), _images(seed=1)], inner_steps=1, trajectories=1,
           batch_size=8, out=run, **QUIET)
    assert json.loads((run / "init.json").read_text())["model"] is None
    capsys.readouterr()
    target = make_dataset(tmp_path / "target", classes=3, per_class=6, seed=3)
    args = ["meta-test", "--init", str(run), "--targets", str(target), "--seeds", "2", "--steps", "1",
            "--resolution", "12", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(tmp_path / "mt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--model package.module:factory" in err and "lambda" in err
    # Named on the command line, the same init meta-tests; and --from scratch takes a factory too.
    assert main([*args, "--model", "front_door_models:ImageNet", "--out", str(tmp_path / "named")]) == 0
    assert main(["meta-test", "--from", "scratch", "--model", "front_door_models:ImageNet", "--targets", str(target),
                 "--seeds", "2", "--steps", "1", "--resolution", "12", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "scratch"), "--quiet"]) == 0


def test_a_factory_option_typo_is_one_line_naming_the_options():
    from trajshift.models import build_model
    with pytest.raises(ConfigError, match=r"front_door_models:ImageNet does not take these options.*widht"):
        build_model({"factory": "front_door_models:ImageNet", "widht": 3}, 2)


# --- S3: one evaluation-settings resolver -------------------------------------------------------------------------
def _run_at_16px_without_augmentation(tmp_path):
    sources = [make_dataset(tmp_path / f"s{i}", classes=3, per_class=8, seed=i) for i in range(2)]
    cfg = {"model": {"name": "conv4", "width": 4}, "batch_size": 8, "seed": 0, "cache_dir": str(tmp_path / "c"),
           "tasks": [{"dataset": str(s), "resolution": 16, "augment": "none"} for s in sources],
           "snapshot_every": 2,
           "meta": {"method": "cts", "inner_steps": 2, "trajectories": 1, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    return tmp_path / "run"


def test_meta_test_report_and_finetune_give_the_same_per_seed_numbers(tmp_path):
    run = _run_at_16px_without_augmentation(tmp_path)
    info = json.loads((run / "init.json").read_text())
    assert info["resolution"] == 16 and info["augment"] == "none"
    target = make_dataset(tmp_path / "target", classes=3, per_class=9, seed=5)
    common = ["--targets", str(target), "--seeds", "2", "--steps", "3", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(["meta-test", "--init", str(run), *common, "--out", str(tmp_path / "mt")]) == 0
    mt = json.loads((tmp_path / "mt" / "results.json").read_text())
    assert main(["report", str(run), *common, "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    api = ts.finetune(str(run), train_dataset=str(target), seeds=2, steps=3, cache_dir=str(tmp_path / "c"))
    accs = mt["targets"][str(target)]["accs"]
    assert rep["runs"][0]["final"][str(target)]["accs"] == accs
    assert api["accs"] == accs
    for record in (mt["settings"], api["settings"]):        # each setting with where it came from, recorded
        assert record["resolution"] == {"value": 16, "source": "init.json"}
        assert record["augment"] == {"value": "none", "source": "init.json"}
        assert record["protocol"] == {"value": "paper", "source": "default"}
    assert rep["protocol"] == "paper" and rep["augment"] == "none"
    assert rep["settings"]["run"]["resolution"] == {"value": 16, "source": "init.json"}


def test_finetune_and_meta_test_default_to_one_protocol():
    from trajshift.evaluation.meta_test import MetaTestConfig, resolve_settings
    from trajshift.evaluation.settings import DEFAULT_PROTOCOL
    data = _vectors()
    api = ts.finetune(None, seq_net, data[0], data[0], steps=1, seeds=2)
    cli = resolve_settings(MetaTestConfig(targets=["x"]))
    assert api["protocol"] == cli["protocol"] == DEFAULT_PROTOCOL == "paper"


# --- one run layer: fit and meta-train write the same init ------------------------------------------------------
def test_fit_and_meta_train_write_the_same_init_bit_for_bit(tmp_path):
    from trajshift.data.tasks import build_tasks
    from trajshift.runs.config import load_config
    sources = [make_dataset(tmp_path / f"s{i}", classes=3 + i, per_class=8, seed=i) for i in range(2)]
    spec = {"name": "conv4", "width": 4}
    cfg = {"model": spec, "batch_size": 8, "seed": 0, "cache_dir": str(tmp_path / "c"),
           "tasks": [{"dataset": str(s), "resolution": 12, "augment": "none"} for s in sources],
           "execution": {"backend": "loop"},
           "meta": {"method": "cts", "inner_steps": 3, "trajectories": 2, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta-train", str(path), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    # The same images through the API: each task's training split as a Dataset of its (unaugmented) tensors.
    loaded = load_config(path)
    tasks = build_tasks(loaded.tasks, 8, 0, None, str(tmp_path / "c"), "cpu", task_ids=[0, 1])
    data = [TensorDataset(t.prepare_images(t.x["train"], False, None), t.y["train"]) for t in tasks]
    ts.fit(spec, data, method="cts", inner_steps=3, trajectories=2, meta_lr=0.1, batch_size=8,
           optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, out=tmp_path / "api", **QUIET)
    a, b = load_file(tmp_path / "cli" / "init.safetensors"), load_file(tmp_path / "api" / "init.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_runs_seed_is_the_methods_seed_through_both_doors():
    """`seed: 3` in a config seeds the method too (cts-random-shift's directions), as fit(seed=3) does."""
    from trajshift.runs.config import ExperimentConfig
    base = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": "digits"}],
            "meta": {"method": "cts-random-shift", "inner_steps": 2, "trajectories": 1, "meta_lr": 0.1,
                     "inner_optimizer": {"name": "sgd", "lr": 0.1}}}
    assert ExperimentConfig.from_dict({**base, "seed": 3}).meta.seed == 3
    assert ExperimentConfig.from_dict({**base, "seed": 3, "meta": {**base["meta"], "seed": 5}}).meta.seed == 5


def test_a_second_meta_test_into_a_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    from trajshift.training.checkpoint import RunLock

    target = make_dataset(tmp_path / "target", classes=2, per_class=6, seed=3)
    args = ["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets", str(target),
            "--seeds", "1", "--steps", "1", "--resolution", "12", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    with RunLock(tmp_path / "mt"):                 # another meta-test holds the folder
        assert main([*args, "--out", str(tmp_path / "mt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use by another run" in err
    assert not (tmp_path / "mt" / "results.json").exists()
    assert main([*args, "--out", str(tmp_path / "mt")]) == 0        # free again: it runs
    assert (tmp_path / "mt" / "results.json").exists() and not (tmp_path / "mt" / ".lock").exists()
