"""How each task's loss is computed: the models (or loss functions) and their data, as the engine calls them.
(The training state itself, theta and the inner optimizer, is the Population's: trajshift/engine/population.py.)

The engine owns theta [T, P] (meta-learned scalars, one row per task) and its gradient buffer of the same shape.
A ``Learners`` object turns a step index into per-task losses [T] that are differentiable with respect to theta:

* ``FunctionLearners``: any function ``loss_fn(theta [T, P], step, split) -> [T]`` (the synthetic 2-D tasks, quadratic
  test problems);
* ``ModuleLearners`` (trajshift/engine/module_learners.py): T ``nn.Module`` replicas. Their meta-learned parameters (chosen by a name filter; default: all but
  the classifier head) are bound to rows of theta by *sharing storage*: ``p.data`` is a view of ``theta[t]`` and
  ``p.grad`` a view of ``theta_grad[t]``. Forward and backward are then exactly the user's own module code (no
  functional_call overhead on the hot path), autograd accumulates straight into theta's gradient buffer, and one
  optimizer step over theta updates every task. Per-task parts that are not meta-learned (heads of any size) are
  bound the same way into one flat ``local`` vector; BatchNorm running statistics stay in each replica.

Batches are a pure function of (task, step, split) (see ``batch_indices``), which makes "re-run the first k steps"
(cts-accurate) and exact resume possible without storing data-loader state.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.flat import FlatSpec
from ..models.heads import DEFAULT_HEAD_PATTERNS  # noqa: F401  (re-exported: the engine's default head)


class Learners:
    """Interface the engine needs. Subclasses set ``num_tasks``, ``spec`` (the meta-learned FlatSpec)."""

    num_tasks: int
    spec: FlatSpec
    local: torch.Tensor | None = None        # flat per-task parameters that are not meta-learned (heads)
    local_grad: torch.Tensor | None = None

    @property
    def meta_numel(self) -> int:
        return self.spec.numel

    @property
    def device(self) -> torch.device:
        """Where theta must live: the device of the initial parameters."""
        return self.initial_phi().device

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


def head_names(model: nn.Module, meta_params: dict | None = None) -> list[str]:
    """The parameters of ``model`` that are a task's own (its head): those the meta_params filter does not select
    (module paths, parameter names or globs; trajshift/models/heads.py)."""
    from ..models.heads import head_from_meta_params
    return head_from_meta_params(model, meta_params)
