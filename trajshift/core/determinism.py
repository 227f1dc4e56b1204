"""Deterministic kernels for a block of work (meta-train's ``deterministic: true``, meta-test's --deterministic)."""
from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """With ``on``: deterministic kernels for the block (torch.use_deterministic_algorithms, cuDNN autotuning off,
    and cuBLAS's fixed workspace unless CUBLAS_WORKSPACE_CONFIG is set), then the caller's settings back. CUDA's
    default kernels (cuDNN's convolution backward, index_add and scatter through atomics) sum in an order that
    varies between runs; CPU kernels do not, so on CPU this changes nothing."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read by cuBLAS's determinism check
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
