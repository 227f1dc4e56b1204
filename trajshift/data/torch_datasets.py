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

Items as users hand them over (``ItemFormat``): ``(input, label)`` pairs; tuples with more fields (``(index, x,
y)``) with ``input_key``/``label_key`` naming their positions; dicts (Hugging Face style: ``{"pixel_values",
"labels"}``, ``{"image", "label"}``, ...) by their common key names or ``input_key``/``label_key``; or anything a
``collate_fn`` of the user's turns into such a batch. A DataLoader gives its dataset and its collate_fn; its sampler,
shuffle and batch size are replaced by the seeded batches above (said in a warning). ``num_workers`` > 0 fetches
and collates training batches in worker processes, one whole batch per worker under that batch's own seed, so the
batches are the very tensors the main process would make.
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
INPUT_KEYS = ("pixel_values", "image", "img", "images", "input", "inputs", "x")
LABEL_KEYS = ("labels", "label", "target", "targets", "y", "class", "class_idx")


class ItemFormat:
    """How a collated batch becomes (inputs, labels): by position in a tuple, by key in a dict (see the module
    docstring); anything else is refused in one line that names the item's structure."""

    def __init__(self, input_key=None, label_key=None, collate_fn=None, where: str = "dataset"):
        self.input_key, self.label_key, self.where = input_key, label_key, where
        self.collate = collate_fn or default_collate

    @staticmethod
    def describe(item) -> str:
        if isinstance(item, dict):
            return "a dict with keys " + ", ".join(repr(k) for k in item)
        if isinstance(item, (tuple, list)):
            return f"a {type(item).__name__} of {len(item)} fields (" + ", ".join(type(v).__name__ for v in item) + ")"
        return f"a {type(item).__name__}"

    def split(self, batch, example) -> tuple:
        """(inputs, labels) of a collated batch; ``example``: one raw item, for the messages."""
        if isinstance(batch, dict):
            ikey = self.input_key if self.input_key is not None else next((k for k in INPUT_KEYS if k in batch), None)
            lkey = self.label_key if self.label_key is not None else next((k for k in LABEL_KEYS if k in batch), None)
            if ikey not in batch or lkey not in batch:
                raise ConfigError(f"{self.where}: its items are {self.describe(example)}; give input_key= and "
                                  f"label_key= (the keys of the input and the integer label), e.g. "
                                  f"input_key={next(iter(batch))!r}")
            return batch[ikey], batch[lkey]
        if isinstance(batch, (tuple, list)):
            if self.input_key is not None or self.label_key is not None:
                try:
                    return batch[self.input_key if self.input_key is not None else 0], \
                        batch[self.label_key if self.label_key is not None else 1]
                except (IndexError, TypeError):
                    raise ConfigError(f"{self.where}: its items are {self.describe(example)}; input_key= and "
                                      f"label_key= must be positions in them") from None
            if len(batch) == 2:
                return batch[0], batch[1]
            raise ConfigError(f"{self.where}: its items are {self.describe(example)}, not (input, label) pairs; give "
                              f"input_key= and label_key= (their positions, e.g. input_key=1, label_key=2 for "
                              f"(index, x, y)) or a collate_fn")
        raise ConfigError(f"{self.where}: its items are {self.describe(example)}; a dataset must yield (input, "
                          f"label) pairs or dicts, or come with a collate_fn that returns (inputs, labels)")

    def label_of(self, item):
        """One item's label, for the class-count scan."""
        return self.split(self.collate([item]), item)[1]


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


def label_set(dataset: Dataset, items: ItemFormat | None = None) -> set[int]:
    """The classes a dataset holds: ``targets`` / a TensorDataset's labels when present, else every item's label
    (fetched under a fixed seed)."""
    labels = getattr(dataset, "targets", None)
    if labels is None and hasattr(dataset, "tensors") and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is None:
        items = items or ItemFormat()
        with seeded_global_randomness(0x1AB):
            labels = [int(torch.as_tensor(items.label_of(dataset[i])).reshape(-1)[0]) for i in range(len(dataset))]
    return {int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()}


def infer_num_classes(dataset: Dataset, where: str, items: ItemFormat | None = None) -> int:
    """The class count of a classification dataset: ``len(dataset.classes)`` (torchvision's convention), else 1 +
    the largest label of ``dataset.targets`` / ``dataset.tensors[1]`` (TensorDataset), else of every item."""
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > 0:
        return len(classes)
    labels = getattr(dataset, "targets", None)
    if labels is None and hasattr(dataset, "tensors") and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is None:           # every item's label, fetched under a fixed seed (the caller's generators kept)
        items = items or ItemFormat(where=where)
        with seeded_global_randomness(0x1AB):
            labels = [items.label_of(dataset[i]) for i in range(len(dataset))]
        labels = [int(torch.as_tensor(v).reshape(-1)[0]) if torch.as_tensor(v).numel() == 1 else v for v in labels]
    labels = torch.as_tensor(labels)
    if labels.numel() == 0 or labels.is_floating_point() or labels.dim() != 1:
        raise ConfigError(f"{where}: cannot tell the number of classes (labels should be integers 0..C-1); give "
                          f"num_classes=")
    return int(labels.max()) + 1


class DatasetTask:
    """One task backed by torch Datasets: ``batch(step, split)`` and ``evaluate(model)``, like an ImageTask."""

    def __init__(self, train: Dataset, batch_size: int, seed: int, task_id: int, device="cpu",
                 val: Dataset | None = None, test: Dataset | None = None, num_classes: int | None = None,
                 label: str | None = None, input_key=None, label_key=None, collate_fn=None,
                 num_workers: int = 0):
        self.label = label or f"dataset {task_id}"
        train, collate_fn = unwrap_loader(train, collate_fn, self.label)
        val = unwrap_loader(val, None, self.label)[0] if val is not None else None
        test = unwrap_loader(test, None, self.label)[0] if test is not None else None
        self.items = ItemFormat(input_key, label_key, collate_fn, self.label)
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ConfigError(f"num_workers: expected an integer >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        self.data = {"train": train, "val": val if val is not None else train, "test": test}
        for split, ds in self.data.items():
            if ds is not None and len(ds) == 0:
                raise ConfigError(f"{self.label}: the {split} dataset is empty")
        self.batch_size = min(int(batch_size), len(train))
        self.seed, self.task_id, self.device = seed, task_id, torch.device(device)
        self.num_classes = num_classes or infer_num_classes(train, self.label, self.items)

    def batch(self, step: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        if self.data[split] is None:
            raise ConfigError(f"{self.label}: no {split} dataset was given")
        if self.num_workers and split == "train":
            x, y = self._workers.get(step)
        else:
            x, y = self.fetch(step, split)
        return x.to(self.device), y.to(self.device)

    def fetch(self, step: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of ``split``: its items fetched in order under its own seed, collated. A pure function of
        (seed, task, step, split), wherever it runs (this process or a worker)."""
        ds = self.data[split]
        idx = batch_indices(len(ds), self.batch_size, step, stream_seed(self.seed, SPLIT_CODES[split]), self.task_id)
        with seeded_global_randomness(stream_seed(self.seed, self.task_id, step, SPLIT_CODES[split], 0xDA7A)):
            items = [ds[int(i)] for i in idx]
        return self._collate(items)

    @property
    def _workers(self) -> _WorkerBatches:
        if getattr(self, "_worker_batches", None) is None:
            self._worker_batches = _WorkerBatches(self, self.num_workers)
        return self._worker_batches

    def _collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = self.items.collate(items)
        except (TypeError, RuntimeError, ValueError) as err:
            raise ConfigError(f"{self.label}: its items ({ItemFormat.describe(items[0])}) cannot be batched ({err}); "
                              f"a dataset must yield inputs of one shape, or come with a collate_fn") from None
        x, y = self.items.split(batch, items[0])
        return torch.as_tensor(x), torch.as_tensor(y).long()

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
            x, y = self._collate(items)
            correct += int((model(x.to(self.device)).argmax(1).cpu() == torch.as_tensor(y)).sum())
        model.train(was)
        return correct / len(ds)


class _StepBatches(Dataset):
    """Item ``step`` is the task's whole training batch ``step`` (DatasetTask.fetch), so a DataLoader's worker fetches,
    decodes and collates one batch under that batch's own seed: the same tensors as the main process would make."""

    def __init__(self, task: DatasetTask):
        self.task = task

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.task.fetch(int(step), "train")


class _FromStep(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        step = self.start
        while True:
            yield step
            step += 1


class _WorkerBatches:
    """Training batches prefetched by ``num_workers`` worker processes, in step order from the step asked; a step
    asked out of order (a resume, cts-accurate's replay) restarts the stream there. Workers add no randomness of
    their own: each batch is DatasetTask.fetch, a pure function of its step."""

    def __init__(self, task: DatasetTask, num_workers: int):
        self.task, self.num_workers = task, num_workers
        self.iterator, self.next_step = None, None

    def get(self, step: int):
        if self.iterator is None or step != self.next_step:
            loader = torch.utils.data.DataLoader(_StepBatches(self.task), batch_size=None, sampler=_FromStep(step),
                                                 num_workers=self.num_workers, persistent_workers=False,
                                                 prefetch_factor=2)
            self.iterator = iter(loader)
        self.next_step = step + 1
        return next(self.iterator)


def unwrap_loader(data, collate_fn, where: str):
    """A DataLoader given where a Dataset is expected: its dataset and its collate_fn (unless one is given); its
    sampler, shuffle and batch size give way to trajshift's seeded batches, which a warning says."""
    from torch.utils.data import DataLoader
    if not isinstance(data, DataLoader):
        return data, collate_fn
    import warnings
    warnings.warn(f"{where}: a DataLoader was given: its dataset and collate_fn are used; its sampler, shuffle, "
                  f"batch size and workers are replaced by trajshift's batches (seeded by seed, task and step, so a "
                  f"run resumes exactly; num_workers= of fit/finetune fetches them in worker processes)",
                  stacklevel=4)
    own = data.collate_fn if data.collate_fn is not default_collate else None
    return data.dataset, collate_fn or own


def as_dataset_list(datasets, what: str) -> list[Dataset]:
    """A sequence of Datasets (one per task); a single Dataset is refused with the fix."""
    if isinstance(datasets, Dataset) or not isinstance(datasets, Sequence) or not datasets:
        raise ConfigError(f"{what}: expected a non-empty list of torch Datasets, one per task, got "
                          f"{type(datasets).__name__}")
    from torch.utils.data import DataLoader
    for i, ds in enumerate(datasets):
        if isinstance(ds, DataLoader):
            continue
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise ConfigError(f"{what}[{i}]: a {type(ds).__name__} is not a map-style Dataset (__getitem__ and "
                              f"__len__); wrap it, e.g. in torch.utils.data.TensorDataset")
    return list(datasets)
