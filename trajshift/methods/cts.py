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

from ..errors import ConfigError
from .base import Method
from .rules import reptile_metagrad

SHIFTS = ("cts", "none", "random")
METAGRADS = ("reptile", "gradient")


def _check_choice(where: str, key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}.{key}: unknown value {value!r}; allowed values: {', '.join(allowed)}")


@dataclass
class CTSOptions:
    meta_every: int = 1
    shift: str = "cts"
    metagrad: str = "reptile"

    def check(self, where):
        if self.meta_every < 1:
            raise ConfigError(f"{where}.meta_every: expected an integer >= 1, got {self.meta_every}")
        _check_choice(where, "shift", self.shift, SHIFTS)
        _check_choice(where, "metagrad", self.metagrad, METAGRADS)


def cts_metagrad(tr, m: int, k: int, kind: str):
    """Task-mean MetaGrad(phi; theta_k) of Algorithm 2, l.11."""
    if kind == "reptile":
        return reptile_metagrad(tr.phi, tr.theta_mean())
    grads, _ = tr.pop.task_gradients(tr.data_step(m, k), "train")
    return tr.task_mean(grads)


class CTS(Method):
    name = "cts"
    Options = CTSOptions

    @classmethod
    def updates_per_trajectory(cls, inner_steps, options=None):
        return inner_steps // cls.parse_options(options or {}).meta_every

    def step(self, tr, m, k):
        losses = tr.inner_step(m, k)
        if k % self.opts.meta_every == 0:
            tr.meta_update(cts_metagrad(tr, m, k, self.opts.metagrad), shift=self.opts.shift)
        return losses


class CTSNoShift(CTS):
    name = "cts-no-shift"
    defaults: ClassVar[dict] = {"shift": "none"}


class CTSRandomShift(CTS):
    name = "cts-random-shift"
    defaults: ClassVar[dict] = {"shift": "random"}


@dataclass
class AccurateOptions:
    metagrad: str = "reptile"

    def check(self, where):
        _check_choice(where, "metagrad", self.metagrad, METAGRADS)


class CTSAccurate(Method):
    name = "cts-accurate"
    Options = AccurateOptions

    @classmethod
    def updates_per_trajectory(cls, inner_steps, options=None):
        return inner_steps

    def start_trajectory(self, tr, m):
        self._start = tr.pop.snapshot()    # theta = phi, optimizer state, heads, BN statistics at the reset

    def state_dict(self):
        return {"start": self._start}

    def load_state_dict(self, state):
        self._start = state["start"]

    def step(self, tr, m, k):
        tr.pop.restore(self._start)
        tr.pop.theta.data.copy_(tr.phi.expand_as(tr.pop.theta))   # U_k(.) starts from the *current* phi
        for j in range(1, k + 1):
            losses = tr.inner_step(m, j)
        tr.meta_update(cts_metagrad(tr, m, k, self.opts.metagrad), shift="none")
        return losses
