"""What a method is: option parsing plus four hooks the trainer calls (Algorithm 1 and 2 share the loop).

    for m in 1..M:                       # trajectories
        theta <- phi                     # trainer: Population.reset
        method.start_trajectory(m)
        for k in 1..K:
            method.step(m, k)            # default: one inner step for all tasks
        method.end_trajectory(m)         # Algorithm 1 methods meta-update here

The meta-gradient math itself lives in pure functions (methods/rules.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..config import parse_dataclass_options

if TYPE_CHECKING:
    from ..trainer import MetaTrainer


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
        return parse_dataclass_options(cls.Options, {**cls.defaults, **options}, f"options[{cls.name}]")

    @classmethod
    def updates_per_trajectory(cls, inner_steps: int, options: dict | None = None) -> int:
        """Meta-updates one trajectory of K inner steps makes (Algorithm 1: one)."""
        return 1

    def setup(self, tr: MetaTrainer) -> None:
        """Called once before training (register gradient hooks, allocate buffers)."""

    def start_trajectory(self, tr: MetaTrainer, m: int) -> None:
        pass

    def step(self, tr: MetaTrainer, m: int, k: int) -> torch.Tensor:
        """Inner step k (1-based) of trajectory m for every task; returns the per-task losses [T]."""
        return tr.inner_step(m, k)

    def end_trajectory(self, tr: MetaTrainer, m: int) -> None:
        pass

    def state_dict(self) -> dict:
        """What the method carries between steps of a trajectory (accumulators), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
