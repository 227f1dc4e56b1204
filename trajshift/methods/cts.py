"""Continual trajectory shifting (Algorithm 2) and its ablations.

After inner step k (every ``meta_every`` steps):
    Delta_k = -beta * mean_t MetaGrad(phi; theta_k^(t))          (l.11)
    phi <- phi + Delta_k                                           (l.12)
    theta_k^(t) <- theta_k^(t) + Delta_k for every t              (l.13, the shift)
MetaGrad is phi - theta_k (Reptile-style, default) or the task's gradient at theta_k on the step's training batch
(``metagrad: gradient``, the paper's footnote 2). ``shift: none`` skips l.13; ``shift: random`` adds a vector of
norm ||Delta_k|| in a uniformly random direction instead (the paper's ablations, Fig. 8).

``cts-accurate`` ("Ours Accurate", Section 4.1) replaces the approximation of Eq. (1),
U_1(... U_1(U_1(phi) + Delta_1) ... + Delta_{k-1}), by the exact U_k(phi + Delta_1 + ... + Delta_{k-1}): after every
meta-update it re-runs the first k inner steps (same batches, same starting optimizer state) from the current phi.
That costs k inner steps for the k-th meta-update, K(K+1)/2 per trajectory: for small problems only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..sampling import stream_seed
from ..schema import opt
from .base import Method
from .rules import random_direction_like, reptile_metagrad

SHIFTS = ("cts", "none", "random")
METAGRADS = ("reptile", "gradient")


@dataclass
class CTSOptions:
    meta_every: int = opt(1, low=1, doc="a meta-update every n inner steps")
    shift: str = opt("cts", choices=SHIFTS, doc="l.13: the shift, none, or a random direction of norm ||Delta||")
    metagrad: str = opt("reptile", choices=METAGRADS, doc="phi - theta_k, or the task gradient at theta_k")


def cts_metagrad(method: Method, m: int, k: int, kind: str) -> torch.Tensor:
    """Task-mean MetaGrad(phi; theta_k) of Algorithm 2, l.11."""
    if kind == "reptile":
        return reptile_metagrad(method.pop.phi, method.theta_mean())
    grads, _ = method.pop.task_gradients(method.data_step(m, k), "train")
    return method.task_mean(grads)


class CTS(Method):
    name = "cts"
    Options = CTSOptions

    @classmethod
    def updates_per_trajectory(cls, inner_steps, options=None):
        return inner_steps // cls.parse_options(options or {}).meta_every

    def setup(self, pop, comm, inner_steps, seed):
        super().setup(pop, comm, inner_steps, seed)
        # The same seed on every process: the random-shift direction must be identical everywhere.
        self.generator = torch.Generator().manual_seed(stream_seed(seed, 0xC75))

    def step(self, m, k):
        losses = self.inner_step(m, k)                                           # l.8-10
        self._gap = None
        if k % self.opts.meta_every == 0:
            metagrad = cts_metagrad(self, m, k, self.opts.metagrad)              # l.11 (the loop does l.12)
            if self.opts.metagrad == "reptile" and self.opts.shift == "cts":
                self._gap = metagrad         # phi - mean_t theta_k; the shift leaves the gap as it is
            return losses, metagrad
        return losses, None

    def gap_norm(self):
        """With the Reptile meta-gradient and the shift, l.11 has just measured the gap (phi - mean_t theta_k) and
        l.12-13 move phi and theta alike: its norm, without a second task mean (or all-reduce)."""
        if getattr(self, "_gap", None) is not None:
            return self._gap.norm()
        return super().gap_norm()

    @torch.no_grad()
    def after_meta_update(self, delta):
        """Algorithm 2, l.13: theta_k^(t) <- theta_k^(t) + Delta_k for every task t (or the ablations)."""
        if self.opts.shift == "cts":
            self.pop.theta.add_(delta)
        elif self.opts.shift == "random":
            self.pop.theta.add_(random_direction_like(delta, self.generator))

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        if "generator" in state:
            self.generator.set_state(state["generator"])


class CTSNoShift(CTS):
    name = "cts-no-shift"
    defaults: ClassVar[dict] = {"shift": "none"}


class CTSRandomShift(CTS):
    name = "cts-random-shift"
    defaults: ClassVar[dict] = {"shift": "random"}


@dataclass
class AccurateOptions:
    metagrad: str = opt("reptile", choices=METAGRADS)


class CTSAccurate(Method):
    name = "cts-accurate"
    Options = AccurateOptions

    @classmethod
    def updates_per_trajectory(cls, inner_steps, options=None):
        return inner_steps

    def start_trajectory(self, m):
        self._start = self.pop.snapshot()    # theta = phi, optimizer state, heads, BN statistics at the reset

    def state_dict(self):
        return {"start": self._start}

    def load_state_dict(self, state):
        self._start = state["start"]

    def step(self, m, k):
        self.pop.restore(self._start)
        self.pop.reset()                     # U_k(.) starts from the *current* phi
        for j in range(1, k + 1):
            losses = self.inner_step(m, j)
        return losses, cts_metagrad(self, m, k, self.opts.metagrad)
