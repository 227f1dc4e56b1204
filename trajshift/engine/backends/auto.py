"""backend "auto": a one-time factory, as torch.optim.SGD chooses between its single-tensor and foreach paths. At
the first backward it times every candidate on that step's batches (one warm-up and ``rounds`` timed rounds each),
undoes every side effect (BatchNorm statistics, heads, gradients) and returns the faster; loop when batching is
impossible."""
from __future__ import annotations

import copy
import logging
import statistics
import time
from typing import TYPE_CHECKING

import torch

from .batched import BatchedBackend
from .loop import LoopBackend

if TYPE_CHECKING:
    from ..module_learners import ModuleLearners
    from .base import Backend

log = logging.getLogger(__name__)


def fastest_backend(learners: ModuleLearners, step: int, split: str, rounds: int = 3) -> tuple[Backend, dict]:
    """(the faster backend for these learners and this step's batches, {name: median ms per backward})."""
    if learners.batched_unsupported:
        log.info("backend auto: loop (batching impossible: %s)", learners.batched_unsupported)
        return LoopBackend(learners), {}
    reason = BatchedBackend.cannot_stack(learners, step, split)
    if reason is not None:
        log.info("backend auto: loop (batching impossible: %s)", reason)
        return LoopBackend(learners), {}
    candidates = [LoopBackend(learners), BatchedBackend(learners)]
    saved = copy.deepcopy(learners.state_dict())
    sync = torch.cuda.synchronize if learners.theta.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {b.name: [] for b in candidates}
    for r in range(rounds + 1):            # round 0 warms up (and compiles, with compile: true)
        for backend in candidates:
            sync()
            t0 = time.perf_counter()
            backend.backward(step, split)
            sync()
            if r:
                times[backend.name].append(1e3 * (time.perf_counter() - t0))
    learners.load_state_dict(saved)
    with torch.no_grad():
        learners.theta.grad.zero_()
        if learners.local_grad is not None:
            learners.local_grad.zero_()
    timings = {k: statistics.median(v) for k, v in times.items()}
    chosen = min(candidates, key=lambda b: timings[b.name])
    log.info("backend auto: %s (ms per backward of all tasks: %s)", chosen.name,
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return chosen, timings
