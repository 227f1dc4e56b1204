"""What a backend is: the strategy that turns a data step into the T tasks' losses, and their gradients.

``ModuleLearners`` (trajshift/engine/module_learners.py) owns the binding: every replica's meta-learned parameters are views
of theta's rows, its heads views of ``local``, and their ``.grad`` views of the gradient buffers. A backend only
computes through that binding:

    losses(step, split)   -> [T]  differentiable per-task losses (no backward)
    backward(step, split) -> [T]  the detached losses, after their gradients were accumulated into theta_grad
                                  and local_grad (zeroed by the caller)

A backend is built once per ModuleLearners, after the binding (``Backend(learners)``), and keeps no training state:
checkpoints and resets go through the learners. A new backend is one file with such a class and one registry
line in trajshift/engine/backends/__init__.py.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from ..module_learners import ModuleLearners

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Backend(Protocol):
    name: str

    def __init__(self, learners: ModuleLearners) -> None: ...

    def losses(self, step: int, split: str) -> torch.Tensor: ...

    def backward(self, step: int, split: str) -> torch.Tensor: ...


def autocast_context(autocast: str | None, device: torch.device):
    """The forward's ``torch.autocast`` context for the option value (None: no autocast)."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])
