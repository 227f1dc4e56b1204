"""Command-line flags derived from config dataclasses: the dataclass is the one declaration of an option (its
default, type, rule and help); the parser only names the flag.

    add_config_flags(parser, SyntheticStudyConfig, {"inner_steps": "--K", "alpha": "--alpha"})
    cfg = config_from_args(SyntheticStudyConfig, args, extra={"starts": ...})

A flag's default is not given to argparse (``SUPPRESS``): only the flags a user typed reach the config, and every
other field keeps the dataclass default. Values are checked by the same schema as a YAML config (trajshift/core/schema.py),
with the flag named in every message. Lists are comma-separated (``--ks 1,5,10``); a bool field whose default is True
takes an inverting flag (``{"reset_optimizer_state": "!--carry-optimizer-state"}``).

Why by hand and not jsonargparse: our flags are few and several are not field names (--K, --M, an inverted bool);
the mapping is a dozen lines, and the schema's one-line messages stay ours.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..core.schema import Rule, _unwrap, fields_of, parse

_PREFIX = "cfg__"


def _default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shown(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def add_config_flags(parser: argparse.ArgumentParser, cls, flags: dict[str, str], keep_defaults: bool = False,
                     inverted_help: dict[str, str] | None = None) -> None:
    """One flag per entry of ``flags`` (field -> flag; a leading "!" inverts a bool field whose default is True, and
    ``inverted_help[field]`` says what the inverting flag does: the field's doc describes the default).
    ``keep_defaults``: the flag's value is ``args.<field>``, the dataclass default when not given (for handlers
    that read the namespace themselves); otherwise only given flags reach ``config_from_args``."""
    hints, known = typing.get_type_hints(cls), fields_of(cls)
    for field, flag in flags.items():
        f = known[field]
        rule: Rule = f.metadata.get("rule", Rule())
        kind, item, _ = _unwrap(hints[field])
        default = _default_of(f)
        help_text = rule.doc or field.replace("_", " ")
        dest = field if keep_defaults else _PREFIX + field
        unset = default if keep_defaults else argparse.SUPPRESS
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if kind is bool:
            value = not default if flag.startswith("!") else True
            if flag.startswith("!"):
                what = (inverted_help or {}).get(field, f"the opposite of: {help_text}")
                text = f"{what} ({field} = {str(value).lower()}; default {str(default).lower()}: {help_text})"
            else:
                text = f"{field} = {str(value).lower()} ({help_text}; default: {str(default).lower()})"
            parser.add_argument(flag.lstrip("!"), dest=dest, action="store_const", const=value,
                                default=unset, help=text.replace("%", "%%"))
            continue
        choices = list(rule.choices) if rule.choices and kind is not list else None
        metavar = "A,B,..." if kind is list else None if choices else {int: "N", float: "X"}.get(kind, "VALUE")
        parser.add_argument(flag, dest=dest, default=None if required else unset, required=required,
                            metavar=metavar, choices=choices,
                            type=_converter(kind, item),
                            help=(help_text if default is None or required else f"{help_text} (default: {_shown(default)})")
                            .replace("%", "%%"))


def _converter(kind, item):
    """Text to the field's type where it parses; otherwise the text itself, so that the schema names the flag and
    the rule in its one-line message (argparse's own type errors print the usage block)."""
    def number(text: str, to):
        try:
            return to(text)
        except ValueError:
            return text
    if kind is list:
        to = item if item in (int, float) else None
        return lambda text: [number(v.strip(), to) if to else v.strip() for v in text.split(",") if v.strip()]
    if kind in (int, float):
        return lambda text: number(text, kind)
    return str


def config_from_args(cls, args: argparse.Namespace, flags: dict[str, str], extra: dict | None = None):
    """The dataclass from the flags given (and ``extra`` fields set by hand), checked by the schema; the culprit is
    named by its flag."""
    given = {k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX)}
    names = {field: flag.lstrip("!") for field, flag in flags.items()}
    return parse(cls, {**given, **(extra or {})}, "", flags=names)
