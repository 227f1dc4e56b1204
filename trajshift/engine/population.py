"""The training state of the T tasks: theta [T, P], its gradient buffer, the per-task parameters that are not
meta-learned (heads, in ``learners.local``) and ONE inner optimizer over all of them. How a task's loss is computed
is the ``Learners``' job (trajshift/engine/learners.py).

Algorithm 2, l.8-10 (and Algorithm 1, l.6-10): every task takes one optimizer step,
``theta_k^(t) = theta_{k-1}^(t) - alpha * grad L_k^(t)(theta_{k-1}^(t))`` (or the momentum/Adam analogue), as one
backward of ``sum_t L^(t)`` (each row's gradient only depends on its own task) and one optimizer step over [T, P].
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.errors import DivergenceError
from .learners import Learners
from .optim import build_optimizer

# A per-step gradient transformation (the method contract's transform_gradient, bound to its state by the loop):
# given the step's GradientStep, a new gradient [T, P] or None.
GradientTransform = Callable[["GradientStep"], "torch.Tensor | None"]


@dataclass(frozen=True)
class GradientStep:
    """An inner step between its backward and its optimizer step: theta [T, P] (detached, before the step), the
    gradient [T, P] the optimizer is about to use, phi [P], the per-task losses [T] and the data step."""
    theta: torch.Tensor
    grad: torch.Tensor
    phi: torch.Tensor
    losses: torch.Tensor
    data_step: int


class Population:
    def __init__(self, learners: Learners, inner_optimizer: dict, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.learners = learners
        T, P = learners.num_tasks, learners.meta_numel
        phi0 = learners.initial_phi().to(dtype=dtype, device=device)
        self.phi = phi0.clone()                                                  # [P], the shared initialization
        self.theta = phi0.expand(T, P).clone().requires_grad_(True)              # [T, P], one row per task
        self.theta_grad = torch.zeros_like(self.theta, requires_grad=False)
        learners.bind(self.theta, self.theta_grad)
        params = [self.theta] + ([learners.local] if learners.local is not None else [])
        self.optimizer = build_optimizer(params, dict(inner_optimizer), option="inner_optimizer")
        self._initial_optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.clip_grad_norm: float | None = None   # per-task gradient-norm clipping (meta part and head together)
        self._local_task = learners.local_task_index() if learners.local is not None else None
        self.last_losses: torch.Tensor | None = None
        self.steps_taken = 0                   # inner steps per task so far (replays of cts-accurate included)
        # Finiteness is watched on the device, without a host read per step: per task, the first data step whose
        # loss (or the parameters after whose update) was not finite, -1 while all is well, and that loss.
        # check_finite() reads them back (the loop, trajshift/training/loop.py, does it every sync_every steps and before checkpoints).
        self.first_bad_loss_step = torch.full((T,), -1, dtype=torch.long, device=self.theta.device)
        self.first_bad_loss = torch.zeros(T, dtype=dtype, device=self.theta.device)
        self.first_bad_theta_step = torch.full((T,), -1, dtype=torch.long, device=self.theta.device)

    @property
    def num_tasks(self) -> int:
        return self.theta.shape[0]

    def losses_at(self, theta: torch.Tensor, step: int, split: str = "train") -> torch.Tensor:
        """Per-task losses [T] as a differentiable function of a given theta [T, P]; no state changes."""
        return self.learners.losses_at(theta, step, split)

    def zero_grad(self) -> None:
        # In place, never set_to_none: the modules' .grad are views into these buffers.
        self.theta_grad.zero_()
        if self.learners.local_grad is not None:
            self.learners.local_grad.zero_()

    def backward(self, step: int, split: str = "train") -> torch.Tensor:
        """Zero the gradients, then backpropagate sum_t L^(t); returns the detached per-task losses [T]."""
        self.zero_grad()
        self.last_losses = self.learners.backward(step, split)
        return self.last_losses

    def inner_step(self, step: int, transform: GradientTransform | None = None) -> torch.Tensor:
        """One inner step for all T tasks (Algorithm 2, l.8-10); returns the per-task losses [T] before the step.
        ``transform`` (a method's per-step gradient transformation) runs between the backward and the optimizer
        step and may replace the gradient. Non-finite losses and parameters are recorded on the device (no host
        read here; see check_finite)."""
        losses = self.backward(step, "train")
        self.finish_step(step, losses, transform)
        self.steps_taken += 1
        return losses

    def finish_step(self, step: int | torch.Tensor, losses: torch.Tensor,
                    transform: GradientTransform | None = None) -> None:
        """l.10 after the backward: watch the losses, transform and clip the gradient, the optimizer step, watch
        theta. Tensor work only (``step`` may be a [1] tensor), so execution.graphs can capture it
        (trajshift/training/step_graph.py)."""
        self._watch(self.first_bad_loss_step, ~torch.isfinite(losses.detach()), step, losses.detach())
        if transform is not None:
            new_grad = transform(GradientStep(self.theta.detach(), self.theta_grad, self.phi, losses, step))
            if new_grad is not None:
                self.theta_grad.copy_(new_grad)
        if self.clip_grad_norm is not None:
            self.clip_task_gradients(self.clip_grad_norm)
        self.optimizer.step()
        self._watch(self.first_bad_theta_step, ~torch.isfinite(self.theta.detach()).all(1), step)

    @torch.no_grad()
    def _watch(self, first: torch.Tensor, bad: torch.Tensor, step: int | torch.Tensor,
               values: torch.Tensor | None = None) -> None:
        new = bad & (first < 0)
        first.copy_(torch.where(new, step, first))
        if values is not None:
            self.first_bad_loss.copy_(torch.where(new, values.to(self.first_bad_loss.dtype), self.first_bad_loss))

    def finiteness_flags(self) -> torch.Tensor:
        """The device-side record as one tensor [3T] (loss step, loss value, theta step), for a single read-back."""
        return torch.cat([self.first_bad_loss_step.to(self.first_bad_loss.dtype), self.first_bad_loss,
                          self.first_bad_theta_step.to(self.first_bad_loss.dtype)])

    def check_finite(self, flags: list[float] | None = None, task_ids: list[int] | None = None) -> None:
        """Raise DivergenceError naming the task and the data step if any loss or parameter was not finite
        (``flags``: finiteness_flags() already read back; else read now)."""
        T = self.num_tasks
        flags = self.finiteness_flags().tolist() if flags is None else flags
        loss_step, loss, theta_step = flags[:T], flags[T:2 * T], flags[2 * T:]
        ids = task_ids or list(range(T))
        # The first failure in time names the culprit (a NaN reaches every task through the next meta-update).
        bad = [(loss_step[t], 0, t) for t in range(T) if loss_step[t] >= 0] + \
              [(theta_step[t], 1, t) for t in range(T) if theta_step[t] >= 0]
        if not bad:
            return
        step, kind, t = min(bad)
        if kind == 0:
            raise DivergenceError(f"task {ids[t]}: inner loss is {loss[t]} at data step {int(step)}; lower "
                                  f"the inner learning rate or the meta learning rate")
        raise DivergenceError(f"task {ids[t]}: parameters became non-finite at data step {int(step)}; lower "
                              f"the inner learning rate or clip gradients")

    @torch.no_grad()
    def clip_task_gradients(self, max_norm: float) -> torch.Tensor:
        """Scale each task's gradient (its theta row and its head) to norm <= max_norm, as
        torch.nn.utils.clip_grad_norm_ on that task's model alone; returns the norms before clipping [T]."""
        sq = self.theta_grad.pow(2).sum(1)
        local_grad = self.learners.local_grad
        if local_grad is not None:
            sq.index_add_(0, self._local_task, local_grad.pow(2))
        norms = sq.sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.theta_grad.mul_(scale.unsqueeze(1))
        if local_grad is not None:
            local_grad.mul_(scale[self._local_task])
        return norms

    def task_gradients(self, step: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task gradients [T, P] at the current theta on batch (step, split), and the losses [T]."""
        losses = self.backward(step, split)
        grads = self.theta_grad.clone()
        self.zero_grad()
        return grads, losses

    @torch.no_grad()
    def reset(self, reset_optimizer_state: bool = False, reset_heads: bool = False,
              reset_batchnorm: bool = False) -> None:
        """theta_0^(t) <- phi for every t (Algorithm 2, l.6). Inner optimizer state, heads and BatchNorm statistics
        carry over unless asked to reset (the reference code's default is to carry them over)."""
        self.theta.copy_(self.phi.expand_as(self.theta))
        if reset_optimizer_state:
            self.optimizer.load_state_dict(copy.deepcopy(self._initial_optimizer_state))
        if reset_heads or reset_batchnorm:
            self.learners.reset_local(heads=reset_heads, batchnorm=reset_batchnorm)

    def snapshot(self) -> dict:
        """Everything an inner trajectory changes, to replay it (cts-accurate)."""
        return {"theta": self.theta.detach().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "learners": copy.deepcopy(self.learners.state_dict())}

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        self.theta.copy_(snap["theta"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.learners.load_state_dict(copy.deepcopy(snap["learners"]))
