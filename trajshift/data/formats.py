"""Readers for the image file formats of the paper's datasets. No torchvision: Pillow and NumPy only.

Every reader returns ``Split``s of uint8 images [N, H, W, C] (C = 1 or 3) with int64 labels [N] and a class-name
list, and raises DataError naming the file (and the archive member) for anything it cannot read.
"""
from __future__ import annotations

import csv
import io
import math
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val",
               "valid": "val", "validation": "val"}


@dataclass
class Split:
    images: np.ndarray      # uint8 [N, H, W, C]
    labels: np.ndarray      # int64 [N]

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass
class ImageData:
    splits: dict[str, Split]
    classes: list[str]
    source: str             # what was read, for messages


# ----------------------------------------------------------------------------------------------------------------
# IDX (MNIST family)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped if gzip; a gzip stream cut short yields what it decodes (truncated=True)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = d.decompress(raw)
    except zlib.error as err:
        raise DataError(f"{path}: corrupt gzip stream ({err})") from err
    return data, not d.eof


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (plain or .gz). A file cut short (e.g. an interrupted download) gives its complete records, with
    a warning that says how many."""
    path = Path(path)
    data, _ = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{path}: IDX header is cut short")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    record = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    complete = (len(data) - header) // record if record else dims[0]
    if complete < dims[0]:
        if complete == 0:
            raise DataError(f"{path}: header says {dims[0]} records but not one is complete")
        warnings.warn(f"{path}: header says {dims[0]} records but the file holds only {complete} complete ones "
                      f"(truncated); using those {complete}", stacklevel=2)
    n = min(complete, dims[0])
    return np.frombuffer(data, dtype=dtype, count=n * record // dtype.itemsize, offset=header).reshape(n, *dims[1:])


def read_idx_pair(images: str | Path, labels: str | Path) -> Split:
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64).reshape(-1)
    if x.ndim != 3:
        raise DataError(f"{images}: expected images [N, H, W], got shape {x.shape}")
    if len(y) < len(x):
        raise DataError(f"{labels}: {len(y)} labels for {len(x)} images in {images}")
    return Split(np.ascontiguousarray(x.astype(np.uint8)), y[:len(x)])


# ----------------------------------------------------------------------------------------------------------------
# CIFAR python pickles, through a restricted unpickler
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),          # how protocol-2 pickles carry bytes
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"{self._path}: refusing to unpickle: the file asks to load {module}.{name}; only plain "
                        f"arrays, lists, dicts, bytes and numbers are allowed (is this really a CIFAR batch file?)")


def safe_unpickle(path: str | Path):
    """Unpickle a data file allowing only NumPy arrays, dicts, lists, bytes, strings and numbers: no code runs."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    except Exception as err:   # any malformed pickle: truncated, bad opcode, wrong types
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        raise DataError(f"{path}: object arrays are not allowed")
    return obj


def _key(d: dict, *names: str):
    for n in names:
        for k in (n, n.encode()):
            if k in d:
                return d[k]
    raise KeyError(names[0])


def read_cifar_batch(path: str | Path, label_key: str = "labels") -> Split:
    """One CIFAR batch: {data: uint8 [N, 3072] (RGB planes), labels | fine_labels: [N]}."""
    d = safe_unpickle(path)
    try:
        if not isinstance(d, dict):
            raise KeyError("data")
        data = np.asarray(_key(d, "data"))
        labels = np.asarray(_key(d, label_key), dtype=np.int64)
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not a CIFAR batch (needs 'data' and '{label_key}')") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    return Split(np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels)


def read_cifar_names(path: str | Path, key: str) -> list[str]:
    d = safe_unpickle(path)
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in _key(d, key)]
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: no '{key}' list of class names") from err


# ----------------------------------------------------------------------------------------------------------------
# Trees of image files: a folder, a .zip, or a .tar[.gz|.xz|.bz2]
class _Tree:
    """Uniform listing and reading of the files of a folder or an archive."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = self._tar = None
        if path.is_dir():
            self.kind = "dir"
        elif zipfile.is_zipfile(path):
            self.kind, self._zip = "zip", zipfile.ZipFile(path)
        else:
            try:
                self.kind, self._tar = "tar", tarfile.open(path, "r:*")   # noqa: SIM115 (kept open; close())
            except (tarfile.TarError, OSError) as err:
                if not path.exists():
                    raise DataError(f"{path}: no such file or folder") from err
                raise DataError(f"{path}: not a folder, zip or tar archive ({err})") from err

    def names(self) -> list[str]:
        if self.kind == "dir":
            root = self.path.resolve()
            found = []
            for p in self.path.rglob("*"):
                if not p.is_file():
                    continue
                if p.is_symlink() and not p.resolve().is_relative_to(root):
                    raise DataError(f"{p}: a link to {p.resolve()}, outside the dataset folder {self.path}; "
                                    f"copy the file into the folder or remove the link")
                found.append(str(PurePosixPath(*p.relative_to(self.path).parts)))
            return sorted(found)
        if self.kind == "zip":
            return sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        return sorted(m.name for m in self._tar.getmembers() if m.isfile())

    def iter_files(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of the wanted files, in archive order (sequential reads: fast for compressed tars)."""
        if self.kind == "tar":
            for m in self._tar:
                if m.isfile() and m.name in wanted:
                    yield m.name, self._tar.extractfile(m).read()
            return
        for n in sorted(wanted):
            yield n, (self._zip.read(n) if self.kind == "zip" else (self.path / n).read_bytes())

    def read(self, name: str) -> bytes:
        if self.kind == "dir":
            return (self.path / name).read_bytes()
        if self.kind == "zip":
            return self._zip.read(name)
        return self._tar.extractfile(self._tar.getmember(name)).read()

    def where(self, name: str) -> str:
        return str(self.path / name) if self.kind == "dir" else f"{self.path}:{name}"

    def close(self):
        for h in (self._zip, self._tar):
            if h is not None:
                h.close()


def decode_image(data: bytes, where: str, resolution: int | None, mode: str) -> np.ndarray:
    """Decode one image with Pillow, convert to ``mode`` ('RGB' or 'L'), resize to resolution x resolution
    (bilinear with antialiasing) if given; uint8 [H, W, C]."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode.startswith("I"):
                # 16-bit (and 32-bit integer) grayscale: scale to 8 bits by the type's range (Pillow's convert
                # would clip every value above 255 to white).
                wide = np.asarray(im).astype(np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or wide.max(initial=0) <= 65535 else wide.max()
                im = Image.fromarray(np.round(wide * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
            im = im.convert(mode)
            if resolution is not None and im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{where}: cannot decode image ({err}); remove or replace the file") from err
    return arr[..., None] if arr.ndim == 2 else arr


def _split_of(parts: tuple[str, ...]) -> str | None:
    for p in parts[:-1]:
        if p.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[p.lower()]
    return None


def _text(tree: _Tree, name: str) -> str:
    """A text file of a tree (UTF-8); anything else is a DataError naming it."""
    try:
        return tree.read(name).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{tree.where(name)}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_image_tree(path: str | Path | list, resolution: int | None = None, mode: str = "RGB",
                    class_depth: int | None = None, manifest: str | dict | None = None) -> ImageData:
    """Images in class folders, or listed in a CSV manifest of ``file,label`` rows; ``path`` is a folder, a zip or
    tar archive, or a list of them (read as one dataset).

    Class folders: the class of an image is its folder's path below the dataset root (below a train/test/val
    folder, which assigns the split; folders that wrap every image, such as an archive's top folder, are not part of
    it): ``alphabet/character01/x.png`` is class ``alphabet/character01``, so the same folder name under two parents
    is two classes. ``class_depth`` = N takes the last N folders only (1: the immediate parent), with a warning when
    that merges folders of different parents.
    Manifest: a file ``manifest.csv`` (or ``labels.csv``) at the top, or ``manifest=`` its name, or
    ``manifest={file, delimiter, file_column, label_column, split_column}``; paths relative to the manifest's
    folder; an optional ``split`` column. Without options the delimiter (, ; tab |) and the columns (file /
    filename / path / image; label / class / classid / category) are recognised from the header. The same file
    (class path, name and bytes) met twice, e.g. in Omniglot's two zips that share alphabets, is kept once.
    Meta-Album's layout reads as it is: a folder (or its zip) with ``labels.csv`` (columns FILE_NAME, CATEGORY, and
    SUPER_CATEGORY which is ignored) beside ``images/`` holding the files; with no split column, ``prepare`` holds
    out a seeded test fraction of every class.
    A class with fewer than 2 images is dropped with a warning; fewer than 2 classes is an error.
    """
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    entries: list[tuple[int, str, str, str | None]] = []      # (tree, member, class, split)
    trees = []
    try:
        for ti, p in enumerate(paths):
            tree = _Tree(p)
            trees.append(tree)
            entries += [(ti, *e) for e in _tree_entries(tree, class_depth, manifest)]
        class_of = {(ti, m): c for ti, m, c, _ in entries}
        if not entries:
            raise DataError(f"{', '.join(map(str, paths))}: no images found (expected class folders of .png/.jpg "
                            f"files, or a manifest.csv of file,label rows)")
        entries = _drop_tiny_classes(entries, paths)
        classes = sorted({c for _, _, c, _ in entries})
        if len(classes) < 2:
            how = ("the label column of the manifest" if _has_manifest(trees, manifest) else
                   "the folder each image is in (class folders)")
            raise DataError(f"{', '.join(map(str, paths))}: {len(classes)} class ({classes[0]!r}) found from {how}; "
                            f"a classification dataset needs at least 2. Put each class's images in a folder of "
                            f"its own, or give the labels in a CSV manifest (task option manifest: {{file: NAME.csv, "
                            f"delimiter: ';', file_column: ..., label_column: ...}}; see docs/data.md)")
        index = {c: i for i, c in enumerate(classes)}
        decoded: dict[tuple[int, str], np.ndarray] = {}
        seen: set[bytes] = set()
        for ti, tree in enumerate(trees):
            wanted = {m for t, m, _, _ in entries if t == ti}
            for name, data in tree.iter_files(wanted):
                digest = _digest(data, name, class_of[(ti, name)])
                if digest in seen:
                    continue
                seen.add(digest)
                decoded[(ti, name)] = decode_image(data, tree.where(name), resolution, mode)
        shapes = {a.shape for a in decoded.values()}
        if len(shapes) > 1:
            raise DataError(f"{paths[0]}: images have different sizes {sorted(shapes)[:3]}...; give a resolution")
        by_split: dict[str, tuple[list, list]] = {}
        for ti, name, cls, split in entries:
            if (ti, name) not in decoded:
                continue
            xs, ys = by_split.setdefault(split or "all", ([], []))
            xs.append(decoded[(ti, name)])
            ys.append(index[cls])
        splits = {s: Split(np.stack(xs), np.asarray(ys, dtype=np.int64)) for s, (xs, ys) in by_split.items()}
        return ImageData(splits, classes, ", ".join(map(str, paths)))
    finally:
        for tree in trees:
            tree.close()


def _drop_tiny_classes(entries: list, paths: list[Path]) -> list:
    """Classes with fewer than 2 images cannot be split into training and test images: dropped, named."""
    from collections import Counter
    counts = Counter(c for _, _, c, _ in entries)
    tiny = sorted(c for c, n in counts.items() if n < 2)
    if tiny and len(tiny) < len(counts):
        import warnings
        warnings.warn(f"{', '.join(map(str, paths))}: dropping {len(tiny)} class(es) with fewer than 2 images: "
                      f"{', '.join(map(repr, tiny[:5]))}{' ...' if len(tiny) > 5 else ''}", stacklevel=3)
        return [e for e in entries if e[2] not in set(tiny)]
    return entries


MANIFEST_OPTIONS = ("file", "delimiter", "file_column", "label_column", "split_column")
_FILE_COLUMNS = ("file", "filename", "path", "image", "img", "file_name")
_LABEL_COLUMNS = ("label", "class", "classid", "class_id", "category", "target", "y")


def manifest_options(manifest: str | dict | None) -> dict:
    """The manifest options as a dict (a string is the manifest's file name); unknown keys are refused."""
    if manifest is None:
        return {}
    if isinstance(manifest, str):
        return {"file": manifest}
    if not isinstance(manifest, dict) or set(manifest) - set(MANIFEST_OPTIONS):
        bad = sorted(set(manifest) - set(MANIFEST_OPTIONS)) if isinstance(manifest, dict) else manifest
        raise DataError(f"manifest: unknown option {bad!r}; allowed: {', '.join(MANIFEST_OPTIONS)}")
    return dict(manifest)


def _has_manifest(trees: list, manifest) -> bool:
    opts = manifest_options(manifest)
    wanted = {opts["file"]} if "file" in opts else {"manifest.csv", "labels.csv"}
    return any(PurePosixPath(n).name in wanted for t in trees for n in t.names())


def _column(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, where: str) -> int:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given.strip().lower() not in lowered:
            raise DataError(f"{where}: no column {given!r} (columns: {', '.join(header)})")
        return lowered.index(given.strip().lower())
    for c in candidates:
        if c in lowered:
            return lowered.index(c)
    raise DataError(f"{where}: no {what} column among {', '.join(header)}; name it with the manifest option "
                    f"{what}_column")


def _tree_entries(tree: _Tree, class_depth: int, manifest: str | dict | None) -> list[tuple[str, str, str | None]]:
    names = tree.names()
    opts = manifest_options(manifest)
    wanted = {opts["file"]} if "file" in opts else {"manifest.csv", "labels.csv"}
    csvs = [n for n in names if PurePosixPath(n).name in wanted]
    if "file" in opts and not csvs:
        raise DataError(f"{tree.path}: no manifest file named {opts['file']!r} in it")
    entries: list[tuple[str, str, str | None]] = []
    if not csvs:
        return _folder_entries(tree, [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS],
                               class_depth)
    mname = min(csvs, key=len)
    base = PurePosixPath(mname).parent
    text = _text(tree, mname)
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = opts.get("delimiter") or max(",;\t|", key=first.count)
    where = tree.where(mname)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:
        raise DataError(f"{where}: not a readable CSV manifest ({err})") from None
    lowered = [c.strip().lower() for c in rows[0]] if rows else []
    has_header = bool(rows) and (any(c in lowered for c in _FILE_COLUMNS + _LABEL_COLUMNS)
                                 or bool(opts.get("file_column") or opts.get("label_column")))
    if has_header:
        header = rows[0]
        fcol = _column(header, opts.get("file_column"), _FILE_COLUMNS, "file", where)
        lcol = _column(header, opts.get("label_column"), _LABEL_COLUMNS, "label", where)
        scol = (_column(header, opts["split_column"], (), "split", where) if opts.get("split_column") else
                lowered.index("split") if "split" in lowered else None)
        rows = rows[1:]
    else:
        fcol, lcol, scol = 0, 1, None
    present = set(names)
    # Meta-Album's layout: labels.csv (FILE_NAME, CATEGORY, ...) beside an images/ folder that holds the files.
    images_dir = base / "images"
    first_file = next((r[fcol].strip() for r in rows if r and len(r) > fcol and r[fcol].strip()), None)
    if first_file is not None and _member(base, first_file) not in present \
            and _member(images_dir, first_file) in present:
        base = images_dir
    for i, row in enumerate(rows, start=2 if has_header else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(fcol, lcol) or not row[lcol].strip():
            raise DataError(f"{where}: line {i}: expected a file and a label (delimiter {delimiter!r}), got {row}")
        file = row[fcol].strip()
        member = _member(base, file)
        if member not in present:
            raise DataError(f"{where}: line {i}: file {file!r} is not in {tree.path}")
        split = SPLIT_NAMES.get(row[scol].strip().lower()) if scol is not None and len(row) > scol else None
        entries.append((member, row[lcol].strip(), split))
    return entries


def _member(base: PurePosixPath, file: str) -> str:
    return file if str(base) == "." else str(base / file)


def _folder_entries(tree: _Tree, images: list[str], class_depth: int | None) -> list[tuple[str, str, str | None]]:
    """(member, class, split) of images in class folders: the class is the folder path below the root, or below the
    split folder (train/test/val), without the folders that wrap every image; ``class_depth`` keeps its last N."""
    dirs = []
    for n in images:
        parts = PurePosixPath(n).parts[:-1]
        cut = max((i + 1 for i, p in enumerate(parts) if p.lower() in SPLIT_NAMES), default=0)
        dirs.append(parts[cut:])
    unsplit = [d for d, n in zip(dirs, images) if _split_of(PurePosixPath(n).parts) is None and d]
    wrap = 0                    # leading folders shared by every unsplit image (an archive's top folder)
    if unsplit:
        shortest = min(len(d) for d in unsplit)
        while wrap < shortest - 1 and len({d[wrap] for d in unsplit}) == 1:
            wrap += 1
    entries, parents = [], {}
    for n, d in zip(images, dirs):
        split = _split_of(PurePosixPath(n).parts)
        full = d if split is not None or class_depth is not None else d[wrap:]
        if not full:
            continue                                    # an image at the top: no class folder
        cls = "/".join(full if class_depth is None else full[-class_depth:])
        parents.setdefault(cls, set()).add("/".join(full))
        entries.append((n, cls, split))
    merged = {c: sorted(p) for c, p in parents.items() if len(p) > 1}
    if merged:
        import warnings
        c, paths = next(iter(merged.items()))
        warnings.warn(f"{tree.path}: class_depth {class_depth} merges folders of different parents into one class "
                      f"({len(merged)} class(es); e.g. {c!r} covers {', '.join(paths[:3])}); if they are different "
                      f"classes, leave class_depth out (the class is then the whole folder path)", stacklevel=4)
    return entries


def _digest(data: bytes, name: str, cls: str) -> bytes:
    """Identity of a file for de-duplication: its split, class, file name and content (so the same drawing
    in two archives counts once, while train/cat/0.png and test/cat/0.png stay two files)."""
    import hashlib
    parts = PurePosixPath(name).parts
    key = f"{_split_of(parts)}|{cls}/{parts[-1]}"
    return hashlib.sha1(key.encode() + b"\0" + data).digest()


# ----------------------------------------------------------------------------------------------------------------
# NumPy arrays
def read_npy_classes(files: list[str | Path]) -> ImageData:
    """One .npy file per class (the class is the file name; e.g. QuickDraw's numpy_bitmap files of [N, 784]
    uint8), loaded with allow_pickle=False."""
    xs, ys, classes = [], [], []
    for i, f in enumerate(sorted(Path(p) for p in files)):
        arr = _load_npy(f)
        xs.append(_as_square_images(arr, f))
        ys.append(np.full(len(arr), i, dtype=np.int64))
        classes.append(f.stem)
    if not xs:
        raise DataError("no .npy files given")
    return ImageData({"all": Split(np.concatenate(xs), np.concatenate(ys))}, classes, str(Path(files[0]).parent))


def read_npz(path: str | Path) -> ImageData:
    """A .npz with arrays ``x`` (or ``images``) [N, H, W(, C)] uint8 and ``y`` (or ``labels``) [N]; optional
    ``x_test``/``y_test`` and ``classes``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            def get(*names):
                for n in names:
                    if n in keys:
                        return z[n]
                return None
            x, y = get("x", "images", "x_train"), get("y", "labels", "y_train")
            if x is None or y is None:
                raise DataError(f"{path}: needs arrays 'x' and 'y' (or 'images' and 'labels'); has {sorted(keys)}")
            splits = {"train" if get("x_test") is not None else "all": Split(_as_square_images(x, path),
                                                                             y.astype(np.int64).reshape(-1))}
            if get("x_test") is not None:
                splits["test"] = Split(_as_square_images(get("x_test"), path), get("y_test").astype(np.int64))
            names = get("classes")
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err
    n_classes = int(max(int(s.labels.max()) for s in splits.values())) + 1
    classes = [str(c) for c in names] if names is not None else [str(i) for i in range(n_classes)]
    return ImageData(splits, classes, str(path))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy file of numbers ({err})") from err


def _as_square_images(arr: np.ndarray, where) -> np.ndarray:
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0 and float(arr.min()) >= 0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[1] == 1 and arr.shape[2] > 4):
        flat = arr.reshape(len(arr), -1)
        side = math.isqrt(flat.shape[1])
        if side * side != flat.shape[1]:
            raise DataError(f"{where}: rows of {flat.shape[1]} values are not square images")
        return flat.reshape(len(arr), side, side, 1)
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return arr
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    raise DataError(f"{where}: cannot read images of shape {arr.shape}")


# ----------------------------------------------------------------------------------------------------------------
# Tiny ImageNet
def read_tiny_imagenet(path: str | Path, resolution: int | None = None) -> ImageData:
    """The tiny-imagenet-200 layout, as a folder or an archive: wnids.txt, train/<wnid>/images/*.JPEG and
    val/images/*.JPEG labelled by val/val_annotations.txt (file, wnid, box). Splits present are read; classes are
    the wnids that have images (listed wnids without any image are dropped)."""
    path = Path(path)
    tree = _Tree(path)
    try:
        names = tree.names()
        wnid_files = [n for n in names if PurePosixPath(n).name == "wnids.txt"]
        if not wnid_files:
            raise DataError(f"{path}: no wnids.txt: not the tiny-imagenet-200 layout")
        root = PurePosixPath(min(wnid_files, key=len)).parent
        wnids = [w.strip() for w in _text(tree, min(wnid_files, key=len)).split() if w.strip()]
        present = set(names)
        entries: list[tuple[str, str, str]] = []
        ann = str(root / "val" / "val_annotations.txt")
        if ann in present:
            for i, line in enumerate(_text(tree, ann).splitlines(), start=1):
                cols = line.split("\t")
                if len(cols) < 2:
                    raise DataError(f"{tree.where(ann)}: line {i}: expected tab-separated file and wnid")
                member = str(root / "val" / "images" / cols[0])
                if member in present:
                    entries.append((member, cols[1], "val"))
        for n in names:
            parts = PurePosixPath(n).parts
            rel = parts[len(root.parts):]
            if len(rel) == 4 and rel[0] == "train" and rel[2] == "images" and \
                    PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS:
                entries.append((n, rel[1], "train"))
        if not entries:
            raise DataError(f"{path}: no labelled images (train/<wnid>/images or val/images + val_annotations.txt)")
        used = {w for _, w, _ in entries}
        unknown = used - set(wnids)
        if unknown:
            raise DataError(f"{path}: labels {sorted(unknown)[:3]} are not in wnids.txt")
        classes = [w for w in wnids if w in used]
        index = {w: i for i, w in enumerate(classes)}
        decoded = {n: decode_image(d, tree.where(n), resolution, "RGB")
                   for n, d in tree.iter_files({e[0] for e in entries})}
        by: dict[str, tuple[list, list]] = {}
        for n, w, s in entries:
            xs, ys = by.setdefault(s, ([], []))
            xs.append(decoded[n])
            ys.append(index[w])
        return ImageData({s: Split(np.stack(x), np.asarray(y, dtype=np.int64)) for s, (x, y) in by.items()},
                         classes, str(path))
    finally:
        tree.close()


def file_signature(paths: list[Path]) -> str:
    """A cheap identity of source files (names, sizes, mtimes) for cache keys."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


__all__ = [
    "ImageData",
    "Split",
    "decode_image",
    "file_signature",
    "read_cifar_batch",
    "read_cifar_names",
    "read_idx",
    "read_idx_pair",
    "read_image_tree",
    "read_npy_classes",
    "read_npz",
    "read_tiny_imagenet",
    "safe_unpickle",
]
