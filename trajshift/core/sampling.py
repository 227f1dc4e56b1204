"""Deterministic sampling: seeds, mini-batch indices and the data step of an inner step, as pure functions.

Batches are a pure function of (seed, task, step), so replaying the first k steps of a trajectory (cts-accurate) or
resuming a run needs no data-loader state. The data pipeline (trajshift.data) and the engine both import this.
"""
from __future__ import annotations

import functools

import torch

from .errors import ConfigError


def data_step(m: int, k: int, inner_steps: int) -> int:
    """Index of the data batch of inner step k (1-based) of trajectory m (0-based): the same in every replay."""
    return m * inner_steps + (k - 1)


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across Python versions and processes (unlike hash())."""
    acc = 0x9E3779B97F4A7C15
    for x in parts:
        acc = ((acc ^ (int(x) & 0xFFFF_FFFF_FFFF_FFFF)) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return acc & 0x7FFF_FFFF_FFFF_FFFF


@functools.lru_cache(maxsize=256)
def epoch_permutation(num_items: int, seed: int, task: int, epoch: int) -> torch.Tensor:
    # Cached: consecutive batches of an epoch share one permutation (randperm of 100k items costs ~1 ms).
    gen = torch.Generator().manual_seed(stream_seed(seed, task, epoch))
    return torch.randperm(num_items, generator=gen)


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, task: int,
                  permutation=None) -> torch.Tensor:
    """Indices of the ``step``-th mini-batch (step >= 0): epochs of a seeded permutation, without replacement.

    Epoch e = step * batch_size // num_items uses permutation ``randperm(num_items)`` from a generator seeded by
    (seed, task, e); a batch that crosses an epoch boundary takes the tail of one and the head of the next.
    ``permutation(e)`` may supply that same permutation from elsewhere (a task's cached copy on its device).
    """
    if num_items < 1:
        raise ConfigError(f"task {task}: the dataset is empty")
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, num_items)
        perm = permutation(epoch) if permutation is not None else epoch_permutation(num_items, seed, task, epoch)
        take = min(num_items - offset, start + batch_size - pos)
        out.append(perm[offset:offset + take])
        pos += take
    return out[0] if len(out) == 1 else torch.cat(out)
