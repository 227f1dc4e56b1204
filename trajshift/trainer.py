"""The outer loop shared by every method (Algorithm 1 and Algorithm 2), the meta-update, metrics and progress."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import finite
from .comm import LocalComm
from .config import MetaConfig
from .errors import ConfigError, DivergenceError, Interrupted
from .learners import Learners, stream_seed
from .methods import METHODS
from .methods.rules import meta_delta, random_direction_like
from .optim import build_optimizer
from .population import Population


@dataclass
class TrainResult:
    phi: torch.Tensor
    meta_updates: int
    inner_steps: int              # cumulative inner steps per task (cts-accurate's re-runs included)
    wall_time: float
    history: list[dict] = field(default_factory=list)   # per meta-update: phi, inner_steps, meta_updates (if asked)


def truncate_metrics(path: str | Path, inner_steps: int, rows: int | None = None) -> None:
    """Keep what was logged up to the checkpoint a run resumes from, in place: its first ``rows`` rows (the count
    the checkpoint recorded: exact at every kill point, a trajectory_end row logged after it included), or, for a
    checkpoint without that count, the rows logged up to ``inner_steps``."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:          # a line cut by the kill
            continue
        if rows is None and row.get("inner_steps", 0) > inner_steps:
            continue
        kept.append(line)
    if rows is not None:
        kept = kept[:rows]
    path.write_text("".join(line + "\n" for line in kept))


class MetricsWriter:
    """Per-step metrics as JSON lines (one object per line; flushed, so a killed run keeps what it logged)."""

    def __init__(self, path: str | Path | None, rows: int = 0, sinks: list[Callable[[dict], None]] | None = None):
        self._f = None
        self.rows = rows                 # rows in the file (checkpoints record it: resume truncates to it)
        self.sinks = list(sinks or [])   # more receivers of every row (TensorBoard)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", encoding="utf-8")   # noqa: SIM115 (open for the run's life; close())

    def write(self, row: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
            self.rows += 1
        for sink in self.sinks:
            sink(row)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        self.sinks = []


_MISSING = "(not set)"


def first_difference(old, new, prefix: str = ""):
    """(key path, old value, new value) of the first difference between two nested dicts/lists, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            d = first_difference(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}.{key}" if prefix else
                                 str(key))
            if d is not None:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            d = first_difference(a, b, f"{prefix}[{i}]")
            if d is not None:
                return d
        return None
    return None if old == new else (prefix, old, new)


class MetaTrainer:
    """Meta-learns phi over the tasks of ``learners`` with ``cfg.method``.

    >>> result = MetaTrainer(learners, MetaConfig(method="cts")).run()
    """

    def __init__(self, learners: Learners, cfg: MetaConfig, metrics_path: str | Path | None = None,
                 comm: LocalComm | None = None, record_phi: bool = False,
                 callbacks: list[Callable[[MetaTrainer], None]] | None = None,
                 step_callbacks: list[Callable[[MetaTrainer], None]] | None = None,
                 trajectory_callbacks: list[Callable[[MetaTrainer], None]] | None = None,
                 task_ids: list[int] | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int = 0, keep_checkpoints: int = 3, identity: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.comm = comm or LocalComm()
        self.method = METHODS.get(cfg.method)(cfg.options)
        # theta lives where the learners' parameters are (a model moved to CUDA trains on CUDA).
        self.pop = Population(learners, cfg.inner_optimizer, dtype=cfg.torch_dtype, device=learners.device)
        self.pop.clip_grad_norm = cfg.clip_grad_norm
        self.meta_optimizer = None
        if cfg.meta_optimizer is not None:
            self.meta_optimizer = build_optimizer([self.pop.phi], cfg.meta_optimizer, "meta_optimizer",
                                                  lr=cfg.meta_lr)
        # Same seed on every rank: the random-shift direction must be identical everywhere.
        self.generator = torch.Generator().manual_seed(stream_seed(cfg.seed, 0xC75))
        # Every rank logs its own tasks (the caller gives each rank its own file); task_ids label the columns.
        self.metrics = MetricsWriter(metrics_path)
        self.task_ids = list(task_ids) if task_ids is not None else list(range(learners.num_tasks))
        self.record_phi = record_phi
        self.callbacks = list(callbacks or [])             # after every meta-update
        self.step_callbacks = list(step_callbacks or [])   # after every step of the loop (snapshots, ...)
        self.trajectory_callbacks = list(trajectory_callbacks or [])   # after each trajectory's end (and its update)
        self.meta_updates = 0
        self.inner_steps = 0
        self._delta_norm = torch.zeros((), dtype=self.phi.dtype, device=self.phi.device)   # ||Delta||, on device
        self._first_bad_meta = torch.full((), -1, dtype=torch.long, device=self.phi.device)
        self._pending: list[tuple] = []          # metrics rows waiting for the next read-back (device values)
        self._synced = {"loss_mean": math.nan, "delta_norm": 0.0}
        self.sync_every = cfg.sync_every or (1 if self.phi.device.type == "cpu" else 50)
        self.history: list[dict] = []
        self.position = {"m": 0, "k": 0}        # the last completed inner step (k = 0: none yet in trajectory m)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        # What else defines the run beyond cfg (the model, tasks, data options, seed, batch size...): a checkpoint of
        # a run with other values is refused on resume, naming the key.
        self.identity = identity or {}
        self.resumed_metrics_rows: int | None = None
        # Fault injection for reliability tests (docs/RELIABILITY.md): SIGKILL this process right after the given
        # loop step (and its checkpoint, if one is due).
        fault = os.environ.get("TRAJSHIFT_FAULT_KILL_AT_STEP")
        self._kill_at = int(fault) if fault else None
        self.method.setup(self)

    # ----- views used by methods ---------------------------------------------------------------------------
    @property
    def phi(self) -> torch.Tensor:
        return self.pop.phi

    def data_step(self, m: int, k: int) -> int:
        """Index of the data batch of inner step k (1-based) of trajectory m (0-based): the same in every replay."""
        return m * self.cfg.inner_steps + (k - 1)

    def task_mean(self, per_task: torch.Tensor) -> torch.Tensor:
        """mean over all tasks (all ranks) of a per-task quantity [T_local, ...]."""
        return self.comm.task_mean(per_task.sum(0), per_task.shape[0])

    def theta_mean(self) -> torch.Tensor:
        return self.task_mean(self.pop.theta.detach())

    def inner_step(self, m: int, k: int) -> torch.Tensor:
        losses = self.pop.inner_step(self.data_step(m, k))
        self.inner_steps += 1
        return losses

    @torch.no_grad()
    def meta_update(self, metagrad: torch.Tensor, shift: str = "none") -> torch.Tensor:
        """phi <- phi + Delta with Delta = -beta * metagrad (or the meta optimizer's step); then the shift
        theta^(t) <- theta^(t) + Delta (Algorithm 2, l.12-13), none, or a random direction of the same norm."""
        # Recorded on the device, raised at the next read-back (sync), before any checkpoint of the bad state.
        bad = ~torch.isfinite(metagrad).all() & (self._first_bad_meta < 0)
        self._first_bad_meta = torch.where(bad, torch.full_like(self._first_bad_meta, self.meta_updates + 1),
                                           self._first_bad_meta)
        if self.meta_optimizer is None:
            delta = meta_delta(metagrad, self.cfg.meta_lr)
            self.phi.add_(delta)
        else:
            before = self.phi.clone()
            self.phi.grad = metagrad
            self.meta_optimizer.step()
            delta = self.phi - before
        if shift == "cts":
            self.pop.theta.add_(delta)
        elif shift == "random":
            self.pop.theta.add_(random_direction_like(delta, self.generator))
        self.meta_updates += 1
        self._delta_norm = delta.norm()
        if self.record_phi:
            self.history.append({"phi": self.phi.clone(), "inner_steps": self.inner_steps,
                                 "meta_updates": self.meta_updates})
        for cb in self.callbacks:
            cb(self)
        return delta

    @property
    def last_delta_norm(self) -> float:
        """||Delta|| of the last meta-update (a host read)."""
        return float(self._delta_norm)

    # ----- host read-backs -------------------------------------------------------------------------------------
    def sync(self) -> dict:
        """One device-to-host transfer: the finiteness record, the pending metrics rows' losses and ||Delta||, the
        current ||Delta|| and whether phi is finite. Writes the pending rows, then raises DivergenceError if
        anything was not finite (naming the task and the data step, or the meta-update)."""
        T = self.pop.num_tasks
        pending, self._pending = self._pending, []
        parts = [self.pop.finiteness_flags(), self._first_bad_meta.reshape(1).to(self.phi.dtype),
                 torch.isfinite(self.phi).all().reshape(1).to(self.phi.dtype), self._delta_norm.reshape(1)]
        for row in pending:
            parts += [row[4].detach().reshape(-1).to(self.phi.dtype), row[5].reshape(1).to(self.phi.dtype)]
        values = torch.cat(parts).tolist()
        flags, rest = values[:3 * T], values[3 * T:]
        bad_meta, phi_ok, delta_now = rest[0], rest[1], rest[2]
        at = 3
        for m, k, inner, updates, losses, _ in pending:
            per_task, norm = rest[at:at + len(losses)], rest[at + len(losses)]
            at += len(losses) + 1
            self.metrics.write(finite({"trajectory": m + 1, "step": k, "inner_steps": inner, "meta_updates": updates,
                                       "delta_norm": norm,
                                       "loss_mean": sum(per_task) / len(per_task) if per_task else math.nan,
                                       "loss": per_task, "tasks": self.task_ids}))
            self._synced = {"loss_mean": sum(per_task) / len(per_task) if per_task else math.nan, "delta_norm": norm}
        self.pop.check_finite(flags, self.task_ids)
        if bad_meta >= 0:
            raise DivergenceError(f"meta-gradient is not finite at meta-update {int(bad_meta)}; lower meta_lr or "
                                  f"the inner learning rate")
        if not phi_ok:
            raise DivergenceError(f"phi is not finite after meta-update {self.meta_updates}; lower meta_lr")
        self._synced["delta_norm_now"] = delta_now
        return self._synced

    # ----- the loop ----------------------------------------------------------------------------------------
    # ----- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state after the last completed inner step: enough to continue bit for bit."""
        return {
            "position": dict(self.position), "phi": self.phi.clone(), "theta": self.pop.theta.detach().clone(),
            "learners": self.pop.learners.state_dict(), "optimizer": self.pop.optimizer.state_dict(),
            "meta_optimizer": None if self.meta_optimizer is None else self.meta_optimizer.state_dict(),
            "method": self.method.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "inner_steps": self.inner_steps, "meta_updates": self.meta_updates,
            "last_delta_norm": self._delta_norm.clone(), "config": self.cfg.to_dict(),
            "world_size": self.comm.world_size, "rank": self.comm.rank, "task_ids": self.task_ids,
            "metrics_rows": self.metrics.rows, "identity": self.identity,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.phi.copy_(state["phi"])
        self.pop.theta.copy_(state["theta"])
        self.pop.learners.load_state_dict(state["learners"])
        self.pop.optimizer.load_state_dict(state["optimizer"])
        if self.meta_optimizer is not None and state["meta_optimizer"] is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.inner_steps, self.meta_updates = int(state["inner_steps"]), int(state["meta_updates"])
        self._delta_norm = torch.as_tensor(state["last_delta_norm"], dtype=self.phi.dtype).to(self.phi.device)
        self.position = dict(state["position"])
        self.resumed_metrics_rows = state.get("metrics_rows")

    def _inject_fault(self) -> None:
        """SIGKILL this process (reliability tests): only on rank $TRAJSHIFT_FAULT_RANK (default 0), and only once
        when $TRAJSHIFT_FAULT_ONCE names a marker file (created just before the kill)."""
        if os.environ.get("RANK", "0") != os.environ.get("TRAJSHIFT_FAULT_RANK", "0"):
            return
        marker = os.environ.get("TRAJSHIFT_FAULT_ONCE")
        if marker:
            if os.path.exists(marker):
                return
            Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)

    def _checkpoint_folder(self) -> Path:
        """One process: checkpoint_dir; under torch.distributed each rank checkpoints its own shard in rank-<R>/."""
        return self.checkpoint_dir if self.comm.world_size == 1 else self.checkpoint_dir / f"rank-{self.comm.rank}"

    def save_checkpoint(self) -> None:
        """Write the state (this rank's shard) to the checkpoint folder."""
        if self.checkpoint_dir is None:
            return
        self.sync()             # every row logged and every value checked finite before the state is kept
        from .checkpoint import save_checkpoint
        step = self.position["m"] * self.cfg.inner_steps + self.position["k"]
        save_checkpoint(self._checkpoint_folder(), step, self.state_dict(), keep=self.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest valid checkpoint of ``checkpoint_dir``; False when there is none. A checkpoint of a
        different configuration is refused."""
        from .checkpoint import load_latest, newest_valid_step, step_of
        if self.checkpoint_dir is None:
            return False
        folder = self._checkpoint_folder()
        from .atomic import remove_stale_temporaries
        remove_stale_temporaries(folder)          # partial files of writes a kill interrupted
        target = None
        if self.comm.world_size > 1:
            # The ranks agree on the newest step that every one of them has: the minimum of their newest valid ones.
            newest = torch.tensor([float(newest_valid_step(folder))])
            import torch.distributed as dist
            dist.all_reduce(newest, op=dist.ReduceOp.MIN)
            target = int(newest.item())
            if target < 0:
                return False
        found = load_latest(folder, max_step=target)
        if self.comm.world_size > 1:
            got = torch.tensor([float(step_of(found[1]) if found else -1)])
            low, high = got.clone(), got.clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            if low.item() != high.item():
                raise ConfigError(f"{self.checkpoint_dir}: the ranks have no common valid checkpoint (rank "
                                  f"{self.comm.rank} found step {int(got.item())}); start a new run folder")
        if found is None:
            return False
        state, path = found
        # progress and sync_every change neither the arithmetic nor the files: not compared.
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ("progress", "sync_every")}
        theirs = {k: v for k, v in state["config"].items() if k not in ("progress", "sync_every")}
        for ours, saved, prefix in ((mine, theirs, ""), (self.identity, state.get("identity", self.identity), "")):
            diff = first_difference(saved, ours, prefix)
            if diff is not None:
                key, old, new = diff
                raise ConfigError(f"{path}: this checkpoint is of a run with {key} = {old!r}, the config says "
                                  f"{new!r}; resume with the same config or use another output folder")
        if state.get("task_ids", self.task_ids) != self.task_ids:
            raise ConfigError(f"{path}: this checkpoint holds tasks {state.get('task_ids')} of a run with "
                              f"{state.get('world_size')} processes; this process has tasks {self.task_ids}; resume "
                              f"with the same number of processes")
        self.load_state_dict(state)
        return True

    def steps(self):
        """Algorithms 1 and 2 as a generator: yields (m, k, losses) after every inner step of the loop, so callers
        can interleave their own work (benchmarks, interactive use). ``run`` consumes it. After
        ``load_state_dict`` it continues from the loaded position (the step after it)."""
        cfg = self.cfg
        K, M = cfg.inner_steps, cfg.trajectories
        m0, k0 = self.position["m"], self.position["k"]       # last completed step; k0 = 0: none in m0
        for m in range(m0, M):
            resumed = m == m0 and k0 > 0
            if not resumed:
                self.pop.reset(cfg.reset_optimizer_state, cfg.reset_heads, cfg.reset_batchnorm)
                self.method.start_trajectory(self, m)
            for k in range(k0 + 1 if resumed else 1, K + 1):
                losses = self.method.step(self, m, k)
                if k % cfg.log_every == 0 or k == K:
                    self._log(m, k, losses)
                self.position = {"m": m, "k": k}
                if (m * K + k) % self.sync_every == 0:
                    self.sync()
                for cb in self.step_callbacks:
                    cb(self)
                if self.checkpoint_every and (m * K + k) % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._kill_at is not None and m * K + k == self._kill_at:
                    self._inject_fault()
                yield m, k, losses
            self.method.end_trajectory(self, m)
            self.position = {"m": m + 1, "k": 0}
            synced = self.sync()          # once per trajectory: its rows, its checks, ||Delta|| after its end
            self.metrics.write({"event": "trajectory_end", "trajectory": m + 1, "inner_steps": self.inner_steps,
                                "meta_updates": self.meta_updates, "delta_norm": synced["delta_norm_now"]})
            for cb in self.trajectory_callbacks:
                cb(self)

    def run(self) -> TrainResult:
        """Run the loop to its end. SIGINT (Ctrl-C) or SIGTERM stops it after the current inner step, with a
        checkpoint of that step when checkpoints are on (one process; a second Ctrl-C stops at once), and raises
        Interrupted, whose message says how to resume."""
        cfg = self.cfg
        start = time.perf_counter()
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        bar = None
        if show and self.comm.is_main():
            from tqdm import tqdm
            bar = tqdm(total=cfg.trajectories * cfg.inner_steps, desc=cfg.method, unit="step", dynamic_ncols=True)
        if bar is not None:
            bar.update(self.position["m"] * cfg.inner_steps + self.position["k"])
        stop: dict = {"signal": None}
        previous = self._install_stop_handlers(stop)
        try:
            for m, k, losses in self.steps():
                if bar is not None:
                    bar.update(1)
                    if k % 10 == 0:       # the last read-back's values: the bar forces no host sync
                        bar.set_postfix(loss=f"{self._synced['loss_mean']:.4g}", meta=self.meta_updates)
                if stop["signal"] is not None:
                    self._stop(stop["signal"])
            self.sync()
            if self.checkpoint_every:
                self.save_checkpoint()           # at exit, whatever the period
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
            self.metrics.close()
        return TrainResult(self.phi.clone(), self.meta_updates, self.inner_steps, time.perf_counter() - start,
                           self.history)

    def _install_stop_handlers(self, stop: dict) -> dict:
        """SIGINT/SIGTERM set a flag that the loop reads after each step (a step is never cut in two). Only in one
        process, from the main thread: under torch.distributed the ranks could not agree on a step to stop at."""
        import threading
        if self.comm.world_size > 1 or threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if stop["signal"] is not None:       # asked twice: stop now
                raise KeyboardInterrupt
            stop["signal"] = signum
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _stop(self, signum: int) -> None:
        step = self.position["m"] * self.cfg.inner_steps + self.position["k"]
        name = signal.Signals(signum).name
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
            raise Interrupted(f"interrupted ({name}) at inner step {step}; run the same command again to resume "
                              f"from step {step}")
        raise Interrupted(f"interrupted ({name}) at inner step {step}; this run keeps no checkpoints "
                          f"(checkpoint_every: 0), so running it again starts over")

    def _log(self, m: int, k: int, losses: torch.Tensor) -> None:
        """Queue a metrics row; its values are read back (with the others pending) at the next sync."""
        self._pending.append((m, k, self.inner_steps, self.meta_updates, losses.detach(), self._delta_norm))
