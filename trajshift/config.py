"""The meta-training configuration: plain values, validated before any work starts.

Every check raises ConfigError with one line naming the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .optim import check_optimizer_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _default_inner_optimizer() -> dict:
    return {"name": "sgd", "lr": 0.05, "momentum": 0.9}


@dataclass
class MetaConfig:
    """Shared options of every method (method-specific ones go in ``options``, checked by the method).

    method: a name from trajshift.methods.METHODS (cts, cts-accurate, reptile, fomaml, fomaml++, leap, imaml, ...)
    inner_steps: K, the length of one inner trajectory
    trajectories: M, the number of trajectories (resets theta <- phi)
    meta_lr: beta
    inner_optimizer: {name, **options} of a torch.optim optimizer (lr = alpha)
    meta_optimizer: None for the plain step phi -= beta * g; else {name, **options} of a torch.optim optimizer
        whose lr is beta
    reset_optimizer_state / reset_heads / reset_batchnorm: at every reset theta <- phi, also reset the inner
        optimizer state / the per-task heads (parameters that are not meta-learned) / the BatchNorm running
        statistics (default: carry them over, as the reference code does)
    """
    method: str = "cts"
    inner_steps: int = 100
    trajectories: int = 3
    meta_lr: float = 0.1
    inner_optimizer: dict = field(default_factory=_default_inner_optimizer)
    meta_optimizer: dict | None = None
    options: dict = field(default_factory=dict)
    reset_optimizer_state: bool = False
    reset_heads: bool = False
    reset_batchnorm: bool = False
    seed: int = 0
    dtype: str = "float32"
    log_every: int = 1
    clip_grad_norm: float | None = None   # per-task gradient-norm clipping of the inner steps (None: off)
    progress: bool | None = None       # None: a progress bar only when stderr is a terminal
    # Steps between host read-backs of losses, ||Delta|| and the finiteness checks (one transfer each time; rows
    # and results are the same for every value). None: 1 on CPU, 50 on an accelerator.
    sync_every: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> MetaConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of options, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(known))}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> MetaConfig:
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> MetaConfig:
        from .methods import METHODS  # late import: methods import this module
        METHODS.get(self.method)        # unknown method -> ConfigError listing the allowed names
        _int_at_least("inner_steps", self.inner_steps, 1, "K")
        _int_at_least("trajectories", self.trajectories, 1, "M")
        _int_at_least("log_every", self.log_every, 1)
        if self.sync_every is not None:
            _int_at_least("sync_every", self.sync_every, 1)
        _int_at_least("seed", self.seed, 0)
        if isinstance(self.meta_lr, bool) or not isinstance(self.meta_lr, (int, float)) or \
                not 0 <= self.meta_lr < float("inf"):
            raise ConfigError(f"meta_lr (beta): expected a finite number >= 0, got {self.meta_lr!r}")
        self.inner_optimizer = check_optimizer_spec(self.inner_optimizer, "inner_optimizer")
        if self.meta_optimizer is not None:
            self.meta_optimizer = check_optimizer_spec(self.meta_optimizer, "meta_optimizer")
        for key in ("reset_optimizer_state", "reset_heads", "reset_batchnorm"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        if self.clip_grad_norm is not None and (isinstance(self.clip_grad_norm, bool) or not isinstance(
                self.clip_grad_norm, (int, float)) or not self.clip_grad_norm > 0):
            raise ConfigError(f"clip_grad_norm: expected a number > 0 (or null for no clipping), got "
                              f"{self.clip_grad_norm!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ConfigError(f"progress: expected true, false or null, got {self.progress!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ConfigError(f"dtype: unknown dtype {self.dtype!r}; allowed values: {', '.join(DTYPES)}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options: expected a mapping of method options, got {self.options!r}")
        METHODS.get(self.method).parse_options(self.options)
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _int_at_least(key: str, value: Any, low: int, symbol: str | None = None) -> None:
    name = f"{key} ({symbol})" if symbol else key
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: expected an integer >= {low}, got {value!r}")


def parse_dataclass_options(cls, options: dict, where: str):
    """Build option dataclass ``cls`` from a dict, with one-line errors for unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields), key=str)
    if unknown:
        allowed = ", ".join(fields) if fields else "(none)"
        raise ConfigError(f"{where}.{unknown[0]}: unknown option; allowed options: {allowed}")
    out = cls(**options)
    for name, f in fields.items():
        value = getattr(out, name)
        expected = type(f.default) if f.default is not dataclasses.MISSING else None
        if expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{name}: expected an integer, got {value!r}")
        if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
    if hasattr(out, "check"):
        out.check(where)
    return out
