"""``ModuleLearners``: T ``nn.Module`` task learners bound to the rows of theta by shared storage (see
trajshift/engine/learners.py for the interface, and docs/design.md for why storage-sharing views and not functional_call).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.flat import FlatSpec
from ..core.schema import opt, parse
from .backends import (
    AUTOCAST_DTYPES,
    BACKEND_CHOICES,
    BACKENDS,
    BACKWARD_MODES,
    Backend,
    BoundReplicas,
    fastest_backend,
)
from .backends.batched import batched_unsupported_reason
from .learners import DEFAULT_HEAD_PATTERNS, Learners, head_names

log = logging.getLogger(__name__)


@dataclass
class ExecutionConfig:
    """How the T learners run (trajshift.engine.learners.ModuleLearners); none of these changes the mathematics."""
    backend: str = opt("auto", choices=BACKEND_CHOICES)
    channels_last: bool = opt(False)
    autocast: str | None = opt(None, choices=tuple(AUTOCAST_DTYPES))
    compile: bool = opt(False)
    graphs: bool = opt(False, doc="CUDA graphs (torch.compile reduce-overhead) for each step's optimizer step, "
                                  "meta-update and shift, and for the batched groups; CUDA only")
    max_group: int | None = opt(None, low=1, doc="at most this many tasks per vmapped call (peak memory)")

    def validate_fields(self, where):
        if self.compile and self.backend == "loop":
            raise ConfigError(f"{where}.compile: torch.compile applies to the batched backend; set {where}.backend "
                              f"to batched or auto, or compile to false")


def require_cuda_for_graphs(device: torch.device) -> None:
    """execution.graphs off CUDA: refused in one line (the batched groups' graphs and the trainer's step graph)."""
    if device.type != "cuda":
        raise ConfigError(f"execution.graphs: CUDA graphs need a CUDA device; this run is on {device.type}; "
                          f"set execution.graphs: false")


BatchFn = Callable[[int, int, str], tuple[torch.Tensor, torch.Tensor]]


class ModuleLearners(Learners):
    """T nn.Module task learners.

    ``modules``: one module per task (e.g. a body with a head sized for that task's classes), or one module that
    is deep-copied T times. ``batch_fn(task, step, split) -> (inputs, targets)``. ``loss``: a callable
    ``(outputs, targets) -> scalar`` (default cross-entropy). Meta-learned parameters are chosen by
    ``include``/``exclude`` name globs and must have the same names and shapes in every replica.

    Execution options (none changes the mathematics; docs/PERFORMANCE.md measures each):

    * ``backend`` (a strategy of trajshift/engine/backends/): "loop" runs the replicas one after another; "batched" runs
      the tasks of each batch shape in one vmapped forward and backward; "auto" times both per group on the first
      step's batches (``auto_rounds`` rounds each, BatchNorm statistics and gradients restored afterwards) and keeps
      the faster, falling back to "loop" when batching is impossible. The choice is kept in checkpoints, so a
      resumed run continues on the same backend.
    * ``backward`` (loop backend): "per-task" (forward+backward one task at a time) or "summed".
    * ``channels_last`` (loop backend): inputs in NHWC memory format.
    * ``autocast``: None, "bf16" or "fp16": forward under ``torch.autocast``; parameters, gradients and optimizer
      state stay in the engine's dtype.
    * ``compile`` (batched backend): ``torch.compile`` each group's vmapped forward (one graph for its tasks).
    * ``graphs`` (CUDA only): each step's work after the backward (the optimizer step, and CTS's meta-update and
      shift) replays as CUDA graphs (trajshift/training/step_graph.py, the trainer's part), and the batched
      backend compiles each group's forward and backward in ``reduce-overhead`` mode; refused in one line on
      another device.
    * ``max_group`` (batched backend): at most this many tasks per vmapped call (bounds peak activation memory).

    The batched backend groups tasks by batch shape (mixed resolutions batch within their resolution); "auto"
    chooses loop or batched per group.
    """

    def __init__(self, modules: nn.Module | Sequence[nn.Module], batch_fn: BatchFn, num_tasks: int | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = DEFAULT_HEAD_PATTERNS,
                 backward: str = "per-task", backend: str = "loop", channels_last: bool = False,
                 autocast: str | None = None, compile: bool = False, auto_rounds: int = 3, graphs: bool = False,
                 max_group: int | None = None):
        if isinstance(modules, nn.Module):
            if num_tasks is None:
                raise ConfigError("num_tasks: required when a single module is given to be replicated")
            modules = [copy.deepcopy(modules) for _ in range(num_tasks)]
        if backward not in BACKWARD_MODES:
            raise ConfigError(f"backward: unknown value {backward!r}; allowed values: {', '.join(BACKWARD_MODES)}")
        # The same rules as the config's execution block (one schema; trajshift/core/schema.py).
        parse(ExecutionConfig, {"backend": backend, "channels_last": bool(channels_last), "autocast": autocast,
                                "compile": bool(compile), "graphs": bool(graphs), "max_group": max_group},
              "execution")
        # Each backend takes the options it lists (LoopBackend.options, BatchedBackend.options).
        self.backend_options = {"backward": backward, "compile": bool(compile), "graphs": bool(graphs),
                                "max_group": max_group}
        self.requested_backend = backend
        self.engine: Backend | None = None                # the strategy, built at bind (auto: at the first backward)
        self.backend_timings: dict[str, float] = {}       # ms per backward, when backend "auto" measured them
        self.channels_last = bool(channels_last)
        self.autocast = autocast
        self.auto_rounds = int(auto_rounds)
        self.modules = list(modules)
        self.num_tasks = len(self.modules)
        self.batch_fn = batch_fn
        self.loss = loss or nn.functional.cross_entropy
        head = set(head_names(self.modules[0], {"include": list(include), "exclude": list(exclude)}))
        meta = [n for n, _ in self.modules[0].named_parameters() if n not in head]
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
        self._device = self._phi0.device
        local_sizes = [s.numel for s in self.local_specs]
        self.local_offsets = [sum(local_sizes[:t]) for t in range(self.num_tasks)]
        self.local_numel = sum(local_sizes)
        self.batched_unsupported = batched_unsupported_reason(self.modules, self.spec.names)
        if backend == "batched" and self.batched_unsupported:
            raise ConfigError(f"backend: batched cannot run these task learners: {self.batched_unsupported}; "
                              f"use backend: loop or auto")

    def local_task_index(self) -> torch.Tensor:
        return torch.cat([torch.full((s.numel,), t, dtype=torch.long) for t, s in enumerate(self.local_specs)])

    def _local_params(self, m: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in m.named_parameters() if n not in self.spec.names}

    def initial_phi(self):
        if self._phi0 is None:
            raise ConfigError("these ModuleLearners are already bound to a Population (their modules' parameters "
                              "are now rows of its theta); build new ModuleLearners for another run")
        return self._phi0.clone()

    @property
    def device(self):
        return self._device

    def bind(self, theta, theta_grad):
        dtype = self.dtype = theta.dtype
        device = theta.device
        for m in self.modules:
            m.to(dtype=dtype, device=device)
        self.local = (torch.zeros(self.local_numel, dtype=dtype, device=device, requires_grad=True)
                      if self.local_numel else None)
        self.local_grad = torch.zeros(self.local_numel, dtype=dtype, device=device) if self.local_numel else None
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
        self.theta = theta
        # Every parameter's binding (its storage view and its .grad view), per task: the guard below re-points any
        # that an ordinary call of the user's replaced (zero_grad() sets .grad to None; .to()/.float() swap .data).
        self._bindings = [[(p, p.data, p.grad) for p in m.parameters()] for m in self.modules]
        # The Population has copied phi_0 into phi and theta: holding a third copy would cost memory for nothing.
        self._phi0 = None
        if self.backend_options["graphs"]:
            require_cuda_for_graphs(device)
        # What every backend computes through (and nothing else of this object): backends/base.py.
        self.bound = BoundReplicas(
            modules=tuple(self.modules), spec=self.spec, local_specs=tuple(self.local_specs),
            local_offsets=tuple(self.local_offsets), theta=theta, local=self.local, loss=self.loss,
            batch=self.engine_batch, rebind=self.rebind, autocast=self.autocast,
            batched_unsupported=self.batched_unsupported)
        if self.requested_backend != "auto":
            self.engine = self._make_backend(self.requested_backend)
        elif self.batched_unsupported:
            self.engine, _ = fastest_backend(self.bound, 0, "train", options=self.backend_options)   # loop, logged

    def _make_backend(self, name: str, **choice) -> Backend:
        """Backend ``name`` on the bound replicas, with the execution options it takes (and a checkpointed choice)."""
        cls = BACKENDS.get(name)
        return cls(self.bound, **{k: v for k, v in self.backend_options.items() if k in cls.options}, **choice)

    @property
    def backend(self) -> str:
        """The backend's name: the chosen one, or "auto" until auto has measured."""
        return self.engine.name if self.engine is not None else self.requested_backend

    def rebind(self, t: int) -> None:
        """Re-point task ``t``'s parameters at their rows of theta (and ``local``) and their gradient views, if an
        ordinary call replaced them since the last step: ``module.zero_grad()`` (set_to_none, torch's default) drops
        ``.grad``, after which backward would write a fresh tensor and theta's gradient row would stay zero (the
        task would silently freeze); ``module.to(...)``/``.float()`` swap ``.data`` for a copy. theta stays the one
        source of truth: a swapped copy is discarded (a no-op ``.to()`` swaps nothing). One identity check per
        parameter, before the task's forward."""
        bindings = self._bindings[t]
        if all(p.grad is g and p.data_ptr() == v.data_ptr() for p, v, g in bindings):
            return
        with torch.no_grad():
            for p, v, g in bindings:
                if p.data_ptr() != v.data_ptr():
                    p.data = v
                if p.grad is not g:
                    p.grad = g
        log.debug("task %d: parameter binding restored (a zero_grad(set_to_none=True) or .to() of the module)", t)

    def losses(self, step, split="train"):
        return self._engine_for(step, split).losses(step, split)

    def backward(self, step, split="train"):
        return self._engine_for(step, split).backward(step, split)

    def engine_batch(self, t: int, step: int, split: str):
        """Task t's batch as every backend feeds it: inputs in the run's dtype (NHWC with channels_last)."""
        x, y = self.batch_fn(t, step, split)
        x = x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _engine_for(self, step: int, split: str) -> Backend:
        if self.engine is None:                             # backend auto, first call: measure once
            self.engine, self.backend_timings = fastest_backend(self.bound, step, split, self.auto_rounds,
                                                                self.backend_options)
        return self.engine

    def losses_at(self, theta, step, split="train"):
        out = []
        for t, m in enumerate(self.modules):
            m.train(split == "train")
            x, y = self.engine_batch(t, step, split)
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
                "local": None if self.local is None else self.local.detach().clone(),
                "backend": self.backend, "backend_choice": self.engine.choice() if self.engine is not None else {}}

    @torch.no_grad()
    def load_state_dict(self, state):
        # A run resumed with backend "auto" continues on the backend it chose (same floating-point path).
        if self.engine is None and state.get("backend") in BACKENDS:
            self.engine = self._make_backend(state["backend"], **state.get("backend_choice", {}))
        for m, bufs in zip(self.modules, state["buffers"]):
            own = dict(m.named_buffers())
            for n, v in bufs.items():
                own[n].copy_(v)
        if self.local is not None and state.get("local") is not None:
            self.local.copy_(state["local"])

    def task_state_dict(self, task: int, phi: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Task ``task``'s full module state_dict, with the meta-learned part taken from ``phi`` when given."""
        if hasattr(self, "_bindings"):
            self.rebind(task)
        sd = {k: v.detach().clone() for k, v in self.modules[task].state_dict().items()}
        if phi is not None:
            sd.update(self.spec.to_state_dict(phi))
        return sd
