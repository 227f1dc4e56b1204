"""The loop backend: the T replicas one after another, each forward and backward the user's own module code on the
storage-sharing views of theta (docs/design.md), so autograd accumulates straight into theta's gradient buffer."""
from __future__ import annotations

import torch

from ...core.errors import ConfigError
from .base import BoundReplicas, autocast_context

BACKWARD_MODES = ("per-task", "summed")


def module_loss(bound: BoundReplicas, t: int, x: torch.Tensor, y: torch.Tensor, split: str) -> torch.Tensor:
    """Task t's loss on (x, y) through its own module (the loop's unit, also the batched backend's loop groups)."""
    m = bound.modules[t]
    m.train(split == "train")
    with autocast_context(bound.autocast, x.device):
        return bound.loss(m(x), y)


def task_loss(bound: BoundReplicas, t: int, step: int, split: str) -> torch.Tensor:
    """Task t's loss on its batch of this step."""
    x, y = bound.batch(t, step, split)
    bound.rebind(t)
    return module_loss(bound, t, x, y, split)


class LoopBackend:
    """``backward``: "per-task" (default) forwards and backwards one task at a time, so each task's activations are
    freed before the next task's forward; "summed" (one backward over the sum of all T graphs) keeps every task's
    activations alive at once (T x the activation memory); on CPU it measured 1.08x slower with 1 thread, 0.95x
    with 2 (docs/PERFORMANCE.md)."""
    name = "loop"
    options = ("backward",)

    def __init__(self, bound: BoundReplicas, backward: str = "per-task"):
        if backward not in BACKWARD_MODES:
            raise ConfigError(f"backward: unknown value {backward!r}; allowed values: {', '.join(BACKWARD_MODES)}")
        self.bound = bound
        self.backward_mode = backward

    def choice(self) -> dict:
        return {}

    def losses(self, step, split="train"):
        return torch.stack([task_loss(self.bound, t, step, split) for t in range(self.bound.num_tasks)])

    def backward(self, step, split="train"):
        bound = self.bound
        if self.backward_mode == "summed":
            losses = self.losses(step, split)
            losses.sum().backward()
            return losses.detach()
        out = torch.empty(bound.num_tasks, dtype=bound.dtype, device=bound.theta.device)
        for t in range(bound.num_tasks):
            loss = task_loss(bound, t, step, split)
            loss.backward()
            out[t] = loss.detach()
        return out
