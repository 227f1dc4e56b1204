"""Image tasks: a dataset (or a class subset of one) at a resolution, with its own head.

A task spec (plain data, from the YAML config):
    dataset: a registry name or a path        resolution: 28 | 32 | 64 | 84 | 224 | ...
    classes: "0:100" (slice of the class list) or [names]    train_images: N (subsample; the paper's 1,000)
             or {file: groups.csv, group: NAME} (a CSV of class,group rows: the classes of one group, e.g.
             ImageNet's classes grouped by the WordNet hierarchy, as Section 4.3 splits them) or {file: list.txt}
             (one class name a line)
    images_per_class: N (class-wise subsample of the training split: exactly N images of every class, seeded;
                      the low-data meta-test regime of Table 1 / Fig. 9; the test split stays whole)
    val_fraction: 0.25 (held out of train for methods that need a validation batch)
Batches are a pure function of (task seed, step, split), so replays and resumes need no loader state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.sampling import batch_indices, epoch_permutation, stream_seed
from ..core.schema import opt, parse
from .augment import default_padding, normalize, random_crop, random_flip, to_float
from .cache import PreparedData, prepare
from .formats import Split

# Training-batch augmentations: random crop with zero padding and horizontal flip (the paper's convention) or a part
# of it. Flips are wrong for digits, characters and signs, so the choice is the task's.
AUGMENTATIONS = {"crop+flip": ("crop", "flip"), "crop": ("crop",), "flip": ("flip",), "none": ()}
LUMA = (0.299, 0.587, 0.114)         # ITU-R BT.601, as PIL's convert("L")
DEFAULT_AUGMENT = "crop+flip"        # the paper's; every door's default (trajshift/evaluation/settings.py reads it)


def _augment(value, path):
    value = {True: DEFAULT_AUGMENT, False: "none"}.get(value, value) if isinstance(value, bool) else value
    if value not in AUGMENTATIONS:
        raise ConfigError(f"{path}: unknown value {value!r}; allowed values: {', '.join(AUGMENTATIONS)} (or "
                          f"true/false)")
    return value


def _manifest(value, path):
    from .errors import DataError
    from .formats import manifest_options
    try:
        manifest_options(value)
    except DataError as err:
        raise ConfigError(f"{path.rsplit('.', 1)[0]}.{err}") from None
    return value


def check_task_specs(value: list, path: str, hint: str = "") -> list:
    """A non-empty list of task specs, each checked (a rule check of the configs that hold tasks)."""
    if not value:
        raise ConfigError(f"{path}: expected a non-empty list of task specs{hint}")
    for i, t in enumerate(value):
        TaskSpec.from_dict(t, f"{path}[{i}]")
    return value


def _class_selector(value, path):
    if isinstance(value, dict):
        read_class_group(value, path)             # the file and the group are checked now, before any work
    return value


def read_class_group(selector: dict, where: str) -> list[str]:
    """The class names a {file, group} selector names: ``file`` is a CSV of class,group rows (a header row
    ``class,group`` is optional) and ``group`` one of its groups; or, without ``group``, a list of class names (one
    a line, or the first column of a CSV)."""
    import csv
    unknown = set(selector) - {"file", "group"}
    if unknown or "file" not in selector:
        raise ConfigError(f"{where}: expected {{file: PATH, group: NAME}} (group optional), got {selector!r}")
    path = Path(str(selector["file"]))
    try:
        rows = [r for r in csv.reader(path.read_text(encoding="utf-8-sig").splitlines()) if r and r[0].strip()]
    except OSError as err:
        raise ConfigError(f"{where}.file: cannot read {path} ({err.strerror or err})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["class", "group"], ["class"]):
        rows = rows[1:]
    if "group" not in selector:
        names = [r[0].strip() for r in rows]
    else:
        if any(len(r) < 2 for r in rows):
            bad = next(r for r in rows if len(r) < 2)
            raise ConfigError(f"{where}.file: {path}: expected class,group rows, got {bad}")
        group = str(selector["group"])
        names = [r[0].strip() for r in rows if r[1].strip() == group]
        if not names:
            groups = sorted({r[1].strip() for r in rows})
            raise ConfigError(f"{where}.group: {group!r} is not a group of {path}; its groups: {', '.join(groups)}")
    if len(names) < 2:
        raise ConfigError(f"{where}: {path} names {len(names)} class(es); a task needs at least 2")
    return names


@dataclass
class TaskSpec:
    dataset: str = opt(doc="a registry name or a path")
    resolution: int = opt(32, low=4)
    classes: str | list | dict | None = opt(None, check=_class_selector,
                                            doc='"0:100" (a slice of the class list), [names], or {file, group}')
    train_images: int | None = opt(None, low=1)
    images_per_class: int | None = opt(None, low=1)
    val_fraction: float = opt(0.0, low=0, high=1, open_high=True)
    name: str | None = opt(None)
    augment: bool | str = opt(DEFAULT_AUGMENT, check=_augment, doc="training batches: crop+flip (true), crop, flip, none")
    manifest: str | dict | None = opt(None, check=_manifest, doc="a path dataset's CSV manifest")
    class_depth: int | None = opt(None, low=1, doc="a path dataset's class: its last N folders (default: the whole "
                                                   "folder path below the root)")
    channels: int = opt(3, choices=(1, 3), doc="the channels the model takes: 3 (grayscale images repeated) or 1 "
                                                "(color images converted to luma, 0.299 R + 0.587 G + 0.114 B)")

    def validate_fields(self, where):
        if self.train_images is not None and self.images_per_class is not None:
            raise ConfigError(f"{where}: give train_images or images_per_class, not both")

    @staticmethod
    def from_dict(d: dict, where: str) -> TaskSpec:
        return parse(TaskSpec, {"dataset": d} if isinstance(d, str) else d, where)

    @property
    def label(self) -> str:
        if isinstance(self.classes, dict) and "group" in self.classes:
            return self.name or f"{Path(self.dataset).name}[group {self.classes['group']}]"
        return self.name or (Path(self.dataset).name + (f"[{self.classes}]" if isinstance(self.classes, str) else ""))


def select_classes(classes: list[str], selector, where: str) -> list[int]:
    """Indices of the chosen classes: None (all), "a:b" (a slice of the class list), a list of names/indices, or
    {file, group} (read_class_group)."""
    n = len(classes)
    if isinstance(selector, dict):
        selector = read_class_group(selector, f"{where}.classes")
    if selector is None:
        return list(range(n))
    if isinstance(selector, str) and ":" in selector:
        try:
            a, b = (int(x) if x.strip() else None for x in selector.split(":"))
        except ValueError:
            raise ConfigError(f"{where}.classes: expected 'start:stop', got {selector!r}") from None
        chosen = list(range(n))[a:b]
    elif isinstance(selector, list):
        index = {c: i for i, c in enumerate(classes)}
        chosen = []
        for c in selector:
            if isinstance(c, int) and 0 <= c < n:
                chosen.append(c)
            elif str(c) in index:
                chosen.append(index[str(c)])
            else:
                raise ConfigError(f"{where}.classes: {c!r} is not a class of this dataset ({n} classes, e.g. "
                                  f"{', '.join(classes[:3])})")
    else:
        raise ConfigError(f"{where}.classes: expected 'start:stop' or a list of class names, got {selector!r}")
    if len(chosen) < 2:
        raise ConfigError(f"{where}.classes: {selector!r} selects {len(chosen)} class(es) of {n}; need at least 2")
    return chosen


def _subset(split: Split, keep: list[int]) -> Split:
    remap = np.full(int(split.labels.max()) + 1 if len(split.labels) else 1, -1, dtype=np.int64)
    for new, old in enumerate(keep):
        if old < len(remap):
            remap[old] = new
    mask = remap[split.labels] >= 0
    return Split(split.images[mask], remap[split.labels[mask]])


def per_class_subsample(labels: np.ndarray, order: np.ndarray, n: int, classes: list[str], where: str) -> np.ndarray:
    """The first ``n`` indices of every class in the seeded permutation ``order``: exactly n per class, in the
    permutation's order (so the subsample depends only on the seed, and the n-subsample is a prefix of the
    (n+1)-subsample)."""
    counts = np.bincount(labels, minlength=len(classes))
    short = [(classes[c], int(counts[c])) for c in range(len(classes)) if counts[c] < n]
    if short:
        raise ConfigError(f"{where}.images_per_class: {n} asked, but class {short[0][0]!r} has only {short[0][1]} "
                          f"training images ({len(short)} class(es) short); lower images_per_class")
    ordered = labels[order]
    by_class = np.argsort(ordered, kind="stable")       # positions grouped by class, permutation order kept
    first = np.searchsorted(ordered[by_class], np.arange(len(classes)))
    rank = np.empty(len(order), dtype=np.int64)         # position of each item within its class, in `order`
    rank[by_class] = np.arange(len(order)) - first[ordered[by_class]]
    return order[rank < n]


class ImageTask:
    """One task: uint8 images kept on ``device``, batches drawn deterministically, augmented on ``device``."""

    def __init__(self, spec: TaskSpec, data: PreparedData, batch_size: int, seed: int, task_id: int,
                 device: str | torch.device = "cpu", where: str = "task", channels: int | None = None):
        self.spec, self.batch_size, self.seed, self.task_id = spec, batch_size, seed, task_id
        self.device = torch.device(device)
        self.channels = channels or spec.channels
        keep = select_classes(data.classes, spec.classes, where)
        self.classes = [data.classes[i] for i in keep]
        train, test = _subset(data.train, keep), _subset(data.test, keep)
        rng = np.random.default_rng(stream_seed(seed, task_id, 0x5B5))
        order = rng.permutation(len(train.labels))
        if spec.train_images is not None:
            if spec.train_images > len(order):
                raise ConfigError(f"{where}.train_images: {spec.train_images} asked, the training split of "
                                  f"{spec.dataset} has {len(order)}")
            order = order[:spec.train_images]
        if spec.images_per_class is not None:
            order = per_class_subsample(train.labels, order, spec.images_per_class, self.classes, where)
        n_val = round(len(order) * spec.val_fraction)
        val_idx, train_idx = order[:n_val], order[n_val:]
        if len(train_idx) == 0:
            raise ConfigError(f"{where}: no training images left after subsampling and the validation split")
        self.mean, self.std = data.mean, data.std
        if self.channels == 1 and len(self.mean) == 3:       # luma of the colour statistics (the std approximately)
            self.mean, self.std = ([sum(w * v for w, v in zip(LUMA, values))] for values in (data.mean, data.std))
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        self.x = {"train": to(train.images[train_idx]), "val": to(train.images[val_idx if n_val else train_idx]),
                  "test": to(test.images)}
        self.y = {"train": to(train.labels[train_idx]), "val": to(train.labels[val_idx if n_val else train_idx]),
                  "test": to(test.labels)}
        self.padding = default_padding(spec.resolution)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def val_is_train(self) -> bool:
        """No held-out data (val_fraction 0): the val split is the training set."""
        return self.spec.val_fraction == 0

    def fingerprint(self) -> dict:
        """The training split's fingerprint for the run identity (trajshift/runs/identity.py)."""
        from .fingerprint import dataset_fingerprint
        x, y = self.x["train"], self.y["train"]
        return dataset_fingerprint(range(len(y)), self.num_classes, lambda i: (x[i], y[i]))

    def prepare_images(self, images: torch.Tensor, augment: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = to_float(images, self.channels)
        ops = AUGMENTATIONS[self.spec.augment] if augment else ()
        if "crop" in ops:
            x = random_crop(x, self.padding, generator)
        if "flip" in ops:
            x = random_flip(x, generator)
        # NCHW-contiguous, as a DataLoader's collate gives it: the same memory layout through every door, so the same
        # convolution kernels (a channels-last view here would round differently; execution.channels_last asks for
        # that layout on purpose).
        return normalize(x, self.mean, self.std).contiguous()

    def batch(self, step: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch number ``step`` of ``split`` (train: augmented; val: not), gathered and augmented on the
        task's device: the indices come from epoch permutations moved to the device once per epoch, and the
        augmentation draws from a generator on the device, so a step copies nothing from the host."""
        n = len(self.y[split])
        split_seed = stream_seed(self.seed, {"train": 1, "val": 2, "test": 3}[split])
        idx = self.indices(split, n, split_seed, step)
        gen = torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, self.task_id, step, 0xA06))
        augment = split == "train"
        return self.prepare_images(self.x[split][idx], augment, gen), self.y[split][idx]

    def indices(self, split: str, n: int, split_seed: int, step: int) -> torch.Tensor:
        """batch_indices(n, batch_size, step, split_seed, task_id), from the epoch permutations cached on the
        device."""
        return batch_indices(n, self.batch_size, step, split_seed, self.task_id,
                             permutation=lambda epoch: self._device_permutation(split, n, split_seed, epoch))

    def _device_permutation(self, split: str, n: int, split_seed: int, epoch: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_perms", {})
        key = (split, n, split_seed, epoch)
        if key not in cache:
            if len(cache) >= 6:                     # the current and the next epoch of each split
                cache.pop(next(iter(cache)))
            cache[key] = epoch_permutation(n, split_seed, self.task_id, epoch).to(self.device)
        return cache[key]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str = "test", batch_size: int = 512) -> float:
        """Top-1 accuracy of ``model`` on a whole split (no augmentation, eval mode)."""
        was = model.training
        model.eval()
        correct = 0
        for i in range(0, len(self.y[split]), batch_size):
            x = self.prepare_images(self.x[split][i:i + batch_size], False, None)
            correct += int((model(x).argmax(1) == self.y[split][i:i + batch_size]).sum())
        model.train(was)
        return correct / max(len(self.y[split]), 1)


def build_tasks(specs: list[dict], batch_size: int, seed: int, data_root=None, cache_dir=None,
                device="cpu", where: str = "tasks", task_ids: list[int] | None = None) -> list[ImageTask]:
    """ImageTasks for ``specs``; ``task_ids`` (default 0..n-1) are the tasks' global indices, which seed their
    subsampling, splits and batches (so a task is the same whichever process builds it)."""
    ids = list(task_ids) if task_ids is not None else list(range(len(specs)))
    parsed = [TaskSpec.from_dict(d, f"{where}[{i}]") for i, d in zip(ids, specs)]
    out = []
    for i, spec in zip(ids, parsed):
        data = prepare(spec.dataset, spec.resolution, data_root, cache_dir, manifest=spec.manifest,
                       class_depth=spec.class_depth)
        task = ImageTask(spec, data, batch_size, seed, i, device, where=f"{where}[{i}]")
        if batch_size > len(task.y["train"]):
            raise ConfigError(f"batch_size: {batch_size} is more than the {len(task.y['train'])} training images of "
                              f"{where}[{i}] ({spec.label}); lower batch_size or give the task more images")
        out.append(task)
    return out
