"""A new meta-learning method in one file: the method contract of trajshift/methods/base.py, one registry line, and
a check of the result against a closed form computed independently.

The toy method ("path-gradient") uses the mean inner gradient along the trajectory as its meta-gradient:
    MetaGrad = (1/K) sum_{k=1..K} mean_t grad L_t(theta_{k-1}^(t)),   phi <- phi - beta * MetaGrad   (at each end)
It reads every inner gradient through ``transform_gradient`` (leaving it unchanged), keeps the running sum in its
State (so checkpoints save it), and answers at the trajectory's end.

On L_t(theta) = 1/2 ||theta - c_t||^2 with plain SGD (lr alpha), theta_k - c_t = (1 - alpha)^k (phi - c_t), so
MetaGrad = (S / K) (phi - mean_t c_t) with S = (1 - (1 - alpha)^K) / alpha, and after M trajectories
phi_M - c = (1 - beta S / K)^M (phi_0 - c).

    python examples/custom_method.py
"""
from dataclasses import dataclass

import torch

import trajshift as ts
from trajshift.methods import METHODS
from trajshift.methods.base import MetaStep, Method, State


@dataclass
class PathSum(State):
    total: torch.Tensor | None = None      # [T, P]: the inner gradients of this trajectory, summed
    steps: int = 0


class PathGradient(Method):
    name = "path-gradient"

    def init(self):
        return PathSum()

    def start_trajectory(self, state, m):
        return PathSum(total=torch.zeros_like(self.pop.theta_grad), steps=0)

    def transform_gradient(self, state, step):
        state.total += step.grad
        state.steps += 1
        return None, state                  # the inner step itself is unchanged

    def end_trajectory(self, state, info):
        return MetaStep(metagrad=self.task_mean(state.total / state.steps)), state


METHODS.register(PathGradient.name, PathGradient)          # the one registry line

if __name__ == "__main__":
    T, K, M, alpha, beta = 3, 10, 8, 0.1, 0.5
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    phi0 = torch.tensor([4.0, -3.0], dtype=torch.float64)
    learners = ts.FunctionLearners(lambda theta, step, split: 0.5 * (theta - centers).pow(2).sum(1), phi0, T)
    cfg = ts.MetaConfig(method="path-gradient", inner_steps=K, trajectories=M, meta_lr=beta, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": alpha}, progress=False)
    phi = ts.MetaTrainer(learners, cfg).run().phi

    c = centers.mean(0)
    S = (1 - (1 - alpha) ** K) / alpha
    expected = c + (1 - beta * S / K) ** M * (phi0 - c)
    print(f"phi after {M} trajectories: {phi.tolist()}; closed form: {expected.tolist()}")
    torch.testing.assert_close(phi, expected, rtol=0, atol=1e-12)
    print("path-gradient matches its closed form")
