"""The batched backend (``BatchedBackend``, backend "batched"): all T task learners in one forward and one backward, by
``torch.func.vmap`` over the rows of theta.

The loop backend (backends/loop.py) runs the T replicas one after another. This backend instead calls
one template module through ``torch.func.functional_call`` under ``vmap``, with, for task t,

* meta-learned parameters: views of row t of theta (``theta[:, off:off + n].view(T, *shape)``: no copy; autograd
  accumulates straight into theta's gradient buffer, as in the loop backend);
* per-task parameters that are not meta-learned (heads): gathered from the flat ``local`` vector into *padded*
  tensors [T, *max_shape]; the padding reads a constant zero slot, so its gradient is discarded. When tasks have
  different class counts, the padded logits are masked with -inf, so ``softmax``/cross-entropy give them
  probability exactly 0 and the loss of task t equals the loss of its own C_t-way head;
* BatchNorm statistics: one stacked tensor [T, *shape] per buffer. The replicas' buffers are re-pointed to its rows,
  so checkpoints, resets and ``task_state_dict`` see one and the same storage, and BatchNorm's in-place running
  statistics update under vmap writes task t's row only.

vmap turns convolutions with per-task weights into grouped convolutions and linear layers into batched matrix
products, so T small models become one larger kernel launch each: the gain is on accelerators, where T separate
small kernels leave the device idle. On a 2-core CPU it is slower than the loop (docs/PERFORMANCE.md), which is why
``backend: auto`` measures both at start-up.

Requirements (checked, with a message naming the culprit): every task has the same non-meta-learned parameter names
with the same number of dimensions; the same buffers with the same shapes. Tasks whose batches differ in shape (input
resolution, batch size) run in groups of one shape each (BatchedBackend), one vmapped call per group.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.flat import FlatSpec
from .base import AUTOCAST_DTYPES, BoundReplicas
from .loop import module_loss


def _set_by_name(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, leaf, value)


def batched_unsupported_reason(modules: Sequence[nn.Module], meta_names: Sequence[str]) -> str | None:
    """Why these replicas cannot share one batched forward (None when they can)."""
    meta = set(meta_names)
    ref_local = {n: p.dim() for n, p in modules[0].named_parameters() if n not in meta}
    ref_buffers = {n: tuple(b.shape) for n, b in modules[0].named_buffers()}
    for t, m in enumerate(modules[1:], start=1):
        local = {n: p.dim() for n, p in m.named_parameters() if n not in meta}
        if local != ref_local:
            return (f"task {t}'s non-meta-learned parameters {sorted(local.items())} differ in names or dimensions "
                    f"from task 0's {sorted(ref_local.items())}")
        buffers = {n: tuple(b.shape) for n, b in m.named_buffers()}
        if buffers != ref_buffers:
            return f"task {t}'s buffers differ in names or shapes from task 0's"
        if type(m) is not type(modules[0]):
            return f"task {t}'s module is a {type(m).__name__}, task 0's a {type(modules[0]).__name__}"
    return None


class GroupForward:
    """One vmapped forward of all T replicas; see the module docstring."""

    def __init__(self, modules: Sequence[nn.Module], spec: FlatSpec, local_specs: Sequence[FlatSpec],
                 local_offsets: Sequence[int], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 compile: bool = False, autocast_dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", graphs: bool = False):
        reason = batched_unsupported_reason(modules, spec.names)
        if reason is not None:
            raise ConfigError(f"backend: batched cannot run these task learners: {reason}; use backend: loop")
        self.T = len(modules)
        self.spec = spec
        self.loss = loss
        # Every tensor the template uses is passed to functional_call, so its own need not hold memory.
        self.template = copy.deepcopy(modules[0]).to("meta")
        # Index maps for the padded per-task (head) tensors: entry = position in `local`, or L (a zero slot).
        self.local_names = list(local_specs[0].names)
        local_numel = sum(s.numel for s in local_specs)
        self.local_index: dict[str, torch.Tensor] = {}
        for j, name in enumerate(self.local_names):
            shapes = [s.shapes[s.names.index(name)] for s in local_specs]
            padded = tuple(max(sizes) for sizes in zip(*shapes))
            index = torch.full((self.T, *padded), local_numel, dtype=torch.long, device=device)
            for t, s in enumerate(local_specs):
                k = s.names.index(name)
                start = local_offsets[t] + s.offsets[k]
                corner = tuple(slice(0, d) for d in s.shapes[k])
                index[(t, *corner)] = torch.arange(start, start + s.numels[k], device=device).view(s.shapes[k])
            self.local_index[name] = index
        self.buffers: dict[str, torch.Tensor] = {}
        self.num_outputs: list[int] | None = None      # per-task output size, probed at the first forward
        self.mask: torch.Tensor | None = None          # [T, C_max] of 0 / -inf when class counts differ
        template, loss_fn = self.template, self.loss

        device_type = torch.device(device).type

        # autocast entered outside vmap does not reach the per-task operators, so it is entered inside. Even so,
        # in torch 2.13 vmap's convolution rule bypasses autocast (conv2d stayed float32; linear layers and matrix
        # products do run in bf16). So the convolutions are cast by hand: their weights and inputs in the low
        # precision, their outputs back to float32, so that BatchNorm (whose statistics are float32) and the rest
        # see float32; the gradient reaches the float32 parameters through the casts.
        conv_params = set()
        if autocast_dtype is not None:
            for name, mod in template.named_modules():
                if isinstance(mod, nn.modules.conv._ConvNd):
                    conv_params |= {f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)}
                    mod.register_forward_pre_hook(lambda m, inp: (inp[0].to(autocast_dtype), *inp[1:]))
                    mod.register_forward_hook(lambda m, inp, out: out.float())

        def one_task(p, b, xt, yt, *mask):
            if conv_params:
                p = {k: v.to(autocast_dtype) if k in conv_params else v for k, v in p.items()}
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = torch.func.functional_call(template, {**p, **b}, (xt,))
            if mask:
                out = out + mask[0]
            return loss_fn(out, yt)

        # Built once: torch.compile caches its graphs on this function object.
        self._fn = torch.func.vmap(one_task)
        if compile:
            self._fn = torch.compile(self._fn, mode="reduce-overhead" if graphs else None)

    def bind_buffers(self, modules: Sequence[nn.Module]) -> None:
        """Stack every replica's buffers into [T, ...] tensors and point the replicas at their rows."""
        names = [n for n, _ in modules[0].named_buffers()]
        for name in names:
            rows = [dict(m.named_buffers())[name] for m in modules]
            stacked = torch.stack([r.detach() for r in rows]).clone()
            self.buffers[name] = stacked
            for t, m in enumerate(modules):
                _set_by_name(m, name, stacked[t])

    def _probe_outputs(self, modules: Sequence[nn.Module], x: torch.Tensor) -> None:
        # Each task's own output size, from its own replica on one example (eval mode: no statistic changes).
        sizes = []
        with torch.no_grad():
            for t, m in enumerate(modules):
                was_training = m.training
                m.eval()
                sizes.append(int(m(x[t][:1]).shape[-1]))
                m.train(was_training)
        self.num_outputs = sizes
        if len(set(sizes)) > 1:
            mask = torch.zeros(self.T, max(sizes), dtype=x.dtype, device=x.device)
            for t, c in enumerate(sizes):
                mask[t, c:] = float("-inf")
            self.mask = mask

    def losses(self, modules: Sequence[nn.Module], theta: torch.Tensor, local: torch.Tensor | None,
               x: torch.Tensor, y: torch.Tensor, train: bool) -> torch.Tensor:
        """Per-task losses [T] for stacked inputs x [T, B, ...] and targets y [T, B]."""
        if self.num_outputs is None:
            self._probe_outputs(modules, x)
        params = self.spec.views(theta)
        if local is not None:
            local_ext = torch.cat([local, local.new_zeros(1)])
            params.update({n: local_ext[idx] for n, idx in self.local_index.items()})
        self.template.train(train)
        extra = () if self.mask is None else (self.mask,)
        return self._fn(params, self.buffers, x, y, *extra)


class BatchedBackend:
    """backend "batched": the strategy around GroupForward. Tasks are grouped by the shape of their batches
    (inputs and targets: resolution, channels, batch size), so tasks at the paper's mixed resolutions (28, 32, 64,
    84 px) batch within their resolution instead of falling back to the loop. Groups are formed at the first step
    from that step's batches (a task's shapes do not change), in task order. Each group runs in one of two modes:

        batched  one vmapped forward and backward for the group's tasks (GroupForward)
        loop     the group's tasks one after another through their own modules (a group of one task, or a shape
                 where vmap is slower: backend "auto" times both per group, once, and checkpoints the choice)

    and each group's backward runs before the next group's forward, so only one group's activations are alive at
    a time. Options: ``max_group`` bounds the tasks per vmapped call (peak memory: activations of at most that many
    tasks); ``compile`` wraps each group's vmapped forward in torch.compile; ``graphs`` (CUDA only) compiles it in
    ``reduce-overhead`` mode, which replays the group's forward and backward kernels as CUDA graphs (one launch
    instead of hundreds of small ones); ``group_modes``: the per-group modes (default all batched; "auto" and a
    resumed checkpoint give them). BatchNorm statistics stay per task (each group stacks its own tasks' buffers)."""
    name = "batched"
    options = ("compile", "graphs", "max_group")
    MODES = ("batched", "loop")

    def __init__(self, bound: BoundReplicas, compile: bool = False, graphs: bool = False,
                 max_group: int | None = None, group_modes: Sequence[str] | None = None):
        if bound.batched_unsupported:
            raise ConfigError(f"backend: batched cannot run these task learners: {bound.batched_unsupported}; "
                              f"use backend: loop or auto")
        if group_modes is not None and any(m not in self.MODES for m in group_modes):
            raise ConfigError(f"group_modes: expected {' or '.join(self.MODES)} per group, got {list(group_modes)}")
        self.bound = bound
        self.compile, self.graphs, self.max_group = bool(compile), bool(graphs), max_group
        self.group_modes: list[str] | None = list(group_modes) if group_modes is not None else None
        self.groups: list[list[int]] | None = None
        self.forwards: list[GroupForward | None] = []
        self._order: torch.Tensor | None = None

    def choice(self) -> dict:
        return {} if self.group_modes is None else {"group_modes": list(self.group_modes)}

    def batches(self, step: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every task's batch of this step; the groups are formed from the first step's."""
        bound = self.bound
        for t in range(bound.num_tasks):     # the replicas' buffers and views back the checkpoints and state_dicts
            bound.rebind(t)
        batches = [bound.batch(t, step, split) for t in range(bound.num_tasks)]
        if self.groups is None:
            self._build(batches)
        return batches

    def _build(self, batches) -> None:
        """The groups of tasks whose batches share their shapes, and one GroupForward per batched group."""
        bound = self.bound
        by_shape: dict[tuple, list[int]] = {}
        for t, (x, y) in enumerate(batches):
            by_shape.setdefault((tuple(x.shape), tuple(y.shape)), []).append(t)
        groups = []
        for members in by_shape.values():
            size = self.max_group or len(members)
            groups += [members[i:i + size] for i in range(0, len(members), size)]
        if self.group_modes is None:
            self.group_modes = ["batched"] * len(groups)
        elif len(self.group_modes) != len(groups):
            raise ConfigError(f"group_modes: {len(self.group_modes)} modes for {len(groups)} groups of tasks "
                              f"{groups}; the checkpoint is of another task set or max_group")
        self.groups = groups
        self.forwards = [self._forward(g) for g in groups]
        flat = [t for g in groups for t in g]
        self._order = torch.argsort(torch.tensor(flat, device=bound.theta.device))    # group order -> task order

    def _forward(self, group: list[int]) -> GroupForward:
        bound = self.bound
        forward = GroupForward([bound.modules[t] for t in group], bound.spec, [bound.local_specs[t] for t in group],
                               [bound.local_offsets[t] for t in group], bound.loss,
                               compile=self.compile or self.graphs, graphs=self.graphs,
                               autocast_dtype=AUTOCAST_DTYPES.get(bound.autocast), device=bound.theta.device)
        forward.bind_buffers([bound.modules[t] for t in group])
        return forward

    @staticmethod
    def _rows(theta: torch.Tensor, group: list[int]) -> torch.Tensor:
        """theta's rows of a group: a view when they are contiguous (gradients land in place), else a gather."""
        if group == list(range(group[0], group[0] + len(group))):
            return theta[group[0]:group[0] + len(group)]
        return theta.index_select(0, torch.tensor(group, device=theta.device))

    def group_losses(self, i: int, batches, step: int, split: str, mode: str | None = None) -> torch.Tensor:
        """Group i's differentiable losses [len(group)], in ``mode`` (default: the group's own)."""
        bound, group = self.bound, self.groups[i]
        if (mode or self.group_modes[i]) == "loop":
            return torch.stack([module_loss(self.bound, t, *batches[t], split) for t in group])
        xs = [batches[t][0] for t in group]
        if any(x.shape != xs[0].shape for x in xs) or any(batches[t][1].shape != batches[group[0]][1].shape
                                                          for t in group):
            raise ConfigError(f"backend: batched: tasks {group} had batches of one shape at the first step and "
                              f"of different shapes at step {step}; give every task a fixed batch shape, or use "
                              f"backend: loop")
        x, y = torch.stack(xs), torch.stack([batches[t][1] for t in group])
        return self.forwards[i].losses([bound.modules[t] for t in group], self._rows(bound.theta, group),
                                       bound.local, x, y, split == "train")

    def group_backward(self, i: int, batches, step: int, split: str, mode: str | None = None) -> torch.Tensor:
        """Group i's backward (gradients accumulated into its tasks' rows); its detached losses."""
        if (mode or self.group_modes[i]) == "loop":
            out = []
            for t in self.groups[i]:
                loss = module_loss(self.bound, t, *batches[t], split)
                loss.backward()
                out.append(loss.detach())
            return torch.stack(out)
        losses = self.group_losses(i, batches, step, split, "batched")
        losses.sum().backward()
        return losses.detach()

    def _in_task_order(self, per_group: list[torch.Tensor]) -> torch.Tensor:
        losses = torch.cat(per_group)
        return losses if len(self.groups) == 1 else losses[self._order]

    def losses(self, step, split="train"):
        batches = self.batches(step, split)
        return self._in_task_order([self.group_losses(i, batches, step, split) for i in range(len(self.groups))])

    def backward(self, step, split="train"):
        # Each group's tasks own disjoint rows of theta and slices of local, so one backward per group accumulates
        # exactly what one backward of the sum would, and frees the group's activations before the next forward.
        batches = self.batches(step, split)
        out = [self.group_backward(i, batches, step, split) for i in range(len(self.groups))]
        return self._in_task_order(out).to(self.bound.dtype)
