"""Multi-task learning baselines as methods of the same engine.

mtl: multi-headed joint training of one shared body on all source tasks, minimising mean_t L^(t). The meta-learned
rows start equal; after every backward each row's gradient is replaced by the mean over tasks (``transform_gradient``) (one all-reduce, like
data-parallel training), so every row takes the same optimizer step from the same state: exactly joint training,
for any element-wise optimizer (SGD, momentum, Adam, ...). Heads and BatchNorm statistics stay per task.
phi follows the shared body. Resets (theta <- phi) are then no-ops, so M and K only set the total steps.

pretrain: the same on a single task (the paper's "TIN finetuning" source: train on one dataset, keep the body).
"""
from __future__ import annotations

from ..core.errors import ConfigError
from .base import MetaStep, Method


class MTL(Method):
    name = "mtl"
    uses_meta_lr = False

    def transform_gradient(self, state, step):
        return self.task_mean(step.grad).expand_as(step.grad), state

    def update(self, state, info):
        return MetaStep(set_phi=self.pop.theta.detach()[0]), state       # phi follows the shared body


class Pretrain(MTL):
    name = "pretrain"

    def setup(self, pop, comm, inner_steps, seed):
        if pop.num_tasks * comm.world_size != 1:
            raise ConfigError(f"method pretrain: trains on exactly one task; the config has "
                              f"{pop.num_tasks * comm.world_size} (use mtl for several)")
        super().setup(pop, comm, inner_steps, seed)
