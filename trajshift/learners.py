"""The T task learners as the engine sees them.

The engine owns theta [T, P] (meta-learned scalars, one row per task) and its gradient buffer of the same shape.
A ``Learners`` object turns a step index into per-task losses [T] that are differentiable with respect to theta:

* ``FunctionLearners``: any function ``loss_fn(theta [T, P], step, split) -> [T]`` (the synthetic 2-D tasks, quadratic
  test problems);
* ``ModuleLearners``: T ``nn.Module`` replicas. Their meta-learned parameters (chosen by a name filter; default: all but
  the classifier head) are bound to rows of theta by *sharing storage*: ``p.data`` is a view of ``theta[t]`` and
  ``p.grad`` a view of ``theta_grad[t]``. Forward and backward are then exactly the user's own module code (no
  functional_call overhead on the hot path), autograd accumulates straight into theta's gradient buffer, and one
  optimizer step over theta updates every task. Per-task parts that are not meta-learned (heads of any size) are
  bound the same way into one flat ``local`` vector; BatchNorm running statistics stay in each replica.

Batches are a pure function of (task, step, split) (see ``batch_indices``), which makes "re-run the first k steps"
(cts-accurate) and exact resume possible without storing data-loader state.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .flat import FlatSpec

DEFAULT_HEAD_PATTERNS = ("fc.*", "head.*", "classifier.*")


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across Python versions and processes (unlike hash())."""
    acc = 0x9E3779B97F4A7C15
    for x in parts:
        acc = ((acc ^ (int(x) & 0xFFFF_FFFF_FFFF_FFFF)) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return acc & 0x7FFF_FFFF_FFFF_FFFF


@functools.lru_cache(maxsize=256)
def _epoch_permutation(num_items: int, seed: int, task: int, epoch: int) -> torch.Tensor:
    # Cached: consecutive batches of an epoch share one permutation (randperm of 100k items costs ~1 ms).
    gen = torch.Generator().manual_seed(stream_seed(seed, task, epoch))
    return torch.randperm(num_items, generator=gen)


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, task: int) -> torch.Tensor:
    """Indices of the ``step``-th mini-batch (step >= 0): epochs of a seeded permutation, without replacement.

    Epoch e = step * batch_size // num_items uses permutation ``randperm(num_items)`` from a generator seeded by
    (seed, task, e); a batch that crosses an epoch boundary takes the tail of one and the head of the next.
    """
    if num_items < 1:
        raise ConfigError(f"task {task}: the dataset is empty")
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, num_items)
        perm = _epoch_permutation(num_items, seed, task, epoch)
        take = min(num_items - offset, start + batch_size - pos)
        out.append(perm[offset:offset + take])
        pos += take
    return torch.cat(out)


class Learners:
    """Interface the engine needs. Subclasses set ``num_tasks``, ``spec`` (the meta-learned FlatSpec)."""

    num_tasks: int
    spec: FlatSpec
    local: torch.Tensor | None = None        # flat per-task parameters that are not meta-learned (heads)
    local_grad: torch.Tensor | None = None

    @property
    def meta_numel(self) -> int:
        return self.spec.numel

    def initial_phi(self) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, theta: torch.Tensor, theta_grad: torch.Tensor) -> None:
        """Attach theta [T, P] and its gradient buffer; called once by the Population."""
        raise NotImplementedError

    def losses(self, step: int, split: str = "train") -> torch.Tensor:
        """Per-task losses [T] at the bound theta, differentiable into the bound gradient buffers."""
        raise NotImplementedError

    def backward(self, step: int, split: str = "train") -> torch.Tensor:
        """Backpropagate every task's loss into the bound gradient buffers (already zeroed); returns the detached
        per-task losses [T]. Default: one backward of sum_t L^(t) (row t's gradient depends on task t only)."""
        losses = self.losses(step, split)
        losses.sum().backward()
        return losses.detach()

    def losses_at(self, theta: torch.Tensor, step: int, split: str = "train") -> torch.Tensor:
        """Per-task losses [T] as a differentiable function of a given theta [T, P] (used for Hessian products).
        Must not change any state (BatchNorm statistics included)."""
        raise NotImplementedError

    def local_task_index(self) -> torch.Tensor:
        """For each scalar of ``local``, the task it belongs to ([L] long)."""
        raise NotImplementedError

    def reset_local(self, heads: bool = True, batchnorm: bool = True) -> None:
        """Re-initialise the parts that are not meta-learned (heads, BatchNorm statistics): a "hard reset"."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FunctionLearners(Learners):
    """T learners whose loss is a function of the parameter rows: ``loss_fn(theta [T, P], step, split) -> [T]``."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, int, str], torch.Tensor], phi0: torch.Tensor,
                 num_tasks: int, name: str = "theta"):
        phi0 = torch.as_tensor(phi0)
        if phi0.dim() != 1:
            raise ConfigError(f"phi0: expected a flat vector [P], got shape {tuple(phi0.shape)}")
        self.loss_fn = loss_fn
        self.num_tasks = int(num_tasks)
        self._phi0 = phi0.detach().clone()
        self.spec = FlatSpec((name,), ((phi0.numel(),),))
        self.theta: torch.Tensor | None = None

    def initial_phi(self) -> torch.Tensor:
        return self._phi0.clone()

    def bind(self, theta, theta_grad):
        self.theta = theta
        theta.grad = theta_grad

    def losses(self, step, split="train"):
        return self.loss_fn(self.theta, step, split)

    def losses_at(self, theta, step, split="train"):
        return self.loss_fn(theta, step, split)


def select_meta_names(names: Sequence[str], include: Sequence[str] = ("*",),
                      exclude: Sequence[str] = DEFAULT_HEAD_PATTERNS, option: str = "meta_params") -> list[str]:
    """Names that match an ``include`` pattern and no ``exclude`` pattern (fnmatch globs, e.g. 'fc.*')."""
    chosen = [n for n in names
              if any(fnmatch.fnmatchcase(n, p) for p in include) and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise ConfigError(
            f"{option}: include={list(include)} exclude={list(exclude)} matches no parameter; "
            f"the model's parameters are: {', '.join(names)}")
    return chosen


BatchFn = Callable[[int, int, str], tuple[torch.Tensor, torch.Tensor]]


class ModuleLearners(Learners):
    """T nn.Module task learners.

    ``modules``: one module per task (e.g. a body with a head sized for that task's classes), or one module that
    is deep-copied T times. ``batch_fn(task, step, split) -> (inputs, targets)``. ``loss``: a callable
    ``(outputs, targets) -> scalar`` (default cross-entropy). Meta-learned parameters are chosen by
    ``include``/``exclude`` name globs and must have the same names and shapes in every replica.
    """

    def __init__(self, modules: nn.Module | Sequence[nn.Module], batch_fn: BatchFn, num_tasks: int | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = DEFAULT_HEAD_PATTERNS,
                 backward: str = "per-task"):
        if isinstance(modules, nn.Module):
            if num_tasks is None:
                raise ConfigError("num_tasks: required when a single module is given to be replicated")
            modules = [copy.deepcopy(modules) for _ in range(num_tasks)]
        if backward not in ("per-task", "summed"):
            raise ConfigError(f"backward: unknown value {backward!r}; allowed values: per-task, summed")
        self.backward_mode = backward
        self.modules = list(modules)
        self.num_tasks = len(self.modules)
        self.batch_fn = batch_fn
        self.loss = loss or nn.functional.cross_entropy
        names0 = [n for n, _ in self.modules[0].named_parameters()]
        meta = select_meta_names(names0, include, exclude)
        self.spec = FlatSpec.from_tensors([(n, p) for n, p in self.modules[0].named_parameters() if n in meta])
        for t, m in enumerate(self.modules):
            params = dict(m.named_parameters())
            for n, shape in zip(self.spec.names, self.spec.shapes):
                if n not in params or tuple(params[n].shape) != shape:
                    raise ConfigError(f"task {t}: meta-learned parameter {n!r} is missing or has shape "
                                      f"{tuple(params[n].shape) if n in params else None}, expected {shape}")
        self.local_specs = [FlatSpec.from_tensors([(n, p) for n, p in m.named_parameters() if n not in self.spec.names])
                            for m in self.modules]
        self._initial_local = [self._local_params(m) for m in self.modules]
        self._initial_buffers = [copy.deepcopy(dict(m.named_buffers())) for m in self.modules]
        self._phi0 = self.spec.flatten({n: p.detach() for n, p in self.modules[0].named_parameters()}).clone()
        local_sizes = [s.numel for s in self.local_specs]
        self.local_offsets = [sum(local_sizes[:t]) for t in range(self.num_tasks)]
        self.local_numel = sum(local_sizes)

    def local_task_index(self) -> torch.Tensor:
        return torch.cat([torch.full((s.numel,), t, dtype=torch.long) for t, s in enumerate(self.local_specs)])

    def _local_params(self, m: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in m.named_parameters() if n not in self.spec.names}

    def initial_phi(self):
        return self._phi0.clone()

    def bind(self, theta, theta_grad):
        dtype = self.dtype = theta.dtype
        for m in self.modules:
            m.to(dtype)
        self.local = torch.zeros(self.local_numel, dtype=dtype, requires_grad=True) if self.local_numel else None
        self.local_grad = torch.zeros(self.local_numel, dtype=dtype) if self.local_numel else None
        if self.local is not None:
            self.local.grad = self.local_grad
        for t, m in enumerate(self.modules):
            params = dict(m.named_parameters())
            meta_values = self.spec.views(theta.data[t])
            meta_grads = self.spec.views(theta_grad[t])
            for n in self.spec.names:
                params[n].data = meta_values[n]
                params[n].grad = meta_grads[n]
            if self.local is not None:
                lo = self.local_offsets[t]
                spec = self.local_specs[t]
                values = spec.views(self.local.data[lo:lo + spec.numel])
                grads = spec.views(self.local_grad[lo:lo + spec.numel])
                for n in spec.names:
                    values[n].copy_(self._initial_local[t][n])
                    params[n].data = values[n]
                    params[n].grad = grads[n]
        theta.grad = theta_grad

    def _batch(self, t, step, split):
        x, y = self.batch_fn(t, step, split)
        return (x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x), y

    def losses(self, step, split="train"):
        out = []
        for t, m in enumerate(self.modules):
            m.train(split == "train")
            x, y = self._batch(t, step, split)
            out.append(self.loss(m(x), y))
        return torch.stack(out)

    def backward(self, step, split="train"):
        # Default: forward and backward one task at a time, so each task's activations are freed before the next
        # task's forward. "summed" (one backward over the sum of all T graphs) keeps every task's activations alive
        # at once (T x the activation memory); on CPU it measured 1.08x slower with 1 thread, 0.95x with 2
        # (docs/PERFORMANCE.md).
        if self.backward_mode == "summed":
            return super().backward(step, split)
        out = torch.empty(self.num_tasks, dtype=self.dtype)
        for t, m in enumerate(self.modules):
            m.train(split == "train")
            x, y = self._batch(t, step, split)
            loss = self.loss(m(x), y)
            loss.backward()
            out[t] = loss.detach()
        return out

    def losses_at(self, theta, step, split="train"):
        out = []
        for t, m in enumerate(self.modules):
            m.train(split == "train")
            x, y = self._batch(t, step, split)
            state = {n: b.clone() for n, b in m.named_buffers()}    # leave the real BatchNorm statistics alone
            state.update(self.spec.views(theta[t]))
            out.append(self.loss(torch.func.functional_call(m, state, (x,)), y))
        return torch.stack(out)

    @torch.no_grad()
    def reset_local(self, heads=True, batchnorm=True):
        for t, m in enumerate(self.modules):
            if heads:
                params = dict(m.named_parameters())
                for n, v in self._initial_local[t].items():
                    params[n].copy_(v)
            if batchnorm:
                buffers = dict(m.named_buffers())
                for n, v in self._initial_buffers[t].items():
                    buffers[n].copy_(v)

    def state_dict(self):
        return {"buffers": [{n: b.detach().clone() for n, b in m.named_buffers()} for m in self.modules],
                "local": None if self.local is None else self.local.detach().clone()}

    @torch.no_grad()
    def load_state_dict(self, state):
        for m, bufs in zip(self.modules, state["buffers"]):
            own = dict(m.named_buffers())
            for n, v in bufs.items():
                own[n].copy_(v)
        if self.local is not None and state.get("local") is not None:
            self.local.copy_(state["local"])

    def task_state_dict(self, task: int, phi: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Task ``task``'s full module state_dict, with the meta-learned part taken from ``phi`` when given."""
        sd = {k: v.detach().clone() for k, v in self.modules[task].state_dict().items()}
        if phi is not None:
            sd.update(self.spec.to_state_dict(phi))
        return sd
