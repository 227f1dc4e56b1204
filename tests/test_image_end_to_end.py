"""A tiny meta-train -> meta-test through the command line, on image folders the test writes."""
import json

import numpy as np
import pytest
import torch
import yaml
from image_files import png_bytes
from safetensors.torch import load_file

from trajshift.commands.cli import main
from trajshift.models import build_model


def make_dataset(root, classes, per_class, seed):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = rng.integers(0, 256, size=(3,))
        for split, n in (("train", per_class), ("test", max(2, per_class // 3))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, size=(12, 12, 3)), 0, 255).astype(np.uint8)
                (d / f"{i}.png").write_bytes(png_bytes(img))
    return root


@pytest.fixture
def datasets(tmp_path):
    return [make_dataset(tmp_path / f"ds{i}", classes=3 + i, per_class=12, seed=i) for i in range(3)]


def write_config(path, datasets, method, cache):
    cfg = {"model": {"name": "conv4", "width": 8},
           "tasks": [{"dataset": str(d), "resolution": 12} for d in datasets[:2]],
           "batch_size": 8, "seed": 0, "cache_dir": str(cache), "snapshot_every": 4,
           "meta": {"method": method, "inner_steps": 4, "trajectories": 2, "meta_lr": 0.5,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["cts", "reptile", "mtl"])
def test_meta_train_then_meta_test(tmp_path, datasets, method):
    cfg = write_config(tmp_path / "c.yaml", datasets, method, tmp_path / "cache")
    run = tmp_path / "run"
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    for name in ("init.safetensors", "config.yaml", "metrics.jsonl"):
        assert (run / name).exists()
    assert sorted(p.name for p in (run / "snapshots").glob("*.safetensors")) == ["step-00000000.safetensors", "step-00000004.safetensors",
                                                                     "step-00000008.safetensors"]
    sd = load_file(run / "init.safetensors")
    model = build_model({"name": "conv4", "width": 8}, 7)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    snap0 = load_file(run / "snapshots" / "step-00000000.safetensors")
    assert not torch.equal(snap0["body.0.weight"], sd["body.0.weight"])       # the initialization moved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["inner_steps"] == 8 and len(rows[0]["loss"]) == 2
    out = tmp_path / "test"
    assert main(["meta-test", "--init", str(run / "init.safetensors"), "--targets", str(datasets[2]), "--out", str(out),
                 "--steps", "3", "--seeds", "2", "--resolution", "12", "--cache-dir", str(tmp_path / "cache"),
                 "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    target = res["targets"][str(datasets[2])]
    assert len(target["accs"]) == 2 and 0 <= target["mean"] <= 1 and target["ci95"] >= 0
    assert res["model"] == {"name": "conv4", "width": 8}                       # read from the run's config.yaml
    assert (out / "results.md").read_text().count("|") > 6


def test_meta_test_from_scratch_and_errors(tmp_path, datasets, capsys):
    out = tmp_path / "scratch"
    assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--targets", str(datasets[0]),
                 "--out", str(out), "--steps", "2", "--seeds", "2", "--resolution", "12",
                 "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["init"] == "scratch"
    capsys.readouterr()
    assert main(["meta-test", "--init", str(tmp_path / "nope.pt"), "--targets", "digits", "--out",
                 str(tmp_path / "x")]) == 2
    assert "nope.pt: no such initialization file" in capsys.readouterr().err
    (tmp_path / "evil.pt").write_bytes(b"not a torch file")
    assert main(["meta-test", "--init", str(tmp_path / "evil.pt"), "--targets", "digits", "--out",
                 str(tmp_path / "x")]) == 2
    assert "evil.pt: not a readable state_dict file" in capsys.readouterr().err
    assert main(["meta-test", "--from", "scratch", "--targets", "no-such-set", "--out", str(tmp_path / "x")]) == 2
    assert "neither a registered dataset" in capsys.readouterr().err


def test_meta_train_config_errors(tmp_path, datasets, capsys):
    cfg = write_config(tmp_path / "c.yaml", datasets, "cts", tmp_path / "cache")
    data = yaml.safe_load(cfg.read_text())
    for change, needle in (({"optimiser": 1}, "optimiser: unknown key"),
                           ({"meta": {**data["meta"], "method": "maml"}}, "method: unknown method 'maml'"),
                           ({"model": {"name": "vgg"}}, "model.name: unknown model 'vgg'"),
                           ({"tasks": [{"dataset": "cifar10", "resolution": 2}]}, "tasks[0].resolution"),
                           ({"batch_size": 0}, "batch_size: expected an integer >= 1")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**data, **change}))
        assert main(["meta-train", str(bad), "--out", str(tmp_path / "never")]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "never"), "--set", "meta.inner_steps=0"]) == 2
    assert "meta.inner_steps: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_approx_error_is_zero_for_k_1_and_grows(tmp_path, datasets):
    """k = 1: no shift has happened yet, the error is exactly 0; it is positive for k > 1 and beta > 0."""
    from trajshift.analysis.approx_error import approximation_error
    from trajshift.data.tasks import build_tasks
    tasks = build_tasks([{"dataset": str(d), "resolution": 12} for d in datasets[:2]], 8, 0,
                        cache_dir=tmp_path / "c")
    spec = {"name": "conv4", "width": 4, "activation": "softplus"}
    assert approximation_error(tasks, spec, 0.05, 0.5, 1, 0.9, 0) == 0.0
    assert approximation_error(tasks, spec, 0.05, 0.0, 6, 0.9, 0) == 0.0        # beta = 0: nothing to shift
    assert approximation_error(tasks, spec, 0.05, 0.5, 6, 0.9, 0) > 1e-6
    # The gate's scales: the total shift is (k - 1) meta-updates' worth (positive), the order spread is positive for
    # k > 1, and the error reported with them is the same number.
    d = approximation_error(tasks, spec, 0.05, 0.5, 6, 0.9, 0, details=True)
    assert d["error"] == approximation_error(tasks, spec, 0.05, 0.5, 6, 0.9, 0)
    assert d["shift"] > 0 and d["order"] > 0
    assert approximation_error(tasks, spec, 0.05, 0.0, 6, 0.9, 0, details=True)["shift"] == 0.0
    out = tmp_path / "ae"
    assert main(["approx-error", "--out", str(out), "--quick", "--quiet", "--datasets",
                 ",".join(str(d) for d in datasets[:2]), "--resolution", "12", "--cache-dir",
                 str(tmp_path / "c")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["sweeps"]) == {"relu", "softplus"} and len(res["sweeps"]["relu"]["k"]) == 2
    assert all("error_over_order_spread" in row for row in res["sweeps"]["relu"]["k"])
    assert (out / "approx_error.png").exists()


def test_report_compares_runs(tmp_path, datasets):
    runs = []
    for method in ("cts", "reptile"):
        cfg = write_config(tmp_path / f"{method}.yaml", datasets, method, tmp_path / "cache")
        assert main(["meta-train", str(cfg), "--out", str(tmp_path / method), "--quiet"]) == 0
        runs.append(str(tmp_path / method))
    out = tmp_path / "report"
    assert main(["report", *runs, "--targets", str(datasets[2]), "--out", str(out), "--seeds", "2", "--steps", "2",
                 "--resolution", "12", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in rep["runs"]] == ["cts", "reptile"]
    assert [c["inner_steps"] for c in rep["runs"][0]["curve"]] == [0, 4, 8]
    for name in ("fig6a_meta_train_loss.png", "fig7_meta_test_vs_inner_steps.png", "table.md"):
        assert (out / name).exists()
    assert "(reptile)" in (out / "table.md").read_text()
    # A second report with the same settings reuses each run's cached meta-test results.
    assert main(["report", *runs, "--targets", str(datasets[2]), "--out", str(tmp_path / "r2"), "--seeds", "2",
                 "--steps", "2", "--resolution", "12", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["runs"][0]["final"] == rep["runs"][0]["final"]


def test_demo_runs_offline_on_digits(tmp_path, monkeypatch):
    """With no data folder the demo falls back to scikit-learn's digits (real images shipped with a dependency)."""
    import sklearn  # noqa: F401  (a hard dependency: its absence must fail, not skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAJSHIFT_DATA", str(tmp_path / "empty"))
    from trajshift.data import registry
    monkeypatch.setattr(registry, "default_data_roots", lambda: [tmp_path / "empty"])
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "20", "--finetune-steps", "5", "--seeds", "2",
                 "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert "digits" in rep["data"] and set(rep["results"]) == {"cts", "scratch", "gain"}
    assert (tmp_path / "demo" / "meta-train" / "init.safetensors").exists()
    r = rep["results"]
    diffs = [a - b for a, b in zip(r["cts"]["accs"], r["scratch"]["accs"])]
    assert r["gain"]["mean"] == pytest.approx(sum(diffs) / 2) and rep["images_per_class"] == 5
    assert rep["conclusion"].startswith("The ") and rep["conclusion"].count(".") >= 1
    from PIL import Image
    with Image.open(tmp_path / "demo" / "demo.png") as png:            # the demo's figure, a real PNG
        assert png.format == "PNG" and png.size[0] > 400


@pytest.mark.parametrize("name", ["cpu-study.yaml", "paper.yaml", "image-study.yaml", "offline-digits.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    from trajshift.runs.config import load_config
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert cfg.meta.method == "cts" and len(cfg.tasks) >= 2


def test_the_offline_config_runs_as_shipped(tmp_path, monkeypatch):
    """configs/offline-digits.yaml needs nothing downloaded: a short meta-train and its validation score."""
    from pathlib import Path
    cfg = Path(__file__).resolve().parents[1] / "configs" / "offline-digits.yaml"
    monkeypatch.setenv("TRAJSHIFT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "digits"
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet", "--set", "meta.inner_steps=3",
                 "--set", "meta.trajectories=2", "--set", "snapshot_every=3"]) == 0
    assert (run / "init.safetensors").exists()
    assert main(["validate", str(run), "--quiet"]) == 0
    final = json.loads((run / "validation.json").read_text())
    assert 0 <= final["score"] <= 1
    # --at scores only the snapshot nearest to each count (4 -> step 3); --at alone is a named error.
    assert main(["validate", str(run), "--at", "4", "--quiet"]) == 2
    assert main(["validate", str(run), "--snapshots", "--at", "4", "--quiet"]) == 0
    assert list(json.loads((run / "validation-snapshots.json").read_text())) == ["3"]
    # Every snapshot scored alike (a best-over-beta curve per budget); the last snapshot is the final init.
    assert main(["validate", str(run), "--snapshots", "--quiet"]) == 0
    snaps = json.loads((run / "validation-snapshots.json").read_text())
    assert list(snaps) == ["0", "3", "6"] and snaps["6"]["score"] == final["score"]
    assert snaps["0"]["key"] != snaps["6"]["key"]


def test_backend_flag_batched_and_loop_give_the_same_initialization(tmp_path, datasets, capsys):
    """Two image tasks of 3 and 4 classes: the batched backend pads the heads; the learned init is the loop's."""
    cfg = write_config(tmp_path / "c.yaml", datasets, "cts", tmp_path / "cache")
    inits = {}
    for backend in ("loop", "batched"):
        assert main(["meta-train", str(cfg), "--out", str(tmp_path / backend), "--backend", backend]) == 0
        assert f"backend: {backend}" in capsys.readouterr().out
        assert yaml.safe_load((tmp_path / backend / "config.yaml").read_text())["execution"]["backend"] == backend
        inits[backend] = load_file(tmp_path / backend / "init.safetensors")
    for k, v in inits["loop"].items():
        torch.testing.assert_close(inits["batched"][k].double(), v.double(), rtol=0, atol=1e-5, msg=k)
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "auto")]) == 0
    assert "(measured per step of all of this process's tasks: loop" in capsys.readouterr().out


def test_meta_test_deterministic_flag_changes_nothing_on_cpu_and_is_switched_off_after(tmp_path, datasets,
                                                                                       monkeypatch):
    """--deterministic: deterministic kernels during the finetuning (seen from inside), the caller's setting back
    after; on CPU the accuracies equal the default run's exactly."""
    from trajshift.evaluation import meta_test as mt
    seen = []
    inner = mt.meta_test

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return inner(*args, **kwargs)
    monkeypatch.setattr(mt, "meta_test", spy)
    results = []
    for name, flag in (("default", []), ("det", ["--deterministic"])):
        out = tmp_path / name
        assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--targets", str(datasets[0]),
                     "--out", str(out), "--steps", "3", "--seeds", "2", "--resolution", "12",
                     "--cache-dir", str(tmp_path / "c"), "--quiet", *flag]) == 0
        results.append(json.loads((out / "results.json").read_text())["targets"])
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    key = next(iter(results[0]))
    assert results[0][key]["accs"] == results[1][key]["accs"]
