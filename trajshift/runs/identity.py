"""One run identity for every front door: what makes a checkpoint belong to a run, besides the method config (which
the checkpoint holds whole and compares itself).

    identity = {model: spec or null, architecture: {class, parameters: {name: shape}}, tasks: [label or spec],
                data: [dataset fingerprint], head: [parameter names], seed, batch_size, execution: {autocast},
                init_from: {path, heads, sha256}}

A rerun into a folder whose checkpoint has another identity is refused in one line naming the first differing key
(trajshift/training/run_state.py). Keys an older checkpoint does not have are not compared, so older runs resume.

Dataset fingerprint (``dataset_fingerprint``): the length, the class count and the sha256 of 16 items at fixed,
evenly spread indices (0, n/16, 2n/16, ...), fetched with the same seeded randomness as a batch (random transforms
give the same bytes every time). Its cost is 16 item fetches whatever the dataset's size: for a 100,000-image
dataset of JPEG files that is 16 decodes, a few milliseconds to tens of milliseconds
(benchmarks/identity_cost.py measures it), against hours of training; a dataset whose every item is changed
except those 16 is not told apart, a trade-off stated here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..data.fingerprint import dataset_fingerprint, state_dict_digest  # noqa: F401  (part of the identity)


def file_digest(path: str | Path) -> str:
    """sha256 of an init file's bytes (a run folder: of its init), so a resumed run is refused if the file changed."""
    from ..data.init_file import run_init
    path = Path(path)
    if path.is_dir():
        path = run_init(path) or path
    if not path.is_file():
        return "missing"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def init_from_identity(init_from, heads: bool = False) -> dict | None:
    """The init_from part of an identity: the content hash of whatever was given (a path: its file's bytes; a
    state_dict or a FitResult: its tensors)."""
    if init_from is None:
        return None
    if isinstance(init_from, (str, Path)):
        return {"path": str(init_from), "heads": heads, "sha256": file_digest(init_from)}
    sd = init_from.init_state_dict() if hasattr(init_from, "init_state_dict") else init_from
    return {"path": None, "heads": heads, "sha256": state_dict_digest(sd)}


def run_identity(*, model: dict | None, architecture: dict, tasks: list, data: list[dict] | None, head: list[str],
                 seed: int, batch_size: int, autocast=None, init_from: dict | None = None,
                 meta_params: dict | None = None) -> dict:
    """The identity both doors build (see the module docstring). ``meta_params``: the CLI's head filter as its
    config spells it (older CLI checkpoints hold it; the resolved ``head`` names are compared too)."""
    identity = {"model": model, "tasks": tasks, "seed": seed, "batch_size": batch_size}
    if meta_params is not None:
        identity["meta_params"] = meta_params
    identity["execution"] = {"autocast": autocast}
    identity["init_from"] = init_from         # None too: starting from a file later is another run
    # Derived from the choices above (compared after them, so a refusal names the choice that changed first).
    identity["head"] = list(head)
    identity["architecture"] = architecture
    if data is not None:
        identity["data"] = data
    return identity
