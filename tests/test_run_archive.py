"""experiments/archive_image_study.py: what a later session needs to resume long runs is kept (the newest checkpoint
of an unfinished run only, finished runs' inits, metrics gzipped) and comes back on restore."""
import gzip
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "archive_image_study.py"), *args],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr


def make_runs(root: Path) -> None:
    done = root / "s0" / "cts" / "meta_lr=0.01"
    going = root / "s0" / "reptile" / "meta_lr=1"
    for r in (done, going):
        (r / "snapshots").mkdir(parents=True)
        (r / "checkpoints").mkdir()
        (r / "config.yaml").write_text("meta: {}\n")
        (r / "metrics.jsonl").write_text('{"step": 1}\n' * 50)
        (r / "snapshots" / "step-00000000.safetensors").write_bytes(b"s0")
    (done / "summary.json").write_text("{}")
    (done / "init.safetensors").write_bytes(b"phi")
    (done / "validation.json").write_text('{"score": 0.3}')
    (done / "validation-snapshots.json").write_text("{}")
    for step in (100, 200):
        (going / "checkpoints" / f"ckpt-{step:010d}.pt").write_bytes(b"c")
        (going / "checkpoints" / f"ckpt-{step:010d}.pt.sha256").write_text("x")
    (root / "s0" / "sweep.json").write_text("{}")


def test_save_keeps_what_resumes_and_restore_puts_it_back(tmp_path):
    runs, archive, back = tmp_path / "runs", tmp_path / "archive", tmp_path / "back"
    make_runs(runs)
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots")
    done = archive / "s0" / "cts" / "meta_lr=0.01"
    going = archive / "s0" / "reptile" / "meta_lr=1"
    assert (done / "init.safetensors").read_bytes() == b"phi"
    assert (done / "validation-snapshots.json").exists()
    assert not (done / "metrics.jsonl").exists()
    assert gzip.decompress((done / "metrics.jsonl.gz").read_bytes()) == b'{"step": 1}\n' * 50
    assert sorted(p.name for p in (going / "checkpoints").iterdir()) == ["ckpt-0000000200.pt",
                                                                        "ckpt-0000000200.pt.sha256"]
    assert (going / "snapshots" / "step-00000000.safetensors").exists()      # --all-snapshots: every run's
    assert (archive / "s0" / "sweep.json").exists()
    # The run finishes; saving again drops its archived checkpoint.
    (runs / "s0" / "reptile" / "meta_lr=1" / "summary.json").write_text("{}")
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots")
    assert not list((going / "checkpoints").glob("ckpt-*"))
    run("restore", "--runs", str(back), "--archive", str(archive))
    assert (back / "s0" / "cts" / "meta_lr=0.01" / "metrics.jsonl").read_text() == '{"step": 1}\n' * 50
    assert (back / "s0" / "cts" / "meta_lr=0.01" / "init.safetensors").read_bytes() == b"phi"


def test_scored_keep_drops_scored_snapshots_no_meta_test_names_and_keeps_the_rest(tmp_path):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    make_runs(runs)
    done = runs / "s0" / "cts" / "meta_lr=0.01"
    for step in (1000, 2000):
        (done / "snapshots" / f"step-{step:08d}.safetensors").write_bytes(b"s")
        (done / "snapshots" / f"step-{step:08d}.json").write_text("{}")
    (done / "snapshots" / "step-00003000.safetensors").write_bytes(b"s")      # written, not scored yet
    (done / "validation-snapshots.json").write_text(
        '{"1000": {"score": 0.2, "snapshot": "step-00001000.safetensors"}, '
        '"2000": {"score": 0.3, "snapshot": "step-00002000.safetensors"}}')
    jobs = tmp_path / "meta-test-jobs.txt"
    jobs.write_text(f"{done / 'snapshots' / 'step-00002000.safetensors'} {tmp_path / 'test' / 'x'}\n")
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots")     # an earlier save: all
    kept = archive / "s0" / "cts" / "meta_lr=0.01" / "snapshots"
    assert (kept / "step-00001000.safetensors").exists()
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots", "--scored-keep", str(jobs))
    assert sorted(p.name for p in kept.iterdir()) == ["step-00000000.safetensors", "step-00002000.json",
                                                      "step-00002000.safetensors", "step-00003000.safetensors"]
    assert (archive / "s0" / "cts" / "meta_lr=0.01" / "validation-snapshots.json").exists()   # the scores stay


def test_scored_keep_drops_what_validate_at_skipped_once_a_finished_run_is_scored_to_its_end(tmp_path):
    """Fig. 6c's K = 100 run writes 100 snapshots and `validate --at` scores 3: once its last snapshot is scored,
    the unscored ones are not needed (the archive keeps the meta-tested one); while its end is unscored, they stay."""
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    make_runs(runs)
    done = runs / "s0" / "cts" / "meta_lr=0.01"
    for step in range(100, 1001, 100):
        (done / "snapshots" / f"step-{step:08d}.safetensors").write_bytes(b"s")
    jobs = tmp_path / "meta-test-jobs.txt"
    jobs.write_text(f"{done / 'snapshots' / 'step-00001000.safetensors'} {tmp_path / 'test' / 'x'}\n")
    kept = archive / "s0" / "cts" / "meta_lr=0.01" / "snapshots"
    (done / "validation-snapshots.json").write_text('{"200": {"score": 0.2, "snapshot": "step-00000200.safetensors"}}')
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots", "--scored-keep", str(jobs))
    assert len(list(kept.iterdir())) == 10                  # 0 and 100..1000 but the scored 200: scoring goes on
    (done / "validation-snapshots.json").write_text(
        '{"200": {"score": 0.2, "snapshot": "step-00000200.safetensors"}, '
        '"1000": {"score": 0.3, "snapshot": "step-00001000.safetensors"}}')
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots", "--scored-keep", str(jobs))
    assert [p.name for p in kept.iterdir()] == ["step-00001000.safetensors"]
    going = archive / "s0" / "reptile" / "meta_lr=1" / "snapshots"   # unfinished and unscored: kept whole
    assert [p.name for p in going.iterdir()] == ["step-00000000.safetensors"]


def test_thin_metrics_keeps_every_row_and_what_the_studies_read_to_six_digits(tmp_path):
    """--thin-metrics: the same number of rows (a resumed run truncates by row count), no per-task arrays, floats to
    6 significant digits (checked against values written out by hand), a cut last line kept as it is."""
    import json
    runs, archive, back = tmp_path / "runs", tmp_path / "archive", tmp_path / "back"
    r = runs / "s1" / "k1000" / "cts" / "meta_lr=0.0015"
    r.mkdir(parents=True)
    (r / "config.yaml").write_text("meta: {}\n")
    rows = [{"trajectory": 1, "step": 1, "inner_steps": 1, "gap_norm": 2.757364511489868,
             "loss_mean": 1.4684294164180756, "loss": [1.2113176584243774, 1.7255411744117737], "tasks": [0, 1]},
            {"event": "trajectory_end", "trajectory": 1, "inner_steps": 1, "delta_norm": 0.004136047326028347}]
    (r / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows) + '{"trajectory": 1, "st\n')
    run("save", "--runs", str(runs), "--archive", str(archive), "--all-snapshots", "--thin-metrics")
    run("restore", "--runs", str(back), "--archive", str(archive))
    lines = (back / "s1" / "k1000" / "cts" / "meta_lr=0.0015" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines[2] == '{"trajectory": 1, "st'
    assert json.loads(lines[0]) == {"trajectory": 1, "step": 1, "inner_steps": 1, "gap_norm": 2.75736,
                                    "loss_mean": 1.46843}
    assert json.loads(lines[1]) == {"event": "trajectory_end", "trajectory": 1, "inner_steps": 1,
                                    "delta_norm": 0.00413605}
