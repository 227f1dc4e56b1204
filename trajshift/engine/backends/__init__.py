"""How the T replicas of ModuleLearners compute: one strategy per file (the protocol: backends/base.py).

    loop.py  LoopBackend  the replicas one after another, the user's module code on views of theta
    batched.py  BatchedBackend  backend "batched": the tasks grouped by batch shape, one torch.func.vmap forward and
                backward per group (GroupForward)
    auto.py  fastest_backend: the one-time factory of backend "auto" (times both at the first step, keeps the faster)

A new backend is one file and one line below.
"""
from ...core.registry import Registry
from .auto import fastest_backend
from .base import AUTOCAST_DTYPES, Backend
from .batched import BatchedBackend
from .loop import LoopBackend

BACKENDS: Registry[type[Backend]] = Registry("backend", "execution.backend")
BACKENDS.register(LoopBackend.name, LoopBackend)
BACKENDS.register(BatchedBackend.name, BatchedBackend)
BACKEND_CHOICES = (*BACKENDS.names(), "auto")

__all__ = [
           "AUTOCAST_DTYPES",
           "BACKENDS",
           "BACKEND_CHOICES",
           "Backend",
           "BatchedBackend",
           "LoopBackend",
           "fastest_backend",
]
