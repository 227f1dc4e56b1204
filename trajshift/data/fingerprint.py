"""Fingerprints of data and tensors for the run identity (trajshift/runs/identity.py): content hashes that tell two
datasets or two state_dicts apart without storing them.

``dataset_fingerprint``: the length, the class count and the sha256 of 16 items at fixed, evenly spread indices
(0, n/16, 2n/16, ...), fetched with the caller's seeded fetch (random transforms give the same bytes every time).
Its cost is 16 item fetches whatever the dataset's size (benchmarks/identity_cost.py measures it on 100,000 items).
A dataset changed everywhere except at those 16 items is not told apart: the trade-off, stated.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

FINGERPRINT_ITEMS = 16


def _hash_value(h, value) -> None:
    """Feed a batch item (tensors, numbers, strings, nested tuples/lists/dicts) into a hash, shape and dtype too."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{tuple(value.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(f"K{k}".encode())
            _hash_value(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _hash_value(h, v)
    else:
        if isinstance(value, np.ndarray):
            _hash_value(h, torch.from_numpy(np.ascontiguousarray(value)))
            return
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def dataset_fingerprint(dataset, num_classes: int, fetch=None) -> dict:
    """{length, classes, sample_sha256} of a map-style dataset (see the module docstring). ``fetch(i)``: how an item
    is read (default ``dataset[i]``; DatasetTask passes its seeded fetch)."""
    n = len(dataset)
    fetch = fetch or (lambda i: dataset[i])
    h = hashlib.sha256()
    for i in sorted({(j * n) // FINGERPRINT_ITEMS for j in range(min(n, FINGERPRINT_ITEMS))}):
        h.update(f"I{i}".encode())
        _hash_value(h, fetch(i))
    return {"length": n, "classes": int(num_classes), "sample_sha256": h.hexdigest()[:16]}


def state_dict_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of a state_dict's names, shapes, dtypes and values (an init given as tensors, not as a file)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        _hash_value(h, sd[k])
    return h.hexdigest()
