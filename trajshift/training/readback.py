"""Host read-backs without a sync per step: the loop queues each metrics row's device tensors and records
non-finite meta-gradients on the device; ``ReadBack.sync`` moves everything to the host in one transfer, writes the
rows and raises DivergenceError naming the task and data step, or the meta-update, at fault."""
from __future__ import annotations

import math

import torch

from ..core.atomic import finite
from ..core.errors import DivergenceError
from .metrics import MetricsWriter


class ReadBack:
    def __init__(self, pop, metrics: MetricsWriter, task_ids: list[int]):
        self.pop, self.metrics, self.task_ids = pop, metrics, task_ids
        dev = pop.phi.device
        # ||Delta|| of the last meta-update and the first non-finite meta-update (-1: none), as [1] buffers written in
        # place (torch.compile drops in-place writes to 0-d CPU tensors, and execution.graphs writes these).
        self.delta_norm = torch.zeros(1, dtype=pop.phi.dtype, device=dev)
        self._first_bad_meta = torch.full((1,), -1, dtype=torch.long, device=dev)
        self._pending: list[tuple] = []          # rows waiting for the next read-back (device values)
        self.last = {"loss_mean": math.nan, "delta_norm": 0.0}

    @torch.no_grad()
    def record_meta(self, metagrad: torch.Tensor, delta: torch.Tensor, update: int | torch.Tensor) -> None:
        """After meta-update ``update`` (1-based; a 0-d tensor under execution.graphs): remember the first one whose
        meta-gradient was not finite, and ||Delta||. In place, so a captured step graph writes the same buffers."""
        bad = ~torch.isfinite(metagrad).all() & (self._first_bad_meta < 0)
        self._first_bad_meta.copy_(torch.where(bad, update, self._first_bad_meta))
        self.delta_norm.copy_(delta.norm().reshape(1))

    def queue(self, m: int, k: int, inner_steps: int, meta_updates: int, losses: torch.Tensor,
              gap_norm: torch.Tensor) -> None:
        # delta_norm is a buffer the next meta-update overwrites: the row keeps this step's value.
        self._pending.append((m, k, inner_steps, meta_updates, losses.detach(), self.delta_norm.clone(), gap_norm))

    def sync(self, meta_updates: int) -> dict:
        """One device-to-host transfer: the finiteness records, the pending rows' losses and ||Delta||, the current
        ||Delta|| and whether phi is finite. Writes the rows, then raises DivergenceError if anything was not
        finite."""
        pop, dtype = self.pop, self.pop.phi.dtype
        T = pop.num_tasks
        pending, self._pending = self._pending, []
        parts = [pop.finiteness_flags(), self._first_bad_meta.reshape(1).to(dtype),
                 torch.isfinite(pop.phi).all().reshape(1).to(dtype), self.delta_norm.reshape(1)]
        for row in pending:
            parts += [row[4].reshape(-1).to(dtype), row[5].reshape(1).to(dtype), row[6].reshape(1).to(dtype)]
        values = torch.cat(parts).tolist()
        flags, rest = values[:3 * T], values[3 * T:]
        bad_meta, phi_ok, delta_now = rest[0], rest[1], rest[2]
        at = 3
        for m, k, inner, updates, losses, _, _ in pending:
            per_task, norm, gap = rest[at:at + len(losses)], rest[at + len(losses)], rest[at + len(losses) + 1]
            at += len(losses) + 2
            mean = sum(per_task) / len(per_task) if per_task else math.nan
            self.metrics.write(finite({"trajectory": m + 1, "step": k, "inner_steps": inner, "meta_updates": updates,
                                       "delta_norm": norm, "gap_norm": gap, "loss_mean": mean, "loss": per_task,
                                       "tasks": self.task_ids}))
            self.last = {"loss_mean": mean, "delta_norm": norm}
        pop.check_finite(flags, self.task_ids)
        if bad_meta >= 0:
            raise DivergenceError(f"meta-gradient is not finite at meta-update {int(bad_meta)}; lower meta_lr or "
                                  f"the inner learning rate")
        if not phi_ok:
            raise DivergenceError(f"phi is not finite after meta-update {meta_updates}; lower meta_lr")
        self.last["delta_norm_now"] = delta_now
        return self.last
