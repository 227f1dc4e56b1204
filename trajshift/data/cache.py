"""Decode once: a dataset at a resolution becomes uint8 arrays on disk, read back in milliseconds.

Layout: ``<cache_dir>/<dataset>-<resolution>px-<source signature>/`` holding ``{train,test}_{x,y}.npy`` and
``meta.json`` (classes, counts, per-channel mean/std of the train images, sha256 of every array file).
A cache is built in a temporary folder and renamed into place, so a killed build never leaves a folder under the
final name; a final folder that fails its checks (missing meta.json, a missing or altered array file: e.g. a run
killed while an older trajshift wrote in place, or a disk error) is detected, removed and rebuilt.

Splits: a dataset's own train and test (or val) splits when it has both; otherwise a stratified split of what it
has: ``test_fraction`` (default 0.2) of every class, chosen by a seeded permutation (seed 0).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.atomic import DiskFullError, write_json, write_with
from .errors import DataError
from .formats import ImageData, Split, file_signature
from .registry import load_dataset

CACHE_VERSION = 2             # 2: nested class folders are labelled by their whole path


@dataclass
class PreparedData:
    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: list[float]
    std: list[float]
    path: Path | None


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRAJSHIFT_CACHE", Path.home() / ".cache" / "trajshift"))


def stratified_split(split: Split, test_fraction: float, seed: int = 0) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[:round(len(idx) * test_fraction)])
    test_mask = np.zeros(len(split.labels), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    return (Split(split.images[~test_mask], split.labels[~test_mask]),
            Split(split.images[test_mask], split.labels[test_mask]))


def standard_splits(data: ImageData, test_fraction: float = 0.2) -> tuple[Split, Split]:
    s = data.splits
    if "train" in s and ("test" in s or "val" in s):
        return s["train"], s["test"] if "test" in s else s["val"]
    if len(s) != 1:
        raise DataError(f"{data.source}: cannot tell train from test among splits {sorted(s)}")
    return stratified_split(next(iter(s.values())), test_fraction)


def resize_images(images: np.ndarray, resolution: int, chunk: int = 2048) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, r, r, C], bilinear with antialiasing."""
    if images.shape[1] == resolution and images.shape[2] == resolution:
        return images
    out = np.empty((len(images), resolution, resolution, images.shape[3]), dtype=np.uint8)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i:i + chunk]).permute(0, 3, 1, 2).float()
        y = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                                            align_corners=False)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def _load_checked(folder: Path) -> PreparedData | None:
    """The cached data, or None when the folder is incomplete or altered (the caller rebuilds)."""
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        arrays = {}
        for key, digest in meta["sha256"].items():
            p = folder / f"{key}.npy"
            if _sha256(p) != digest:
                return None
            arrays[key] = np.load(p, allow_pickle=False)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return PreparedData(meta["name"], Split(arrays["train_x"], arrays["train_y"]),
                        Split(arrays["test_x"], arrays["test_y"]), meta["classes"], meta["mean"], meta["std"], folder)


def source_files(name: str, data_root: str | Path | None = None) -> list[Path]:
    """The files a dataset is read from (empty for built-in datasets); raises the registry's error if none."""
    from .registry import DATASETS, find_dataset_folder
    if name in DATASETS:
        spec = DATASETS.get(name)
        return [] if spec.builtin else sorted(p for p in find_dataset_folder(spec, data_root).rglob("*")
                                              if p.is_file())
    path = Path(name)
    if not path.exists():
        load_dataset(name, data_root)          # raises the clear "neither registered nor a path" error
    return sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]


def build(name: str, resolution: int, data_root: str | Path | None = None, test_fraction: float = 0.2,
          manifest: str | dict | None = None, class_depth: int | None = None) -> PreparedData:
    """Read, split, resize and measure a dataset (no cache)."""
    data, spec, _ = load_dataset(name, data_root, resolution, manifest, class_depth)
    train, test = standard_splits(data, test_fraction)
    train = Split(resize_images(train.images, resolution), train.labels)
    test = Split(resize_images(test.images, resolution), test.labels)
    mean, std = _channel_stats(train.images)
    return PreparedData(spec.name if spec else Path(name).name, train, test, data.classes, mean, std, None)


def prepare(name: str, resolution: int, data_root: str | Path | None = None, cache_dir: str | Path | None = None,
            use_cache: bool = True, test_fraction: float = 0.2, manifest: str | dict | None = None,
            class_depth: int | None = None) -> PreparedData:
    """``name`` (a registered dataset or a path) at ``resolution`` px: from the cache when a valid one exists,
    else decoded, split, resized and written to the cache atomically. ``manifest``: the CSV manifest's options
    (trajshift.data.formats.read_image_tree) for a dataset given by path."""
    if not use_cache:
        return build(name, resolution, data_root, test_fraction, manifest, class_depth)
    src = source_files(name, data_root)
    key = f"{Path(name).name}-{resolution}px-{file_signature(src) if src else 'builtin'}-t{round(test_fraction * 100)}"
    if manifest is not None:
        key += "-m" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:8]
    if class_depth is not None:
        key += f"-d{class_depth}"
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = cache_root / key
    if folder.exists():
        cached = _load_checked(folder)
        if cached is not None:
            return cached
        warnings.warn(f"{folder}: incomplete or altered cache (a run killed while writing it?); rebuilding",
                      stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
    prepared = build(name, resolution, data_root, test_fraction, manifest, class_depth)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root))
    try:
        digests = {}
        for k, arr in (("train_x", prepared.train.images), ("train_y", prepared.train.labels),
                       ("test_x", prepared.test.images), ("test_y", prepared.test.labels)):
            write_with(tmp / f"{k}.npy", lambda f, a=arr: np.save(f, np.ascontiguousarray(a)), arr.nbytes)
            digests[k] = _sha256(tmp / f"{k}.npy")
        meta = {"version": CACHE_VERSION, "name": prepared.name, "resolution": resolution,
                "classes": prepared.classes, "train": len(prepared.train.labels), "test": len(prepared.test.labels),
                "mean": prepared.mean, "std": prepared.std, "sha256": digests}
        write_json(tmp / "meta.json", meta)
        try:
            os.replace(tmp, folder)
        except OSError:          # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            size = sum(a.nbytes for a in (prepared.train.images, prepared.test.images)) / 2**20
            raise DiskFullError(f"{cache_root}: no space left on the device for the {name} cache (about {size:.0f} "
                                f"MiB needed); free space there or set cache_dir / $TRAJSHIFT_CACHE elsewhere") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepared.path = folder
    return prepared
