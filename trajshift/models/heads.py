"""Which parameters of a model are its head: declared once, for every front door (fit, finetune, meta-train, meta-test,
report) and for the engine's meta-learned-parameter filter.

A task's head is its own (not meta-learned, freshly initialised on a target). Users name it as they write models:

* ``None``: the model's own answer where it has one (timm's ``get_classifier()``), else the modules named ``fc``,
  ``head`` or ``classifier`` (the default globs ``fc.*``, ``head.*``, ``classifier.*``);
* a module path, as ``named_modules()`` spells it: ``"out"``, ``"top.1"`` (the second layer of an ``nn.Sequential``
  named ``top``), ``"decoder.proj"``: every parameter under it;
* a parameter name (``"top.1.weight"``) or an fnmatch glob (``"fc.*"``);
* the head module itself (``model.classifier``), or a list of any of these.

Each entry must name something in the model: a name that matches nothing is refused, naming the model's modules,
instead of silently meta-learning the head.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..core.errors import ConfigError

DEFAULT_HEAD_PATTERNS = ("fc.*", "head.*", "classifier.*")
GLOB_CHARACTERS = "*?["


def _as_entries(head) -> list:
    if head is None:
        return []
    if isinstance(head, (str, nn.Module)):
        return [head]
    if isinstance(head, Sequence):
        return list(head)
    raise ConfigError(f"head: expected a module path, a parameter name, a glob, an nn.Module or a list of them; got "
                      f"{type(head).__name__}")


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ConfigError(f"head: the module given ({type(module).__name__}) is not a submodule of the model "
                      f"({type(model).__name__}); give the model's own submodule or its path")


def _top_level(model: nn.Module) -> str:
    """The model's top-level module names, in definition order (never a set's order: messages are reproducible)."""
    return ", ".join(name for name, _ in model.named_children()) or "none"


def _matches(entry: str, names: list[str], modules: set[str]) -> list[str]:
    """The parameter names an entry selects: a module path (every parameter under it), a name, or a glob."""
    if any(c in entry for c in GLOB_CHARACTERS):
        return [n for n in names if fnmatch.fnmatchcase(n, entry)]
    if entry in modules:
        return [n for n in names if n.startswith(entry + ".")] if entry else list(names)
    return [n for n in names if n == entry]


def head_parameter_names(model: nn.Module, head=None) -> list[str]:
    """The names (in ``named_parameters()`` order) of the parameters of ``model`` that ``head`` selects."""
    names = [n for n, _ in model.named_parameters()]
    modules = {n for n, _ in model.named_modules()}
    entries = _as_entries(head)
    if not entries:
        get_classifier = getattr(model, "get_classifier", None)
        if callable(get_classifier):                     # timm's convention
            module = get_classifier()
            if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
                entries = [module]
        if not entries:
            return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in DEFAULT_HEAD_PATTERNS)]
    chosen: set[str] = set()
    for entry in entries:
        path = _module_name(model, entry) if isinstance(entry, nn.Module) else entry
        if not isinstance(path, str):
            raise ConfigError(f"head: {path!r} is not a name; give a module path such as 'fc' or 'top.1'")
        found = _matches(path, names, modules)
        if not found:
            top = _top_level(model)
            raise ConfigError(f"head {path!r}: no module or parameter of {type(model).__name__} is named so (its "
                              f"top-level modules: {top}); give a module path as named_modules() spells it, e.g. "
                              f"'top.1', a parameter name or a glob")
        chosen.update(found)
    return [n for n in names if n in chosen]


def head_from_meta_params(model: nn.Module, meta_params: dict | None) -> list[str]:
    """The head a config's ``meta_params: {include, exclude}`` leaves out of meta-learning: every parameter that no
    ``include`` entry selects or that an ``exclude`` entry selects. Entries are read as ``head`` entries are (module
    paths, names, globs); a user's exclude entry that matches nothing is refused, the default globs are not."""
    mp = meta_params or {}
    names = [n for n, _ in model.named_parameters()]
    modules = {n for n, _ in model.named_modules()}
    include = list(mp.get("include", ("*",)))
    exclude = list(mp.get("exclude", DEFAULT_HEAD_PATTERNS))
    selected: set[str] = set()
    for entry in include:
        selected.update(_matches(str(entry), names, modules))
    for entry in exclude:
        found = _matches(str(entry), names, modules)
        if not found and entry not in DEFAULT_HEAD_PATTERNS:
            top = _top_level(model)
            raise ConfigError(f"meta_params.exclude: {entry!r} matches no module or parameter of "
                              f"{type(model).__name__} (its top-level modules: {top}); give a module path such as "
                              f"'top.1', a parameter name or a glob")
        selected.difference_update(found)
    if not selected:
        raise ConfigError(f"meta_params: include={include} exclude={exclude} matches no parameter; the model's "
                          f"parameters are: {', '.join(names)}")
    return [n for n in names if n not in selected]


def head_keys(state_keys, head: Sequence[str]) -> set[str]:
    """The state_dict keys of a head given by its parameter names: the parameters and every buffer of the modules
    that hold them (a head's own BatchNorm statistics)."""
    head = set(head)
    owners = {h.rsplit(".", 1)[0] for h in head if "." in h}
    return {k for k in state_keys if k in head or ("." in k and k.rsplit(".", 1)[0] in owners)}
