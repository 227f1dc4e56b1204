"""TensorBoard logging of meta-training (optional: ``pip install tensorboard``; ``meta-train --log tensorboard``).

Scalars against cumulative inner steps per task: loss/mean, loss/task<T> (global task index), meta/delta_norm
(||Delta|| of the last meta-update) and meta/updates. Event files go to RUN/tensorboard/:
``tensorboard --logdir RUN/tensorboard``.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError


class TensorBoardSink:
    """A metrics-row receiver (a trajshift.training.metrics.MetricsWriter sink) writing TensorBoard scalars."""

    def __init__(self, folder: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard: the tensorboard package is not installed; pip install tensorboard "
                              "(or pip install 'trajshift[tensorboard]')") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def __call__(self, row: dict) -> None:
        if "loss_mean" not in row:                # trajectory_end rows: nothing new to plot
            return
        step = row["inner_steps"]
        self.writer.add_scalar("loss/mean", row["loss_mean"], step)
        for task, loss in zip(row.get("tasks", []), row.get("loss", [])):
            self.writer.add_scalar(f"loss/task{task}", loss, step)
        self.writer.add_scalar("meta/delta_norm", row["delta_norm"], step)
        self.writer.add_scalar("meta/updates", row["meta_updates"], step)

    def close(self) -> None:
        self.writer.close()
