"""Are two meta-train runs of one config bit-identical on this device, with and without ``deterministic: true``?

Four runs per backend (loop, batched) of a small ResNet20 CTS meta-train on stand-in images (2 tasks, 32 px): twice
with the default kernels, twice with ``deterministic: true`` (trajshift.core.determinism.deterministic_algorithms).
For each pair: whether init.safetensors and metrics.jsonl are bit-identical, the largest absolute difference of the
inits, and the first logged step whose loss differs; the wall time of each mode (the cost of deterministic kernels).
On CPU every pair is expected identical; on CUDA the default pair may not be (cuDNN's convolution backward and
scatter/index_add sum through atomics in a varying order).

    python benchmarks/gpu_determinism.py --device cuda --out benchmarks/results/gpu_determinism.json
    python benchmarks/gpu_determinism.py --device cpu --steps 3 --out benchmarks/out/gpu_determinism.json   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")    # before torch creates a cuBLAS handle
import numpy as np
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steppers import write_json

from trajshift.commands.cli import main as cli


def compare(a: Path, b: Path) -> dict:
    ia, ib = load_file(a / "init.safetensors"), load_file(b / "init.safetensors")
    diff = max(float((ia[k].double() - ib[k].double()).abs().max()) for k in ia)
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    first = next((r.get("inner_steps", i) for i, (r, s) in enumerate(zip(ra, rb))
                  if r.get("loss_mean") != s.get("loss_mean")), None)
    return {"init_identical": all(torch.equal(ia[k], ib[k]) for k in ia), "init_max_abs_diff": diff,
            "metrics_identical": ra == rb, "first_step_whose_loss_differs": first}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20, help="inner steps per trajectory (2 trajectories)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--work", default="benchmarks/out/gpu-determinism")
    ap.add_argument("--out", default="benchmarks/out/gpu_determinism.json")
    args = ap.parse_args()
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = work / "data.npz"
    y = np.arange(512) % 10
    np.savez(data, x=np.clip(rng.integers(0, 256, (10, 1, 1, 3))[y] + rng.normal(0, 40, (512, 32, 32, 3)), 0,
                             255).astype(np.uint8), y=y)
    result = {"benchmark": "gpu_determinism", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None, "backends": {}}
    for backend in ("loop", "batched"):
        cfg = {"model": {"name": "resnet20"}, "tasks": [{"dataset": str(data), "resolution": 32}] * 2,
               "batch_size": args.batch, "seed": 0, "cache_dir": str(work / "cache"), "device": args.device,
               "checkpoint_every": 0, "execution": {"backend": backend},
               "meta": {"method": "cts", "inner_steps": args.steps, "trajectories": 2, "meta_lr": 0.01,
                        "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}}
        row = {}
        for mode in ("default", "deterministic"):
            path = work / f"{backend}-{mode}.yaml"
            path.write_text(yaml.safe_dump({**cfg, "deterministic": mode == "deterministic"}))
            runs, times, failed = [], [], None
            for i in range(2):
                out = work / f"{backend}-{mode}-{i}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                try:        # a kernel without a deterministic implementation raises: recorded, and the rest goes on
                    code = cli(["meta-train", str(path), "--out", str(out), "--quiet"])
                except Exception as err:  # noqa: BLE001
                    code, failed = 1, f"{type(err).__name__}: {str(err)[:500]}"
                times.append(time.perf_counter() - t0)
                if code != 0:
                    failed = failed or f"exit code {code}"
                    break
                runs.append(out)
            row[mode] = {"error": failed, "wall_s": times} if failed else {**compare(*runs), "wall_s": times}
        if not (row["default"].get("error") or row["deterministic"].get("error")):
            row["deterministic_vs_default_wall"] = (min(row["deterministic"]["wall_s"])
                                                    / min(row["default"]["wall_s"]))
        result["backends"][backend] = row
        print(backend, json.dumps(row))
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
