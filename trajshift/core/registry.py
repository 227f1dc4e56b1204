"""A tiny name -> object registry, so configs stay plain data (method: cts, inner_optimizer: {name: sgd})."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to objects; unknown names raise a ConfigError listing the allowed ones."""

    def __init__(self, kind: str, option: str):
        self.kind = kind          # e.g. "method", used in messages
        self.option = option      # the config key that takes these names, e.g. "method"
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        def add(o: T) -> T:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[key] = o
            return o
        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name.lower() not in self._entries:
            raise ConfigError(
                f"{self.option}: unknown {self.kind} {name!r}; allowed values: {', '.join(self.names())}")
        return self._entries[name.lower()]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


