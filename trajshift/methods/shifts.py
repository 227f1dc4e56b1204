"""Algorithm 2, l.13 and its ablations, as rules ``rule(method, state, delta, info) -> (shift | None, state)``.

After the meta-update phi <- phi + Delta_k, the inner trajectories stand at U_k(phi_old) while the initialization
moved. Eq. (1) of the paper approximates U_k(phi_old + Delta_k) by U_k(phi_old) + Delta_k:

    cts:     theta_k^(t) <- theta_k^(t) + Delta_k               (the shift, l.13)
    none:    no shift (ablation "no shift", Fig. 8)
    random:  a vector of norm ||Delta_k|| in a uniformly random direction (ablation "random shift", Fig. 8)
    exact:   theta_k^(t) <- U_k(phi_old + Delta_k): the first k inner steps re-run from the new phi with the same
             batches and the trajectory's starting optimizer state ("Ours Accurate", Section 4.1; K(K-1)/2 extra
             inner steps per trajectory: for small problems only)

The loop adds what a rule returns to every theta^(t); ``exact`` returns None and leaves theta at the re-run's end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .rules import random_direction_like

if TYPE_CHECKING:
    from .base import Method, State, StepInfo


def shift_by_delta(method: Method, state: State, delta: torch.Tensor, info: StepInfo):
    return delta, state


def no_shift(method: Method, state: State, delta: torch.Tensor, info: StepInfo):
    return None, state


def random_shift(method: Method, state: State, delta: torch.Tensor, info: StepInfo):
    # The generator lives in the state (its byte state), so a resumed run draws the same directions.
    generator = torch.Generator()
    generator.set_state(state.rng)
    shift = random_direction_like(delta, generator)
    state.rng = generator.get_state()
    return shift, state


def exact_shift(method: Method, state: State, delta: torch.Tensor, info: StepInfo):
    if info.k == method.inner_steps:         # the trajectory ends here: the next one starts from phi anyway
        return None, state
    pop = method.pop
    pop.restore(state.start)                 # optimizer state, heads, BatchNorm statistics at the reset
    pop.reset()                              # theta <- the new phi
    for j in range(1, info.k + 1):           # U_k(phi_new), the same batches as the trajectory so far
        pop.inner_step(method.data_step(info.m, j))      # (CTS transforms no gradient)
    return None, state


SHIFT_RULES = {"cts": shift_by_delta, "none": no_shift, "random": random_shift, "exact": exact_shift}
