"""Writers of small files in the real formats, for the tests (no network, no shared data)."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = True, cut: int | None = None) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    data = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                                   *array.shape) + array.tobytes()
    if gz:
        data = gzip.compress(data)
    if cut is not None:
        data = data[:cut]
    path.write_bytes(data)
    return path


def images(n: int, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_cifar_batch(path: Path, n: int = 6, label_key: str = "labels", protocol: int = 2, classes: int = 3):
    rng = np.random.default_rng(1)
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             label_key.encode(): [int(i % classes) for i in range(n)], b"batch_label": b"test batch"}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


def write_class_tree(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 8, split_dirs=False,
                     fmt="PNG") -> Path:
    for ci, c in enumerate(classes):
        for split in (("train", "test") if split_dirs else (None,)):
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = np.full((size, size, 3), 40 * ci + i, dtype=np.uint8)
                (d / f"{i}.{fmt.lower()}").write_bytes(png_bytes(arr, fmt))
    return root


def zip_tree(src: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, prefix + str(p.relative_to(src)))
    return dest


def tar_tree(src: Path, dest: Path, mode: str = "w:gz", prefix: str = "") -> Path:
    with tarfile.open(dest, mode) as t:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                t.add(p, prefix + str(p.relative_to(src)))
    return dest
