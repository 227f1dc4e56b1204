"""Fetch a registered dataset from its canonical address (for users with a network), verifying sha256 when known.

Files go to ``<data root>/<the dataset's first folder name>/`` through a temporary name (renamed once complete and
verified), so an interrupted download never leaves a file that looks finished. Archives of whole folders
(.tar.gz, .zip) are extracted into the data root. With no network, the error says which file to place where.
"""
from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .cache import _sha256
from .errors import DataError
from .registry import DATASETS


def download(name: str, data_root: str | Path = "data", log=print) -> Path:
    spec = DATASETS.get(name)
    folder = Path(data_root) / spec.folders[0]
    if spec.builtin:
        log(f"{name}: shipped with an installed package; nothing to download")
        return folder
    if not spec.downloads:
        raise DataError(f"dataset {name!r}: no canonical download address is registered; place {spec.expected} "
                        f"in {folder}")
    created = [p for p in (folder, *folder.parents) if not p.exists()]     # what a failure must not leave
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_all(spec, name, folder, Path(data_root), log)
    except BaseException:
        for p in created:                     # innermost first: only folders this call made, and only if empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    return folder


def _fetch_all(spec, name: str, folder: Path, data_root: Path, log) -> None:
    for url, sha256 in spec.downloads:
        if "<" in url:
            raise DataError(f"dataset {name!r}: files are per category ({url}); download the categories you want "
                            f"into {folder}")
        target = folder / url.rsplit("/", 1)[-1]
        if target.exists() and (sha256 is None or _sha256(target) == sha256):
            log(f"{target}: already there")
            continue
        tmp = target.with_name(target.name + ".part")
        log(f"downloading {url} -> {target}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError, ValueError) as err:
            tmp.unlink(missing_ok=True)
            raise DataError(f"cannot download {url} ({getattr(err, 'reason', err)}); with no network, place the "
                            f"file at {target}") from err
        if sha256 is not None and _sha256(tmp) != sha256:
            tmp.unlink()
            raise DataError(f"{url}: sha256 mismatch (expected {sha256}); the download is corrupt or the file "
                            f"changed upstream; nothing was written")
        tmp.replace(target)
        if target.name.endswith((".tar.gz", ".tgz")) or (target.suffix == ".zip" and spec.name in ("tiny-imagenet",)):
            _extract(target, Path(data_root))


def _extract(archive: Path, dest: Path) -> None:
    """Extract an archive of a whole dataset folder, refusing members that would land outside ``dest``."""
    root = dest.resolve()
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if not (root / n).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {n!r} would be written outside {dest}; not extracting")
            z.extractall(dest)
        return
    with tarfile.open(archive) as t:
        # Every member is checked before the first is written: a refused archive leaves nothing behind.
        for m in t.getmembers():
            target = (root / m.name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"{archive}: member {m.name!r} would be written outside {dest}; not extracting")
            if m.issym() or m.islnk():
                link = (target.parent / m.linkname if m.issym() else root / m.linkname).resolve()
                if not link.is_relative_to(root):
                    raise DataError(f"{archive}: member {m.name!r} links to {m.linkname!r}, outside {dest}; not "
                                    f"extracting")
            elif not (m.isfile() or m.isdir()):
                raise DataError(f"{archive}: member {m.name!r} is a device or pipe; not extracting")
        t.extractall(dest, filter="data")      # and the "data" filter as a second line of defence
