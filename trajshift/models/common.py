"""Pieces shared by the models: activation and pooling options."""
from __future__ import annotations

from torch import nn

from ..core.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus}
POOLINGS = ("avg", "max")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation: unknown activation {name!r}; allowed values: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def global_pool(name: str) -> nn.Module:
    if name not in POOLINGS:
        raise ConfigError(f"model.pooling: unknown pooling {name!r}; allowed values: {', '.join(POOLINGS)}")
    return nn.AdaptiveAvgPool2d(1) if name == "avg" else nn.AdaptiveMaxPool2d(1)
