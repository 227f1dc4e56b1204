"""The loop backend: the T replicas one after another, each forward and backward the user's own module code on the
storage-sharing views of theta (docs/design.md), so autograd accumulates straight into theta's gradient buffer."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import autocast_context

if TYPE_CHECKING:
    from ..module_learners import ModuleLearners


class LoopBackend:
    name = "loop"

    def __init__(self, learners: ModuleLearners):
        self.learners = learners

    def _task_loss(self, t: int, step: int, split: str) -> torch.Tensor:
        ln = self.learners
        m = ln.modules[t]
        m.train(split == "train")
        x, y = ln.engine_batch(t, step, split)
        ln.rebind(t)
        with autocast_context(ln.autocast, x.device):
            return ln.loss(m(x), y)

    def losses(self, step, split="train"):
        return torch.stack([self._task_loss(t, step, split) for t in range(self.learners.num_tasks)])

    def backward(self, step, split="train"):
        # Default: forward and backward one task at a time, so each task's activations are freed before the next
        # task's forward. "summed" (one backward over the sum of all T graphs) keeps every task's activations alive
        # at once (T x the activation memory); on CPU it measured 1.08x slower with 1 thread, 0.95x with 2
        # (docs/PERFORMANCE.md).
        ln = self.learners
        if ln.backward_mode == "summed":
            losses = self.losses(step, split)
            losses.sum().backward()
            return losses.detach()
        out = torch.empty(ln.num_tasks, dtype=ln.dtype, device=ln.theta.device)
        for t in range(ln.num_tasks):
            loss = self._task_loss(t, step, split)
            loss.backward()
            out[t] = loss.detach()
        return out
