"""Checkpoints that survive kills: atomic writes, checksums, fallback to the previous one, and a run-folder lock.

A checkpoint is ``<dir>/ckpt-<step>.pt`` (torch.save of the trainer's state, loaded back with weights_only=True)
and ``<dir>/ckpt-<step>.pt.sha256`` (its checksum). Both are written to temporary names, fsynced and renamed; the
checksum file is renamed last, so a checkpoint counts only once both are complete. Loading verifies the checksum;
a truncated or altered checkpoint is named in a warning and the previous one is used.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import torch

from ..core.atomic import write_bytes
from ..core.errors import ConfigError, unsafe_or_unreadable

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def save_checkpoint(folder: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically with its checksum; keep the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = folder / f"ckpt-{step:010d}.pt"
    write_bytes(path, data)
    write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def newest_valid_step(folder: str | Path) -> int:
    """The step of the newest checkpoint whose checksum verifies (-1 if none), without loading it."""
    for path in reversed(list_checkpoints(folder)):
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == path.with_name(path.name + ".sha256").read_text().strip():
                return step_of(path)
        except OSError:
            continue
    return -1


def load_latest(folder: str | Path, max_step: int | None = None) -> tuple[dict, Path] | None:
    """The newest checkpoint (at most ``max_step``) whose checksum verifies and that loads (None if there is
    none); skipped ones are named in warnings."""
    for path in reversed(list_checkpoints(folder)):
        if max_step is not None and step_of(path) > max_step:
            continue
        problem = None
        try:
            data = path.read_bytes()
            expected = path.with_name(path.name + ".sha256").read_text().strip()
            if hashlib.sha256(data).hexdigest() != expected:
                problem = "its checksum does not match (truncated or altered)"
        except FileNotFoundError:
            problem = "it has no checksum file (its write did not finish)"
        except OSError as err:
            problem = f"it cannot be read ({err})"
        if problem is None:
            try:
                with warnings.catch_warnings():
                    # torch's note on a file's pickle protocol: our own warning below names the file and the refusal
                    warnings.filterwarnings("ignore", message="Detected pickle protocol")
                    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), path
            except Exception as err:  # noqa: BLE001  a checksum-valid file that is not a checkpoint: any failure
                problem = unsafe_or_unreadable("it", err).split(": ", 1)[1]
        warnings.warn(f"{path}: skipping this checkpoint: {problem}; trying the previous one", stacklevel=2)
    return None


class RunLock:
    """An exclusive lock on a run folder (``<dir>/.lock``, fcntl): a second run pointed at the same folder is
    refused. The operating system releases it when the process dies, even by SIGKILL."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._f = None

    def __enter__(self) -> RunLock:  # noqa: PYI034 (a final class: never subclassed)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self._f = open(self.path, "a+")
            try:
                fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.seek(0)
                holder = self._f.read().strip() or "unknown"
                self._f.close()
                self._f = None
                raise ConfigError(f"{self.path.parent}: the run folder is in use by another run (pid {holder}); wait "
                                  f"for it to finish or choose another --out") from None
            # The holder removes the file when it ends: a lock taken on a removed file is no lock; take it again.
            try:
                same = os.fstat(self._f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._f.close()
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self.path.unlink(missing_ok=True)        # removed while still held: no run folder keeps a stale .lock
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None
