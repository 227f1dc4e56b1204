"""Tasks from ``torch.utils.data.Dataset``s: the Python API's way in for a user's own data (trajshift.fit,
trajshift.finetune).

A ``DatasetTask`` draws mini-batch ``step`` of a split as ``batch_indices(len(dataset), batch_size, step, seed,
task)`` (epochs of a seeded permutation, without replacement) and collates ``dataset[i]`` with torch's
``default_collate``. The dataset's own random transforms draw from the global generators users actually use:
torch's (torchvision's RandomCrop, ...), NumPy's legacy global one (``np.random.rand``, albumentations) and Python's
``random``. All three are seeded by (seed, task, step, split) for the fetch and restored afterwards (the caller's
states are left as they were), as DataLoader's worker seeding does, so a batch is a pure function of its step, as
the engine needs for exact resume and for cts-accurate's replays. (A NumPy ``Generator`` the dataset owns, made
once with ``np.random.default_rng()``, is its own state: it cannot be reseeded from outside, so it is not covered.)
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..core.errors import ConfigError
from ..core.sampling import batch_indices, stream_seed

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}


@contextlib.contextmanager
def seeded_global_randomness(seed: int):
    """torch's, NumPy's global and Python's ``random`` generators seeded from ``seed`` inside, restored after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def infer_num_classes(dataset: Dataset, where: str) -> int:
    """The class count of a classification dataset: ``len(dataset.classes)`` (torchvision's convention), else 1 +
    the largest label of ``dataset.targets`` / ``dataset.tensors[1]`` (TensorDataset), else of every item."""
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > 0:
        return len(classes)
    labels = getattr(dataset, "targets", None)
    if labels is None and hasattr(dataset, "tensors") and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is None:           # every item's label, fetched under a fixed seed (the caller's generators kept)
        with seeded_global_randomness(0x1AB):
            labels = [dataset[i][1] for i in range(len(dataset))]
    labels = torch.as_tensor(labels)
    if labels.numel() == 0 or labels.is_floating_point() or labels.dim() != 1:
        raise ConfigError(f"{where}: cannot tell the number of classes (labels should be integers 0..C-1); give "
                          f"num_classes=")
    return int(labels.max()) + 1


class DatasetTask:
    """One task backed by torch Datasets: ``batch(step, split)`` and ``evaluate(model)``, like an ImageTask."""

    def __init__(self, train: Dataset, batch_size: int, seed: int, task_id: int, device="cpu",
                 val: Dataset | None = None, test: Dataset | None = None, num_classes: int | None = None,
                 label: str | None = None):
        self.label = label or f"dataset {task_id}"
        self.data = {"train": train, "val": val if val is not None else train, "test": test}
        for split, ds in self.data.items():
            if ds is not None and len(ds) == 0:
                raise ConfigError(f"{self.label}: the {split} dataset is empty")
        self.batch_size = min(int(batch_size), len(train))
        self.seed, self.task_id, self.device = seed, task_id, torch.device(device)
        self.num_classes = num_classes or infer_num_classes(train, self.label)

    def batch(self, step: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.data[split]
        if ds is None:
            raise ConfigError(f"{self.label}: no {split} dataset was given")
        idx = batch_indices(len(ds), self.batch_size, step, stream_seed(self.seed, SPLIT_CODES[split]), self.task_id)
        with seeded_global_randomness(stream_seed(self.seed, self.task_id, step, SPLIT_CODES[split], 0xDA7A)):
            items = [ds[int(i)] for i in idx]
        try:
            x, y = default_collate(items)[:2]
        except (TypeError, RuntimeError, ValueError) as err:
            raise ConfigError(f"{self.label}: its items cannot be batched into (inputs, labels) ({err}); a dataset "
                              f"must yield (input tensor, integer label) pairs of one shape") from None
        return x.to(self.device), torch.as_tensor(y).long().to(self.device)

    @property
    def val_is_train(self) -> bool:
        """No held-out data was given: the val split is the training set."""
        return self.data["val"] is self.data["train"]

    def fingerprint(self) -> dict:
        """The training set's fingerprint for the run identity (trajshift/runs/identity.py): items fetched with the
        same seeded randomness as a batch, so random transforms give the same bytes."""
        from .fingerprint import dataset_fingerprint
        ds = self.data["train"]

        def fetch(i):
            with seeded_global_randomness(stream_seed(self.seed, self.task_id, i, 0xF1D)):
                return ds[i]
        return dataset_fingerprint(ds, self.num_classes, fetch)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "test", batch_size: int = 512) -> float:
        """Top-1 accuracy of ``model`` on the whole split, in order, in eval mode (items fetched under a fixed seed:
        a dataset with random transforms scores the same model the same way every time)."""
        ds = self.data[split]
        if ds is None:
            raise ConfigError(f"{self.label}: no {split} dataset was given")
        was = model.training
        model.eval()
        correct = 0
        for start in range(0, len(ds), batch_size):
            with seeded_global_randomness(stream_seed(self.seed, self.task_id, start, SPLIT_CODES[split], 0xE7A1)):
                items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            x, y = default_collate(items)[:2]
            correct += int((model(x.to(self.device)).argmax(1).cpu() == torch.as_tensor(y)).sum())
        model.train(was)
        return correct / len(ds)


def as_dataset_list(datasets, what: str) -> list[Dataset]:
    """A sequence of Datasets (one per task); a single Dataset is refused with the fix."""
    if isinstance(datasets, Dataset) or not isinstance(datasets, Sequence) or not datasets:
        raise ConfigError(f"{what}: expected a non-empty list of torch Datasets, one per task, got "
                          f"{type(datasets).__name__}")
    for i, ds in enumerate(datasets):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise ConfigError(f"{what}[{i}]: a {type(ds).__name__} is not a map-style Dataset (__getitem__ and "
                              f"__len__); wrap it, e.g. in torch.utils.data.TensorDataset")
    return list(datasets)
