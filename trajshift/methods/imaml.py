"""iMAML (Rajeswaran et al., 2019) as an Algorithm 1 method.

Inner loss: L_train(theta) + lambda/2 ||theta - phi||^2 (``proximal``; its gradient lambda (theta - phi) is added to
the gradient by ``transform_gradient``). At theta_K, for each task solve (I + H/lambda) x = g_val by ``cg_iters`` conjugate-
gradient iterations, with H the Hessian of the training loss (Hessian-vector products by double backward on the
last inner step's batch) and g_val the validation gradient (mean over ``val_batches`` batches);
phi <- phi - beta * mean_t x_t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import opt
from .base import MetaStep, Method
from .fomaml import val_gradient
from .rules import imaml_metagrad


@dataclass
class IMAMLOptions:
    lam: float = opt(0.5, low=0, open_low=True, doc="lambda, the proximal regularisation strength")
    cg_iters: int = opt(10, low=1)
    val_batches: int = opt(1, low=1)
    proximal: bool = opt(True, doc="add lambda/2 ||theta - phi||^2 to the inner loss (the paper's method)")


class IMAML(Method):
    name = "imaml"
    uses_held_out_batches = True
    Options = IMAMLOptions

    def transform_gradient(self, state, step):
        """The proximal term's gradient: g + lambda (theta - phi)."""
        if not self.opts.proximal:
            return None, state
        return torch.add(step.grad, step.theta - step.phi, alpha=self.opts.lam), state

    def end_trajectory(self, state, info):
        K, m = self.inner_steps, info.m
        g_val = val_gradient(self, m, K, self.opts.val_batches)
        theta = self.pop.theta.detach().clone().requires_grad_(True)
        losses = self.pop.losses_at(theta, self.data_step(m, K), "train")
        (grad,) = torch.autograd.grad(losses.sum(), theta, create_graph=True)

        def hvp(v):
            (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v, retain_graph=True)
            return hv.detach()

        return MetaStep(metagrad=self.task_mean(imaml_metagrad(hvp, g_val, self.opts.lam, self.opts.cg_iters))), state
