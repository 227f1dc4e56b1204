"""Fault injection for the reliability tests (docs/RELIABILITY.md): a callback the trainer runs after each loop
step and its checkpoint (MetaTrainer.after_checkpoint_callbacks). Nothing in trajshift itself injects faults."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def at_step(step: int, action, rank: int = 0, once: str | Path | None = None):
    """A callback that runs ``action()`` right after loop step ``step`` (and its checkpoint, if one is due): only on
    rank ``rank`` and, when ``once`` names a marker file, only once (the file is created just before)."""
    def callback(tr):
        if tr.position["m"] * tr.cfg.inner_steps + tr.position["k"] != step:
            return
        if os.environ.get("RANK", "0") != str(rank):
            return
        if once is not None:
            if Path(once).exists():
                return
            Path(once).touch()
        action()
    return callback


def send(sig: int):
    """An action: send ``sig`` to this process (SIGKILL: a hard kill; SIGINT: Ctrl-C)."""
    return lambda: os.kill(os.getpid(), sig)


def install(monkeypatch, step: int, action) -> None:
    """In this process: fire ``action`` after loop step ``step`` of every trainer until the test ends."""
    from trajshift.training.loop import MetaTrainer
    monkeypatch.setattr(MetaTrainer, "after_checkpoint_callbacks", [at_step(step, action)])


def uninstall(monkeypatch) -> None:
    from trajshift.training.loop import MetaTrainer
    monkeypatch.setattr(MetaTrainer, "after_checkpoint_callbacks", [])


KILL = signal.SIGKILL
