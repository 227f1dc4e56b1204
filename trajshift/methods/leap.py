"""Leap (Flennerhag et al., 2019) as an Algorithm 1 method: the meta-gradient of the task-manifold path length,
accumulated over the K steps of each trajectory (rules.leap_increment), averaged over tasks, then
phi <- phi - beta * g.

Loss differences use the losses the inner loop computes anyway: dL_i = L_{i+1}(theta_i) - L_i(theta_{i-1}) on
consecutive batches, as the reference Leap code does; the last increment uses one extra forward pass at theta_K on
batch K. With deterministic losses (the synthetic tasks) this is the exact formula.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schema import opt
from .base import Method
from .rules import leap_increment


@dataclass
class LeapOptions:
    norm: bool = opt(True, doc="path length (d_1); false: energy (d_2)")
    loss: bool = opt(True, doc="include the loss coordinate of the task manifold")
    stabilizer: bool = opt(True, doc="dL -> -|dL| (the reference Leap code's mu)")


class Leap(Method):
    name = "leap"
    Options = LeapOptions

    def setup(self, pop, comm, inner_steps, seed):
        super().setup(pop, comm, inner_steps, seed)
        pop.add_grad_hook(self._record)

    def start_trajectory(self, m):
        self._acc = torch.zeros_like(self.pop.theta_grad)
        self._prev = None

    def _increment(self, theta, loss):
        if self._prev is not None:
            p_theta, p_loss, p_grad = self._prev
            self._acc += leap_increment(p_theta, theta, p_grad, p_loss, loss, norm=self.opts.norm,
                                        use_loss=self.opts.loss, stabilizer=self.opts.stabilizer)

    def _record(self, pop):
        # Called after backward, before the optimizer step: theta is theta_{k-1}, the gradient is at theta_{k-1}.
        theta = pop.theta.detach().clone()
        self._increment(theta, pop.last_losses)
        self._prev = (theta, pop.last_losses, pop.theta_grad.clone())

    def state_dict(self):
        return {"acc": self._acc, "prev": list(self._prev) if self._prev is not None else None}

    def load_state_dict(self, state):
        self._acc = state["acc"].clone()
        self._prev = tuple(t.clone() for t in state["prev"]) if state["prev"] is not None else None

    def end_trajectory(self, m):
        with torch.no_grad():
            final = self.pop.losses_at(self.pop.theta.detach(), self.data_step(m, self.inner_steps), "train")
        self._increment(self.pop.theta.detach().clone(), final.detach())
        return self.task_mean(self._acc)
