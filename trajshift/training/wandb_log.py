"""Weights & Biases logging of meta-training (optional: ``pip install wandb``; ``meta-train --log wandb``).

The same scalars as TensorBoard (trajshift/training/tensorboard.py) against cumulative inner steps per task. The run goes
to the project ``$WANDB_PROJECT`` (default "trajshift"), named after the run folder, with the resolved config; its
local files go to RUN/wandb/. Without a login (or with ``WANDB_MODE=offline``) wandb writes them offline, to be
sent later with ``wandb sync RUN/wandb/offline-run-*``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import ConfigError


class WandbSink:
    """A metrics-row receiver (metrics.MetricsWriter sinks) logging to a wandb run."""

    def __init__(self, folder: str | Path, config: dict | None = None, name: str | None = None):
        try:
            import wandb
        except ImportError:
            raise ConfigError("--log wandb: the wandb package is not installed; pip install wandb (or pip install "
                              "'trajshift[wandb]')") from None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "trajshift"), name=name or folder.parent.name,
                              dir=str(folder), config=config or {}, mode=mode, reinit="finish_previous")

    def __call__(self, row: dict) -> None:
        if "loss_mean" not in row:                # trajectory_end rows: nothing new to plot
            return
        scalars = {"loss/mean": row["loss_mean"], "meta/delta_norm": row["delta_norm"],
                   "meta/updates": row["meta_updates"]}
        scalars.update({f"loss/task{t}": loss for t, loss in zip(row.get("tasks", []), row.get("loss", []))})
        self.run.log(scalars, step=int(row["inner_steps"]))

    def close(self) -> None:
        self.run.finish()
