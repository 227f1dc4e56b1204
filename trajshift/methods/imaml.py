"""iMAML (Rajeswaran et al., 2019) as an Algorithm 1 method.

Inner loss: L_train(theta) + lambda/2 ||theta - phi||^2 (``proximal``; its gradient lambda (theta - phi) is added to
the gradient buffer directly). At theta_K, for each task solve (I + H/lambda) x = g_val by ``cg_iters`` conjugate-
gradient iterations, with H the Hessian of the training loss (Hessian-vector products by double backward on the
last inner step's batch) and g_val the validation gradient (mean over ``val_batches`` batches);
phi <- phi - beta * mean_t x_t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Method
from .fomaml import val_gradient
from .rules import imaml_metagrad


@dataclass
class IMAMLOptions:
    lam: float = 0.5
    cg_iters: int = 10
    val_batches: int = 1
    proximal: bool = True

    def check(self, where):
        if not self.lam > 0:
            raise ConfigError(f"{where}.lam: expected a number > 0, got {self.lam}")
        for key in ("cg_iters", "val_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected an integer >= 1, got {getattr(self, key)}")


class IMAML(Method):
    name = "imaml"
    Options = IMAMLOptions

    def setup(self, tr):
        if self.opts.proximal:
            tr.pop.grad_hooks.append(self._proximal_grad)

    def _proximal_grad(self, pop):
        pop.theta_grad.add_(pop.theta.detach() - pop.phi, alpha=self.opts.lam)

    def end_trajectory(self, tr, m):
        K = tr.cfg.inner_steps
        g_val = val_gradient(tr, m, K, self.opts.val_batches)
        theta = tr.pop.theta.detach().clone().requires_grad_(True)
        losses = tr.pop.learners.losses_at(theta, tr.data_step(m, K), "train")
        (grad,) = torch.autograd.grad(losses.sum(), theta, create_graph=True)

        def hvp(v):
            (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v, retain_graph=True)
            return hv.detach()

        x = imaml_metagrad(hvp, g_val, self.opts.lam, self.opts.cg_iters)
        tr.meta_update(tr.task_mean(x), shift="none")
