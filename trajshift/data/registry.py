"""Dataset registry: name -> where its files live, how to read them, its classes and splits.

A dataset's files are looked for in ``<data root>/<one of its folder names>``. The data root is the first of:
the ``data_root`` option, $TRAJSHIFT_DATA, ./data, ../shared/data, that exists. With no file (or no network), the
error says which files to place where and, when there is one, the canonical download address.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..core.registry import Registry
from .errors import DataError
from .formats import (
    ImageData,
    Split,
    read_cifar_batch,
    read_cifar_names,
    read_idx_pair,
    read_image_tree,
    read_npy_classes,
    read_npz,
    read_tiny_imagenet,
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folders: tuple[str, ...]            # candidate folder names under the data root
    read: Callable[[Path, int | None], ImageData]
    expected: str                       # the files to place, in words
    num_classes: int | None
    channels: int
    resolution: int                     # the paper's resolution for it
    downloads: tuple[tuple[str, str | None], ...] = ()   # (canonical address, sha256 or None)
    source: str = ""
    builtin: bool = False               # ships with an installed package: no files needed
    extra: dict = field(default_factory=dict)


DATASETS: Registry[DatasetSpec] = Registry("dataset", "dataset")


def default_data_roots() -> list[Path]:
    roots = []
    if os.environ.get("TRAJSHIFT_DATA"):
        roots.append(Path(os.environ["TRAJSHIFT_DATA"]))
    roots += [Path("data"), Path("..") / "shared" / "data",
              Path(__file__).resolve().parents[3] / "shared" / "data"]
    return roots


def find_dataset_folder(spec: DatasetSpec, data_root: str | Path | None = None) -> Path:
    roots = [Path(data_root)] if data_root else default_data_roots()
    for root in roots:
        for folder in spec.folders:
            if (root / folder).is_dir():
                return root / folder
    existing = [r for r in roots if Path(r).is_dir()]
    looked = ", ".join(str(r) for r in existing) if existing else "nowhere (no data folder exists yet)"
    files = [PurePosixPath(u.split("?")[0]).name.replace("<category>", "CATEGORY") for u, _ in spec.downloads]
    target = Path(data_root) if data_root else Path("data")
    if files:
        get = (f"run `trajshift download {spec.name}` (fetches {', '.join(files)} into {target}/), "
               f"or place {spec.expected} in {target / spec.folders[0]}")
    else:
        get = f"no download is known for it: place {spec.expected} in {target / spec.folders[0]}"
    raise DataError(f"dataset {spec.name!r}: no data found (looked for the folders {', '.join(spec.folders)} in "
                    f"{looked}); {get} (or point data_root / $TRAJSHIFT_DATA at a folder holding it)")


def _need(folder: Path, *patterns: str) -> list[Path]:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found
    raise DataError(f"{folder}: none of {', '.join(patterns)} found")


# ----- readers bound to a dataset folder -------------------------------------------------------------------------
def _read_idx_folder(folder: Path, resolution=None) -> ImageData:
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        imgs = sorted(folder.glob(f"{stem}-images-idx3-ubyte*"))
        labels = sorted(folder.glob(f"{stem}-labels-idx1-ubyte*"))
        if imgs and labels:
            splits[split] = read_idx_pair(imgs[0], labels[0])
        elif imgs or labels:
            have, miss = (imgs[0], "labels") if imgs else (labels[0], "images")
            raise DataError(f"{have}: the matching {stem}-{miss}-idx*-ubyte file is missing in {folder}")
    if not splits:
        raise DataError(f"{folder}: no train-/t10k-images-idx3-ubyte[.gz] with its labels file")
    n = 1 + max(int(s.labels.max()) for s in splits.values())
    return ImageData(splits, [str(i) for i in range(n)], str(folder))


def _read_cifar10(folder: Path, resolution=None) -> ImageData:
    batches = sorted(folder.glob("data_batch_*"))
    if batches or (folder / "test_batch").exists():
        splits = {}
        if batches:
            parts = [read_cifar_batch(b) for b in batches]
            splits["train"] = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
        if (folder / "test_batch").exists():
            splits["test"] = read_cifar_batch(folder / "test_batch")
        meta = folder / "batches.meta"
        names = read_cifar_names(meta, "label_names") if meta.exists() else [str(i) for i in range(10)]
        return ImageData(splits, names, str(folder))
    archives = _need(folder, "*.tar.xz", "*.tar.gz", "*.tgz", "*.tar", "*.zip")
    return read_image_tree(archives[0], resolution=None)


def _read_cifar100(folder: Path, resolution=None) -> ImageData:
    splits = {s: read_cifar_batch(folder / s, "fine_labels") for s in ("train", "test") if (folder / s).exists()}
    if not splits:
        raise DataError(f"{folder}: no CIFAR-100 'train' or 'test' pickle")
    meta = folder / "meta"
    names = read_cifar_names(meta, "fine_label_names") if meta.exists() else [str(i) for i in range(100)]
    return ImageData(splits, names, str(folder))


def _read_quickdraw(folder: Path, resolution=None) -> ImageData:
    npz = sorted(folder.glob("*.npz"))
    if npz:
        return read_npz(npz[0])
    return read_npy_classes(_need(folder, "*.npy"))


def _read_omniglot(folder: Path, resolution=None) -> ImageData:
    zips = _need(folder, "images_background*.zip", "images_evaluation*.zip", "*.zip")
    zips = [z for z in zips if "all_runs" not in z.name]
    return read_image_tree(zips, resolution=resolution or 28, mode="L", class_depth=2)


def _read_tin(folder: Path, resolution=None) -> ImageData:
    if (folder / "wnids.txt").exists():
        return read_tiny_imagenet(folder, resolution)
    if (folder / "tiny-imagenet-200").is_dir():
        return read_tiny_imagenet(folder / "tiny-imagenet-200", resolution)
    return read_tiny_imagenet(_need(folder, "*.tar.xz", "*.tar.gz", "*.tar", "*.zip")[0], resolution)


def _read_folder(folder: Path, resolution=None) -> ImageData:
    archives = sorted(list(folder.glob("*.zip")) + list(folder.glob("*.tar*")))
    return read_image_tree(archives if archives else folder, resolution=resolution or 84)


def _read_digits(folder, resolution=None) -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from err
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ImageData({"all": Split(images, d.target.astype(np.int64))}, [str(i) for i in range(10)], "scikit-learn")


def _register(*specs: DatasetSpec) -> None:
    for s in specs:
        DATASETS.register(s.name, s)


_register(
    DatasetSpec("mnist", ("mnist", "MNIST/raw", "MNIST"), _read_idx_folder,
                "train-/t10k-images-idx3-ubyte.gz and train-/t10k-labels-idx1-ubyte.gz", 10, 1, 28,
                (("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz", None),
                 ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                  "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                 ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                  "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")), "LeCun et al."),
    DatasetSpec("fashion-mnist", ("fashion-mnist", "fashion-mnist-partial", "FashionMNIST/raw"), _read_idx_folder,
                "train-/t10k-images-idx3-ubyte.gz and train-/t10k-labels-idx1-ubyte.gz", 10, 1, 28,
                (("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz", None),
                 ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
                  "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                 ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
                  "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")), "Xiao et al. 2017"),
    DatasetSpec("cifar10", ("cifar-10-batches-py", "cifar10", "cifar10-jpeg"), _read_cifar10,
                "the python batches (data_batch_1..5, test_batch, batches.meta) or an archive of "
                "train|test/<class>/*.jpg", 10, 3, 32,
                (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", None),), "Krizhevsky 2009"),
    DatasetSpec("cifar100", ("cifar-100-python", "cifar100"), _read_cifar100,
                "the python pickles train, test and meta", 100, 3, 32,
                (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", None),), "Krizhevsky 2009"),
    DatasetSpec("quickdraw", ("quickdraw", "quickdraw-subset"), _read_quickdraw,
                "one <category>.npy numpy_bitmap file per class ([N, 784] uint8)", None, 1, 28,
                (("https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/<category>.npy", None),),
                "Ha & Eck 2017 (CC BY 4.0)"),
    DatasetSpec("omniglot", ("omniglot",), _read_omniglot,
                "images_background*.zip / images_evaluation.zip (alphabet/character/*.png)", None, 1, 28,
                (("https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip", None),),
                "Lake et al. 2015 (MIT)"),
    DatasetSpec("tiny-imagenet", ("tiny-imagenet-200", "tiny-imagenet", "tiny-imagenet-200-val"), _read_tin,
                "the tiny-imagenet-200 folder (wnids.txt, train/, val/) or its archive", 200, 3, 64,
                (("http://cs231n.stanford.edu/tiny-imagenet-200.zip", None),), "Stanford CS231n"),
    DatasetSpec("digits", ("digits",), _read_digits, "nothing (shipped with scikit-learn)", 10, 1, 28,
                source="scikit-learn's copy of the UCI optical digits", builtin=True),
)
for _name, _folders, _classes in (("stanford-dogs", ("stanford-dogs", "dogs"), 120), ("aircraft", ("aircraft", "fgvc-aircraft"), 100),
                                  ("cub", ("cub", "CUB_200_2011"), 200), ("stanford-cars", ("stanford-cars", "cars"), 196),
                                  ("vgg-flowers", ("vgg-flowers", "flowers102"), 102), ("vgg-pets", ("vgg-pets", "oxford-pets"), 37),
                                  ("stl10", ("stl10",), 10), ("svhn", ("svhn",), 10)):
    _register(DatasetSpec(_name, _folders, _read_folder,
                          "images in class folders (train/<class>/*.jpg, test/<class>/*.jpg) or a manifest.csv of "
                          "file,label[,split] rows, as a folder or archives", _classes, 3, 84))


FIXED_CLASSES = {"mnist", "fashion-mnist", "cifar10", "cifar100", "digits"}


def check_classes(data: ImageData, expected: int | None) -> None:
    """Labels must index the class list, and a dataset with a fixed class count must have exactly that many."""
    for split, s in data.splits.items():
        if len(s.labels) and (int(s.labels.min()) < 0 or int(s.labels.max()) >= len(data.classes)):
            raise DataError(f"{data.source}: {split} labels run from {int(s.labels.min())} to {int(s.labels.max())} "
                            f"but there are {len(data.classes)} class names; the label and class files disagree")
    if expected is not None and len(data.classes) != expected:
        raise DataError(f"{data.source}: {len(data.classes)} classes found, this dataset has {expected}; "
                        f"are the files of another dataset?")


def load_dataset(name_or_path: str, data_root: str | Path | None = None, resolution: int | None = None,
                 manifest: str | dict | None = None, class_depth: int | None = None) -> \
        tuple[ImageData, DatasetSpec | None, list[Path]]:
    """Read a registered dataset by name, or a folder/archive of images given by path (class folders or a
    manifest.csv). Returns the data, the spec (None for a path) and the source files (for cache keys)."""
    if name_or_path in DATASETS:
        if manifest is not None or class_depth is not None:
            raise DataError(f"dataset {name_or_path!r}: manifest and class_depth options apply to a folder or archive "
                            f"given by path, "
                            f"not to a registered dataset")
        spec = DATASETS.get(name_or_path)
        if spec.builtin:
            return spec.read(None, resolution), spec, []
        folder = find_dataset_folder(spec, data_root)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        data = spec.read(folder, resolution)
        check_classes(data, spec.num_classes if spec.name in FIXED_CLASSES else None)
        return data, spec, files
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"dataset {name_or_path!r}: neither a registered dataset ({', '.join(DATASETS.names())}) "
                        f"nor an existing folder or archive")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if path.suffix == ".npz":                 # arrays x [N, H, W(, C)] uint8 and y [N] (optional class names)
        return read_npz(path), None, files
    return read_image_tree(path, resolution=resolution or 32, manifest=manifest, class_depth=class_depth), None, files
