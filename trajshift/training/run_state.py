"""A meta-training run's state: what a checkpoint holds, saving it, and resuming from the newest valid one.

The state after the last completed inner step is enough to continue bit for bit: phi, theta, the inner and meta
optimizers, the learners' buffers and heads, the method's accumulators, the RNG and the metrics row count. A
checkpoint of another run (any difference in the config or the run's identity) is refused, naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.atomic import remove_stale_temporaries
from ..core.errors import ConfigError
from .checkpoint import load_latest, newest_valid_step, save_checkpoint, step_of


@dataclass
class TrainResult:
    phi: torch.Tensor
    meta_updates: int
    inner_steps: int              # cumulative inner steps per task (cts-accurate's re-runs included)
    wall_time: float
    history: list[dict] = field(default_factory=list)   # per meta-update: phi, inner_steps, meta_updates (if asked)


# progress and sync_every change neither the arithmetic nor the files: never compared on resume.
NOT_COMPARED = ("progress", "sync_every")

_MISSING = "(not set)"


def first_difference(old, new, prefix: str = ""):
    """(key path, old value, new value) of the first difference between two nested dicts/lists, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        # In the order the new dict declares its keys (an identity puts what the user chose first, what is derived
        # from it last), then keys only the old one has.
        for key in [*new, *(k for k in old if k not in new)]:
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


def state_dict(tr) -> dict:
    """The whole training state of trainer ``tr`` (a trajshift.training.loop.MetaTrainer) after its last completed step."""
    return {
        "position": dict(tr.position), "phi": tr.phi.clone(), "theta": tr.pop.theta.detach().clone(),
        "learners": tr.pop.learners.state_dict(), "optimizer": tr.pop.optimizer.state_dict(),
        "meta_optimizer": None if tr.meta_optimizer is None else tr.meta_optimizer.state_dict(),
        "method": tr.method.state_to_dict(tr.method_state), "torch_rng": torch.get_rng_state(), "inner_steps": tr.inner_steps,
        "meta_updates": tr.meta_updates, "last_delta_norm": tr.readback.delta_norm.clone(),
        "config": tr.cfg.to_dict(), "world_size": tr.comm.world_size, "rank": tr.comm.rank,
        "task_ids": tr.task_ids, "metrics_rows": tr.metrics.rows, "identity": tr.identity,
    }


@torch.no_grad()
def load_state_dict(tr, state: dict) -> None:
    tr.phi.copy_(state["phi"])
    tr.pop.theta.copy_(state["theta"])
    tr.pop.learners.load_state_dict(state["learners"])
    tr.pop.optimizer.load_state_dict(state["optimizer"])
    if tr.meta_optimizer is not None and state["meta_optimizer"] is not None:
        tr.meta_optimizer.load_state_dict(state["meta_optimizer"])
    tr.method_state = tr.method.state_from_dict(state["method"])
    torch.set_rng_state(state["torch_rng"])
    tr.pop.steps_taken, tr.meta_updates = int(state["inner_steps"]), int(state["meta_updates"])
    tr.readback.delta_norm.copy_(torch.as_tensor(state["last_delta_norm"], dtype=tr.phi.dtype).reshape(1))
    tr.position = dict(state["position"])
    tr.resumed_metrics_rows = state.get("metrics_rows")


def folder_of(tr) -> Path:
    """One process: the checkpoint folder; under torch.distributed each rank checkpoints its shard in rank-<R>/."""
    return tr.checkpoint_dir if tr.comm.world_size == 1 else tr.checkpoint_dir / f"rank-{tr.comm.rank}"


def save(tr) -> None:
    """Write ``tr``'s state (this rank's shard), after a read-back: every row logged and every value checked finite
    before the state is kept."""
    if tr.checkpoint_dir is None:
        return
    tr.sync()
    step = tr.position["m"] * tr.cfg.inner_steps + tr.position["k"]
    save_checkpoint(folder_of(tr), step, state_dict(tr), keep=tr.keep_checkpoints)


def resume(tr) -> bool:
    """Load the newest valid checkpoint into ``tr``; False when there is none. Under torch.distributed the ranks
    agree on the newest step every one of them has. A checkpoint of a different run is refused."""
    if tr.checkpoint_dir is None:
        return False
    folder = folder_of(tr)
    remove_stale_temporaries(folder)          # partial files of writes a kill interrupted
    target = None
    if tr.comm.world_size > 1:
        target = int(tr.comm.all_min(newest_valid_step(folder)))
        if target < 0:
            return False
    found = load_latest(folder, max_step=target)
    if tr.comm.world_size > 1:
        got = step_of(found[1]) if found else -1
        if tr.comm.all_min(got) != tr.comm.all_max(got):
            raise ConfigError(f"{tr.checkpoint_dir}: the ranks have no common valid checkpoint (rank "
                              f"{tr.comm.rank} found step {got}); start a new run folder")
    if found is None:
        return False
    state, path = found
    mine = {k: v for k, v in tr.cfg.to_dict().items() if k not in NOT_COMPARED}
    theirs = {k: v for k, v in state["config"].items() if k not in NOT_COMPARED}
    # A key newer than the checkpoint's config, at its default, is what the older run did (e.g. inner_lr_schedule).
    defaults = type(tr.cfg)().to_dict()
    theirs.update({k: v for k, v in mine.items() if k not in theirs and v == defaults.get(k)})
    # Extending a run: more trajectories (M), and nothing else changed, continue from the checkpoint exactly as a run
    # that asked for the larger M from the start would have gone on (the loop's steps depend on M only as a bound).
    old_m, new_m = theirs.get("trajectories"), mine.get("trajectories")
    tr.extended_from = None
    if isinstance(old_m, int) and isinstance(new_m, int) and new_m > old_m:
        if mine.get("inner_lr_schedule", "constant") != "constant":
            raise ConfigError(f"{path}: meta.trajectories cannot grow in a run with inner_lr_schedule = "
                              f"{mine['inner_lr_schedule']!r} (its rates depend on K * M); use another output folder")
        theirs = {**theirs, "trajectories": new_m}
        tr.extended_from = old_m
    saved_identity = state.get("identity", tr.identity)
    # Keys an older checkpoint's identity does not have (data fingerprints, the resolved head) are not compared.
    our_identity = {k: v for k, v in tr.identity.items() if k in saved_identity}
    for ours, saved in ((mine, theirs), (our_identity, saved_identity)):
        diff = first_difference(saved, ours)
        if diff is not None:
            key, old, new = diff
            raise ConfigError(f"{path}: this checkpoint is of a run with {key} = {old!r}, the config says {new!r}; "
                              f"resume with the same config (only meta.trajectories may grow) or use another output folder")
    if state.get("task_ids", tr.task_ids) != tr.task_ids:
        raise ConfigError(f"{path}: this checkpoint holds tasks {state.get('task_ids')} of a run with "
                          f"{state.get('world_size')} processes; this process has tasks {tr.task_ids}; resume with "
                          f"the same number of processes")
    load_state_dict(tr, state)
    return True
