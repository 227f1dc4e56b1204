"""Reliability breaks found by adversarial probes, each with the test that would have caught it: exact resume at
every kill point, refused checkpoints of other runs, a refused run that touches nothing, a full disk, Ctrl-C."""
import contextlib
import errno
import json
import signal

import faults
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_image_end_to_end import make_dataset

from trajshift.commands.cli import main
from trajshift.training.checkpoint import list_checkpoints, load_latest


class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs except the stack's finally blocks."""


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return [make_dataset(root / f"ds{i}", classes=3, per_class=8, seed=i) for i in range(2)]


def _config(tmp_path, sources, **changes):
    cfg = {"model": {"name": "conv4", "width": 4}, "tasks": [{"dataset": str(d), "resolution": 12} for d in sources],
           "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path.parent / "cache"), "checkpoint_every": 3,
           "snapshot_every": 5, "execution": {"backend": "loop"},
           "meta": {"method": "cts", "inner_steps": 5, "trajectories": 4, "meta_lr": 0.3,
                    "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    cfg.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_files(run):
    return {"metrics": (run / "metrics.jsonl").read_text(),
            "snapshots": {p.name: load_file(p) for p in sorted((run / "snapshots").glob("*.safetensors"))},
            "init": load_file(run / "init.safetensors")}


def _same_state_dicts(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["cts", "reptile"])
def test_resume_after_a_kill_at_every_step_gives_the_uninterrupted_files(tmp_path, sources, monkeypatch, method):
    cfg = _config(tmp_path, sources, meta={"method": method, "inner_steps": 5, "trajectories": 4, "meta_lr": 0.3,
                                           "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    full = _run_files(tmp_path / "full")

    def kill():
        raise _Killed
    for step in range(1, 21):       # every loop step; checkpoints every 3 steps, trajectories of 5
        run = tmp_path / f"killed-{step}"
        faults.install(monkeypatch, step, kill)
        with pytest.raises(_Killed):
            main(["meta-train", str(cfg), "--out", str(run), "--quiet"])
        faults.uninstall(monkeypatch)
        # Killed before the first checkpoint (every 3 steps): the rerun keeps the partial metrics file aside, and says so.
        with pytest.warns(UserWarning, match="kept as metrics.jsonl.1") if step < 3 else contextlib.nullcontext():
            assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
        got = _run_files(run)
        assert got["metrics"] == full["metrics"], f"metrics.jsonl differs after a kill at step {step}"
        assert got["snapshots"].keys() == full["snapshots"].keys(), f"snapshots differ after a kill at step {step}"
        assert all(_same_state_dicts(got["snapshots"][k], full["snapshots"][k]) for k in full["snapshots"])
        assert _same_state_dicts(got["init"], full["init"]), step
        assert not (run / ".lock").exists()


@pytest.mark.parametrize("change,key", [({"seed": 1}, "seed"), ({"batch_size": 2}, "batch_size"),
                                        ({"model": {"name": "conv4", "width": 6}}, "model.width"),
                                        ({"execution": {"backend": "loop", "autocast": "bf16"}},
                                         "execution.autocast")])
def test_a_checkpoint_of_another_run_is_refused_and_the_folder_is_untouched(tmp_path, sources, capsys, change, key):
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources, checkpoint_every=20)), "--out", str(run), "--quiet"]) \
        == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    other = _config(tmp_path, sources, checkpoint_every=20, **change)
    capsys.readouterr()
    assert main(["meta-train", str(other), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"this checkpoint is of a run with {key} = " in err, err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_another_task_list_is_named(tmp_path, sources, capsys):
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources, checkpoint_every=20)), "--out", str(run), "--quiet"]) \
        == 0
    tasks = [{"dataset": str(sources[0]), "resolution": 12}, {"dataset": str(sources[1]), "resolution": 12,
                                                               "classes": "0:2"}]
    assert main(["meta-train", str(_config(tmp_path, sources, checkpoint_every=20, tasks=tasks)), "--out", str(run),
                 "--quiet"]) == 2
    assert "with tasks[1].classes = '(not set)', the config says '0:2'" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, sources, monkeypatch, capsys):
    from trajshift.core import atomic
    real_sync, calls = atomic._sync, {"n": 0}

    run = tmp_path / "run"

    def sync(f):
        if str(run) in str(f.name):      # the run folder's files (the image cache is elsewhere and fills first)
            calls["n"] += 1
            if calls["n"] > 3:     # config.yaml and the first checkpoint (2 files) are written, then the disk fills
                raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(f)
    monkeypatch.setattr(atomic, "_sync", sync)
    assert main(["meta-train", str(_config(tmp_path, sources, snapshot_every=0)), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device writing" in err and "MiB needed" in err, err
    folder = run / "checkpoints"
    assert [p.name for p in folder.iterdir() if ".tmp" in p.name] == []            # no partial file left
    state, path = load_latest(folder)
    assert path.name == "ckpt-0000000003.pt" and state["position"] == {"m": 0, "k": 3}
    # A write killed before its rename leaves a temporary file: the next start removes it, and resumes.
    (folder / ".ckpt-0000000006.pt.tmp99999").write_bytes(b"partial")
    monkeypatch.setattr(atomic, "_sync", real_sync)
    assert main(["meta-train", str(_config(tmp_path, sources, snapshot_every=0)), "--out", str(run), "--quiet"]) == 0
    assert not (folder / ".ckpt-0000000006.pt.tmp99999").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_checkpoints_the_current_step_and_says_how_to_resume(tmp_path, sources, monkeypatch, capsys, sig):
    cfg = _config(tmp_path, sources, checkpoint_every=100)     # no periodic checkpoint before the interrupt
    assert main(["meta-train", str(cfg), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    full = _run_files(tmp_path / "full")
    faults.install(monkeypatch, 7, faults.send(sig))
    before = signal.getsignal(signal.SIGINT)       # the default, or SIG_IGN in a background job
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"trajshift: interrupted ({signal.Signals(sig).name}) at inner step 7; run the same command again "
                   f"to resume from step 7")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt-0000000007.pt"]
    assert signal.getsignal(signal.SIGINT) is before                                # handlers restored
    faults.uninstall(monkeypatch)
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    got = _run_files(run)
    assert got["metrics"] == full["metrics"] and _same_state_dicts(got["init"], full["init"])


def test_a_rerun_without_a_checkpoint_keeps_the_old_metrics(tmp_path, sources, monkeypatch, capsys):
    cfg = _config(tmp_path, sources, checkpoint_every=0)
    faults.install(monkeypatch, 4, faults.send(signal.SIGINT))
    run = tmp_path / "run"
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 130
    assert "this run keeps no checkpoints (checkpoint_every: 0), so running it again starts over" in \
        capsys.readouterr().err
    old = (run / "metrics.jsonl").read_text()
    faults.uninstall(monkeypatch)
    with pytest.warns(UserWarning, match="kept as metrics.jsonl.1"):
        assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    assert (run / "metrics.jsonl.1").read_text() == old
    assert len([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]) > len(old.splitlines())


def test_a_finished_run_asked_again_changes_no_file(tmp_path, sources, capsys):
    cfg = _config(tmp_path, sources)
    run = tmp_path / "run"
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert json.loads(before["summary.json"])["wall_time"] > 0
    assert main(["meta-train", str(cfg), "--out", str(run), "--quiet"]) == 0
    # summary.json keeps the wall time the run took (it read 0 s when a second call overwrote it).
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ----- bad input: refused in one line before any work, or read correctly -------------------------------------------
def test_one_class_is_an_error_and_a_semicolon_manifest_is_read(tmp_path):
    """A .tar.xz of Images/*.ppm plus a ;-separated CSV (a traffic-sign layout): read as class folders it is one
    class, an error that says how classes are found; with the manifest named, its ClassId column gives them."""
    import numpy as np
    from image_files import png_bytes, tar_tree

    from trajshift.data.errors import DataError
    from trajshift.data.formats import read_image_tree
    src = tmp_path / "src"
    (src / "Images").mkdir(parents=True)
    rows = ["Filename;Width;Height;ClassId"]
    for i in range(6):
        (src / "Images" / f"{i:05d}.ppm").write_bytes(png_bytes(np.full((8, 8, 3), 30 * i, np.uint8), "PPM"))
        rows.append(f"Images/{i:05d}.ppm;8;8;{i % 3}")
    (src / "GT-final.csv").write_text("\n".join(rows) + "\n")
    archive = tar_tree(src, tmp_path / "signs.tar.xz", mode="w:xz")
    with pytest.raises(DataError, match=r"signs.tar.xz: 1 class \('Images'\) found from the folder each image is in "
                                        r"\(class folders\); a classification dataset needs at least 2"):
        read_image_tree(archive, resolution=8)
    data = read_image_tree(archive, resolution=8, manifest="GT-final.csv")        # ; and columns recognised
    assert data.classes == ["0", "1", "2"] and sorted(data.splits["all"].labels.tolist()) == [0, 0, 1, 1, 2, 2]
    explicit = read_image_tree(archive, resolution=8, manifest={"file": "GT-final.csv", "delimiter": ";",
                                                                "file_column": "Filename", "label_column": "ClassId"})
    assert explicit.splits["all"].labels.tolist() == data.splits["all"].labels.tolist()
    with pytest.raises(DataError, match="no column 'Label'"):
        read_image_tree(archive, resolution=8, manifest={"file": "GT-final.csv", "label_column": "Label"})


def test_a_class_with_one_image_is_dropped_with_a_warning(tmp_path):
    from image_files import write_class_tree

    from trajshift.data.formats import read_image_tree
    root = write_class_tree(tmp_path / "d", classes=("cat", "dog", "eel"), per_class=3)
    for p in list((root / "eel").iterdir())[1:]:
        p.unlink()
    with pytest.warns(UserWarning, match="dropping 1 class\\(es\\) with fewer than 2 images: 'eel'"):
        data = read_image_tree(root, resolution=8)
    assert data.classes == ["cat", "dog"]


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    import numpy as np
    from PIL import Image

    from trajshift.data.formats import decode_image
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)          # 0 .. 63,000
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)                                      # a 16-bit grayscale PNG
    assert Image.open(path).mode.startswith("I")
    got = decode_image(path.read_bytes(), str(path), None, "L")[..., 0]
    np.testing.assert_array_equal(got, np.round(ramp * 255.0 / 65535).astype(np.uint8))
    assert got.max() < 255 and len(np.unique(got)) > 50


def test_a_link_out_of_the_dataset_folder_is_refused(tmp_path):
    from image_files import write_class_tree

    from trajshift.data.errors import DataError
    from trajshift.data.formats import read_image_tree
    root = write_class_tree(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / "cat" / "0.png").read_bytes())
    (root / "dog" / "evil.png").symlink_to(secret)
    with pytest.raises(DataError, match=r"dog/evil.png: a link to .*secret.png, outside the dataset folder"):
        read_image_tree(root, resolution=8)
    (root / "dog" / "evil.png").unlink()
    (root / "dog" / "fine.png").symlink_to(root / "cat" / "0.png")          # a link inside the folder is fine
    assert len(read_image_tree(root, resolution=8).splits["all"].labels) == 5


@pytest.mark.parametrize("bad", ["traversal", "symlink"])
def test_a_bad_tar_extracts_nothing(tmp_path, bad):
    import io
    import tarfile

    from trajshift.data.download import _extract
    from trajshift.data.errors import DataError
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for name in ("ds/ok1.txt", "ds/ok2.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"ok"))
        info = tarfile.TarInfo("../escape.txt" if bad == "traversal" else "ds/link")
        if bad == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.size = 2
        t.addfile(info, io.BytesIO(b"no") if bad == "traversal" else None)
    dest = tmp_path / "root"
    dest.mkdir()
    with pytest.raises(DataError, match="a.tar.gz: member .* not extracting"):
        _extract(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def test_config_values_are_checked_before_any_work(tmp_path, sources, capsys):
    ok = _config(tmp_path, sources)
    data = yaml.safe_load(ok.read_text())
    # YAML 1.2 numbers: 1e-2 is a number, not the string "1e-2".
    text = ok.read_text().replace("meta_lr: 0.3", "meta_lr: 1e-2").replace("lr: 0.05", "lr: 5e-2")
    ok.write_text(text)
    from trajshift.runs.config import load_config
    cfg = load_config(ok)
    assert cfg.meta.meta_lr == 0.01 and cfg.meta.inner_optimizer["lr"] == 0.05
    out = tmp_path / "never"
    for change, needle in (({"model": {"name": "conv4", "width": 0}}, "width=0: expected > 0"),
                           ({"batch_size": 500}, "batch_size: 500 is more than the"),
                           ({"meta": {**data["meta"], "meta_lr": float("inf")}}, "meta.meta_lr: expected a finite number >= 0, got inf"),
                           ({"meta": {**data["meta"], "inner_optimizer": {"name": "sgd", "lr": float("nan")}}},
                            "inner_optimizer.lr: expected a finite number")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**data, **change}))
        assert main(["meta-train", str(bad), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()
    (tmp_path / "broken.yaml").write_text("model: {name: conv4\ntasks: [\n  - a\nmeta: 3\n")
    assert main(["meta-train", str(tmp_path / "broken.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.yaml: not valid YAML at line" in err, err


@pytest.mark.parametrize("argv", [["meta-train", "CONFIG"], ["synthetic", "--K", "2"],
                                  ["meta-test", "--from", "scratch", "--targets", "digits"]])
def test_out_pointing_at_a_file_is_refused_first(tmp_path, sources, capsys, argv):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    argv = [str(_config(tmp_path, sources)) if a == "CONFIG" else a for a in argv]
    assert main([*argv, "--out", str(target)]) == 2
    assert "an existing file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


# ----- figures a new user reads --------------------------------------------------------------------------------------
def test_synthetic_figures_show_every_start_and_label_the_fixed_point_map(tmp_path):
    from types import SimpleNamespace

    from trajshift.analysis import synthetic_plots
    g = torch.linspace(-5, 15, 5)
    points = torch.cartesian_prod(g, g)
    qmap = (points ** 2).sum(1) + 1
    cfg = SimpleNamespace(methods=["cts"], inner_steps=10, trajectories=2, task_seeds=[0], fixed_point_grid=5)
    starts = [(float(x), float(y)) for x in (-5, 5, 15) for y in (-5, 5, 15)]
    traces = {(s, "cts"): torch.tensor([s, (0.0, 0.0)]) for s in starts}
    shown = synthetic_plots.trajectories(tmp_path / "t.png", points, qmap, cfg, traces)
    assert sorted(shown) == sorted(starts) and (5.0, 5.0) in shown             # the centre start is there
    fixed = [{"k": 10, "path": torch.zeros(3, 25, 2), "distinct": torch.zeros(1, 2), "converged_fraction": 1.0}]
    labels = synthetic_plots.fixed_points(tmp_path / "f.png", points, qmap, cfg, fixed)
    assert "phi[0]" in labels and any("log10 task-average loss" in x for x in labels)


def test_accuracy_error_bars_stay_within_0_and_100():
    from trajshift.analysis.report import _clipped_errors
    low, high = _clipped_errors([95.0, 3.0, 50.0], [0.2, 0.1, None])     # CIs as fractions, means in %
    assert low == [20.0, 3.0, 0.0] and high == [5.0, 10.0, 0.0]


def test_every_command_line_option_has_help():
    import argparse

    from trajshift.commands.cli import build_parser
    missing = []
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_held_out_methods_warn_when_nothing_is_held_out(tmp_path, sources, capsys):
    cfg = _config(tmp_path, sources, meta={"method": "fomaml", "inner_steps": 2, "trajectories": 1, "meta_lr": 0.1,
                                           "inner_optimizer": {"name": "sgd", "lr": 0.05}})
    with pytest.warns(UserWarning, match=r"fomaml computes its meta-gradient on a held-out batch, but tasks\[0\], "
                                         r"tasks\[1\] hold nothing out \(val_fraction: 0\)"):
        assert main(["meta-train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert "no val (val = train: val_fraction is 0)" in capsys.readouterr().out


def test_init_files_carry_their_model_spec(tmp_path, sources):
    """An init.pt or snapshot copied anywhere is meta-tested with the architecture it was trained with."""
    import shutil
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--quiet"]) == 0
    alone = tmp_path / "shared"
    alone.mkdir()
    for name in ("step-00000005.safetensors", "step-00000005.json"):
        shutil.copy(run / "snapshots" / name, alone / name)
    assert json.loads((run / "init.json").read_text())["model"] == {"name": "conv4", "width": 4}
    for init in (alone / "step-00000005.safetensors", run / "snapshots" / "step-00000010.safetensors"):
        out = tmp_path / f"mt-{init.parent.name}"
        assert main(["meta-test", "--init", str(init), "--targets", str(sources[0]), "--seeds", "2", "--steps", "1",
                     "--resolution", "12", "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--quiet"]) == 0
        assert json.loads((out / "results.json").read_text())["model"] == {"name": "conv4", "width": 4}


def test_tensorboard_logs_the_metrics_rows(tmp_path, sources, capsys):
    pytest.importorskip("tensorboard", reason="optional dependency (installed by the test extras)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--quiet", "--log",
                 "tensorboard"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_mean" in r]
    logged = events.Scalars("loss/mean")
    assert [e.step for e in logged] == [r["inner_steps"] for r in steps]
    assert [e.value for e in logged] == pytest.approx([r["loss_mean"] for r in steps], rel=1e-6)
    assert {"loss/task0", "loss/task1", "meta/delta_norm"} <= set(events.Tags()["scalars"])
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(tmp_path / "x"), "--log", "mlflow"]) == 2
    assert "--log: unknown logger 'mlflow'" in capsys.readouterr().err


def test_a_resumed_auto_run_logs_the_backend_it_chose(tmp_path, sources, monkeypatch, capsys):
    cfg = _config(tmp_path, sources, execution={"backend": "auto"}, checkpoint_every=2)
    faults.install(monkeypatch, 3, faults.send(signal.SIGINT))
    run = tmp_path / "run"
    assert main(["meta-train", str(cfg), "--out", str(run)]) == 130
    first = [x for x in capsys.readouterr().out.splitlines() if x.startswith("backend:")]
    chosen = first[0].split()[1]
    faults.uninstall(monkeypatch)
    assert main(["meta-train", str(cfg), "--out", str(run)]) == 0
    again = [x for x in capsys.readouterr().out.splitlines() if x.startswith("backend:")]
    assert again == [f"backend: {chosen} (chosen at the run's start; resumed)"]


def test_meta_test_shows_progress_over_every_finetuning_step(tmp_path, sources, monkeypatch):
    """The bar's total is settings x targets x seeds x steps, and it advances once per finetuning step."""
    from trajshift.training import progress

    class Recorder:
        disable = True

        def __init__(self, total, desc, unit="step", show=None, initial=0):
            self.total, self.n = total, 0
            made.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            pass
    made = []
    monkeypatch.setattr(progress, "bar", Recorder)
    assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets",
                 f"{sources[0]},{sources[1]}", "--images-per-class", "1,2", "--seeds", "2", "--steps", "3",
                 "--resolution", "12", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    assert [(b.total, b.n) for b in made] == [(2 * 2 * 2 * 3, 24)]


def test_meta_train_and_meta_test_print_progress_lines_when_piped(tmp_path, sources):
    """Under nohup, a pipe or CI (stderr not a terminal) the long commands print plain periodic lines: steps done,
    rate and ETA; --quiet silences them."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "TRAJSHIFT_PROGRESS_SECONDS": "0"}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "trajshift", "meta-train", str(_config(tmp_path, sources)), "--out",
                           str(run)], capture_output=True, text=True, env=env, check=True)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cts: ")]
    assert len(lines) == 20 and lines[-1].startswith("cts: 20/20 steps (100%)") and "ETA 0:00" in lines[-1]
    assert "steps/s" in lines[0] and "loss" in lines[-1]
    proc = subprocess.run([sys.executable, "-m", "trajshift", "meta-test", "--init", str(run), "--targets",
                           str(sources[0]), "--seeds", "2", "--steps", "2", "--cache-dir", str(tmp_path / "c"),
                           "--out", str(tmp_path / "mt")], capture_output=True, text=True, env=env, check=True)
    assert "meta-test: 4/4 steps (100%)" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trajshift", "meta-train", str(_config(tmp_path, sources)), "--out",
                           str(tmp_path / "q"), "--quiet"], capture_output=True, text=True, env=env, check=True)
    assert "steps/s" not in proc.stderr


def test_a_run_refused_after_the_config_check_leaves_no_folder(tmp_path, sources, capsys):
    run = tmp_path / "runs" / "bad"
    assert main(["meta-train", str(_config(tmp_path, sources, batch_size=1000)), "--out", str(run)]) == 2
    assert "batch_size: 1000 is more than" in capsys.readouterr().err
    assert not run.exists()
    run.mkdir(parents=True)                              # a folder the user made is left alone
    assert main(["meta-train", str(_config(tmp_path, sources, batch_size=1000)), "--out", str(run)]) == 2
    assert run.is_dir()


def test_results_json_has_one_shape_whatever_the_options(tmp_path, sources):
    shapes = []
    for extra in ([], ["--images-per-class", "2,3"]):
        out = tmp_path / f"o{len(extra)}"
        assert main(["meta-test", "--from", "scratch", "--model", "conv4", "--set", "model.width=4", "--targets",
                     str(sources[0]), "--seeds", "2", "--steps", "1", "--resolution", "12", "--cache-dir",
                     str(tmp_path / "c"), "--out", str(out), "--quiet", *extra]) == 0
        r = json.loads((out / "results.json").read_text())
        shapes.append(sorted(r))
        first = next(iter(r["by_images_per_class"].values()))
        assert r["targets"] == first["targets"] and r["average"] == first["average"]
        assert sorted(first) == ["average", "targets"]
    assert shapes[0] == shapes[1]


def test_meta_test_pairs_with_the_runs_own_starting_weights_and_resumes(tmp_path, sources, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["meta-train", str(_config(tmp_path, sources)), "--out", str(run), "--quiet"]) == 0
    args = ["meta-test", "--init", str(run / "snapshots" / "step-00000000.safetensors"), "--targets", str(sources[0]),
            "--seeds", "3", "--steps", "2", "--resolution", "12", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    # The starting weights against themselves: every paired difference is exactly 0.
    assert main([*args, "--out", str(tmp_path / "self"), "--baseline", "start"]) == 0
    r = json.loads((tmp_path / "self" / "results.json").read_text())
    assert r["difference"]["all"]["per_seed"] == [0.0, 0.0, 0.0]
    assert "paired difference" in capsys.readouterr().out
    # Ctrl-C after two finished seeds; the rerun finetunes only the third, and gives the uninterrupted result.
    from trajshift.evaluation import meta_test as mt
    real, calls = mt.finetune_seed, []

    def counted(*a, **k):
        calls.append(a[5])
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(mt, "finetune_seed", counted)
    stop = True
    out = tmp_path / "cut"
    assert main([*args, "--out", str(out)]) == 130          # the command's answer to Ctrl-C
    stop, calls[:] = False, []
    assert main([*args, "--out", str(out)]) == 0
    assert calls == [2]
    assert json.loads((out / "results.json").read_text())["average"] == r["average"]


@pytest.mark.parametrize("method", ["cts", "leap"])
def test_a_finished_run_extended_in_m_equals_a_run_that_asked_for_it(tmp_path, sources, capsys, method):
    """M (and only M) may grow on a finished run: it continues from the last checkpoint and ends bit-identical to
    a run that asked for the larger M from the start; config.yaml records the extension."""
    meta = {"method": method, "inner_steps": 5, "trajectories": 2, "meta_lr": 0.3,
            "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    run, full = tmp_path / "run", tmp_path / "full"
    assert main(["meta-train", str(_config(tmp_path, sources, meta=meta)), "--out", str(run), "--quiet"]) == 0
    assert main(["meta-train", str(_config(tmp_path, sources, meta={**meta, "trajectories": 4})), "--out", str(run),
                 "--quiet"]) == 0
    assert main(["meta-train", str(_config(tmp_path, sources, meta={**meta, "trajectories": 4})), "--out",
                 str(full), "--quiet"]) == 0
    got, want = _run_files(run), _run_files(full)
    assert got["metrics"] == want["metrics"] and _same_state_dicts(got["init"], want["init"])
    assert got["snapshots"].keys() == want["snapshots"].keys()
    text = (run / "config.yaml").read_text()
    assert text.startswith("# extended: meta.trajectories 2 -> 4, continued from the checkpoint at inner step 10")
    assert yaml.safe_load(text)["meta"]["trajectories"] == 4
    # Anything else changed, or a smaller M, is still refused.
    assert main(["meta-train", str(_config(tmp_path, sources, meta={**meta, "trajectories": 6, "meta_lr": 0.1})),
                 "--out", str(run), "--quiet"]) == 2
    assert "meta_lr = 0.3, the config says 0.1; resume with the same config (only meta.trajectories may grow)" \
        in capsys.readouterr().err
