"""The paper's synthetic 2-D task distribution (Section 4.1, Figure 4a-b).

Each task is a Himmelblau-shaped template, translated to a centre c_t on a circle of radius 7 around (5, 5) at
angle 2*pi*t/T and rotated about it by a random angle psi_t ~ U[0, 2*pi):

    (u, v) = s * R(psi_t) (x - c_t),      L_t(x) = w_a (u^2 + v - 11)^2 + w_b (u + v^2 - 7)^2

Two templates:
* ``scaled`` (default; the reference code): s = 1/3, w_a = 0.738, w_b = 0.995 (random draws kept by the authors).
  The coordinate scaling keeps SGD with alpha = 0.05 stable from the whole [-5, 15]^2 box.
* ``paper`` (the paper's text): s = 1, w_a = w_b = 1/3, i.e. f(x, y) = {(x^2 - 10x + y + 9)^2 + (x + y^2 - 10y + 13)^2}/3
  centred on c_t. With alpha = 0.05 this diverges from most starting points (measured in docs/synthetic.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.schema import Rule, check_value

TEMPLATES = {"scaled": (1.0 / 3.0, 0.738, 0.995), "paper": (1.0, 1.0 / 3.0, 1.0 / 3.0)}


@dataclass
class HimmelblauTasks:
    centers: torch.Tensor      # [T, 2]
    angles: torch.Tensor       # [T]
    scale: float
    w_a: float
    w_b: float

    @staticmethod
    def make(num_tasks: int = 8, seed: int = 0, template: str = "scaled", radius: float = 7.0,
             center: tuple[float, float] = (5.0, 5.0), dtype: torch.dtype = torch.float64) -> HimmelblauTasks:
        check_value(template, str, Rule(choices=tuple(TEMPLATES)), "template")
        check_value(num_tasks, int, Rule(low=1), "num_tasks")
        positions = 2 * math.pi * np.arange(num_tasks) / num_tasks
        centers = np.stack([center[0] + radius * np.cos(positions), center[1] + radius * np.sin(positions)], 1)
        angles = np.random.default_rng(seed).uniform(0.0, 2 * math.pi, size=num_tasks)
        s, wa, wb = TEMPLATES[template]
        return HimmelblauTasks(torch.tensor(centers, dtype=dtype), torch.tensor(angles, dtype=dtype), s, wa, wb)

    @property
    def num_tasks(self) -> int:
        return self.centers.shape[0]

    def _uv(self, x: torch.Tensor):
        c, s = torch.cos(self.angles).to(x), torch.sin(self.angles).to(x)
        d = x - self.centers.to(x)                     # [..., T, 2]
        u = self.scale * (c * d[..., 0] - s * d[..., 1])
        v = self.scale * (s * d[..., 0] + c * d[..., 1])
        return u, v, c, s

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-task losses [..., T] at points x [..., T, 2] (row t of x is evaluated on task t)."""
        u, v, _, _ = self._uv(x)
        return self.w_a * (u * u + v - 11) ** 2 + self.w_b * (u + v * v - 7) ** 2

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form gradient dL_t/dx [..., T, 2] (chain rule through the rotation and scaling)."""
        u, v, c, s = self._uv(x)
        a = u * u + v - 11
        b = u + v * v - 7
        du = 4 * self.w_a * a * u + 2 * self.w_b * b
        dv = 2 * self.w_a * a + 4 * self.w_b * b * v
        return self.scale * torch.stack([c * du + s * dv, -s * du + c * dv], -1)

    def learner_loss(self, theta: torch.Tensor, step: int = 0, split: str = "train") -> torch.Tensor:
        """The ``FunctionLearners`` loss: theta [T, 2] -> [T] (deterministic: no batches, no splits)."""
        return self.loss(theta)


@torch.no_grad()
def adapt(tasks: HimmelblauTasks, phis: torch.Tensor, steps: int, optimizer: dict) -> torch.Tensor:
    """U_K for many initializations at once: ``steps`` inner steps from each phi in phis [G, 2] on every task, with
    a fresh inner optimizer; returns the final task parameters [G, T, 2]."""
    from ..engine.optim import build_optimizer
    theta = phis[:, None, :].expand(-1, tasks.num_tasks, -1).clone()
    opt = build_optimizer([theta], optimizer, "inner_optimizer")
    for _ in range(steps):
        theta.grad = tasks.grad(theta)
        opt.step()
    return theta


def meta_test_loss(tasks: HimmelblauTasks, phis: torch.Tensor, steps: int, optimizer: dict) -> torch.Tensor:
    """The quality of each initialization: task-average loss after ``steps`` inner steps from it ([G]); a run that
    diverges counts as +inf."""
    with torch.no_grad():
        final = tasks.loss(adapt(tasks, phis, steps, optimizer)).mean(-1)
    return torch.where(torch.isfinite(final), final, torch.full_like(final, math.inf))
