"""How the T replicas of ModuleLearners compute: one strategy per file (the protocol: backends/base.py).

    loop.py  LoopBackend  the replicas one after another, the user's module code on views of theta
    vmap.py  VmapBackend  all T in one torch.func.vmap forward and backward ("batched")
    auto.py  fastest_backend: the one-time factory of backend "auto" (times both at the first step, keeps the faster)

A new backend is one file and one line below.
"""
from ...core.registry import Registry
from .auto import fastest_backend
from .base import AUTOCAST_DTYPES, Backend
from .loop import LoopBackend
from .vmap import VmapBackend

BACKENDS: Registry[type[Backend]] = Registry("backend", "execution.backend")
BACKENDS.register(LoopBackend.name, LoopBackend)
BACKENDS.register(VmapBackend.name, VmapBackend)
BACKEND_CHOICES = (*BACKENDS.names(), "auto")

__all__ = ["AUTOCAST_DTYPES", "BACKENDS", "BACKEND_CHOICES", "Backend", "LoopBackend", "VmapBackend",
           "fastest_backend"]
