"""The meta-training configuration: plain values with their rules (trajshift.core.schema), checked before any work.

    method: a name from trajshift.methods.METHODS (cts, cts-accurate, reptile, fomaml, fomaml++, leap, imaml, ...)
    inner_steps: K, the length of one inner trajectory; trajectories: M, the number of resets theta <- phi
    meta_lr: beta; inner_optimizer: {name, **options} of a torch.optim optimizer (lr = alpha)
    meta_optimizer: null for the plain step phi -= beta * g; else a torch.optim optimizer whose lr is beta
    reset_optimizer_state / reset_heads / reset_batchnorm: at every reset theta <- phi, also reset the inner optimizer
        state / the per-task heads / the BatchNorm statistics (default: carry them over, as the reference code does)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.schema import check_instance, opt, parse, revalidate
from ..engine.optim import check_optimizer_spec
from ..methods import METHODS
from .schedules import SCHEDULES

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _default_inner_optimizer() -> dict:
    return {"name": "sgd", "lr": 0.05, "momentum": 0.9}


def _method(name, path):
    if name not in METHODS:            # named with the key's full path (meta.method in a config file)
        raise ConfigError(f"{path}: unknown method {name!r}; allowed values: {', '.join(METHODS.names())}")
    return name


@dataclass
class MetaConfig:
    """Shared options of every method (method-specific ones go in ``options``, checked by the method)."""
    method: str = opt("cts", check=_method)
    inner_steps: int = opt(100, low=1, doc="K")
    trajectories: int = opt(3, low=1, doc="M")
    meta_lr: float = opt(0.1, low=0, doc="beta")
    inner_optimizer: dict = opt(factory=_default_inner_optimizer, check=check_optimizer_spec)
    meta_optimizer: dict | None = opt(None, check=check_optimizer_spec)
    options: dict = opt(factory=dict, doc="the method's own options")
    reset_optimizer_state: bool = opt(False)
    reset_heads: bool = opt(False)
    reset_batchnorm: bool = opt(False)
    seed: int = opt(0, low=0)
    dtype: str = opt("float32", choices=tuple(DTYPES))
    log_every: int = opt(1, low=1)
    clip_grad_norm: float | None = opt(None, low=0, open_low=True, doc="per-task gradient-norm clipping (null: off)")
    # The inner learning rate over the whole run's K * M inner steps (trajshift/training/schedules.py). The paper
    # keeps it constant; "cosine" / "linear" decay it to 0 by the run's last step (e.g. for the "None, trained on"
    # control of pretrain: continued pretraining, annealed).
    inner_lr_schedule: str = opt("constant", choices=tuple(SCHEDULES))
    progress: bool | None = opt(None, doc="null: a progress bar only when stderr is a terminal")
    # Steps between host read-backs of losses, ||Delta|| and the finiteness checks (one transfer each time; rows
    # and results are the same for every value). null: 1 on CPU, 50 on an accelerator.
    sync_every: int | None = opt(None, low=1)

    def __post_init__(self) -> None:
        # Checked as it is built: MetaConfig(meta_lr="fast") is refused here, not later by MetaTrainer.
        check_instance(self)

    def validate_fields(self, where: str) -> None:
        METHODS.get(self.method).parse_options(self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> MetaConfig:
        return parse(cls, data, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> MetaConfig:
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> MetaConfig:
        """Check every field (in place: normalised values, such as optimizer specs, are kept)."""
        return revalidate(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
