"""Reptile (Nichol et al., 2018) as in Algorithm 1: K inner steps from phi, then
phi <- phi - beta * mean_t (phi - theta_K^(t))  (l.12)."""
from __future__ import annotations

from .base import MetaStep, Method
from .rules import reptile_metagrad


class Reptile(Method):
    name = "reptile"

    def end_trajectory(self, state, info):
        return MetaStep(metagrad=reptile_metagrad(self.pop.phi, self.theta_mean())), state
