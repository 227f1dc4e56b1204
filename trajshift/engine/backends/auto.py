"""backend "auto": a one-time factory, as torch.optim.SGD chooses between its single-tensor and foreach paths. At
the first backward it forms the batched backend's groups (tasks of one batch shape) and times, per group, its
backward in both modes, loop and batched (one warm-up and ``rounds`` timed rounds each), undoes every side effect
(BatchNorm statistics, heads, gradients: ``BoundReplicas.restore``) and keeps the faster mode of each group. The
result is the loop backend when every group chose loop (or batching is impossible), else the batched backend with
those per-group modes (checkpointed, so a resumed run takes the same floating-point path)."""
from __future__ import annotations

import logging
import statistics
import time

import torch

from .base import Backend, BoundReplicas
from .batched import BatchedBackend
from .loop import LoopBackend

log = logging.getLogger(__name__)


def _options(cls, options: dict) -> dict:
    return {k: v for k, v in options.items() if k in cls.options}


def fastest_backend(bound: BoundReplicas, step: int, split: str, rounds: int = 3,
                    options: dict | None = None) -> tuple[Backend, dict]:
    """(the faster backend for these replicas and this step's batches, {label: median ms per backward}). With one
    group of tasks the labels are "loop" and "batched"; with several, "group i (tasks ...) loop" and so on."""
    options = dict(options or {})
    if bound.batched_unsupported:
        log.info("backend auto: loop (batching impossible: %s)", bound.batched_unsupported)
        return LoopBackend(bound, **_options(LoopBackend, options)), {}
    grouped = BatchedBackend(bound, **_options(BatchedBackend, options))
    batches = grouped.batches(step, split)
    saved = bound.snapshot()
    sync = torch.cuda.synchronize if bound.theta.is_cuda else (lambda: None)
    timings: dict[str, float] = {}
    modes = []
    for i, group in enumerate(grouped.groups):
        per_mode = {}
        for mode in ("loop", "batched"):
            times = []
            for r in range(rounds + 1):            # round 0 warms up (and compiles, with compile: true)
                sync()
                t0 = time.perf_counter()
                grouped.group_backward(i, batches, step, split, mode)
                sync()
                if r:
                    times.append(1e3 * (time.perf_counter() - t0))
            per_mode[mode] = statistics.median(times)
            label = mode if len(grouped.groups) == 1 else f"group {i} (tasks {group}) {mode}"
            timings[label] = per_mode[mode]
        modes.append(min(per_mode, key=per_mode.get))
    bound.restore(saved)
    if all(m == "loop" for m in modes):
        chosen: Backend = LoopBackend(bound, **_options(LoopBackend, options))
    else:
        grouped.group_modes = modes
        chosen = grouped
    log.info("backend auto: %s%s (ms per backward: %s)", chosen.name,
             "" if chosen.name == "loop" or len(modes) == 1 else f", group modes {modes}",
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return chosen, timings
