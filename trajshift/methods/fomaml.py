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

from ..core.schema import opt
from .base import NOTHING, MetaStep, Method, State


@dataclass
class FOMAMLOptions:
    val_batches: int = opt(1, low=1, doc="held-out batches averaged into the meta-gradient")


def val_gradient(method: Method, m: int, k: int, batches: int) -> torch.Tensor:
    """Per-task gradient [T, P] of the validation loss at the current theta, averaged over ``batches`` batches."""
    total = None
    for j in range(batches):
        grads, _ = method.pop.task_gradients(method.data_step(m, k) * batches + j, "val")
        total = grads if total is None else total.add_(grads)
    return total / batches


class FOMAML(Method):
    name = "fomaml"
    uses_held_out_batches = True
    Options = FOMAMLOptions

    def end_trajectory(self, state, info):
        return MetaStep(metagrad=self.task_mean(
            val_gradient(self, info.m, self.inner_steps, self.opts.val_batches))), state


@dataclass
class FOMAMLPlusOptions:
    every: int = opt(10, low=1, doc="a validation gradient every n inner steps (and at K)")
    val_batches: int = opt(1, low=1)


@dataclass
class GradientSum(State):
    sum: torch.Tensor | None = None       # [T, P]: the validation gradients gathered so far in this trajectory
    count: int = 0


class FOMAMLPlusPlus(Method):
    name = "fomaml++"
    uses_held_out_batches = True
    Options = FOMAMLPlusOptions

    def init(self):
        return GradientSum()

    def start_trajectory(self, state, m):
        return GradientSum(sum=torch.zeros_like(self.pop.theta_grad), count=0)

    def update(self, state, info):
        if info.k % self.opts.every == 0 or info.k == self.inner_steps:
            state.sum += val_gradient(self, info.m, info.k, self.opts.val_batches)
            state.count += 1
        return NOTHING, state

    def end_trajectory(self, state, info):
        return MetaStep(metagrad=self.task_mean(state.sum / state.count)), state
