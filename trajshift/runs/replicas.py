"""The T task replicas every front door trains: one module per task, the same body everywhere, each task its own head.

    template = make(0, 2) under seed stream_seed(seed, 0xB0D7); its body is every task's (or init_from's, loaded
               into it: trajshift/data/init_file.py, heads never unless init_heads). (A head the rule leaves
               meta-learned, warned about, needs one class count: the template is then built with it.)
    task t   = make(t, C_t) under seed stream_seed(seed, t, 0x4EAD) (its head; t is the task's global index, so a
               task gets the same head whichever process builds it), then the template's body loaded into it

The head is resolved once, on the template (trajshift/models/heads.py): from ``head`` (the API's names) or from
``meta_params`` (a config's include/exclude). Every parameter that is not head is meta-learned.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.sampling import stream_seed
from ..data.init_file import LoadSummary
from ..models.heads import head_from_meta_params, head_keys, head_parameter_names

TEMPLATE_CLASSES = 2


@dataclass
class Replicas:
    models: list[nn.Module]
    template: nn.Module
    head: list[str]                       # the head's parameter names
    load_summary: LoadSummary | None = None

    @property
    def meta_params(self) -> dict:
        """The engine's filter for this head: everything but these exact names."""
        return {"include": ["*"], "exclude": list(self.head)}


def resolve_head(template: nn.Module, head=None, meta_params: dict | None = None) -> list[str]:
    if head is not None and meta_params is not None:
        raise ConfigError("head and meta_params: give one of them (head names the head; meta_params selects what "
                          "is meta-learned)")
    if meta_params is not None:
        return head_from_meta_params(template, meta_params)
    return head_parameter_names(template, head)


def warn_class_dependent_meta_params(make: Callable[[int], nn.Module], head: set[str], what: str) -> list[str]:
    """Warn (and return the names) when a meta-learned parameter's shape depends on the class count: it is a head
    that the head rule missed (say a head named ``out``), meta-learned silently when the tasks' class counts happen
    to be equal. Found by building the model for 2 and 3 classes."""
    a, b = ({n: tuple(p.shape) for n, p in make(c).named_parameters()} for c in (2, 3))
    culprits = [n for n in a if n not in head and a[n] != b.get(n)]
    if culprits:
        warnings.warn(f"{what}: {', '.join(culprits)} change shape with the number of classes, so they are a head, "
                      f"but the head rule meta-learns them; name the head (head='{culprits[0].rsplit('.', 1)[0]}' in "
                      f"the Python API, meta_params: {{exclude: [{culprits[0].rsplit('.', 1)[0]}]}} in a config)",
                      stacklevel=3)
    return culprits


def build_replicas(make: Callable[[int, int], nn.Module], num_classes: list[int], seed: int,
                   task_ids: list[int] | None = None, head=None, meta_params: dict | None = None, init_from=None,
                   init_heads: bool = False, log=print, what: str = "model") -> Replicas:
    """One module per task (see the module docstring). ``init_from``: a path, a state_dict or anything with
    ``init_state_dict()`` (a FitResult)."""
    task_ids = list(task_ids) if task_ids is not None else list(range(len(num_classes)))
    torch.manual_seed(stream_seed(seed, 0xB0D7))
    template = make(0, TEMPLATE_CLASSES)
    if not isinstance(template, nn.Module):
        raise ConfigError(f"{what}: the model factory returned a {type(template).__name__}, not an nn.Module")
    head_names = resolve_head(template, head, meta_params)
    culprits = warn_class_dependent_meta_params(lambda c: make(0, c), set(head_names), what)
    if culprits:
        # A meta-learned parameter that depends on the class count can only be shared by tasks of one class count:
        # the template is then built with it.
        if len(set(num_classes)) > 1:
            raise ConfigError(f"{what}: {culprits[0]} changes shape with the number of classes and is meta-learned, "
                              f"but the tasks have {sorted(set(num_classes))} classes; name the head (head="
                              f"'{culprits[0].rsplit('.', 1)[0]}' in the Python API, meta_params: {{exclude: "
                              f"[{culprits[0].rsplit('.', 1)[0]}]}} in a config)")
        torch.manual_seed(stream_seed(seed, 0xB0D7))
        template = make(0, num_classes[0])
    summary = loaded = None
    if init_from is not None:
        from ..data.init_file import load_pretrained
        loaded, source = init_tensors(init_from)
        summary = load_pretrained(template, loaded, set(head_names), source, heads=False)
        log(summary.format())
    skip = head_keys(template.state_dict(), head_names)
    body = {k: v for k, v in template.state_dict().items() if k not in skip}
    models = []
    for t, c in zip(task_ids, num_classes):
        torch.manual_seed(stream_seed(seed, t, 0x4EAD))
        m = make(t, c)
        own = m.state_dict()
        bad = [k for k, v in body.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"{what}: task {t}'s module differs from the template's in {bad[0]} (the body must be "
                              f"the same in every task; only the head may depend on the class count)")
        m.load_state_dict(body, strict=False)
        if loaded is not None and init_heads:
            from ..data.init_file import load_pretrained
            load_pretrained(m, loaded, set(), f"{source} (heads, task {t})", heads=True)
        models.append(m)
    return Replicas(models, template, head_names, summary)


def init_tensors(init) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, where) of an initialization given as a path (file or run folder), a state_dict or a FitResult."""
    if hasattr(init, "init_state_dict"):
        return init.init_state_dict(), "the fit result"
    if isinstance(init, dict):
        return init, "a state_dict"
    from pathlib import Path

    from ..data.init_file import read_init
    if isinstance(init, (str, Path)):
        return read_init(init)[0], str(init)
    raise ConfigError(f"init: expected a file path, a state_dict, a FitResult or None; got {type(init).__name__}")
