"""Leap (Flennerhag et al., 2019) as an Algorithm 1 method: the meta-gradient of the task-manifold path length,
accumulated over the K steps of each trajectory (rules.leap_increment), averaged over tasks, then
phi <- phi - beta * g.

Loss differences use the losses the inner loop computes anyway: dL_i = L_{i+1}(theta_i) - L_i(theta_{i-1}) on
consecutive batches, as the reference Leap code does; the last increment uses one extra forward pass at theta_K on
batch K. With deterministic losses (the synthetic tasks) this is the exact formula. Leap reads each inner step's
gradient through ``transform_gradient`` (and leaves it unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import opt
from .base import MetaStep, Method, State
from .rules import leap_increment


@dataclass
class LeapOptions:
    norm: bool = opt(True, doc="path length (d_1); false: energy (d_2)")
    loss: bool = opt(True, doc="include the loss coordinate of the task manifold")
    stabilizer: bool = opt(True, doc="dL -> -|dL| (the reference Leap code's mu)")


@dataclass
class LeapState(State):
    acc: torch.Tensor | None = None           # [T, P]: the meta-gradient accumulated over this trajectory
    prev_theta: torch.Tensor | None = None    # the previous step's point on the manifold: theta_{i} [T, P],
    prev_loss: torch.Tensor | None = None     # its loss [T]
    prev_grad: torch.Tensor | None = None     # and its gradient [T, P] (None before the trajectory's first step)


class Leap(Method):
    name = "leap"
    Options = LeapOptions

    def init(self):
        return LeapState()

    def start_trajectory(self, state, m):
        return LeapState(acc=torch.zeros_like(self.pop.theta_grad))

    def _increment(self, state: LeapState, theta: torch.Tensor, loss: torch.Tensor) -> None:
        if state.prev_theta is not None:
            state.acc += leap_increment(state.prev_theta, theta, state.prev_grad, state.prev_loss, loss,
                                        norm=self.opts.norm, use_loss=self.opts.loss, stabilizer=self.opts.stabilizer)

    def transform_gradient(self, state, step):
        # After backward, before the optimizer step: theta is theta_{k-1}, the gradient is at theta_{k-1}.
        theta = step.theta.clone()
        self._increment(state, theta, step.losses)
        state.prev_theta, state.prev_loss, state.prev_grad = theta, step.losses, step.grad.clone()
        return None, state

    def end_trajectory(self, state, info):
        with torch.no_grad():
            final = self.pop.losses_at(self.pop.theta.detach(), self.data_step(info.m, self.inner_steps), "train")
        self._increment(state, self.pop.theta.detach().clone(), final.detach())
        return MetaStep(metagrad=self.task_mean(state.acc)), state
