"""One declarative schema for every config (meta, experiment, execution, task, validation, meta-test, synthetic,
approx-error, method options): a config is a dataclass whose fields carry their rules, and ``parse`` checks a
mapping against them in one place.

    @dataclass
    class Options:
        meta_every: int = opt(1, low=1, doc="meta-update every n inner steps")
        shift: str = opt("cts", choices=("cts", "none", "random"))

    parse(Options, {"meta_every": 2}, "meta.options")     # -> Options(meta_every=2, shift="cts")

Rules: the field's type (int, float, bool, str, list, dict or a nested schema dataclass; ``| None`` allows null),
``low``/``high`` bounds (``open_low=True``: strictly above), ``choices``, ``items`` (the rules of a list's items) and
``check`` (a function for what a rule cannot say; it raises ConfigError itself). Unknown keys are refused with a
"did you mean". Numbers follow YAML 1.2 (1e-3 is a float; trajshift.core.yamlio), and ``--set`` overrides are parsed by
the same rules because they are merged into the mapping first. Every message names the key path.

Why our own ~150 lines and not pydantic: the rules are few (types, ranges, choices), the messages must follow our
one-line "KEY: expected ..., got ..." form, and a new dependency for that is not worth its weight.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None
    items: Rule | None = None
    check: Callable[[Any, str], Any] | None = None     # (value, key path) -> value (may normalise); raises
    doc: str = ""


def opt(default=dataclasses.MISSING, *, factory=None, low=None, high=None, open_low=False, open_high=False,
        choices=None, items=None, check=None, doc: str = ""):
    """A dataclass field with its rules (see the module docstring)."""
    meta = {"rule": Rule(low, high, open_low, open_high, tuple(choices) if choices else None, items, check, doc)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def did_you_mean(key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _expectation(kind, rule: Rule) -> str:
    """The one sentence every range and type message uses: 'an integer >= 1', 'a number in (0, 1]'..."""
    if rule.choices:
        return "one of " + ", ".join(str(c) for c in rule.choices)
    noun = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping"}.get(kind, getattr(kind, "__name__", str(kind)))
    lo = None if rule.low is None else f"{'>' if rule.open_low else '>='} {rule.low:g}"
    hi = None if rule.high is None else f"{'<' if rule.open_high else '<='} {rule.high:g}"
    if lo and hi:
        return f"{noun} in {'(' if rule.open_low else '['}{rule.low:g}, {rule.high:g}{')' if rule.open_high else ']'}"
    return " ".join(x for x in (noun, lo or hi) if x)


def _fail(path: str, kind, rule: Rule, value, nullable: bool) -> ConfigError:
    return ConfigError(f"{path}: expected {_expectation(kind, rule)}{' (or null)' if nullable else ''}, "
                       f"got {value!r}")


def _unwrap(tp) -> tuple[Any, Any, bool]:
    """(the base type, its item type for list[X], whether None is allowed) of an annotation like ``int | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            base, item, _ = _unwrap(rest[0])
            return base, item, type(None) in args
        return tuple(typing.get_origin(a) or a for a in rest), None, type(None) in args
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
    return (typing.get_origin(tp) or tp), item, False


def check_value(value, kind, rule: Rule, path: str, nullable: bool = False, item=None):
    """``value`` checked against one field's type and rule; returns it (a nested schema parsed, ``check``'s
    normalisation applied)."""
    if value is None:
        if nullable:
            return None
        raise _fail(path, kind, rule, value, nullable)
    if isinstance(kind, tuple):                      # a union such as bool | str: any of them passes
        if not isinstance(value, kind):
            raise ConfigError(f"{path}: expected {' or '.join(k.__name__ for k in kind)}, got {value!r}")
    elif dataclasses.is_dataclass(kind):
        return parse(kind, value, path)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, kind, rule, value, nullable)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(path, kind, rule, value, nullable)
    elif kind in (bool, str, list, dict) and not isinstance(value, kind):
        raise _fail(path, kind, rule, value, nullable)
    if rule.choices and value not in rule.choices:
        raise ConfigError(f"{path}: unknown value {value!r}; {did_you_mean(value, rule.choices)}allowed values: "
                          f"{', '.join(str(c) for c in rule.choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low)
        too_high = rule.high is not None and (value >= rule.high if rule.open_high else value > rule.high)
        if too_low or too_high:
            raise _fail(path, kind, rule, value, nullable)
    if isinstance(value, list) and (item is not None or rule.items is not None):
        value = [check_value(v, item if item is not None else Any, rule.items or Rule(), f"{path}[{i}]")
                 for i, v in enumerate(value)]
    if rule.check is not None:
        value = rule.check(value, path)
    return value


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def parse(cls, data, where: str, flags: bool | dict = False):
    """Build schema dataclass ``cls`` from a mapping: unknown keys refused ("did you mean"), missing required keys
    named, every value checked by its field's rule. ``flags``: name keys as command-line flags (--images-per-class;
    a dict maps a field to its flag).
    A ``validate_fields(self, where)`` method on ``cls`` then checks what involves several fields."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        data = {f: getattr(data, f) for f in fields_of(cls)}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {data!r}")
    known = fields_of(cls)
    if isinstance(flags, dict):        # field -> the flag that sets it (trajshift/commands/cli_options.py)
        name = lambda k: flags.get(k, f"--{k.replace('_', '-')}")
    elif flags:
        name = lambda k: f"--{k.replace('_', '-')}"
    else:
        name = lambda k: f"{where}.{k}" if where else k
    for key in data:
        if key not in known:
            raise ConfigError(f"{name(str(key))}: unknown key; {did_you_mean(key, known)}allowed keys: "
                              f"{', '.join(known) or '(none)'}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, f in known.items():
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{name(key)}: missing (required)")
            continue
        kind, item, nullable = _unwrap(hints[key])
        values[key] = check_value(data[key], kind, f.metadata.get("rule", Rule()), name(key), nullable, item)
    out = cls(**values)
    if hasattr(out, "validate_fields"):
        out.validate_fields(where)
    return out


def check_instance(obj, where: str = "") -> None:
    """Check a schema dataclass as it is constructed (from ``__post_init__``): every field by its rule, normalised
    in place, then ``validate_fields``; the same messages as ``parse``, without building a second object."""
    hints = typing.get_type_hints(type(obj))
    for key, f in fields_of(type(obj)).items():
        kind, item, nullable = _unwrap(hints[key])
        setattr(obj, key, check_value(getattr(obj, key), kind, f.metadata.get("rule", Rule()),
                                      f"{where}.{key}" if where else key, nullable, item))
    if hasattr(obj, "validate_fields"):
        obj.validate_fields(where)


def revalidate(obj, flags: bool = False):
    """Check an already-built schema dataclass in place (normalised values, such as optimizer specs, are kept)."""
    obj.__dict__.update(parse(type(obj), obj, "", flags=flags).__dict__)
    return obj
