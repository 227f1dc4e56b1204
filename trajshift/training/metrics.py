"""Per-step metrics: the JSON-lines writer and the truncation a resumed run applies to what it logged."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..core.atomic import write_bytes


def truncate_metrics(path: str | Path, inner_steps: int, rows: int | None = None) -> None:
    """Keep what was logged up to the checkpoint a run resumes from, in place: its first ``rows`` rows (the count
    the checkpoint recorded: exact at every kill point, a trajectory_end row logged after it included), or, for a
    checkpoint without that count, the rows logged up to ``inner_steps``."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:          # a line cut by the kill
            continue
        if rows is None and row.get("inner_steps", 0) > inner_steps:
            continue
        kept.append(line)
    if rows is not None:
        kept = kept[:rows]
    write_bytes(path, "".join(line + "\n" for line in kept).encode())


class MetricsWriter:
    """Per-step metrics as JSON lines (one object per line; flushed, so a killed run keeps what it logged)."""

    def __init__(self, path: str | Path | None, rows: int = 0, sinks: list[Callable[[dict], None]] | None = None):
        self._f = None
        self.rows = rows                 # rows in the file (checkpoints record it: resume truncates to it)
        self.sinks = list(sinks or [])   # more receivers of every row (TensorBoard)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", encoding="utf-8")   # noqa: SIM115 (open for the run's life; close())

    def write(self, row: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
            self.rows += 1
        for sink in self.sinks:
            sink(row)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        self.sinks = []
