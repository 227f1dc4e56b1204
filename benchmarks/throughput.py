"""Inner-step throughput, peak memory, FLOPs and the all-reduce share: trajshift against plain independent learners
and against the reference code's update pattern, for Conv4 and ResNet20 with T tasks.

Variants (the same data, batch, inner optimizer: SGD momentum 0.9, weight decay 5e-4; heads of 10, 15, 20, ...
classes, so the batched backend pads and masks them):
  plain              T models + T torch.optim.SGD; per step, per task: zero_grad, forward, backward, step
  reference          plain, then per step the reference code's meta-update: a clone of phi, a concatenation of every
                     task's meta-learned tensors, the mean, and a Python loop over the parameter tensors adding the
                     shift (REFERENCE-FACTS.md: "loops in Python over ~57 parameter tensors, clones phi, concatenates")
  cts-loop           trajshift MetaTrainer, method cts (meta-update and shift after every step), backend loop
  cts-batched        the same with backend batched (one vmapped forward/backward for all T tasks)
  reptile            trajshift, method reptile (meta-update every K = 100 steps), backend loop
  optional (--variants): cts-batched-compile, cts-loop-bf16, cts-batched-bf16, cts-loop-channels_last,
                     cts-batched-channels_last (channels_last has no effect on the batched backend; listed to show it),
                     cts-loop-graphs (execution.graphs: each step's optimizer step, meta-update and shift replayed as
                     CUDA graphs, trajshift/training/step_graph.py; CUDA only; the JSON's "inductor_counters" say
                     whether inductor skipped any CUDA graph, and why)

Timing: variants built once, then run in turns, blocks of max(--block, --min-block-seconds worth) steps, --repeats
rounds; the ratio to plain is the
median over rounds of (variant / plain) within a round, so the drifts of a shared machine cancel.

Peak memory: each variant again in a fresh child process. The child builds the data, then resets the kernel's
peak-RSS counter (/proc/self/clear_refs) and notes the RSS (after a throw-away 1-task instance of the variant
has triggered the lazy imports); it then builds the variant (models, optimizers, theta)
and runs --memory-steps steps; "peak above data" = VmHWM - that RSS, median of --memory-repeats children. The
children run with MALLOC_MMAP_THRESHOLD_=65536 and MALLOC_ARENA_MAX=1: glibc then serves every allocation of
64 KiB or more by its own mmap and returns it to the kernel when freed, so the RSS follows the live tensors and its
peak is the peak of live memory (with the default, freed activations stay in malloc's arenas). On CUDA: torch.cuda.max_memory_allocated()
above the allocation after the data. Target: cts <= plain + 2 copies of phi (phi_copy_mib in the output).

FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward+backward of every task (what one inner step must
compute); "achieved" = those FLOPs / the measured step time; the device's peak is measured by the best of a few
float32 matrix products (--peak-n) on the same threads.

All-reduce share (--dist-model, --dist-tasks): torchrun launches 2 ranks (gloo on CPU, NCCL on CUDA) that meta-train
cts on half of the tasks each, timing every task-mean all-reduce inside the step.

    python benchmarks/throughput.py --out benchmarks/results/throughput_cpu.json [--models conv4,resnet20]
        [--tasks 1,4,8] [--device cpu] [--variants plain,cts-loop,...] [--dist-model conv4 --dist-tasks 8]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steppers import interleaved_times, plain_stepper, trajshift_stepper, write_json

from trajshift.models import build_model

SIZES = {"conv4": 28, "resnet20": 32}
DEFAULT_VARIANTS = "plain,reference,cts-loop,cts-batched,reptile"


def setup(model_name: str, T: int, batch: int, device: str, task_ids=None):
    task_ids = list(range(T)) if task_ids is None else list(task_ids)
    classes = [10 + 5 * t for t in task_ids]
    gen = torch.Generator().manual_seed(0)
    size = SIZES[model_name]
    data = [[(torch.randn(batch, 3, size, size, generator=gen).to(device),
              torch.randint(0, c, (batch,), generator=gen).to(device)) for _ in range(4)] for c in classes]

    def models():
        torch.manual_seed(0)
        template = build_model({"name": model_name}, classes[0])
        out = []
        for c in classes:
            m = copy.deepcopy(template)
            m.fc = nn.Linear(m.fc.in_features, c)
            out.append(m.to(device))
        return out
    return data, models


def build_variant(variant: str, data, models, device: str, comm=None, task_ids=None):
    """A function block(n) that runs n inner steps of the variant."""
    def batch_of(t, step):
        return data[t][step % 4]
    if variant in ("plain", "reference"):
        return plain_stepper(models(), batch_of, reference=variant == "reference")
    method, *opts = variant.split("-")
    options = {"backend": opts.pop(0) if method == "cts" else "loop"}
    for o in opts:
        options.update({"compile": {"compile": True}, "bf16": {"autocast": "bf16"}, "graphs": {"graphs": True},
                        "channels_last": {"channels_last": True}}[o])
    return trajshift_stepper(models(), batch_of, method, comm=comm, task_ids=task_ids, **options)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args) -> None:
    """One variant in this fresh process: peak memory above the data, printed as JSON."""
    import gc
    # A throw-away 1-task, batch-2 instance first: lazy imports (torch.optim pulls in torch._dynamo and sympy, about
    # 75 MiB) and one-time kernel set-up then happen before the measurement, not inside it.
    warm_data, warm_models = setup(args.model, 1, 2, args.device)
    build_variant(args.variant, warm_data, warm_models, args.device)(1)
    del warm_data, warm_models
    gc.collect()
    data, models = setup(args.model, args.T, args.batch, args.device)
    out = {}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")      # reset VmHWM to the current RSS
    rss0 = rss_kib("VmRSS")
    build_variant(args.variant, data, models, args.device)(args.memory_steps)
    out["peak_rss_mib_above_data"] = (rss_kib("VmHWM") - rss0) / 1024
    if args.device.startswith("cuda"):
        out["cuda_peak_mib_above_data"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    print(json.dumps(out))


def step_flops(model_name: str, T: int, batch: int, device: str) -> int:
    """FLOPs of one inner step: forward + backward of every task's model on its batch."""
    from torch.utils.flop_counter import FlopCounterMode
    data, models = setup(model_name, T, batch, device)
    counter = FlopCounterMode(display=False)
    with counter:
        for t, m in enumerate(models()):
            x, y = data[t][0]
            nn.functional.cross_entropy(m(x), y).backward()
    return counter.get_total_flops()


def peak_gflops(n: int, device: str, repeats: int = 10) -> float:
    """Best float32 matrix-product rate (2 n^3 FLOPs per product), the device's practical peak."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def dist_child(args) -> None:
    """Under torchrun: cts on this rank's shard; time spent in the task-mean all-reduce against the whole step."""
    from trajshift.engine.comm import DistributedComm, init_from_env, shard
    init_from_env(args.device)

    class TimedComm(DistributedComm):
        seconds = 0.0
        calls = 0

        def task_mean(self, local_sum, local_count):
            sync(args.device)
            t0 = time.perf_counter()
            out = super().task_mean(local_sum, local_count)
            sync(args.device)
            TimedComm.seconds += time.perf_counter() - t0
            TimedComm.calls += 1
            return out

    comm = TimedComm()
    mine = list(shard(args.T, comm.world_size, comm.rank))
    data, models = setup(args.model, args.T, args.batch, args.device, task_ids=mine)
    block = build_variant("cts-loop", data, models, args.device, comm=comm, task_ids=mine)
    block(2)
    TimedComm.seconds, TimedComm.calls = 0.0, 0
    comm._dist.barrier()
    t0 = time.perf_counter()
    block(args.steps)
    sync(args.device)
    wall = time.perf_counter() - t0
    row = {"rank": comm.rank, "local_tasks": len(mine), "ms_per_step": 1e3 * wall / args.steps,
           "allreduce_ms_per_step": 1e3 * TimedComm.seconds / args.steps, "allreduce_calls_per_step":
           TimedComm.calls / args.steps, "allreduce_share": TimedComm.seconds / wall}
    rows = [None] * comm.world_size
    comm._dist.all_gather_object(rows, row)
    if comm.rank == 0:
        print("DIST " + json.dumps(rows))
    comm._dist.barrier()
    comm._dist.destroy_process_group()
    # Leave without interpreter finalization, where gloo's worker threads can abort the process ("terminate called
    # without an active exception", a known PyTorch issue at exit); trajshift's command does the same.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(args) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           __file__, "--dist-child", "--model", args.dist_model, "--T", str(args.dist_tasks), "--batch",
           str(args.batch), "--device", args.device, "--steps", str(args.dist_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // 2))}
    proc = subprocess.run(cmd, capture_output=True, check=False, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("DIST ")]
    if proc.returncode or not line:
        raise RuntimeError(f"distributed benchmark failed:\n{proc.stdout}\n{proc.stderr}")
    ranks = json.loads(line[-1][5:])
    return {"model": args.dist_model, "tasks": args.dist_tasks, "world_size": 2, "method": "cts (meta-update every "
            "step)", "threads_per_rank": max(1, args.threads // 2), "ranks": ranks,
            "allreduce_share_mean": statistics.mean(r["allreduce_share"] for r in ranks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/throughput.json")
    ap.add_argument("--models", default="conv4,resnet20")
    ap.add_argument("--tasks", default="1,4,8")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--min-block-seconds", type=float, default=0.3)
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--memory-repeats", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--memory-variants", default=None, help="measure the peak memory of these variants only (default: "
                    "all; a compiled variant's child compiles again, which takes most of a GPU run's minutes)")
    ap.add_argument("--peak-n", type=int, default=2048, help="matrix size of the peak-FLOP/s measurement")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dist-model", default=None, help="also measure the all-reduce share with 2 ranks")
    ap.add_argument("--dist-tasks", type=int, default=8)
    ap.add_argument("--dist-steps", type=int, default=10)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dist-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dist_child:
        dist_child(args)
        return
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args)
        return
    variants = args.variants.split(",")
    if "plain" not in variants:
        variants.insert(0, "plain")
    peak = peak_gflops(args.peak_n, args.device)
    print(f"measured peak: {peak:.1f} GFLOP/s (float32 {args.peak_n}^2 matrix product, {args.threads} threads)")
    rows = []
    for model in args.models.split(","):
        for T in [int(t) for t in args.tasks.split(",")]:
            data, models = setup(model, T, args.batch, args.device)
            runs = {v: build_variant(v, data, models, args.device) for v in variants}
            for b in runs.values():
                b(2)                                    # warm-up (and compilation)
            sync(args.device)
            t0 = time.perf_counter()
            runs["plain"](1)
            sync(args.device)
            # Blocks of at least --min-block-seconds, so short steps (Conv4, T = 1: ~20 ms) are not timed one by one.
            block = max(args.block, math.ceil(args.min_block_seconds / (time.perf_counter() - t0)))
            times = interleaved_times(runs, args.repeats, block, lambda: sync(args.device))
            del runs
            mem = {}
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
            memory_variants = [] if args.no_memory else [
                v for v in variants if args.memory_variants is None or v in args.memory_variants.split(",")]
            for v in memory_variants:
                samples = []
                for _ in range(args.memory_repeats):
                    proc = subprocess.run([sys.executable, __file__, "--child", "--variant", v, "--model", model,
                                           "--T", str(T), "--batch", str(args.batch), "--device", args.device,
                                           "--memory-steps", str(args.memory_steps), "--threads",
                                           str(args.threads)], capture_output=True, check=False, text=True, env=env)
                    if proc.returncode:     # printed, not raised: the timings above are still worth keeping
                        print(f"memory child {v} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                        break
                    samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                if samples:
                    mem[v] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            P = sum(p.numel() for n, p in build_model({"name": model}, 10).named_parameters()
                    if not n.startswith("fc."))
            flops = step_flops(model, T, args.batch, args.device)
            ms = {v: 1e3 * statistics.median(times[v]) for v in variants}
            row = {"model": model, "tasks": T, "meta_params": P, "steps_per_block": block, "ms_per_step": ms,
                   "ratio_to_plain": {v: statistics.median(a / b for a, b in zip(times[v], times["plain"]))
                                      for v in variants},
                   "gflop_per_step": flops / 1e9,
                   "achieved_gflops": {v: flops / 1e9 / (ms[v] / 1e3) for v in variants},
                   "fraction_of_peak": {v: flops / 1e9 / (ms[v] / 1e3) / peak for v in variants},
                   "memory_mib_above_data": {v: mem[v].get("cuda_peak_mib_above_data",
                                                           mem[v]["peak_rss_mib_above_data"]) for v in mem},
                   "phi_copy_mib": 4 * P / 2 ** 20,
                   # inductor's counters so far (e.g. cudagraph_skips: a graphs variant that ran without CUDA graphs)
                   "inductor_counters": dict(counters["inductor"])}
            if "plain" in mem:
                row["memory_excess_over_plain_in_phi_copies"] = {
                    v: (row["memory_mib_above_data"][v] - row["memory_mib_above_data"]["plain"]) / row["phi_copy_mib"]
                    for v in mem}
            rows.append(row)
            print(json.dumps(row))
            write_json(result_of(args, peak, rows), args.out)      # after every row: a cut-short run keeps its rows
    result = result_of(args, peak, rows)
    if args.dist_model:
        result["distributed"] = run_distributed(args)
        print(json.dumps(result["distributed"]))
    write_json(result, args.out)


def result_of(args, peak: float, rows: list[dict]) -> dict:
    return {"benchmark": "throughput", "command": "python " + " ".join(sys.argv),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "threads": args.threads, "device": args.device,
                        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
            "batch": args.batch, "peak_gflops": peak, "peak_matrix_n": args.peak_n, "rows": rows}


if __name__ == "__main__":
    main()
