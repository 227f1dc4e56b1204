"""What a method is: its options, and what to do at a step and at a trajectory's end.

The loop (trajshift/loop.py) is Algorithms 1 and 2 at once; a method answers it through four hooks:

    for m in 1..M:                                   # trajectories
        theta <- phi                                 # Population.reset (Algorithm 2, l.6)
        method.start_trajectory(m)
        for k in 1..K:
            losses, g = method.step(m, k)            # default: one inner step for all tasks (l.8-10), g = None
            if g is not None: meta-update with g     # CTS (Algorithm 2, l.11-12)
        g = method.end_trajectory(m)                 # Algorithm 1 methods (Reptile, Leap, ...) return g here
        if g is not None: meta-update with g
    after each meta-update: method.after_meta_update(Delta)    # CTS's shift (Algorithm 2, l.13)

A method receives only what it uses, at ``setup``: the population's public operations (theta, phi, inner steps,
per-task gradients and losses, gradient hooks), the comm (means over tasks, across processes) and its options. It
imports nothing of the loop. The meta-gradient math lives in pure functions (methods/rules.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..sampling import data_step
from ..schema import parse

if TYPE_CHECKING:
    from ..comm import LocalComm
    from ..population import Population


@dataclass
class NoOptions:
    pass


class Method:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict] = {}    # preset option values of a registry entry (e.g. cts-no-shift)

    def __init__(self, options: dict | None = None):
        self.opts = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, options: dict):
        return parse(cls.Options, {**cls.defaults, **options}, f"options[{cls.name}]")

    @classmethod
    def updates_per_trajectory(cls, inner_steps: int, options: dict | None = None) -> int:
        """Meta-updates one trajectory of K inner steps makes (Algorithm 1: one)."""
        return 1

    def setup(self, pop: Population, comm: LocalComm, inner_steps: int, seed: int) -> None:
        """Called once before training. Subclasses extend it (gradient hooks, buffers) and call super()."""
        self.pop, self.comm, self.inner_steps, self.seed = pop, comm, inner_steps, seed

    # ----- the operations methods build on -------------------------------------------------------------------
    def data_step(self, m: int, k: int) -> int:
        return data_step(m, k, self.inner_steps)

    def inner_step(self, m: int, k: int) -> torch.Tensor:
        """Inner step k of trajectory m for every task (Algorithm 2, l.8-10); the per-task losses [T]."""
        return self.pop.inner_step(self.data_step(m, k))

    def task_mean(self, per_task: torch.Tensor) -> torch.Tensor:
        """The mean over all tasks (all processes) of a per-task quantity [T_local, ...]."""
        return self.comm.mean_over_tasks(per_task)

    def theta_mean(self) -> torch.Tensor:
        return self.task_mean(self.pop.theta.detach())

    def gap_norm(self) -> torch.Tensor:
        """||gap_k|| = ||mean_t theta_k^(t) - phi_k|| after step k (on the device; logged as ``gap_norm``). For CTS
        the shift moves theta and phi alike, so gap_k = u_1 + ... + u_k, the sum of the mean inner updates, and over a
        trajectory phi_K - phi_0 = beta (gap_1 + ... + gap_K) (``trajshift diagnose``). One all-reduce per logged
        row when tasks span processes: raise ``log_every`` there if that matters."""
        return (self.theta_mean() - self.pop.phi.detach()).norm()

    # ----- hooks ---------------------------------------------------------------------------------------------
    def start_trajectory(self, m: int) -> None:
        pass

    def step(self, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inner step k (1-based) of trajectory m: (the per-task losses [T], a meta-gradient [P] or None)."""
        return self.inner_step(m, k), None

    def end_trajectory(self, m: int) -> torch.Tensor | None:
        """A meta-gradient [P] to apply at the trajectory's end, or None."""
        return None

    def after_meta_update(self, delta: torch.Tensor) -> None:
        """Called with Delta = phi_new - phi_old after every meta-update."""

    def state_dict(self) -> dict:
        """What the method carries between steps of a trajectory (accumulators), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
