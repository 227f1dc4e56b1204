"""How the T replicas of ModuleLearners compute: one strategy per file (the protocol and the frozen description of
the bound replicas every backend receives, BoundReplicas: backends/base.py).

    loop.py     LoopBackend     backend "loop": the replicas one after another, the user's module code on views of
                                theta
    batched.py  BatchedBackend  backend "batched": the tasks grouped by batch shape, one torch.func.vmap forward and
                                backward per group (GroupForward), or per group the loop
    auto.py     fastest_backend the one-time factory of backend "auto" (times both modes per group at the first
                                step, keeps the faster)

A new backend is one file and one line below.
"""
from ...core.registry import Registry
from .auto import fastest_backend
from .base import AUTOCAST_DTYPES, Backend, BoundReplicas
from .batched import BatchedBackend
from .loop import BACKWARD_MODES, LoopBackend

BACKENDS: Registry[type[Backend]] = Registry("backend", "execution.backend")
BACKENDS.register(LoopBackend.name, LoopBackend)
BACKENDS.register(BatchedBackend.name, BatchedBackend)
BACKEND_CHOICES = (*BACKENDS.names(), "auto")

__all__ = [
           "AUTOCAST_DTYPES",
           "BACKENDS",
           "BACKEND_CHOICES",
           "BACKWARD_MODES",
           "Backend",
           "BatchedBackend",
           "BoundReplicas",
           "LoopBackend",
           "fastest_backend",
]
