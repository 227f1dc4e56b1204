"""The outer loop of every method: Algorithm 1 (Reptile, FOMAML, Leap, iMAML: one meta-update per trajectory)
and Algorithm 2 (CTS: a meta-update after every inner step, then the shift) side by side.

    Algorithm 1                                  Algorithm 2 (CTS)
    for m = 1..M:                                for m = 1..M:
      theta^(t) <- phi               (l.5)         theta^(t) <- phi                            (l.6)
      for k = 1..K: inner step       (l.6-10)      for k = 1..K: inner step                    (l.8-10)
                                                     Delta <- -beta mean_t MetaGrad(phi; theta_k)  (l.11)
                                                     phi <- phi + Delta                            (l.12)
                                                     theta^(t) <- theta^(t) + Delta                (l.13)
      phi <- phi - beta mean_t MetaGrad (l.11-12)

A method computes (methods/base.py: init, transform_gradient, update, end_trajectory, shift, over one State); this
file makes every change to phi and theta: the inner step (l.8-10), phi <- phi + Delta (l.12) and theta <- theta +
shift (l.13), in ``steps`` and ``apply``. Checkpoints (run_state.py), read-backs and metrics (readback.py),
progress (progress.py) and signals (stopping.py) live in their own modules.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch

from ..core.sampling import data_step
from ..engine.comm import LocalComm
from ..engine.learners import Learners
from ..engine.optim import build_optimizer
from ..engine.population import Population
from ..methods import METHODS
from ..methods.base import MetaStep, Method, StepInfo
from ..methods.rules import meta_delta
from . import run_state
from .config import MetaConfig
from .metrics import MetricsWriter
from .readback import ReadBack
from .run_state import TrainResult
from .schedules import SCHEDULES
from .step_graph import StepGraph
from .stopping import Supervised

log = logging.getLogger(__name__)

Callback = Callable[["MetaTrainer"], None]


class MetaTrainer:
    """Meta-learns phi over the tasks of ``learners`` with ``cfg.method``:
    ``result = MetaTrainer(learners, MetaConfig(method="cts")).run()``. Callbacks get the trainer: ``callbacks``
    after every meta-update, ``step_callbacks`` after each inner step (before its checkpoint), ``trajectory_callbacks``
    after each trajectory's end and update, ``after_checkpoint_callbacks`` (every trainer) after each step's checkpoint:
    the reliability tests inject faults there."""
    after_checkpoint_callbacks: ClassVar[list[Callback]] = []

    def __init__(self, learners: Learners, cfg: MetaConfig, metrics_path: str | Path | None = None,
                 comm: LocalComm | None = None, record_phi: bool = False, callbacks: list[Callback] | None = None,
                 step_callbacks: list[Callback] | None = None, trajectory_callbacks: list[Callback] | None = None,
                 task_ids: list[int] | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int = 0, keep_checkpoints: int = 3, identity: dict | None = None,
                 graphs: bool = False):
        self.cfg, self.comm = cfg.validate(), comm or LocalComm()
        # theta lives where the learners' parameters are (a model moved to CUDA trains on CUDA).
        self.pop = Population(learners, cfg.inner_optimizer, dtype=cfg.torch_dtype, device=learners.device)
        self.pop.clip_grad_norm = cfg.clip_grad_norm
        self.meta_optimizer = None if cfg.meta_optimizer is None else build_optimizer(
            [self.pop.phi], cfg.meta_optimizer, "meta_optimizer", lr=cfg.meta_lr)
        self.method = METHODS.get(cfg.method)(cfg.options)          # it sees the population and the comm only
        self.method.setup(self.pop, self.comm, cfg.inner_steps, cfg.seed)
        self.method_state = self.method.init()                      # everything the method carries (checkpointed)
        # Methods that do not transform gradients skip the per-step call (and its GradientStep) altogether.
        self._transform_or_none = None if type(self.method).transform_gradient is Method.transform_gradient \
            else self._transform
        self.task_ids = list(task_ids) if task_ids is not None else list(range(learners.num_tasks))
        self.readback = ReadBack(self.pop, MetricsWriter(metrics_path), self.task_ids)
        self.record_phi, self.history = record_phi, []
        self.callbacks, self.step_callbacks = list(callbacks or []), list(step_callbacks or [])
        self.trajectory_callbacks, self.meta_updates = list(trajectory_callbacks or []), 0
        self.sync_every = cfg.sync_every or (1 if self.phi.device.type == "cpu" else 50)
        self.position = {"m": 0, "k": 0}        # the last completed inner step (k = 0: none yet in trajectory m)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.identity, self.resumed_metrics_rows = identity or {}, None    # identity: the model, tasks, seed...
        self.extended_from: int | None = None      # the checkpoint's M when a resume extends the run (run_state)
        self._schedule = SCHEDULES[cfg.inner_lr_schedule] if cfg.inner_lr_schedule != "constant" else None
        self._base_lrs = [g["lr"] for g in self.pop.optimizer.param_groups]
        self.step_graph = self._step_graph() if graphs else None     # execution.graphs (training/step_graph.py)

    def _step_graph(self) -> StepGraph | None:
        if self._transform_or_none is not None:
            log.warning("execution.graphs: %s transforms every gradient in Python, so its per-step work runs "
                        "uncaptured (the batched groups' graphs still apply)", self.cfg.method)
            return None
        return StepGraph(self)

    phi = property(lambda self: self.pop.phi)
    inner_steps = property(lambda self: self.pop.steps_taken)
    metrics = property(lambda self: self.readback.metrics,
                       lambda self, writer: setattr(self.readback, "metrics", writer))
    save_checkpoint, resume = run_state.save, run_state.resume

    def sync(self) -> dict:                     # one device-to-host transfer (trajshift/training/readback.py)
        return self.readback.sync(self.meta_updates)

    @torch.no_grad()
    def meta_update(self, metagrad: torch.Tensor) -> torch.Tensor:
        """l.11-12: Delta = -beta * metagrad (or the meta optimizer's step on phi); phi <- phi + Delta. Returns Delta."""
        if self.meta_optimizer is None:
            delta = meta_delta(metagrad, self.cfg.meta_lr)
            self.phi.add_(delta)
        else:
            before, self.phi.grad = self.phi.clone(), metagrad
            self.meta_optimizer.step()
            delta = self.phi - before
        return delta

    def apply(self, out: MetaStep, info: StepInfo) -> None:
        """Algorithm 2, l.12-13 (and Algorithm 1, l.12), the one place where phi and theta change outside the inner
        step: phi <- phi + Delta, then theta^(t) <- theta^(t) + the method's shift of Delta."""
        # (Not under no_grad as a whole: the exact shift of cts-accurate re-runs inner steps, with gradients.)
        if out.set_phi is not None:                          # MTL, pretrain: phi follows the shared body
            with torch.no_grad():
                self.phi.copy_(out.set_phi)
        if out.metagrad is None:
            return
        delta = self.meta_update(out.metagrad)                                          # l.11-12
        shift, self.method_state = self.method.shift(self.method_state, delta, info)   # l.13
        if shift is not None:
            with torch.no_grad():
                self.pop.theta.add_(shift)
        self.readback.record_meta(out.metagrad, delta, self.meta_updates + 1)
        self._count_meta_update()

    def _count_meta_update(self) -> None:
        """After every meta-update (applied here or in the step graph): count it, record phi, the callbacks."""
        self.meta_updates += 1
        if self.record_phi:
            self.history.append({"phi": self.phi.clone(), "inner_steps": self.inner_steps,
                                 "meta_updates": self.meta_updates})
        for cb in self.callbacks:
            cb(self)

    def _transform(self, step):
        """The method's per-step gradient transformation, with the state threaded through."""
        grad, self.method_state = self.method.transform_gradient(self.method_state, step)
        return grad

    def _set_inner_lr(self, s: int, n: int) -> None:
        """meta.inner_lr_schedule: the configured rate times f(s, n) (trajshift/training/schedules.py), set before
        every inner step (a reset of the optimizer's state restores the configured rate, so it is set each time)."""
        factor = self._schedule(s, n)
        for group, base in zip(self.pop.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor

    def _step(self, m: int, k: int, step: int) -> tuple[torch.Tensor, MetaStep]:
        """Inner step k of trajectory m for all tasks (l.8-10), the method's update (l.11) and its application
        (l.12-13): eagerly, or with execution.graphs the work after the backward replayed (training/step_graph.py)."""
        if self.step_graph is None:
            losses = self.pop.inner_step(step, self._transform_or_none)                            # l.8-10
        else:
            losses = self.pop.backward(step, "train")                                              # l.8-9
            metagrad = self.step_graph(step, losses)                                               # l.10 (-13)
            self.pop.steps_taken += 1
            if metagrad is not None:                       # the method's kernel has made l.11-13 in the graph
                self._count_meta_update()
                return losses, MetaStep(metagrad=metagrad)
        info = StepInfo(m, k, step, losses)
        out, self.method_state = self.method.update(self.method_state, info)                      # l.11
        self.apply(out, info)                                                                      # l.12-13
        return losses, out

    def steps(self):
        """Algorithms 1 and 2 as a generator of (m, k, losses) after every inner step, so callers can interleave
        their own work; ``run`` consumes it. After a resume it continues from the step after the loaded one."""
        cfg, method = self.cfg, self.method
        K, M = cfg.inner_steps, cfg.trajectories
        m0, k0 = self.position["m"], self.position["k"]
        for m in range(m0, M):
            resumed = m == m0 and k0 > 0
            if not resumed:
                self.pop.reset(cfg.reset_optimizer_state, cfg.reset_heads, cfg.reset_batchnorm)     # l.6
                self.method_state = method.start_trajectory(self.method_state, m)
            for k in range(k0 + 1 if resumed else 1, K + 1):
                step = data_step(m, k, K)
                if self._schedule is not None:
                    self._set_inner_lr(m * K + k - 1, K * M)
                losses, out = self._step(m, k, step)                                               # l.8-13
                if k % cfg.log_every == 0 or k == K:
                    self.readback.queue(m, k, self.inner_steps, self.meta_updates, losses,
                                        method.gap_norm(out.metagrad))
                self.position = {"m": m, "k": k}
                if (m * K + k) % self.sync_every == 0:
                    self.sync()
                for cb in self.step_callbacks:
                    cb(self)
                if self.checkpoint_every and (m * K + k) % self.checkpoint_every == 0:
                    self.save_checkpoint()
                for cb in MetaTrainer.after_checkpoint_callbacks:
                    cb(self)
                yield m, k, losses
            info = StepInfo(m, K, data_step(m, K, K))
            out, self.method_state = method.end_trajectory(self.method_state, info)           # Algorithm 1, l.11
            self.apply(out, info)                                                              # Algorithm 1, l.12
            self.position = {"m": m + 1, "k": 0}
            synced = self.sync()          # once per trajectory: its rows, its checks, ||Delta|| after its end
            self.metrics.write({"event": "trajectory_end", "trajectory": m + 1, "inner_steps": self.inner_steps,
                                "meta_updates": self.meta_updates, "delta_norm": synced["delta_norm_now"]})
            for cb in self.trajectory_callbacks:
                cb(self)

    def run(self) -> TrainResult:
        """Run the loop to its end. SIGINT or SIGTERM stops it after the current inner step (checkpointed when
        checkpoints are on) and raises Interrupted, whose message says how to resume (trajshift/training/stopping.py)."""
        start = time.perf_counter()
        with Supervised(self) as supervisor:        # progress bar, signals, the final read-back and checkpoint
            for _ in self.steps():
                supervisor.after_step()
        return TrainResult(self.phi.clone(), self.meta_updates, self.inner_steps, time.perf_counter() - start,
                           self.history)
