"""Bring your own backbone, model and data: pretrained starts, the one initialization format, the Python API with
torch Datasets and optimizers, model factories, head naming, nested image folders. Every expected value is computed
here independently (plain torch training, the file's own tensors, counts of the folders written)."""
import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from image_files import png_bytes
from safetensors.torch import load_file, save_file
from test_image_end_to_end import make_dataset
from torch import nn
from torch.utils.data import TensorDataset

import trajshift as ts
from trajshift.commands.cli import main
from trajshift.core.errors import ConfigError
from trajshift.data.init_file import read_init
from trajshift.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return [make_dataset(root / f"ds{i}", classes=3, per_class=8, seed=i) for i in range(3)]


def _config(tmp_path, sources, **changes):
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12} for d in sources[:2]],
           "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path.parent / "cache"), "snapshot_every": 4,
           "execution": {"backend": "loop"},
           "meta": {"method": "cts", "inner_steps": 4, "trajectories": 2, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    cfg.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pretrained_conv4(path: Path, width: int = 4, drop: str | None = None, prefix: str = "") -> dict:
    """A 'pretrained' conv4 state_dict with values no seeded initialization produces (BatchNorm statistics too)."""
    gen = torch.Generator().manual_seed(123)
    sd = {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.full_like(v, 7))
          for k, v in build_model({"name": "conv4", "width": width}, 10).state_dict().items()}
    for k, v in sd.items():
        if k.endswith("running_var"):
            sd[k] = v.abs() + 0.5
    if drop:
        sd.pop(drop)
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    return sd


# --- the user's module survives ordinary calls ---------------------------------------------------------------------
def _mlps():
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double() for _ in range(2)]


def test_zero_grad_inside_batch_fn_does_not_freeze_a_task():
    """The repro of the issue: mods[0].zero_grad() (set_to_none) at step 3. With beta = 0, CTS is plain SGD per task:
    task 0's weights must follow plain torch training of a copy of its module, step for step."""
    mods = _mlps()
    reference = copy.deepcopy(mods[0])
    X, Y = torch.randn(10, 16, 4, dtype=torch.float64), torch.randint(0, 3, (10, 16))

    def batch_fn(t, step, split):
        if t == 0 and step == 3:
            mods[0].zero_grad()
        if t == 1 and step == 5:
            mods[1].to(torch.float64).train().eval()      # no-op .to() and mode switches: harmless too
        return X[step], Y[step]

    learners = ts.ModuleLearners(mods, batch_fn, exclude=["2.*"])
    weights = {}
    cfg = ts.MetaConfig(method="cts", inner_steps=10, trajectories=1, meta_lr=0.0, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": 0.1})
    ts.MetaTrainer(learners, cfg, step_callbacks=[lambda tr: weights.__setitem__(
        tr.inner_steps, mods[0][0].weight.detach().clone())]).run()
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(reference(X[step]), Y[step]).backward()
        opt.step()
        assert torch.allclose(weights[step + 1], reference[0].weight, atol=1e-12), step
    assert not torch.equal(weights[5], weights[9])


# --- pretrained starts -----------------------------------------------------------------------------------------------
def test_pretrained_start_loads_every_matched_key_bit_for_bit(tmp_path, sources, capsys):
    sd = _pretrained_conv4(tmp_path / "pre.pt")
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--init-from",
                 str(tmp_path / "pre.pt")]) == 0
    out = capsys.readouterr().out
    assert "init_from" in out and "28 tensors loaded" in out and "fc.weight, fc.bias" in out
    start = load_file(run / "snapshots" / "step-00000000.safetensors")
    assert set(start) == {k for k in sd if not k.startswith("fc.")}
    for k, v in start.items():
        assert torch.equal(v, sd[k]), k                 # weights and BatchNorm statistics, bit for bit
    info = json.loads((run / "init.json").read_text())
    assert info["init_from"] == str(tmp_path / "pre.pt") and info["head"] == ["fc.weight", "fc.bias"]
    # The run's identity holds the file: a changed file is refused on resume.
    _pretrained_conv4(tmp_path / "pre.pt", drop="body.0.bias")
    assert main(["meta-train", str(_config(tmp_path, sources, checkpoint_every=2)), "--out", str(tmp_path / "r2"),
                 "--init-from", str(tmp_path / "pre.pt"), "--quiet"]) == 0


@pytest.mark.parametrize("method", ["reptile", "mtl"])
def test_every_method_starts_from_the_pretrained_body(tmp_path, sources, method):
    sd = _pretrained_conv4(tmp_path / "pre.pt")
    run = tmp_path / method
    cfg = _config(tmp_path, sources, init_from=str(tmp_path / "pre.pt"))
    assert main(["meta-train", str(cfg), "--out", str(run), "--set", f"meta.method={method}", "--quiet"]) == 0
    start = load_file(run / "snapshots" / "step-00000000.safetensors")
    assert all(torch.equal(v, sd[k]) for k, v in start.items())


def test_a_missing_key_is_left_at_random_and_named(tmp_path, sources, capsys):
    _pretrained_conv4(tmp_path / "pre.pt", drop="body.4.weight", prefix="module.")
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--init-from",
                 str(tmp_path / "pre.pt")]) == 0
    out = capsys.readouterr().out
    assert "left at random (not in the file): body.4.weight" in out and "prefix 'module.' removed" in out
    # Left at random means: the value a run without init_from starts from.
    plain = tmp_path / "plain"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(plain), "--quiet"]) == 0
    a = load_file(run / "snapshots" / "step-00000000.safetensors")["body.4.weight"]
    b = load_file(plain / "snapshots" / "step-00000000.safetensors")["body.4.weight"]
    assert torch.equal(a, b)


def test_a_shape_mismatch_is_one_error_naming_the_key_and_both_shapes(tmp_path, sources, capsys):
    _pretrained_conv4(tmp_path / "wide.pt", width=6)
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--init-from",
                 str(tmp_path / "wide.pt")]) == 2
    err = capsys.readouterr().err
    assert "body.0.weight has shape (6, 3, 3, 3) in the file, (4, 3, 3, 3) in the model" in err
    assert not (run / "init.safetensors").exists()


def test_init_from_a_missing_file_is_refused_before_any_work(tmp_path, sources, capsys):
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(tmp_path / "run"), "--init-from",
                 str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such file or folder" in capsys.readouterr().err


# --- the one initialization format -----------------------------------------------------------------------------------
def test_safetensors_round_trip_and_old_init_pt_files(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "bn.running_mean": torch.randn(3), "bn.num_batches_tracked": torch.tensor(5)}
    path = ts.data.init_file.save_init(tmp_path / "x", sd, {"model": {"name": "conv4"}})
    assert path.name == "init.safetensors"
    raw = load_file(path)                                   # any safetensors reader, not ours
    assert set(raw) == set(sd) and all(torch.equal(raw[k], sd[k]) for k in sd)
    assert json.loads(path.with_suffix(".json").read_text())["format"] == "trajshift-init/1"
    torch.save(sd, tmp_path / "init.pt")
    (tmp_path / "init.json").write_text(json.dumps({"model": {"name": "conv4"}}))
    for source in (path, tmp_path / "x", tmp_path / "init.pt"):
        got, info = read_init(source)
        assert all(torch.equal(got[k], sd[k]) for k in sd) and info["model"] == {"name": "conv4"}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")   # a training checkpoint's usual wrapper
    assert set(read_init(tmp_path / "ckpt.pth")[0]) == set(sd)


def test_a_bare_state_dict_is_matched_to_a_registered_model_or_refused(tmp_path, sources, capsys):
    body = {k: v for k, v in build_model({"name": "conv4"}, 5).state_dict().items() if not k.startswith("fc.")}
    save_file(body, tmp_path / "conv4.safetensors")
    out = tmp_path / "mt"
    assert main(["meta-test", "--init", str(tmp_path / "conv4.safetensors"), "--targets", str(sources[2]),
                 "--resolution", "12", "--seeds", "2", "--steps", "1", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out)]) == 0
    assert "model {'name': 'conv4'} (matched by the file's keys)" in capsys.readouterr().out
    narrow = {k: v for k, v in build_model({"name": "conv4", "width": 4}, 5).state_dict().items()}
    save_file(narrow, tmp_path / "narrow.safetensors")
    assert main(["meta-test", "--init", str(tmp_path / "narrow.safetensors"), "--targets", str(sources[2]),
                 "--out", str(out)]) == 2
    assert "its keys fit conv4 but not with the default options" in capsys.readouterr().err
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert main(["meta-test", "--init", str(tmp_path / "other.safetensors"), "--targets", str(sources[2]),
                 "--out", str(out)]) == 2
    assert "fit no registered model" in capsys.readouterr().err


def test_meta_test_takes_its_defaults_from_init_json_and_prints_them(tmp_path, sources, capsys):
    tasks = [{"dataset": str(d), "resolution": 10, "augment": "crop"} for d in sources[:2]]
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources, tasks=tasks)), "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "mt"
    assert main(["meta-test", "--init", str(run), "--targets", str(sources[2]), "--seeds", "2", "--steps", "1",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resolution 10 (init.json)" in printed and "augment 'crop' (init.json)" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["augment"] == "crop" and next(iter(result["targets"].values()))["resolution"] == 10


# --- the Python API ----------------------------------------------------------------------------------------------------
class OutNet(nn.Module):
    """A model of the user's own whose head is called ``out``."""

    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh())
        self.out = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.out(self.body(x))


def _datasets(counts=(3, 3), n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, c, (n,), generator=gen)) for c in counts]


def test_fit_with_beta_zero_is_plain_torch_training_of_each_task():
    """fit(cts, beta = 0) trains each task independently: the same as a plain torch loop over the same batches
    (drawn by the documented rule, batch_indices(seed, split code 1, task)) from the same initial module."""
    data = _datasets()
    result = ts.fit(lambda t, c: OutNet(c), data, method="cts", inner_steps=5, trajectories=1, meta_lr=0.0,
                    batch_size=8, head="out", dtype="float64",
                    optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert result.learners.spec.names == ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias")
    # The documented replica rule (trajshift/runs/replicas.py): the body of a 2-class template seeded
    # stream_seed(seed, 0xB0D7), the head of the task's own module seeded stream_seed(seed, task, 0x4EAD).
    torch.manual_seed(ts.core.sampling.stream_seed(0, 0xB0D7))
    body = {k: v for k, v in OutNet(2).state_dict().items() if not k.startswith("out.")}
    torch.manual_seed(ts.core.sampling.stream_seed(0, 0, 0x4EAD))
    ref = OutNet(3)
    ref.load_state_dict(body, strict=False)
    ref = ref.double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x, y = data[0].tensors
    for step in range(5):
        idx = ts.batch_indices(24, 8, step, ts.core.sampling.stream_seed(0, 1), 0)
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[idx].double()), y[idx]).backward()
        opt.step()
    got = result.task_state_dict(0)
    theta0 = result.learners.spec.to_state_dict(result.learners.theta.detach()[0])
    for k, v in ref.state_dict().items():
        mine = theta0[k] if k in theta0 else got[k]
        assert (torch.allclose(mine.double(), v, atol=1e-10) if v.is_floating_point() else torch.equal(mine, v)), k


def test_fit_from_a_pretrained_state_dict_and_finetune_paired(tmp_path):
    pre = OutNet(5)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(1.0)
    torch.save(pre.state_dict(), tmp_path / "pre.pt")
    result = ts.fit(lambda t, c: OutNet(c), _datasets(), method="reptile", inner_steps=3, trajectories=1,
                    meta_lr=0.0, batch_size=8, head="out", init_from=tmp_path / "pre.pt", log=lambda *_: None)
    sd = result.init_state_dict()
    assert set(sd) == {k for k in pre.state_dict() if not k.startswith("out.")}
    for k in ("body.0.weight", "body.1.bias"):                # beta = 0: phi stays the pretrained body
        assert torch.equal(sd[k], pre.state_dict()[k])
    path = result.save(tmp_path / "run")
    assert set(load_file(path)) == set(sd)
    target = _datasets(counts=(4,), n=20, seed=1)[0]
    report = ts.finetune(path, lambda t, c: OutNet(c), target, target, protocol="table1", steps=3, seeds=3,
                         head="out", baseline=sd)
    # The same body from a file and from a state_dict: every seed gives the same accuracy (paired by seed).
    assert report["difference"]["per_seed"] == [0.0, 0.0, 0.0] and len(report["accs"]) == 3


class NoisyDataset(torch.utils.data.Dataset):
    """A dataset with a random transform drawn from torch's global generator, as torchvision's are."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


@pytest.mark.parametrize("method", ["cts-accurate", "fomaml"])
def test_fit_is_a_pure_function_of_its_seed_with_random_transforms(method):
    """Batches (random transforms included) depend on (seed, task, step) only: cts-accurate's replays and a
    second fit see the same data, whatever the global generator did in between."""
    def run():
        torch.manual_seed(torch.randint(0, 1000, ()).item())          # disturb the global generator
        return ts.fit(lambda t, c: OutNet(c), [NoisyDataset(d) for d in _datasets()], method=method, inner_steps=3,
                      trajectories=2, meta_lr=0.5, batch_size=8, head="out", backend="loop",
                      log=lambda *_: None).phi
    assert torch.equal(run(), run())


def test_a_head_not_named_fc_is_not_meta_learned_silently():
    with pytest.warns(UserWarning, match=r"out.weight, out.bias change shape with the number of classes"):
        result = ts.fit(lambda t, c: OutNet(c), _datasets(), inner_steps=2, trajectories=1, batch_size=8)
    assert "out.weight" in result.learners.spec.names            # what the warning was about
    named = ts.fit(lambda t, c: OutNet(c), _datasets(), inner_steps=2, trajectories=1, batch_size=8, head="out")
    assert "out.weight" not in named.learners.spec.names


def test_optimizers_as_torch_classes_partials_or_dicts():
    from trajshift.engine.optim import optimizer_spec
    assert optimizer_spec(torch.optim.Adam) == {"name": "adam"}
    assert optimizer_spec(functools.partial(torch.optim.SGD, lr=0.1, nesterov=True, momentum=0.9)) == \
        {"name": "sgd", "lr": 0.1, "nesterov": True, "momentum": 0.9}

    class Mine(torch.optim.SGD):
        pass
    with pytest.raises(ConfigError, match="not a registered optimizer; register it"):
        optimizer_spec(Mine)
    with pytest.raises(ConfigError, match="expected a non-empty list of torch Datasets"):
        ts.fit(OutNet(3), _datasets()[0])


def test_one_module_for_tasks_of_different_class_counts_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"pass model_fn\(task, num_classes\) instead"):
        ts.fit(OutNet(3), _datasets(counts=(3, 4)), inner_steps=1, trajectories=1, batch_size=8, head="out")


# --- configs: model factories, class groups --------------------------------------------------------------------------
FACTORY = '''
from torch import nn
def make_net(num_classes, width=4, fixed=None):
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
              nn.Flatten()]
    if fixed:                                   # a model that only takes fixed-size inputs
        layers = [nn.Flatten(), nn.Linear(3 * fixed * fixed, width)]
    net = nn.Sequential(*layers)
    net.add_module("classifier", nn.Linear(width, num_classes))
    return net
'''


def test_a_model_factory_by_import_path(tmp_path, sources, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    cfg = _config(tmp_path, sources, model={"factory": "my_models:make_net", "width": 5})
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    info = json.loads((run / "init.json").read_text())
    assert info["model"] == {"factory": "my_models:make_net", "width": 5} and info["head"][0].startswith("classifier")
    bad = _config(tmp_path, sources, model={"factory": "my_models:make_net", "fixed": 16})
    assert main(["meta-train", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "my_models:make_net" in err and "input of shape (2, 3, 12, 12)" in err
    assert main(["meta-train", str(_config(tmp_path, sources, model={"factory": "nowhere:f"})), "--out",
                 str(tmp_path / "x")]) == 2
    assert "cannot import 'nowhere'" in capsys.readouterr().err


def test_tasks_take_their_classes_from_a_group_file(tmp_path):
    from trajshift.data.tasks import TaskSpec, read_class_group
    (tmp_path / "g.csv").write_text("class,group\nb,one\nc,two\na,one\nd,two\n")
    assert read_class_group({"file": str(tmp_path / "g.csv"), "group": "one"}, "x") == ["b", "a"]
    with pytest.raises(ConfigError, match="'three' is not a group of .*; its groups: one, two"):
        TaskSpec.from_dict({"dataset": "digits", "classes": {"file": str(tmp_path / "g.csv"), "group": "three"}}, "t")
    assert TaskSpec.from_dict({"dataset": "digits", "classes": {"file": str(tmp_path / "g.csv"), "group": "two"}},
                              "t").label == "digits[group two]"


def test_the_shipped_section_4_3_configs_parse(tmp_path, monkeypatch):
    from trajshift.runs.config import load_config
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="imagenet-groups.csv"):   # the paper's groups: the user's file
        load_config(ROOT / "configs" / "paper-4.3.yaml")
    with pytest.raises(ConfigError, match="init_from: .*no such file or folder"):     # the base is made first
        load_config(ROOT / "configs" / "paper-4.3-cpu.yaml", {"init_from": str(tmp_path / "runs" / "tin-base")})
    base = tmp_path / "base.pt"
    torch.save({}, base)
    cfg = load_config(ROOT / "configs" / "paper-4.3-cpu.yaml", {"init_from": str(base)})
    assert len(cfg.tasks) == 4 and cfg.meta.inner_optimizer["weight_decay"] == 0.0


# --- nested image folders --------------------------------------------------------------------------------------------
def test_nested_folders_are_labelled_by_their_path_below_the_root(tmp_path):
    """Omniglot's layout: alphabet/characterNN/*.png, the same character folder names in every alphabet."""
    from trajshift.data.formats import read_image_tree
    root = tmp_path / "omni" / "images_background"
    for a in ("Greek", "Latin", "Runic"):
        for c in ("character01", "character02"):
            (root / a / c).mkdir(parents=True)
            for i in range(2):
                (root / a / c / f"{i}.png").write_bytes(png_bytes(np.full((6, 6), i, dtype=np.uint8)))
    data = read_image_tree(tmp_path / "omni", resolution=6, mode="L")
    assert len(data.classes) == 6 and "Greek/character01" in data.classes       # 3 alphabets x 2 characters
    assert np.bincount(data.splits["all"].labels).tolist() == [2] * 6
    with pytest.warns(UserWarning, match="merges folders of different parents"):
        merged = read_image_tree(tmp_path / "omni", resolution=6, mode="L", class_depth=1)
    assert merged.classes == ["character01", "character02"]
    from trajshift.data.cache import prepare
    with pytest.warns(UserWarning, match="merges folders"):          # the task option, through the cache
        assert prepare(str(tmp_path / "omni"), 6, cache_dir=tmp_path / "c", class_depth=1).classes == \
            ["character01", "character02"]
    assert len(prepare(str(tmp_path / "omni"), 6, cache_dir=tmp_path / "c").classes) == 6


# --- logging and the example -----------------------------------------------------------------------------------------
def _wandb_history(path: Path) -> list[dict]:
    """The history rows of a wandb offline run file, read here: a LevelDB-style log (a 7-byte file header, 32 KiB
    blocks of chunks with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST) of protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(chunks)
            chunks = b""
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_logs_offline_to_the_run_folder(tmp_path, sources, monkeypatch):
    pytest.importorskip("wandb", reason="optional dependency (installed by the test extras)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--log", "wandb", "--quiet"]) == 0
    files = list((run / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged = _wandb_history(files[0])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_mean" in r]
    assert [r["_step"] for r in logged] == [r["inner_steps"] for r in steps]
    assert [r["loss/mean"] for r in logged] == pytest.approx([r["loss_mean"] for r in steps], rel=1e-6)
    assert [r["loss/task1"] for r in logged] == pytest.approx([r["loss"][1] for r in steps], rel=1e-6)


def test_the_own_backbone_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_backbone.py")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensors loaded" in proc.stdout and "paired difference" in proc.stdout
