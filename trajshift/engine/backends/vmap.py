"""The batched backend (``VmapBackend``, backend "batched"): all T task learners in one forward and one backward, by
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

Requirements (checked, with a message naming the culprit): every task's batch has the same input shape and batch
size; every task has the same non-meta-learned parameter names with the same number of dimensions; the same
buffers with the same shapes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.flat import FlatSpec
from .base import AUTOCAST_DTYPES

if TYPE_CHECKING:
    from ..module_learners import ModuleLearners


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


class BatchedForward:
    """One vmapped forward of all T replicas; see the module docstring."""

    def __init__(self, modules: Sequence[nn.Module], spec: FlatSpec, local_specs: Sequence[FlatSpec],
                 local_offsets: Sequence[int], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 compile: bool = False, autocast_dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu"):
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
            self._fn = torch.compile(self._fn)

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


class VmapBackend:
    """backend "batched": the strategy around BatchedForward (built once, at the first use of these learners)."""
    name = "batched"

    def __init__(self, learners: ModuleLearners):
        if learners.batched_unsupported:
            raise ConfigError(f"backend: batched cannot run these task learners: {learners.batched_unsupported}; "
                              f"use backend: loop or auto")
        self.learners = learners
        self.forward = BatchedForward(learners.modules, learners.spec, learners.local_specs, learners.local_offsets,
                                      learners.loss, compile=learners.compile,
                                      autocast_dtype=AUTOCAST_DTYPES.get(learners.autocast),
                                      device=learners.theta.device)
        self.forward.bind_buffers(learners.modules)

    @staticmethod
    def stacked_batches(learners: ModuleLearners, step: int, split: str):
        """Every task's batch stacked: x [T, B, ...], y [T, B]; None (with the reason) when shapes differ."""
        xs, ys = zip(*(learners.batch_fn(t, step, split) for t in range(learners.num_tasks)))
        for t in range(1, learners.num_tasks):
            if xs[t].shape != xs[0].shape or ys[t].shape != ys[0].shape:
                return None, (f"task {t}'s batch has inputs {tuple(xs[t].shape)} / targets {tuple(ys[t].shape)}, "
                              f"task 0's {tuple(xs[0].shape)} / {tuple(ys[0].shape)}")
        x = torch.stack(xs)
        return (x.to(learners.dtype) if x.is_floating_point() else x, torch.stack(ys)), None

    @staticmethod
    def cannot_stack(learners: ModuleLearners, step: int, split: str) -> str | None:
        return VmapBackend.stacked_batches(learners, step, split)[1]

    def losses(self, step, split="train"):
        ln = self.learners
        for t in range(ln.num_tasks):     # the replicas' buffers and views back the checkpoints and state_dicts
            ln.rebind(t)
        batch, reason = self.stacked_batches(ln, step, split)
        if batch is None:
            raise ConfigError(f"backend: batched needs every task's batch to have one shape, but {reason}; "
                              f"use backend: loop (or auto)")
        x, y = batch
        return self.forward.losses(ln.modules, ln.theta, ln.local, x, y, split == "train")

    def backward(self, step, split="train"):
        losses = self.losses(step, split)
        losses.sum().backward()
        return losses.detach().to(self.learners.dtype)
