"""First-order MAML and its multi-step-loss variant, as Algorithm 1 methods.

fomaml (Finn et al., 2017): MetaGrad(phi; theta_K) = grad L_val(theta_K), the gradient of a held-out ("val") batch
at the end of the trajectory (mean over ``val_batches`` batches).

fomaml++ (multi-step loss of Antoniou et al., 2019, first order): MetaGrad = the mean of grad L_val(theta_k) over
the steps k in {every, 2*every, ..., K} (K always included), i.e. gradients gathered along the trajectory with
uniform weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Method


@dataclass
class FOMAMLOptions:
    val_batches: int = 1

    def check(self, where):
        if self.val_batches < 1:
            raise ConfigError(f"{where}.val_batches: expected an integer >= 1, got {self.val_batches}")


def val_gradient(tr, m: int, k: int, batches: int) -> torch.Tensor:
    """Per-task gradient [T, P] of the validation loss at the current theta, averaged over ``batches`` batches."""
    total = None
    for j in range(batches):
        grads, _ = tr.pop.task_gradients(tr.data_step(m, k) * batches + j, "val")
        total = grads if total is None else total.add_(grads)
    return total / batches


class FOMAML(Method):
    name = "fomaml"
    Options = FOMAMLOptions

    def end_trajectory(self, tr, m):
        K = tr.cfg.inner_steps
        tr.meta_update(tr.task_mean(val_gradient(tr, m, K, self.opts.val_batches)), shift="none")


@dataclass
class FOMAMLPlusOptions:
    every: int = 10
    val_batches: int = 1

    def check(self, where):
        for key in ("every", "val_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected an integer >= 1, got {getattr(self, key)}")


class FOMAMLPlusPlus(Method):
    name = "fomaml++"
    Options = FOMAMLPlusOptions

    def start_trajectory(self, tr, m):
        self._sum = torch.zeros_like(tr.pop.theta_grad)
        self._count = 0

    def step(self, tr, m, k):
        losses = tr.inner_step(m, k)
        if k % self.opts.every == 0 or k == tr.cfg.inner_steps:
            self._sum += val_gradient(tr, m, k, self.opts.val_batches)
            self._count += 1
        return losses

    def state_dict(self):
        return {"sum": self._sum, "count": self._count}

    def load_state_dict(self, state):
        self._sum, self._count = state["sum"].clone(), int(state["count"])

    def end_trajectory(self, tr, m):
        tr.meta_update(tr.task_mean(self._sum / self._count), shift="none")
