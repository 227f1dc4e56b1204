"""The evidence tooling: the low-data meta-test protocol, meta-validation, the meta_lr sweep and the report's paired
gains over the common initialization. Every dataset is a small image folder the test writes."""
import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_image_end_to_end import make_dataset

from trajshift.commands.cli import main
from trajshift.core.errors import ConfigError
from trajshift.data.cache import prepare
from trajshift.data.tasks import ImageTask, TaskSpec, per_class_subsample
from trajshift.runs.sweep import choose, parse_grid


@pytest.fixture
def folders(tmp_path):
    """Two source datasets (the second has 6 classes: 0:4 for meta-training, 4:6 held out for validation) and a
    target dataset the sweep must never read."""
    return {"a": make_dataset(tmp_path / "a", classes=3, per_class=12, seed=0),
            "b": make_dataset(tmp_path / "b", classes=6, per_class=12, seed=1),
            "target": make_dataset(tmp_path / "target", classes=4, per_class=12, seed=2)}


def _task(folder, cache, seed, **spec):
    data = prepare(str(folder), 12, None, cache)
    return ImageTask(TaskSpec.from_dict({"dataset": str(folder), "resolution": 12, **spec}, "t"), data, 4, seed, 0)


def test_images_per_class_takes_exactly_n_of_every_class_and_keeps_the_test_split(tmp_path, folders):
    cache = tmp_path / "cache"
    full = _task(folders["b"], cache, 0)
    for n in (1, 3, 7):
        task = _task(folders["b"], cache, 0, images_per_class=n)
        counts = np.bincount(task.y["train"].numpy(), minlength=6)
        assert counts.tolist() == [n] * 6
        assert torch.equal(task.y["test"], full.y["test"])            # the test split stays whole
    # The subsample depends on the seed only, and the n-subsample is a prefix of the (n+1)-subsample.
    small, large = _task(folders["b"], cache, 3, images_per_class=2), _task(folders["b"], cache, 3, images_per_class=5)
    as_rows = lambda t: {bytes(x.numpy().tobytes()) for x in t.x["train"]}
    assert as_rows(small) <= as_rows(large)
    assert as_rows(small) == as_rows(_task(folders["b"], cache, 3, images_per_class=2))
    assert as_rows(small) != as_rows(_task(folders["b"], cache, 4, images_per_class=2))
    with pytest.raises(ConfigError, match="images_per_class: 13 asked, but class 'class0' has only 12"):
        _task(folders["b"], cache, 0, images_per_class=13)
    with pytest.raises(ConfigError, match="train_images or images_per_class, not both"):
        TaskSpec.from_dict({"dataset": "x", "train_images": 5, "images_per_class": 2}, "t")


def test_per_class_subsample_against_a_direct_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    order = rng.permutation(200)
    kept = per_class_subsample(labels, order, 4, [str(c) for c in range(5)], "t")
    expected = [i for c in range(5) for i in [j for j in order if labels[j] == c][:4]]
    assert sorted(kept.tolist()) == sorted(expected)
    assert [i for i in order if i in set(kept.tolist())] == kept.tolist()        # permutation order kept


@pytest.mark.parametrize("mode", ["none", "flip", "crop"])
def test_augmentation_modes(tmp_path, folders, mode):
    task = _task(folders["a"], tmp_path / "cache", 0, augment=mode)
    clean = task.prepare_images(task.x["train"], False, None)
    flipped = clean.flip(-1)
    x, _ = task.batch(0, "train")
    # Compare each augmented image with the clean and mirrored versions of every training image.
    same = [(xi == clean).flatten(1).all(1).any().item() for xi in x]
    mirrored = [(xi == flipped).flatten(1).all(1).any().item() for xi in x]
    if mode == "none":
        assert all(same)
    elif mode == "flip":
        assert all(s or m for s, m in zip(same, mirrored)) and any(m and not s for s, m in zip(same, mirrored))
    else:                                  # crops shift the content: not one image is a pure mirror of another
        assert not any(m and not s for s, m in zip(same, mirrored))


def test_meta_test_low_data_results_and_one_seed_json(tmp_path, folders, capsys):
    out = tmp_path / "mt"
    assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets",
                 str(folders["target"]), "--images-per-class", "2,5", "--seeds", "3", "--steps", "2", "--resolution",
                 "12", "--augment", "crop", "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["images_per_class"] == [2, 5] and res["augment"] == "crop" and res["model"]["width"] == 4
    for n in (2, 5):
        r = res["by_images_per_class"][str(n)]
        t = r["targets"][str(folders["target"])]
        assert t["train_images"] == 4 * n and t["batch_size"] == min(128, 4 * n) and len(t["accs"]) == 3
        assert r["average"]["per_seed"] == pytest.approx(t["accs"])            # one target: average = target
        m = sum(t["accs"]) / 3
        s = math.sqrt(sum((a - m) ** 2 for a in t["accs"]) / 2)
        assert r["average"]["ci95"] == pytest.approx(4.303 * s / math.sqrt(3))
    # One seed: no confidence interval; the file stays valid JSON (null, not NaN).
    one = tmp_path / "one"
    with pytest.warns(UserWarning, match="needs at least 2 seeds"):
        assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets",
                     str(folders["target"]), "--seeds", "1", "--steps", "1", "--resolution", "12", "--cache-dir",
                     str(tmp_path / "c"), "--out", str(one), "--quiet"]) == 0
    text = (one / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["average"]["ci95"] is None
    capsys.readouterr()
    assert main(["meta-test", "--from", "scratch", "--targets", "x", "--images-per-class", "0", "--out",
                 str(tmp_path / "bad")]) == 2
    assert main(["meta-test", "--from", "scratch", "--targets", "x", "--set", "meta.x=1", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "meta-test takes model options only" in capsys.readouterr().err


def _study_config(tmp_path, folders, validation_classes="4:6"):
    cfg = {"model": {"name": "conv4", "width": 4},
           "tasks": [{"dataset": str(folders["a"]), "resolution": 12},
                     {"dataset": str(folders["b"]), "classes": "0:4", "resolution": 12}],
           "batch_size": 8, "seed": 0, "cache_dir": str(tmp_path / "cache"), "snapshot_every": 3,
           "execution": {"backend": "loop"},
           "validation": {"tasks": [{"dataset": str(folders["b"]), "classes": validation_classes, "resolution": 12}],
                          "images_per_class": 3, "steps": 2, "seeds": 2, "batch_size": 4},
           "meta": {"method": "cts", "inner_steps": 3, "trajectories": 2, "meta_lr": 0.1,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_grid_parsing_and_choice():
    assert parse_grid(["meta.meta_lr=1e-3,0.01,1"]) == {"meta.meta_lr": [0.001, 0.01, 1]}
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(["meta.meta_lr"])
    points = [{"status": "ok", "score": 0.3, "values": 1}, {"status": "failed", "score": None, "values": 2},
              {"status": "ok", "score": 0.5, "values": 3}, {"status": "ok", "score": 0.5, "values": 4}]
    assert choose(points)["values"] == 3
    assert choose([points[1]]) is None


def test_sweep_chooses_the_best_validation_score_and_never_reads_a_target(tmp_path, folders, capsys):
    cfg = _study_config(tmp_path, folders)
    out = tmp_path / "sweep"
    # 1e30: phi leaves the floats after the first trajectory; the point fails and is never chosen.
    assert main(["sweep", str(cfg), "--out", str(out), "--grid", "meta.meta_lr=0.01,1,1e30",
                 "--methods", "cts,reptile", "--jobs", "2", "--quiet"]) == 0
    rep = json.loads((out / "sweep.json").read_text())
    assert set(rep["methods"]) == {"cts", "reptile"} and (out / "sweep.png").exists()
    for entry in rep["methods"].values():
        pts = entry["points"]
        assert [p["values"]["meta.meta_lr"] for p in pts] == [0.01, 1, 1e30]
        ok = [p for p in pts if p["status"] == "ok"]
        assert pts[2]["status"] == "failed" and pts[2]["score"] is None
        # The chosen value is the best score's; the score is the validation file's, recomputed from its seeds.
        assert entry["chosen"] == max(ok, key=lambda p: p["score"])["values"]
        for p in ok:
            val = json.loads((out / p["run"] / "validation.json").read_text())
            assert p["score"] == pytest.approx(sum(val["per_seed"]) / len(val["per_seed"]))
            assert list(val["tasks"]) == ["b[4:6]"]
    # The sweep read the sources and the held-out classes, never the target: the cache has no entry for it.
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()}
    assert cached == {"a", "b"}
    # Run again: every finished point is skipped (its init.pt is not rewritten).
    chosen = out / rep["methods"]["cts"]["chosen_run"] / "init.safetensors"
    stamp = chosen.stat().st_mtime_ns
    assert main(["sweep", str(cfg), "--out", str(out), "--grid", "meta.meta_lr=0.01,1,1e30",
                 "--methods", "cts,reptile", "--quiet"]) == 0
    assert chosen.stat().st_mtime_ns == stamp
    # meta-test takes the chosen run from the sweep's method folder.
    capsys.readouterr()
    assert main(["meta-test", "--init", str(out / "cts"), "--targets", str(folders["target"]), "--seeds", "2",
                 "--steps", "1", "--resolution", "12", "--cache-dir", str(tmp_path / "c2"), "--out",
                 str(tmp_path / "mt"), "--quiet"]) == 0
    assert json.loads((tmp_path / "mt" / "results.json").read_text())["init"] == str(chosen)


def test_validation_classes_must_be_held_out(tmp_path, folders, capsys):
    cfg = _study_config(tmp_path, folders, validation_classes="3:6")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "s"), "--grid", "meta.meta_lr=0.1"]) == 2
    assert "shares 1 class(es) with the source task tasks[1]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    plain = yaml.safe_load(cfg.read_text())
    del plain["validation"]
    cfg.write_text(yaml.safe_dump(plain))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "s"), "--grid", "meta.meta_lr=0.1"]) == 2
    assert "a sweep needs a validation block" in capsys.readouterr().err


def test_report_pairs_gains_with_the_common_initialization(tmp_path, folders):
    cfg = _study_config(tmp_path, folders)
    runs = []
    for method in ("cts", "reptile"):
        run = tmp_path / method
        assert main(["meta-train", str(cfg), "--out", str(run), "--set", f"meta.method={method}", "--quiet"]) == 0
        runs.append(str(run))
    # Every method starts from the same random weights: the scratch baseline.
    s0 = [load_file(tmp_path / m / "snapshots" / "step-00000000.safetensors") for m in ("cts", "reptile")]
    assert all(torch.equal(s0[0][k], s0[1][k]) for k in s0[0])
    # A snapshot at a trajectory's end holds phi after that trajectory's meta-update (Algorithm 1's included).
    last = load_file(tmp_path / "reptile" / "snapshots" / "step-00000006.safetensors")
    final = load_file(tmp_path / "reptile" / "init.safetensors")
    assert torch.equal(last["body.0.weight"], final["body.0.weight"])
    out = tmp_path / "report"
    assert main(["report", *runs, "--targets", str(folders["target"]), "--out", str(out), "--seeds", "3",
                 "--steps", "2", "--resolution", "12", "--images-per-class", "2,4", "--augment", "crop",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["common_initialization"] is True and rep["curve_images_per_class"] == 2
    for r in rep["runs"]:
        assert [c["inner_steps"] for c in r["curve"]] == [0, 3, 6]
        # The curve's first point is the scratch baseline itself.
        assert r["curve"][0]["per_seed"] == rep["scratch"]["2"]["average"]["per_seed"]
        for n in ("2", "4"):
            own, base = r["by_images_per_class"][n]["average"]["per_seed"], rep["scratch"][n]["average"]["per_seed"]
            assert r["gain_over_scratch"][n]["per_seed"] == pytest.approx([a - b for a, b in zip(own, base)])
    for name in ("fig6b_final_meta_test.png", "fig7_meta_test_vs_inner_steps.png", "fig8_ablation.png",
                 "fig9_gain_vs_images_per_class.png"):
        assert (out / name).exists(), name
    table = (out / "table.md").read_text()
    assert "scratch (the common random initialization)" in table and "4/class" in table


@pytest.mark.parametrize("gain,ci,start", [(0.05, 0.02, "The CTS initialization beat training from scratch by 5.0"),
                                           (-0.05, 0.02, ("The CTS initialization did worse than training from "
                                                         "scratch by 5.0")),
                                           (0.01, 0.02, ("The difference, +1.0 points (95% CI -1.0 to 3.0), includes "
                                                        "zero"))])
def test_the_demo_says_what_its_interval_shows(gain, ci, start):
    from trajshift.commands.demo import conclusion
    assert conclusion(gain, ci).startswith(start)


def test_first_seed_gives_the_later_seeds_of_a_longer_meta_test(tmp_path, folders):
    """--first-seed 2 --seeds 1 is seed 2 of --seeds 3: the same subsample, head and batch order (a per
    meta-training-seed set of target subsamples is just another seed range)."""
    common = ["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets",
              str(folders["target"]), "--images-per-class", "2", "--steps", "2", "--resolution", "12",
              "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main([*common, "--seeds", "3", "--out", str(tmp_path / "all")]) == 0
    with pytest.warns(UserWarning, match="needs at least 2 seeds"):
        assert main([*common, "--seeds", "1", "--first-seed", "2", "--out", str(tmp_path / "last")]) == 0
    full = json.loads((tmp_path / "all" / "results.json").read_text())
    last = json.loads((tmp_path / "last" / "results.json").read_text())
    name = str(folders["target"])
    assert last["first_seed"] == 2 and last["targets"][name]["accs"] == [full["targets"][name]["accs"][2]]
