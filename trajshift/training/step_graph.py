"""execution.graphs: the work of each inner step after its backward, compiled once and replayed as CUDA graphs.

At T = 1 on a GPU the work after the backward is about 20 small kernels over the P meta-parameters, launch-bound:
it cost 2.6 ms on a 7.6 ms ResNet20 step (docs/PERFORMANCE.md). With ``execution.graphs`` the loop runs

    tail(losses):  Population.finish_step      l.10: watch the losses, clip, the inner optimizer step, watch theta
                   method.step_kernel()         l.11-13 when the method has one (CTS: rules.reptile_meta_step)
                   ReadBack.record_meta         the meta-gradient's finiteness, ||Delta||

through torch.compile in mode "reduce-overhead": each graph between the optimizer's own graph breaks is recorded
as a CUDA graph and replayed with one launch. The tail calls the eager loop's own functions, so nothing is defined
twice. Numbers that change from step to step (the data step, the update count, the inner learning rates under a
schedule) enter as tensors filled before each replay, so the tail compiles once (twice: SGD's momentum buffers
appear at the first step) and never again.

One difference from the eager loop is torch's, not ours: a compiled Adam step computes its bias corrections from
its float32 step counter where the eager step uses a Python float (about 1e-7 apart per step in float64; SGD is
exact). Not captured, run eagerly as without the option: the forward and backward (the batched groups have their own
graphs, backends/batched.py), a method's gradient transformation (Leap, iMAML, MTL keep Python state), and the
meta-update of a method without a step kernel (Algorithm 1's end-of-trajectory step, cts-random-shift,
cts-accurate, the gradient meta-gradient, a meta optimizer), which the loop applies after the replay.
"""
from __future__ import annotations

import logging

import torch

from ..core.errors import ConfigError
from ..engine.module_learners import require_cuda_for_graphs

log = logging.getLogger(__name__)


class StepGraph:
    """The compiled tail of trainer ``trainer``'s inner step. ``compile_options``: torch.compile's keywords; the
    default (mode reduce-overhead, CUDA graphs) needs a CUDA device and is refused elsewhere in one line. The tests
    pass {"backend": "aot_eager"} to trace the same tail on CPU."""

    def __init__(self, trainer, compile_options: dict | None = None):
        pop, device = trainer.pop, trainer.phi.device
        if compile_options is None:
            require_cuda_for_graphs(device)
            compile_options = {"mode": "reduce-overhead"}
        if trainer.cfg.reset_optimizer_state:
            raise ConfigError("execution.graphs with meta.reset_optimizer_state: true would record the graphs again "
                              "at every trajectory (the optimizer's state is new there); set one of them to false")
        self.trainer = trainer
        self.kernel = trainer.method.step_kernel() if trainer.meta_optimizer is None else None
        # Filled before each replay: the data step (for the finiteness watches) and the meta-update's number.
        # ([1], not 0-d: torch.compile reads a 0-d float64 or int64 CPU tensor as a Python number and drops writes
        # to it; the buffers the tail writes, in ReadBack, are [1] for the same reason.)
        self.step_t = torch.zeros(1, dtype=torch.long, device=device)
        self.update_t = torch.zeros(1, dtype=torch.long, device=device)
        # The optimizer reads these in place of its float rates during a replay (the checkpoint keeps the floats);
        # 0-d, as SGD's foreach path needs (read only, so a 0-d CPU tensor is safe).
        self.lrs = [torch.tensor(float(g["lr"]), dtype=trainer.phi.dtype, device=device)
                    for g in pop.optimizer.param_groups]
        if device.type == "cuda":
            # CUDA graphs replay fixed addresses: every buffer the tail mutates is marked so, never copied in.
            for t in [pop.theta, pop.theta_grad, pop.phi, pop.first_bad_loss_step, pop.first_bad_loss,
                      pop.first_bad_theta_step, trainer.readback.delta_norm, trainer.readback._first_bad_meta,
                      self.step_t, self.update_t, *self.lrs, *[t for t in (pop.learners.local,
                                                                           pop.learners.local_grad) if t is not None]]:
                torch._dynamo.mark_static_address(t)
        self._compiled = torch.compile(self._tail, **compile_options)

    @property
    def captures_meta_update(self) -> bool:
        return self.kernel is not None

    def _tail(self, losses: torch.Tensor) -> torch.Tensor | None:
        trainer = self.trainer
        trainer.pop.finish_step(self.step_t, losses)                                    # l.10
        if self.kernel is None:
            return None
        with torch.no_grad():
            metagrad, delta = self.kernel(trainer.phi, trainer.pop.theta, trainer.cfg.meta_lr)   # l.11-13
            trainer.readback.record_meta(metagrad, delta, self.update_t)
        return metagrad

    def __call__(self, step: int, losses: torch.Tensor) -> torch.Tensor | None:
        """Replay the tail after data step ``step``'s backward (``losses``: its per-task losses). Returns the step's
        meta-gradient (valid until the next replay) when the meta-update was captured, else None."""
        trainer, groups = self.trainer, self.trainer.pop.optimizer.param_groups
        self.step_t.fill_(step)
        self.update_t.fill_(trainer.meta_updates + 1)
        rates = [g["lr"] for g in groups]
        for g, lr, rate in zip(groups, self.lrs, rates):
            lr.fill_(rate)
            g["lr"] = lr
        try:
            torch.compiler.cudagraph_mark_step_begin()      # the previous replay's outputs are no longer read
            return self._compiled(losses)
        finally:
            for g, rate in zip(groups, rates):
                g["lr"] = rate
