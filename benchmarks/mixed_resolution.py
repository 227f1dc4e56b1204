"""What users run: the paper's Section 4.2 source tasks at their own resolutions (configs/paper.yaml: 8 tasks at 64,
64, 32, 84, 84, 84, 28, 32 px, heads of 10-200 classes), one inner step of all 8, trajshift against plain training.

Variants (the same batches, SGD momentum 0.9, weight decay 5e-4):
  plain                T models + T torch.optim.SGD; per step, per task: zero_grad, forward, backward, step
  cts-loop             trajshift cts (meta-update and shift after every step), backend loop
  cts-grouped          backend batched: tasks grouped by input shape (4 groups: 28, 32, 64, 84 px), one vmapped
                       forward and backward per group
  cts-grouped-compile  the same with execution.compile (torch.compile of each group's vmapped forward)
  cts-grouped-graphs   execution.graphs (CUDA graphs through torch.compile's reduce-overhead mode: each group's
                       forward and backward, and each step's optimizer step, meta-update and shift; CUDA only)
  cts-loop-graphs      the loop backend with execution.graphs (only the work after the backward is replayed)
  cts-auto             backend auto: loop or batched chosen per group by timing at the first step
  cts-grouped-max2     execution.max_group 2: at most 2 tasks per vmapped call (less peak memory)

Timing: the variants take turns running blocks of steps (``--repeats`` rounds), so a shared machine's drifts hit
every variant of a round alike; the ratio to plain is the median over rounds of (variant / plain) within a round.
The variants that compile are built after the others have been timed (compilation can take minutes: a run cut
short keeps the rest), then ``--repeats`` more rounds time every variant.
Projection: the paper's full run is 8 tasks x 200 trajectories x 1,000 inner steps = 1.6 M task-steps; at a
variant's measured rate (task-steps/s = 8 x 1000 / ms per step) it takes 1.6e6 / rate / 3600 hours. Peak memory
(CUDA): torch.cuda.max_memory_allocated over one block of the variant above the memory allocated before it (its
activations and temporaries; every variant's parameters are resident the whole time); on CPU (``--memory``), each
variant again in a fresh child process: its peak resident memory (VmHWM, reset after the data are built) over the
build and 2 steps, with glibc returning freed blocks to the kernel (MALLOC_MMAP_THRESHOLD_=65536, as
benchmarks/throughput.py), so the peak follows live tensors.

The JSON is written after every round (a run cut short keeps what it measured).

    python benchmarks/mixed_resolution.py --device cuda --model resnet20 --batch 128 \
        --out benchmarks/results/gpu_mixed_resolution.json
    python benchmarks/mixed_resolution.py --device cpu --model conv4 --batch 16 --threads 1 \
        --out benchmarks/results/mixed_resolution_cpu_1thread.json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steppers import interleaved_times, plain_stepper, trajshift_stepper, write_json

from trajshift.models import build_model

FULL_RUN_TASK_STEPS = 8 * 200 * 1000
# Class counts of the paper's source datasets (configs/paper.yaml's tasks; Tiny ImageNet split in two halves).
CLASSES = {"tiny-imagenet": 100, "cifar100": 100, "stanford-dogs": 120, "aircraft": 100, "cub": 200,
           "fashion-mnist": 10, "svhn": 10}
VARIANTS = {
    "cts-loop": {"backend": "loop"},
    "cts-grouped": {"backend": "batched"},
    "cts-grouped-compile": {"backend": "batched", "compile": True},
    "cts-grouped-graphs": {"backend": "batched", "graphs": True},
    "cts-loop-graphs": {"backend": "loop", "graphs": True},
    "cts-auto": {"backend": "auto"},
    "cts-grouped-max2": {"backend": "batched", "max_group": 2},
}


def paper_tasks(num_tasks: int | None = None) -> list[tuple[int, int]]:
    """(resolution, classes) of configs/paper.yaml's source tasks."""
    cfg = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    tasks = [(t["resolution"], CLASSES[t["dataset"]]) for t in cfg["tasks"]]
    return tasks[:num_tasks] if num_tasks else tasks


def setup(model_name: str, tasks: list[tuple[int, int]], batch: int, device: str):
    gen = torch.Generator().manual_seed(0)
    data = [[(torch.randn(batch, 3, r, r, generator=gen).to(device),
              torch.randint(0, c, (batch,), generator=gen).to(device)) for _ in range(4)] for r, c in tasks]

    def models():
        torch.manual_seed(0)
        template = build_model({"name": model_name}, tasks[0][1])
        out = []
        for _, c in tasks:
            m = copy.deepcopy(template)
            m.fc = nn.Linear(m.fc.in_features, c)
            out.append(m.to(device))
        return out
    return data, models


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(run, device: str) -> float | None:
    """CUDA: the peak allocation of one block of ``run`` above what was allocated before it."""
    if not device.startswith("cuda"):
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run(1)
    sync(device)
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args, tasks) -> None:
    """One variant in this fresh process: its peak RSS above the data (MiB), printed as JSON."""
    def warm_up():                      # lazy imports and one-time set-up happen here, not in the measurement
        warm_data, warm_models = setup(args.model, tasks[:1], 2, args.device)
        stepper(args.variant, warm_models, lambda t, s: warm_data[t][s % 4])(1)
    warm_up()
    gc.collect()
    data, models = setup(args.model, tasks, args.batch, args.device)
    Path("/proc/self/clear_refs").write_text("5")      # reset VmHWM to the current RSS
    rss0 = rss_kib("VmRSS")
    stepper(args.variant, models, lambda t, s: data[t][s % 4])(2)
    print(json.dumps({"peak_rss_mib_above_data": (rss_kib("VmHWM") - rss0) / 1024}))


def stepper(variant: str, models, batch_of):
    return plain_stepper(models(), batch_of) if variant == "plain" else \
        trajshift_stepper(models(), batch_of, "cts", **VARIANTS[variant])


def cpu_peaks(args, variants: list[str]) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
    out = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--child", "--variant", v, "--model", args.model, "--batch", str(args.batch),
               "--threads", str(args.threads)] + (["--tasks", str(args.tasks)] if args.tasks else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        out[v] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib_above_data"] if proc.returncode \
            == 0 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/mixed_resolution.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=None, help="the first N of the paper's 8 tasks (default: all)")
    ap.add_argument("--variants", default=None, help="default: every variant the device can run")
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--memory", action="store_true", help="CPU: each variant's peak RSS in a child process")
    ap.add_argument("--memory-only", action="store_true", help="CPU: only the peak RSS children (no timing)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args, paper_tasks(args.tasks))
        return
    if args.memory_only:
        variants = ["plain"] + (args.variants.split(",") if args.variants else [v for v in VARIANTS if
                                                                                 not VARIANTS[v].get("graphs")])
        write_json({"benchmark": "mixed_resolution (peak memory only)", "command": "python " + " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
                    "model": args.model, "batch": args.batch, "tasks": paper_tasks(args.tasks),
                    "cpu_peak_rss_mib_above_data": cpu_peaks(args, variants)}, args.out)
        return
    cuda = args.device.startswith("cuda")
    names = args.variants.split(",") if args.variants else \
        [v for v in VARIANTS if cuda or not VARIANTS[v].get("graphs")]
    tasks = paper_tasks(args.tasks)
    data, models = setup(args.model, tasks, args.batch, args.device)

    def batch_of(t, step):
        return data[t][step % 4]
    runs = {"plain": plain_stepper(models(), batch_of)}
    runs["plain"](2)
    result = {"benchmark": "mixed_resolution", "command": "python " + " ".join(sys.argv),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": args.threads, "device": args.device,
                          "gpu": torch.cuda.get_device_name() if cuda else None},
              "model": args.model, "batch": args.batch, "tasks": [{"resolution": r, "classes": c} for r, c in tasks],
              "full_run_task_steps": FULL_RUN_TASK_STEPS, "errors": {}, "warmup_s": {}, "backends": {},
              "peak_mib_above_before": {"plain": peak_mib(runs["plain"], args.device)}}
    rounds: list[dict[str, float]] = []       # per round: seconds per step of every variant built by then
    # Two phases, so a run cut short (compilation can take minutes) still has the uncompiled variants measured:
    # first the variants that need no compilation, then the compiled ones; later rounds time every variant.
    compiled = [v for v in names if VARIANTS[v].get("compile") or VARIANTS[v].get("graphs")]
    for phase in ([v for v in names if v not in compiled], compiled):
        for v in phase:
            try:
                runs[v] = trajshift_stepper(models(), batch_of, "cts", **VARIANTS[v])
                t0 = time.perf_counter()
                runs[v](2)                # warm-up: backend auto's choice, compilation, CUDA graph capture
                sync(args.device)
                result["warmup_s"][v] = time.perf_counter() - t0
                ln = runs[v].learners
                result["backends"][v] = {"backend": ln.backend, **ln.engine.choice(),
                                         "auto_ms_per_backward": ln.backend_timings}
                result["peak_mib_above_before"][v] = peak_mib(runs[v], args.device)
            except Exception as exc:      # noqa: BLE001  (one variant's failure must not lose the others)
                result["errors"][v] = f"{type(exc).__name__}: {exc}"
                runs.pop(v, None)
                print(f"{v}: {result['errors'][v]}", file=sys.stderr)
            write_json(result, args.out)
        if not phase:
            continue
        for _ in range(args.repeats):
            rounds.append({v: t[0] for v, t in interleaved_times(runs, 1, args.block,
                                                                  lambda: sync(args.device)).items()})
            result.update(summarise(rounds, len(tasks)), steps_per_block=args.block)
            write_json(result, args.out)
    if args.memory and not cuda:
        result["cpu_peak_rss_mib_above_data"] = cpu_peaks(args, list(runs))
        write_json(result, args.out)
    print({k: result.get(k) for k in ("ms_per_step", "ratio_to_plain", "projected_full_run_hours", "errors",
                                      "cpu_peak_rss_mib_above_data")})


def summarise(rounds: list[dict[str, float]], num_tasks: int) -> dict:
    """Medians over the rounds that timed each variant; its ratio to plain within each such round."""
    variants = list(dict.fromkeys(v for r in rounds for v in r))
    ms = {v: 1e3 * statistics.median(r[v] for r in rounds if v in r) for v in variants}
    rate = {v: num_tasks * 1e3 / m for v, m in ms.items()}
    return {"rounds": {v: sum(v in r for r in rounds) for v in variants}, "ms_per_step": ms,
            "ratio_to_plain": {v: statistics.median(r[v] / r["plain"] for r in rounds if v in r) for v in variants},
            "task_steps_per_s": rate,
            "projected_full_run_hours": {v: FULL_RUN_TASK_STEPS / r / 3600 for v, r in rate.items()}}

if __name__ == "__main__":
    main()
