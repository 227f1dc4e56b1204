"""The only cross-task operation of every method: a mean over tasks.

Each process holds some rows of theta (all of them in one process; a shard under torch.distributed). A mean over
tasks is the sum of the local rows and the local task count, all-reduced: one collective of a [P + 1] buffer.
"""
from __future__ import annotations

import torch


class LocalComm:
    """All tasks in this process."""

    rank = 0
    world_size = 1

    def task_mean(self, local_sum: torch.Tensor, local_count: int) -> torch.Tensor:
        """(sum over all tasks of a per-task quantity) / (number of tasks); ``local_sum`` has any shape."""
        return local_sum / local_count

    def is_main(self) -> bool:
        return True


class DistributedComm(LocalComm):
    """Tasks sharded over the ranks of an initialised torch.distributed process group (gloo or NCCL)."""

    def __init__(self):
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; launch with torchrun")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def task_mean(self, local_sum, local_count):
        # One all-reduce: the sum and the count travel together.
        buf = torch.cat([local_sum.reshape(-1), local_sum.new_tensor([float(local_count)])])
        self._dist.all_reduce(buf)
        return (buf[:-1] / buf[-1]).view_as(local_sum)

    def is_main(self):
        return self.rank == 0
