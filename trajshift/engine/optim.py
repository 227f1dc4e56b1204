"""Optimizers by name, for the inner loop (one optimizer over all T task learners) and the meta level.

Config form: ``{"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": false, "weight_decay": 5e-4}``.
Every torch.optim optimizer is available under its lower-case class name ("sgd", "adam", "adamw", "rmsprop", ...).

Why one optimizer over theta [T, P] is exactly T independent optimizers: SGD (with momentum, Nesterov, weight decay),
Adam, AdamW, RMSprop, Adagrad, ... update every element from that element's own gradient and state only, so
stacking the T parameter vectors into rows changes nothing (tests/test_invariants.py::test_one_optimizer_over_rows_equals_T_optimizers checks it). Optimizers
that couple elements (LBFGS's line search, Adafactor's factored moments, Muon) are refused for the inner loop.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import Registry
from ..core.schema import Rule, check_value

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer", "optimizer name")

# Optimizers whose update of one element depends on other elements: not a set of T independent learners.
_COUPLED = {"lbfgs", "adafactor", "muon", "sparseadam"}

for _name, _cls in vars(torch.optim).items():
    if (inspect.isclass(_cls) and issubclass(_cls, torch.optim.Optimizer) and _cls is not torch.optim.Optimizer
            and _name.lower() not in _COUPLED):
        OPTIMIZERS.register(_name.lower(), _cls)


def check_optimizer_spec(spec: Any, option: str) -> dict:
    """Validate ``{"name": ..., **options}`` without building anything; returns a normalised copy."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{option}: expected a mapping with a 'name' key, e.g. {{name: sgd, lr: 0.01}}; got {spec!r}")
    spec = dict(spec)
    name = spec["name"]
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ConfigError(f"{option}.name: unknown optimizer {name!r}; allowed values: {', '.join(OPTIMIZERS.names())}")
    cls = OPTIMIZERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "params")]
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in allowed:
            raise ConfigError(f"{option}.{key}: not an option of {cls.__name__}; allowed: {', '.join(allowed)}")
        if key in ("lr", "momentum", "weight_decay", "dampening", "eps"):
            check_value(value, float, Rule(low=0), f"{option}.{key}")
    return spec


def build_optimizer(params: Iterable[torch.Tensor], spec: dict, option: str = "optimizer",
                    lr: float | None = None) -> torch.optim.Optimizer:
    """Build the optimizer named in ``spec``; ``lr`` (if given) overrides spec['lr'] (used for the meta level)."""
    spec = check_optimizer_spec(spec, option)
    cls = OPTIMIZERS.get(spec.pop("name"))
    if lr is not None:
        spec["lr"] = lr
    try:
        return cls(list(params), **spec)
    except (ValueError, TypeError) as err:   # torch's own range checks, e.g. "Invalid momentum value"
        raise ConfigError(f"{option}: {cls.__name__} rejected the options {spec}: {err}") from err


def optimizer_spec(optimizer: Any, option: str = "optimizer") -> dict:
    """The config form ``{"name": ..., **options}`` of what a user hands the Python API: that form itself (or a
    name), a torch.optim class (``torch.optim.SGD``) or a ``functools.partial`` of one (``partial(SGD, lr=0.01,
    momentum=0.9)``). Another Optimizer class is accepted once registered (``OPTIMIZERS.register("lion", Lion)``):
    the inner optimizer must update each element from its own gradient and state only."""
    import functools
    if isinstance(optimizer, (dict, str)):
        return check_optimizer_spec(optimizer, option)
    keywords: dict = {}
    cls = optimizer
    if isinstance(optimizer, functools.partial):
        if optimizer.args:
            raise ConfigError(f"{option}: give the options of {optimizer.func.__name__} by keyword (lr=..., "
                              f"momentum=...), not by position")
        cls, keywords = optimizer.func, dict(optimizer.keywords)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"{option}: expected a torch.optim optimizer class, a functools.partial of one, or "
                          f"{{name: sgd, lr: ...}}; got {optimizer!r}")
    names = [n for n in OPTIMIZERS.names() if OPTIMIZERS.get(n) is cls]
    if not names:
        raise ConfigError(f"{option}: {cls.__name__} is not a registered optimizer; register it with "
                          f"trajshift.engine.optim.OPTIMIZERS.register({cls.__name__.lower()!r}, {cls.__name__}) if it updates "
                          f"each element from its own gradient and state only")
    return check_optimizer_spec({"name": names[0], **keywords}, option)
