"""The GPU script's meta-train: the paper's configuration (configs/paper.yaml: ResNet20, 8 source tasks of 10-200
classes at 28-84 px, batch 128, SGD momentum, K = 1000) cut short by a time limit, with snapshots; then the
projection of the paper's full run (8 tasks x 200,000 inner steps) at the best throughput measured.

The paper's datasets are not obtainable offline, so each task's images are stand-ins of the same class count and
resolution (.npz files of random class-coloured images, written once to benchmarks/out/gpu-data): the cost of a step
does not depend on the pixels. The run is stopped with SIGTERM after --seconds (trajshift then checkpoints the step
it finished), which is also a check that a stopped GPU run leaves a resumable folder.

    python benchmarks/gpu_meta_train.py --device cuda --seconds 120 --out benchmarks/results/gpu_meta_train.json \
        [--throughput benchmarks/results/gpu_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steppers import write_json

FULL_RUN_TASK_STEPS = 8 * 200_000          # the paper: 8 tasks x M = 200 trajectories of K = 1000 steps


def stand_in_data(folder: Path, tasks: list[dict], images: int, classes_of: dict[str, int]) -> list[dict]:
    """One .npz per task with the paper task's class count and resolution (random images, a mean per class)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, t in enumerate(tasks):
        res, c = t["resolution"], classes_of.get(t["dataset"], 100)
        path = folder / f"task{i}-{c}c-{res}px-{images}.npz"
        if not path.exists():
            rng = np.random.default_rng(i)
            y = np.arange(images) % c
            base = rng.integers(0, 256, size=(c, 1, 1, 3))
            x = np.clip(base[y] + rng.normal(0, 40, size=(images, res, res, 3)), 0, 255).astype(np.uint8)
            np.savez(path, x=x, y=y)
        out.append({"dataset": str(path), "resolution": res, "val_fraction": t.get("val_fraction", 0.0),
                    "name": f"{t['dataset']}{'[' + t['classes'] + ']' if 'classes' in t else ''}"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=120.0, help="meta-train for this long, then SIGTERM")
    ap.add_argument("--images", type=int, default=1024, help="stand-in images per task")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--compile", action="store_true", help="execution.compile (the batched backend)")
    ap.add_argument("--resolution", type=int, default=None, help="every task at this resolution instead of the "
                    "paper's 28-84 px (equal shapes let the batched backend run)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many inner steps instead (a smoke "
                    "run that does not depend on the machine's speed)")
    ap.add_argument("--throughput", default=None, help="gpu_throughput JSON for the projection")
    ap.add_argument("--torchrun", action="store_true", help="launch by a one-rank torchrun with the process group "
                    "forced (TRAJSHIFT_DISTRIBUTED=1): NCCL on CUDA, gloo on CPU; summary.json's comm says which ran")
    ap.add_argument("--out", default="benchmarks/out/gpu_meta_train.json")
    ap.add_argument("--work", default="benchmarks/out/gpu-meta-train", help="run folder (replaced)")
    ap.add_argument("--graphs", action="store_true", help="execution.graphs (CUDA graphs; CUDA only)")
    args = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    classes_of = {"tiny-imagenet": 100, "cifar100": 100, "stanford-dogs": 120, "aircraft": 100, "cub": 200,
                  "fashion-mnist": 10, "svhn": 10}
    if args.resolution:
        cfg["tasks"] = [{**t, "resolution": args.resolution} for t in cfg["tasks"]]
    cfg["tasks"] = stand_in_data(ROOT / "benchmarks" / "out" / "gpu-data", cfg["tasks"], args.images, classes_of)
    if args.max_steps:
        cfg["meta"].update({"inner_steps": args.max_steps, "trajectories": 1})
    cfg.update({"device": args.device, "batch_size": args.batch, "snapshot_every": 100, "checkpoint_every": 500,
                "cache_dir": str(ROOT / "benchmarks" / "out" / "gpu-cache"),
                "execution": {"backend": args.backend, "compile": args.compile, "graphs": args.graphs}})
    work = ROOT / args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work.parent / "gpu-meta-train.yaml").write_text(yaml.safe_dump(cfg))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"] \
        if args.torchrun else [sys.executable]
    cmd = [*launcher, "-m", "trajshift", "meta-train", str(work.parent / "gpu-meta-train.yaml"), "--out", str(work)]
    env = {**os.environ, "TRAJSHIFT_DISTRIBUTED": "1"} if args.torchrun else None
    start = time.perf_counter()
    log = open(work.parent / "gpu-meta-train.log", "w")        # noqa: SIM115  (closed below)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        proc.wait(timeout=None if args.max_steps else args.seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)          # trajshift finishes its step, checkpoints it and exits (130)
        proc.wait(timeout=120)
    wall = time.perf_counter() - start
    log.close()
    output = (work.parent / "gpu-meta-train.log").read_text()
    print(output[-3000:])
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()] if \
        (work / "metrics.jsonl").exists() else []
    steps = [r for r in rows if "loss_mean" in r]
    # Throughput from the logged rows' spacing is not available (rows carry no time): the steady rate is the steps
    # done over the time after the first step's row appeared, measured here as the whole wall time (an upper bound
    # on the per-step cost: it includes start-up and data preparation).
    inner = steps[-1]["inner_steps"] if steps else 0
    result = {"benchmark": "gpu_meta_train", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "device": args.device, "gpu": _gpu_name(), "exit_code": proc.returncode, "wall_s": wall,
              "inner_steps_done": inner, "tasks": len(cfg["tasks"]),
              "task_steps_per_s_including_startup": inner * len(cfg["tasks"]) / wall if wall else None,
              "snapshots": sorted(p.name for p in (work / "snapshots").glob("*.safetensors")) if (work / "snapshots").exists()
              else [], "checkpoints": sorted(p.name for p in (work / "checkpoints").glob("ckpt-*.pt"))
              if (work / "checkpoints").exists() else [], "first_loss": steps[0]["loss_mean"] if steps else None,
              "last_loss": steps[-1]["loss_mean"] if steps else None,
              "resolutions": sorted({t["resolution"] for t in cfg["tasks"]}), "execution": cfg["execution"],
              "backend_line": next((x for x in output.splitlines() if x.startswith("backend:")), None),
              "steady": steady_rate(work / "snapshots", len(cfg["tasks"])),
              "comm": json.loads((work / "summary.json").read_text()).get("comm")
              if (work / "summary.json").exists() else None}
    best = None
    if result["steady"]:
        result["projection_from_this_run"] = {
            "task_steps_per_s": result["steady"]["task_steps_per_s"],
            "projected_full_run_hours": FULL_RUN_TASK_STEPS / result["steady"]["task_steps_per_s"] / 3600}
    if args.throughput and Path(args.throughput).exists():
        tp = json.loads(Path(args.throughput).read_text())
        for row in tp["rows"]:
            for variant, ms in row["ms_per_step"].items():
                if variant == "reference" or ms is None:
                    continue
                rate = row["tasks"] * 1000.0 / ms
                if best is None or rate > best["task_steps_per_s"]:
                    best = {"variant": variant, "tasks": row["tasks"], "model": row["model"], "task_steps_per_s": rate}
    if best is None and result["task_steps_per_s_including_startup"]:
        best = {"variant": "this meta-train", "task_steps_per_s": result["task_steps_per_s_including_startup"]}
    if best:
        best["projected_full_run_hours"] = FULL_RUN_TASK_STEPS / best["task_steps_per_s"] / 3600
        best["target_task_steps_per_s"] = FULL_RUN_TASK_STEPS / 7200      # 2 hours
    result["projection"] = best
    write_json(result, args.out)
    print(json.dumps({k: result.get(k) for k in ("inner_steps_done", "wall_s", "exit_code", "backend_line", "steady",
                                                  "projection_from_this_run", "projection")}, indent=1))
    return 0 if proc.returncode in (0, 130) else 1


def steady_rate(snapshots: Path, tasks: int) -> dict | None:
    """The rate between the first and the last snapshot after step 0, from their files' times: start-up, data
    preparation and the backend's choice are before the first one."""
    files = sorted((int(p.stem.split("-")[1]), p.stat().st_mtime) for p in snapshots.glob("step-*.safetensors"))
    files = [f for f in files if f[0] > 0]
    if len(files) < 2:
        return None
    (s0, t0), (s1, t1) = files[0], files[-1]
    return {"from_step": s0, "to_step": s1, "seconds": t1 - t0, "inner_steps_per_s": (s1 - s0) / (t1 - t0),
            "task_steps_per_s": (s1 - s0) * tasks / (t1 - t0)}


def _gpu_name():
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
