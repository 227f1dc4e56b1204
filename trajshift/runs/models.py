"""How a model crosses the front doors: a factory the run layer calls per task, the spec init.json records so that
``meta-test``, ``report`` and ``finetune`` can rebuild it, and the description a run's identity holds.

Calling conventions (``call`` in a spec; one declaration, used by every door through ``build_model``):

* ``"num_classes="``: ``factory(num_classes=C, **options)``: registered models, YAML ``model: {factory: ...}``, a
  class or function whose first parameter is ``num_classes``;
* ``"task, num_classes"``: ``factory(task_index, C)``: the Python API's ``model_fn(task, num_classes)``.

A model given to ``fit`` as an importable function or class is recorded as ``{"factory": "module:qualname",
"call": ...}`` (a ``functools.partial`` of one with its JSON-able keyword arguments as options); a lambda, a local
function or a module instance cannot be rebuilt elsewhere: init.json then says so, and ``meta-test`` refuses it in
one line saying how to name the model.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..core.errors import ConfigError
from ..models import CALL_NUM_CLASSES, CALL_TASK_NUM_CLASSES, build_model

ModelFn = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class ModelSource:
    """``make(task, num_classes)``; ``spec``: what init.json records (None when it cannot be rebuilt elsewhere);
    ``why_not``: the reason then, and how to name the model."""
    make: ModelFn
    spec: dict | None
    why_not: str = ""


def _import_path(obj) -> str | None:
    """``module:qualname`` when importing it gives back this very object, else None (lambdas, locals, __main__)."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qual or "<" in qual or module == "__main__":
        return None
    try:
        import importlib
        found = importlib.import_module(module)
        for part in qual.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qual}" if found is obj else None


def calling_convention(fn) -> str:
    """``num_classes=`` when the callable takes a ``num_classes`` parameter first (or by keyword only), else the
    API's ``task, num_classes``."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return CALL_TASK_NUM_CLASSES
    if params and params[0].name == "num_classes":
        return CALL_NUM_CLASSES
    required = [p for p in params if p.default is p.empty and p.kind != p.KEYWORD_ONLY]
    if len(required) <= 1 and any(p.name == "num_classes" for p in params):
        return CALL_NUM_CLASSES
    return CALL_TASK_NUM_CLASSES


def model_source(model) -> ModelSource:
    """The run layer's view of what a user gave as the model: an nn.Module (copied per task), a model_fn(task,
    num_classes), a factory taking num_classes=, a functools.partial of either, or a registered/factory spec dict."""
    if isinstance(model, dict):
        spec = dict(model)
        return ModelSource(lambda task, c: build_model(spec, c, task), spec)
    if isinstance(model, nn.Module):
        return ModelSource(lambda task, c: copy.deepcopy(model), None,
                           f"an nn.Module instance ({type(model).__name__}) was given; pass its class or a factory "
                           f"function by import path (fit(my_pkg.models.MyNet, ...)) so other commands can rebuild it")
    if not callable(model):
        raise ConfigError(f"model: expected an nn.Module, model_fn(task_index, num_classes), a factory taking "
                          f"num_classes=, or a spec dict; got {type(model).__name__}")
    options: dict = {}
    target = model
    if isinstance(model, functools.partial):
        target, options = model.func, dict(model.keywords)
        if model.args:
            return ModelSource(_caller(model, calling_convention(model)), None,
                               "a functools.partial with positional arguments cannot be recorded; bind them by "
                               "keyword")
    call = calling_convention(model)
    path = _import_path(target)
    make = _caller(model, call)
    if path is None:
        return ModelSource(make, None, f"the model factory {getattr(target, '__qualname__', target)!r} has no import "
                                       f"path (a lambda, a local function or a __main__ one); define it in a module "
                                       f"and pass it by name so other commands can rebuild the model")
    try:
        json.dumps(options)
    except TypeError:
        return ModelSource(make, None, f"the options of {path} are not JSON values; pass plain values")
    return ModelSource(make, {"factory": path, "call": call, **options})


def _caller(fn, call: str) -> ModelFn:
    if call == CALL_NUM_CLASSES:
        return lambda task, c: fn(num_classes=c)
    return lambda task, c: fn(task, c)


def describe_model(spec: dict | None, template: nn.Module) -> dict:
    """The model as a run's identity holds it: its spec where it has one, and always its class and the names and
    shapes of its body's parameters (so a rebuilt lambda of another architecture is told apart)."""
    shapes = {n: list(p.shape) for n, p in template.named_parameters()}
    return {"spec": spec, "class": f"{type(template).__module__}:{type(template).__qualname__}",
            "parameters": shapes}
