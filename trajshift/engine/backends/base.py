"""What a backend is: the strategy that turns a data step into the T tasks' losses, and their gradients.

``ModuleLearners`` (trajshift/engine/module_learners.py) owns the binding: every replica's meta-learned parameters are
views of theta's rows, its heads views of ``local``, and their ``.grad`` views of the gradient buffers. At bind it
hands a backend a small frozen description of that binding, ``BoundReplicas``, and nothing else: a backend computes
through it

    losses(step, split)   -> [T]  differentiable per-task losses (no backward)
    backward(step, split) -> [T]  the detached losses, after their gradients were accumulated into theta's and
                                  local's gradient buffers (zeroed by the caller)

A backend is built once per binding (``Backend(bound, **its options)``; each class lists the execution options it
takes in ``options``) and keeps no training state: checkpoints and resets go through the learners; what a backend
chose (its ``choice()``, e.g. the batched backend's per-group modes) is checkpointed with them and given back to the
constructor on resume. A new backend is one file with such a class and one registry line in
trajshift/engine/backends/__init__.py.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ...core.flat import FlatSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BoundReplicas:
    """The T bound replicas as every backend sees them (built by ``ModuleLearners.bind``).

    modules        the T replicas: meta-learned parameters are views of ``theta[t]``, heads views of ``local``,
                   BatchNorm statistics their own buffers
    spec           the meta-learned parameters' layout in a row of theta (names, shapes, offsets)
    local_specs    each task's head layout; task t's head is ``local[local_offsets[t]:][:local_specs[t].numel]``
    theta, local   [T, P] and the flat head vector (None without heads); their ``.grad`` are the gradient buffers
    loss           ``(outputs, targets) -> scalar``
    batch          ``(t, step, split) -> (inputs, targets)``, inputs in the run's dtype and memory format
    rebind         ``rebind(t)``: re-point task t's parameters at their views if a user call replaced them
    autocast       None, "bf16" or "fp16"
    batched_unsupported   why these replicas cannot share one vmapped forward (None when they can)
    """
    modules: tuple[nn.Module, ...]
    spec: FlatSpec
    local_specs: tuple[FlatSpec, ...]
    local_offsets: tuple[int, ...]
    theta: torch.Tensor
    local: torch.Tensor | None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch: Callable[[int, int, str], tuple[torch.Tensor, torch.Tensor]]
    rebind: Callable[[int], None]
    autocast: str | None
    batched_unsupported: str | None

    @property
    def num_tasks(self) -> int:
        return len(self.modules)

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def snapshot(self) -> dict:
        """Everything a forward or backward changes besides the gradient buffers: BatchNorm statistics, heads."""
        return {"buffers": [{n: b.detach().clone() for n, b in m.named_buffers()} for m in self.modules],
                "local": None if self.local is None else self.local.detach().clone()}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        """Undo every side effect since ``snapshot()``, gradient buffers zeroed (backend "auto" after timing)."""
        for m, bufs in zip(self.modules, state["buffers"]):
            own = dict(m.named_buffers())
            for n, v in bufs.items():
                own[n].copy_(v)
        if self.local is not None:
            self.local.copy_(state["local"])
            self.local.grad.zero_()
        self.theta.grad.zero_()


class Backend(Protocol):
    name: str
    options: tuple[str, ...]          # the execution options its constructor takes

    def __init__(self, bound: BoundReplicas, **options) -> None: ...

    def losses(self, step: int, split: str) -> torch.Tensor: ...

    def backward(self, step: int, split: str) -> torch.Tensor: ...

    def choice(self) -> dict:
        """What this backend chose at run time, checkpointed and given back to its constructor on resume."""
        ...


def autocast_context(autocast: str | None, device: torch.device):
    """The forward's ``torch.autocast`` context for the option value (None: no autocast)."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])
