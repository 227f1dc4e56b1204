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
    backend_name = "local"          # recorded in summary.json ("gloo" / "nccl" under torch.distributed)

    def task_mean(self, local_sum: torch.Tensor, local_count: int) -> torch.Tensor:
        """(sum over all tasks of a per-task quantity) / (number of tasks); ``local_sum`` has any shape."""
        return local_sum / local_count

    def mean_over_tasks(self, per_task: torch.Tensor) -> torch.Tensor:
        """The mean over all tasks of a per-task quantity [T_local, ...]: one all-reduce under torch.distributed."""
        return self.task_mean(per_task.sum(0), per_task.shape[0])

    def all_min(self, value: float) -> float:
        """The minimum of a number over all processes."""
        return value

    def all_max(self, value: float) -> float:
        return value

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
        self.backend_name = str(dist.get_backend())

    def task_mean(self, local_sum, local_count):
        # One all-reduce: the sum and the count travel together.
        buf = torch.cat([local_sum.reshape(-1), local_sum.new_tensor([float(local_count)])])
        self._dist.all_reduce(buf)
        return (buf[:-1] / buf[-1]).view_as(local_sum)

    def _reduce(self, value: float, op) -> float:
        device = "cuda" if self._dist.get_backend() == "nccl" else "cpu"
        buf = torch.tensor([float(value)], dtype=torch.float64, device=device)
        self._dist.all_reduce(buf, op=op)
        return buf.item()

    def all_min(self, value):
        return self._reduce(value, self._dist.ReduceOp.MIN)

    def all_max(self, value):
        return self._reduce(value, self._dist.ReduceOp.MAX)

    def is_main(self):
        return self.rank == 0


def shard(num_tasks: int, world_size: int, rank: int) -> range:
    """The contiguous block of task indices of ``rank``: sizes differ by at most one (uneven shards allowed)."""
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def init_from_env(device: str = "cpu") -> LocalComm:
    """A DistributedComm when launched by torchrun (WORLD_SIZE > 1; gloo on CPU, NCCL on CUDA), else LocalComm.
    TRAJSHIFT_DISTRIBUTED=1 takes the process group at one rank too (a one-rank torchrun then runs the NCCL or gloo
    code path: benchmarks/gpu.sh checks NCCL this way on a one-GPU machine)."""
    import os
    forced = os.environ.get("TRAJSHIFT_DISTRIBUTED") == "1" and "MASTER_ADDR" in os.environ
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not forced:
        return LocalComm()
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # Under torchrun: a store key prefix per restart, so workers restarted after a failure (--max-restarts)
            # never read the addresses the dead round published (gloo would try to connect to them).
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=not agent_store and rank == 0)
            store = dist.PrefixStore(f"trajshift/restart-{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistributedComm()
