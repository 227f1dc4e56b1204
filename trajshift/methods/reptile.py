"""Reptile (Nichol et al., 2018) as in Algorithm 1: K inner steps from phi, then
phi <- phi - beta * mean_t (phi - theta_K^(t))  (l.12).

``toward: average`` (registered as ``reptile-average``) aims the same step at the trajectory's average iterate:
phi <- phi - beta * (phi - (1/K) sum_{k=1..K} mean_t theta_k^(t)). By the gap identity (Method.gap_norm) a CTS
trajectory moves phi by beta_CTS (gap_1 + ... + gap_K) = beta_CTS K (mean_k mean_t theta_k - phi) to first order
(exactly, without the shift's feedback on later iterates): the average-iterate Reptile at beta = K beta_CTS makes
that move with no shift, so comparing the two isolates what the shift adds beyond the iterate weighting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.schema import opt
from .base import NOTHING, MetaStep, Method, State
from .rules import reptile_metagrad

TARGETS = ("final", "average")


@dataclass
class ReptileOptions:
    toward: str = opt("final", choices=TARGETS, doc="theta_K (Algorithm 1), or the average iterate of the trajectory")


@dataclass
class AverageIterateState(State):
    iterate_sum: torch.Tensor | None = None      # sum_{k <= current} mean_t theta_k^(t), [P]


class Reptile(Method):
    name = "reptile"
    Options = ReptileOptions

    @classmethod
    def effective_step(cls, beta, updates, rho, options=None):
        """beta toward theta_K; toward the average iterate, beta mean_k gap_k: about beta rho."""
        return beta * rho if cls.parse_options(options or {}).toward == "average" else beta

    def init(self):
        return AverageIterateState() if self.opts.toward == "average" else State()

    def start_trajectory(self, state, m):
        if self.opts.toward == "average":
            state.iterate_sum = torch.zeros_like(self.pop.phi.detach())
        return state

    def update(self, state, info):
        if self.opts.toward == "average":
            state.iterate_sum = state.iterate_sum + self.theta_mean()     # one task mean per step, as CTS's l.11
        return NOTHING, state

    def end_trajectory(self, state, info):
        target = state.iterate_sum / self.inner_steps if self.opts.toward == "average" else self.theta_mean()
        return MetaStep(metagrad=reptile_metagrad(self.pop.phi, target)), state


class ReptileAverage(Reptile):
    name = "reptile-average"
    defaults: ClassVar[dict] = {"toward": "average"}
