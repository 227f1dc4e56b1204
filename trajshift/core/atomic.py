"""One atomic file writer for every result, checkpoint and initialization: write a temporary file beside the
target, fsync it, rename it over the target, fsync the folder. A reader sees the old file or the new one, never a
part. A full disk is one clear error, the partial temporary file is removed, and the previous file stays intact."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
from pathlib import Path

from .errors import TrajshiftError

# Temporary names: .<name>.tmp<pid>; a write killed by SIGKILL leaves one behind (see remove_stale_temporaries).
_TMP = re.compile(r"^\.(.+)\.tmp(\d+)$")


class DiskFullError(TrajshiftError, OSError):
    """No space left on the device (or quota exceeded) while writing a file."""


def write_bytes(path: str | Path, data: bytes) -> None:
    write_with(path, lambda f: f.write(data), len(data))


def write_with(path: str | Path, write, size: int | None = None) -> None:
    """The writer: ``write(f)`` fills a temporary file beside ``path`` (streamed: large arrays need no copy in
    memory), which is fsynced and renamed over ``path``; then the folder is fsynced. ``size``: bytes, for the
    full-disk message."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            _sync(f)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            need = f" ({size / 2**20:.1f} MiB needed)" if size is not None else ""
            raise DiskFullError(f"{path.parent}: no space left on the device writing {path.name}{need}; free space "
                                f"there and run the same command again (files written before are intact)") from None
        raise
    fsync_dir(path.parent)


def _sync(f) -> None:
    """Flush a file to the disk (where a full disk can also show first)."""
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically (a plain state_dict or checkpoint state, loadable with weights_only=True)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def write_json(path: str | Path, obj, compact: bool = False) -> None:
    """JSON, atomically, without NaN (not valid JSON): a NaN or infinite float is written as null. ``compact``: no
    indentation or spaces (files with long arrays, e.g. a report's loss curves)."""
    text = json.dumps(finite(obj), separators=(",", ":")) if compact else json.dumps(finite(obj), indent=1)
    write_bytes(path, (text + "\n").encode())


def write_text(path: str | Path, text: str) -> None:
    """A text file (tables, YAML), written atomically like everything else."""
    write_bytes(path, text.encode())


def finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files of writes killed before their rename (any pid: call it while holding the run
    folder's lock, when no other writer can be at work there)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if _TMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
