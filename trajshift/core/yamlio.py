"""YAML reading with YAML 1.2 numbers: PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is the string "1e-3";
configs and --set values mean the number."""
from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    """SafeLoader (no object construction) that also reads 1e-3, 1E5 and -2e+1 as floats."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                   |[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$""", re.VERBOSE),
    list("-+0123456789."))


def load(text: str):
    return yaml.load(text, Loader=Loader)


def parse_overrides(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as {dotted key: YAML 1.2 value}; merged into the config before it is checked, so
    they follow the same rules as the file."""
    from .errors import ConfigError
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. meta.inner_steps=100), got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = load(value)
    return overrides
