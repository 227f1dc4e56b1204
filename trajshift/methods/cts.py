"""Continual trajectory shifting (Algorithm 2) and its ablations, as one composition:
CTS = Reptile's meta-gradient at every inner step + a shift rule (methods/shifts.py).

After inner step k (every ``meta_every`` steps):
    Delta_k = -beta * mean_t MetaGrad(phi; theta_k^(t))          (l.11, here)
    phi <- phi + Delta_k                                           (l.12, the loop)
    theta_k^(t) <- theta_k^(t) + Delta_k for every t              (l.13, the loop adds what the shift rule returns)
MetaGrad is phi - theta_k (Reptile-style, default) or the task's gradient at theta_k on the step's training batch
(``metagrad: gradient``, the paper's footnote 2). The registry's entries differ only in the shift rule:

    cts               shift: cts      theta += Delta (Eq. 1's approximation of U_k(phi + Delta))
    cts-no-shift      shift: none     (Fig. 8)
    cts-random-shift  shift: random   a random direction of norm ||Delta|| (Fig. 8)
    cts-accurate      shift: exact    theta <- U_k(phi + Delta), re-run ("Ours Accurate", Section 4.1)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from ..core.sampling import stream_seed
from ..core.schema import opt
from .base import NOTHING, MetaStep, Method, State, StepInfo
from .rules import reptile_meta_step, reptile_metagrad
from .shifts import SHIFT_RULES

METAGRADS = ("reptile", "gradient")


@dataclass
class CTSOptions:
    meta_every: int = opt(1, low=1, doc="a meta-update every n inner steps")
    shift: str = opt("cts", choices=tuple(SHIFT_RULES),
                     doc="l.13: the shift, none, a random direction of norm ||Delta||, or exact (re-run)")
    metagrad: str = opt("reptile", choices=METAGRADS, doc="phi - theta_k, or the task gradient at theta_k")


@dataclass
class CTSState(State):
    rng: torch.Tensor | None = None        # shift: random; the generator's state
    start: dict | None = None              # shift: exact; the population at the trajectory's reset


def cts_metagrad(method: Method, info: StepInfo, kind: str) -> torch.Tensor:
    """Task-mean MetaGrad(phi; theta_k) of Algorithm 2, l.11."""
    if kind == "reptile":
        return reptile_metagrad(method.pop.phi, method.theta_mean())
    grads, _ = method.pop.task_gradients(info.data_step, "train")
    return method.task_mean(grads)


class CTS(Method):
    name = "cts"
    Options = CTSOptions

    @classmethod
    def updates_per_trajectory(cls, inner_steps, options=None):
        return inner_steps // cls.parse_options(options or {}).meta_every

    @classmethod
    def effective_step(cls, beta, updates, rho, options=None):
        """With the shift (or the exact re-run) the gap is the sum of the inner updates, so a trajectory moves phi by
        beta (gap_1 + ... + gap_K): about beta K rho Reptile steps. Without it the gap forgets: 1 - (1 - beta)^K."""
        if cls.parse_options(options or {}).shift in ("cts", "exact"):
            return beta * updates * rho
        return 1 - (1 - beta) ** updates

    def init(self):
        # The same seed on every process: the random-shift direction must be identical everywhere.
        rng = torch.Generator().manual_seed(stream_seed(self.seed, 0xC75)).get_state() \
            if self.opts.shift == "random" else None
        return CTSState(rng=rng)

    def start_trajectory(self, state, m):
        if self.opts.shift == "exact":
            state.start = self.pop.snapshot()    # theta = phi, optimizer state, heads, BN statistics at the reset
        return state

    def update(self, state, info):
        if info.k % self.opts.meta_every:
            return NOTHING, state
        return MetaStep(metagrad=cts_metagrad(self, info, self.opts.metagrad)), state      # l.11

    def shift(self, state, delta, info):
        return SHIFT_RULES[self.opts.shift](self, state, delta, info)                      # l.13

    def step_kernel(self):
        """Captured per step when the update needs no host decision: the Reptile meta-gradient, a meta-update at
        every step, the shift cts or none, tasks on one process (no all-reduce inside the graph)."""
        if (self.opts.metagrad != "reptile" or self.opts.meta_every != 1 or self.opts.shift not in ("cts", "none")
                or self.comm.world_size != 1):
            return None
        return partial(reptile_meta_step, shift=self.opts.shift == "cts", mean_over_tasks=self.comm.mean_over_tasks)

    def gap_norm(self, metagrad):
        """With the Reptile meta-gradient and the shift, l.11 has just measured the gap (phi - mean_t theta_k) and
        l.12-13 move phi and theta alike: its norm, without a second task mean (or all-reduce)."""
        if metagrad is not None and self.opts.metagrad == "reptile" and self.opts.shift == "cts":
            return metagrad.norm()
        return super().gap_norm(metagrad)


class CTSNoShift(CTS):
    name = "cts-no-shift"
    defaults: ClassVar[dict] = {"shift": "none"}


class CTSRandomShift(CTS):
    name = "cts-random-shift"
    defaults: ClassVar[dict] = {"shift": "random"}


class CTSAccurate(CTS):
    name = "cts-accurate"
    defaults: ClassVar[dict] = {"shift": "exact"}
