"""What a method is: rules in the style of optax's gradient transformations, and one State that they thread.

The loop (trajshift/training/loop.py) runs Algorithms 1 and 2 and makes every change to phi and theta itself; a method
only computes. Its contract, for every registered method:

    state = method.init()                                          # a State dataclass; the checkpoint saves it whole
    for m in 1..M:                                                 # trajectories
        theta <- phi                                               # Algorithm 2, l.6
        state = method.start_trajectory(state, m)
        for k in 1..K:
            inner step for all tasks (l.8-10); between its backward and its optimizer step
                grad, state = method.transform_gradient(state, GradientStep)   # iMAML, MTL change it; Leap records it
            out, state = method.update(state, StepInfo)            # l.11: out.metagrad = mean_t MetaGrad, or None
            apply(out)
        out, state = method.end_trajectory(state, StepInfo)        # Algorithm 1, l.11 (Reptile, FOMAML, Leap, iMAML)
        apply(out)

    apply(out):  Delta = -beta * out.metagrad (or the meta optimizer's step);  phi <- phi + Delta       (l.12)
                 shift, state = method.shift(state, Delta, StepInfo);          theta^(t) <- theta^(t) + shift  (l.13)

A method keeps no mutable attributes: what it carries between calls (Leap's accumulator, FOMAML++'s sum, the random
shift's generator, cts-accurate's trajectory start) is in its State, so a checkpoint cannot miss it
(tests/test_checkpoint.py resumes every registered method and checks that none keeps state elsewhere). What a method
reads at ``setup`` (the population's public operations, the comm, K and the seed) is its environment, fixed for
the run. The meta-gradient math lives in pure functions (methods/rules.py); the shift rules in methods/shifts.py.

A new method is one file with a class and one registry line in methods/__init__.py (docs/design.md shows a toy one).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..core.errors import ConfigError
from ..core.sampling import data_step
from ..core.schema import parse
from ..engine.population import GradientStep

if TYPE_CHECKING:
    from ..engine.comm import LocalComm
    from ..engine.population import Population

__all__ = ["NOTHING", "GradientStep", "MetaStep", "Method", "NoOptions", "State", "StepInfo"]


@dataclass
class NoOptions:
    pass


@dataclass
class State:
    """A method's state between calls: tensors (and plain numbers), saved whole in every checkpoint."""


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is: trajectory m (0-based), inner step k (1-based; K at a trajectory's end), the data step of
    that inner step, and its per-task losses [T] (before the step)."""
    m: int
    k: int
    data_step: int
    losses: torch.Tensor | None = None


@dataclass(frozen=True)
class MetaStep:
    """What a method asks of the loop after a step or at a trajectory's end.

    metagrad: mean_t MetaGrad(phi; theta^(t)) [P] (Algorithm 2, l.11); the loop turns it into Delta and applies
              l.12 and the method's shift (l.13).
    set_phi:  phi <- this, with no meta-update and no shift (MTL and pretrain: phi follows the shared body).
    """
    metagrad: torch.Tensor | None = None
    set_phi: torch.Tensor | None = None


NOTHING = MetaStep()


class Method:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict] = {}    # preset option values of a registry entry (e.g. cts-no-shift)
    uses_held_out_batches: ClassVar[bool] = False   # the meta-gradient reads the tasks' "val" batches (FOMAML, iMAML)
    uses_meta_lr: ClassVar[bool] = True             # False: phi is set, never stepped by beta (MTL, pretrain)

    def __init__(self, options: dict | None = None):
        self.opts = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, options: dict):
        return parse(cls.Options, {**cls.defaults, **options}, f"options[{cls.name}]")

    @classmethod
    def effective_step(cls, beta: float, updates: int, rho: float, options: dict | None = None) -> float | None:
        """How far one trajectory moves phi, in units of one Reptile step toward theta_K (``trajshift diagnose``):
        ``updates`` meta-updates per trajectory, rho = mean_k ||gap_k|| / ||gap_K||. None: not applicable (the
        method makes no Reptile-like step, e.g. MTL, or its step has no such reading)."""
        return None

    @classmethod
    def updates_per_trajectory(cls, inner_steps: int, options: dict | None = None) -> int:
        """Meta-updates one trajectory of K inner steps makes (Algorithm 1: one)."""
        return 1

    def setup(self, pop: Population, comm: LocalComm, inner_steps: int, seed: int) -> None:
        """The environment, once before training: the population's public operations, the comm (means over tasks,
        across processes), K and the run's seed. Subclasses may check them (and raise ConfigError); never state."""
        self.pop, self.comm, self.inner_steps, self.seed = pop, comm, inner_steps, seed

    # ----- operations methods build on ------------------------------------------------------------------------
    def data_step(self, m: int, k: int) -> int:
        return data_step(m, k, self.inner_steps)

    def task_mean(self, per_task: torch.Tensor) -> torch.Tensor:
        """The mean over all tasks (all processes) of a per-task quantity [T_local, ...]."""
        return self.comm.mean_over_tasks(per_task)

    def theta_mean(self) -> torch.Tensor:
        return self.task_mean(self.pop.theta.detach())

    # ----- the contract ---------------------------------------------------------------------------------------
    def init(self) -> State:
        """The state before the first trajectory."""
        return State()

    def start_trajectory(self, state: State, m: int) -> State:
        """After theta <- phi (l.6) of trajectory m."""
        return state

    def transform_gradient(self, state: State, step: GradientStep) -> tuple[torch.Tensor | None, State]:
        """The per-step gradient transformation: a new gradient [T, P] for the inner optimizer, or None to keep
        ``step.grad`` as it is. Called between every inner step's backward and its optimizer step."""
        return None, state

    def update(self, state: State, info: StepInfo) -> tuple[MetaStep, State]:
        """After inner step info.k of trajectory info.m: a meta-gradient to apply now (CTS, l.11), or NOTHING."""
        return NOTHING, state

    def end_trajectory(self, state: State, info: StepInfo) -> tuple[MetaStep, State]:
        """At a trajectory's end (after its K-th step and update): Algorithm 1's meta-gradient, or NOTHING."""
        return NOTHING, state

    def shift(self, state: State, delta: torch.Tensor, info: StepInfo) -> tuple[torch.Tensor | None, State]:
        """Algorithm 2, l.13: what to add to every theta^(t) after the meta-update Delta, or None (Algorithm 1)."""
        return None, state

    def step_kernel(self) -> Callable[[torch.Tensor, torch.Tensor, float], tuple] | None:
        """The per-step update (l.11-13) as a tensor function ``kernel(phi, theta, beta) -> (metagrad, Delta)`` that
        changes phi and theta in place and equals ``update`` + the loop's ``apply`` at every step, or None. Only
        with one (execution.graphs captures it with the inner optimizer step: trajshift/training/step_graph.py)."""
        return None

    def gap_norm(self, metagrad: torch.Tensor | None) -> torch.Tensor:
        """||gap_k|| = ||mean_t theta_k^(t) - phi_k|| after step k (on the device; logged as ``gap_norm``). For CTS
        the shift moves theta and phi alike, so gap_k = u_1 + ... + u_k, the sum of the mean inner updates, and over a
        trajectory phi_K - phi_0 = beta (gap_1 + ... + gap_K) (``trajshift diagnose``). ``metagrad`` is the step's
        (None if it made no meta-update). One all-reduce per logged row when tasks span processes: raise
        ``log_every`` there if that matters."""
        return (self.theta_mean() - self.pop.phi.detach()).norm()

    # ----- checkpoints: the State, whole ----------------------------------------------------------------------
    @staticmethod
    def state_to_dict(state: State) -> dict:
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}

    def state_from_dict(self, saved: dict) -> State:
        """The State of a checkpoint. A checkpoint whose method state has other fields (another version, another
        method) is refused with both lists, never half-loaded."""
        cls = type(self.init())
        names = {f.name for f in dataclasses.fields(cls)}
        if set(saved) != names:
            raise ConfigError(f"method {self.name}: the checkpoint's method state has the fields {sorted(saved)}, "
                              f"this version's {cls.__name__} has {sorted(names)}; resume with the trajshift "
                              f"version that wrote the checkpoint, or start the run in a new folder")
        return cls(**saved)
