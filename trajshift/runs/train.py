"""The one run orchestration every front door calls: ``trajshift.fit`` (trajshift/api.py) and ``trajshift
meta-train`` (trajshift/runs/experiment.py) each build their tasks and a ``RunPlan``, then ``train(plan)``.

    replicas   <- build_replicas(...)             (trajshift/runs/replicas.py: body, heads, init_from)
    learners   <- ModuleLearners(replicas, tasks' batches, head filter, execution options)
    identity   <- run_identity(...)               (trajshift/runs/identity.py)
    with the run folder's lock (a second run on the same folder is refused; a refused run leaves nothing):
        resume from the newest checkpoint whose identity and config match (refused in one line otherwise)
        config.yaml (the CLI's), metrics.jsonl (truncated to the checkpoint on resume; kept as metrics.jsonl.N when a
        run without a checkpoint starts over), snapshots/step-N.safetensors, init.safetensors + init.json,
        summary.json
    -> RunOutcome(phi, learners, train result, init.json's info, summary)

Under torchrun the tasks are sharded over the ranks (contiguous blocks); every mean over tasks is one all-reduce;
only rank 0 writes config.yaml, init.safetensors, snapshots/ and summary.json; every rank writes its own tasks'
metrics (metrics.jsonl on rank 0, metrics.rank<R>.jsonl on the others).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.atomic import write_bytes, write_json
from ..core.determinism import deterministic_algorithms
from ..core.errors import ConfigError
from ..data.init_file import (  # noqa: F401
    BATCHNORM_RULE,
    INIT_NAME,
    LoadSummary,
    save_init,
    snapshot_steps,
)
from ..engine.comm import LocalComm
from ..engine.module_learners import ModuleLearners
from ..training.config import MetaConfig
from ..training.loop import TrainResult
from .identity import init_from_identity, run_identity
from .models import describe_model
from .replicas import build_replicas

LOGGERS = ("tensorboard", "wandb")


@dataclass
class RunPlan:
    """Everything a run needs, whichever door built it. ``tasks``: objects with ``batch(step, split)``,
    ``num_classes``, ``label`` and ``fingerprint()``, this process's tasks (global indices ``task_ids``)."""
    tasks: list
    make: Callable[[int, int], torch.nn.Module]
    meta: MetaConfig
    seed: int
    batch_size: int
    model_spec: dict | None = None              # init.json's "model" (None: cannot be rebuilt elsewhere)
    model_note: str = ""                        # why it cannot, and how to name the model
    head: object = None                         # the API's head names (trajshift/models/heads.py) ...
    meta_params: dict | None = None             # ... or a config's include/exclude filter
    init_from: object = None
    init_heads: bool = False
    execution: dict = field(default_factory=lambda: {"backend": "loop"})
    loss: Callable | None = None
    task_ids: list[int] | None = None
    num_tasks: int | None = None                # all processes' tasks
    task_descriptions: list | None = None       # the identity's tasks (default: the tasks' labels)
    identity_meta_params: dict | None = None    # the identity's head filter as older CLI checkpoints spell it
    task_names: list[str] | None = None         # how messages name the tasks (tasks[0], datasets[0])
    held_out_hint: tuple[str, str] = ("no val_datasets", "pass val_datasets= (held-out data, one per dataset)")
    out: Path | None = None
    snapshot_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    config: dict | None = None                  # written as config.yaml (the CLI's resolved config)
    info: dict = field(default_factory=dict)    # more for init.json (resolution, augment, made_by, ...)
    loggers: tuple[str, ...] = ()
    deterministic: bool = False
    device: str | torch.device = "cpu"
    callbacks: list = field(default_factory=list)   # after every meta-update (MetaTrainer's callbacks)
    probe: bool = True


@dataclass
class RunOutcome:
    phi: torch.Tensor
    learners: ModuleLearners
    train: TrainResult | None
    info: dict
    summary: dict
    load_summary: LoadSummary | None = None


def train(plan: RunPlan, log=print, comm=None) -> RunOutcome:
    """Run ``plan`` (see the module docstring), holding the run folder's lock when it has one."""
    for name in plan.loggers:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    comm = comm or LocalComm()
    if plan.out is None or not comm.is_main():
        with deterministic_algorithms(plan.deterministic):
            return _train(plan, log, comm)
    from ..training.checkpoint import RunLock
    out = Path(plan.out)
    created = not out.exists()
    try:
        with RunLock(out), deterministic_algorithms(plan.deterministic):
            return _train(plan, log, comm)
    except BaseException:
        if created:
            _remove_if_empty(out)        # a refused run leaves no folder behind (one that wrote files keeps them)
        raise


def init_state_dict(learners: ModuleLearners, phi: torch.Tensor, comm=None) -> dict[str, torch.Tensor]:
    """The learned initialization as a head-less plain state_dict: phi for the meta-learned parameters and the mean
    over all tasks (all ranks: a collective) of the buffers (BatchNorm statistics; num_batches_tracked rounded)."""
    from ..models.heads import head_keys
    comm = comm or LocalComm()
    module = learners.modules[0]
    skip = head_keys(module.state_dict(), learners.local_specs[0].names)
    sd = {k: v for k, v in learners.task_state_dict(0, phi.detach().to(torch.float32)).items() if k not in skip}
    for name in [n for n, _ in module.named_buffers() if n not in skip]:
        values = torch.stack([dict(m.named_buffers())[name].detach().double() for m in learners.modules])
        mean = comm.task_mean(values.sum(0, keepdim=True), len(learners.modules))[0]
        sd[name] = mean.float() if sd[name].is_floating_point() else mean.round().to(sd[name].dtype)
    return {k: v.clone().contiguous() for k, v in sd.items()}


def probe_forward(model: torch.nn.Module, x: torch.Tensor, what) -> None:
    """One forward of a real batch before any work, so a model that cannot take the data fails now, named."""
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as err:  # noqa: BLE001  any failure here is the model's refusal of this input
        raise ConfigError(f"model {what}: its forward fails on an input of shape {tuple(x.shape)} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the model "
                          f"or the tasks' inputs (resolution, channels)") from None
    finally:
        model.train(was)


def _free_name(path: Path) -> Path:
    i = 1
    while path.with_name(f"{path.name}.{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.{i}")


def _extensions(config: Path) -> list[str]:
    """The "# extended: ..." lines at the top of a run's config.yaml (its history of extensions of M)."""
    if not config.is_file():
        return []
    return [line + "\n" for line in config.read_text().splitlines() if line.startswith("# extended:")]


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def _train(plan: RunPlan, log, comm) -> RunOutcome:
    from ..training.loop import MetaTrainer
    from ..training.metrics import MetricsWriter, truncate_metrics
    tasks = plan.tasks
    task_ids = plan.task_ids if plan.task_ids is not None else list(range(len(tasks)))
    what = plan.model_spec or "model"
    from ..methods import METHODS
    method_cls = METHODS.get(plan.meta.method)
    if not method_cls.uses_meta_lr and comm.is_main():
        log(f"{plan.meta.method}: meta_lr ({plan.meta.meta_lr:g}) is not used: phi follows the shared body, it is "
            f"never stepped by a meta learning rate")
    names = plan.task_names or [t.label for t in tasks]
    no_val = [name for name, t in zip(names, tasks) if getattr(t, "val_is_train", False)]
    if method_cls.uses_held_out_batches and no_val:
        hint, fix = plan.held_out_hint
        warnings.warn(f"{plan.meta.method} computes its meta-gradient on a held-out batch, but {', '.join(no_val)} "
                      f"hold nothing out ({hint}), so that batch is training data; {fix}", stacklevel=3)
    replicas = build_replicas(plan.make, [t.num_classes for t in tasks], plan.seed, task_ids, head=plan.head,
                              meta_params=plan.meta_params, init_from=plan.init_from, init_heads=plan.init_heads,
                              log=log if comm.is_main() else (lambda *_: None), what=str(what))
    models = [m.to(plan.device) for m in replicas.models]
    if plan.probe:
        probe_forward(models[0], tasks[0].batch(0, "val")[0][:2], what)
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step, split), loss=plan.loss,
                              **replicas.meta_params, **plan.execution)
    identity = run_identity(
        model=plan.model_spec, architecture=describe_model(plan.model_spec, replicas.template),
        tasks=plan.task_descriptions if plan.task_descriptions is not None else [t.label for t in tasks],
        data=[t.fingerprint() for t in tasks], head=replicas.head, seed=plan.seed, batch_size=plan.batch_size,
        autocast=plan.execution.get("autocast"), init_from=init_from_identity(plan.init_from, plan.init_heads),
        meta_params=plan.identity_meta_params or plan.meta_params)
    out = Path(plan.out) if plan.out is not None else None
    info = {"model": plan.model_spec, **({"model_note": plan.model_note} if plan.model_note else {}),
            "meta_params": plan.meta_params or replicas.meta_params, "meta_learned": list(learners.spec.names),
            "head": list(learners.local_specs[0].names), "batchnorm": BATCHNORM_RULE, "method": plan.meta.method,
            "init_from": str(plan.init_from) if isinstance(plan.init_from, (str, Path)) else None, **plan.info}

    def save(tr_phi, path, inner_steps):        # a collective (BatchNorm statistics are averaged over all ranks)
        sd = init_state_dict(learners, tr_phi, comm)
        if comm.is_main():
            save_init(path, sd, {**info, "inner_steps": inner_steps})

    state = {"next": plan.snapshot_every, "backend_logged": False, "resumed": False}
    snapshots = out / "snapshots" if out is not None else None

    def snapshot(tr):
        # At a trajectory's last step, wait for its end: Algorithm 1's meta-update happens there, so a snapshot at a
        # trajectory boundary holds every method's phi after the same work.
        if tr.position["k"] == plan.meta.inner_steps:
            return
        if snapshots is not None and plan.snapshot_every and tr.inner_steps >= state["next"]:
            save(tr.phi, snapshots / f"step-{tr.inner_steps:08d}.safetensors", tr.inner_steps)
            state["next"] = (tr.inner_steps // plan.snapshot_every + 1) * plan.snapshot_every

    def report_backend(tr):
        if not state["backend_logged"]:
            state["backend_logged"] = True
            timing = ", ".join(f"{k} {v:.1f} ms" for k, v in learners.backend_timings.items())
            how = ""
            if state["resumed"] and plan.execution.get("backend") == "auto":
                how = " (chosen at the run's start; resumed)"
            elif timing:
                how = f" (measured per step of all of this process's tasks: {timing})"
            modes = learners.engine.choice().get("group_modes") if learners.engine is not None else None
            groups = getattr(learners.engine, "groups", None)
            per_group = "" if not modes or len(modes) < 2 else \
                " by input shape: " + ", ".join(f"tasks {g} {m}" for g, m in zip(groups, modes))
            log(f"backend: {learners.backend}{per_group}{how}" +
                (f" (rank {comm.rank})" if comm.world_size > 1 else ""))

    checkpointing = out is not None and plan.checkpoint_every > 0
    trainer = MetaTrainer(learners, plan.meta, metrics_path=None, step_callbacks=[report_backend, snapshot],
                          graphs=bool(plan.execution.get("graphs")),
                          callbacks=list(plan.callbacks),
                          comm=comm, trajectory_callbacks=[snapshot], task_ids=task_ids,
                          checkpoint_dir=out / "checkpoints" if checkpointing else None,
                          checkpoint_every=plan.checkpoint_every if checkpointing else 0,
                          keep_checkpoints=plan.keep_checkpoints, identity=identity)
    if trainer.step_graph is not None:
        log("execution.graphs: each step's optimizer step" + (", meta-update and shift" if
            trainer.step_graph.captures_meta_update else " (the meta-update stays eager for this method)") +
            " replayed as CUDA graphs")
    resumed = checkpointing and trainer.resume()      # automatic resume from the newest valid checkpoint
    state["resumed"] = bool(resumed)
    if out is None:
        result = trainer.run()
        return RunOutcome(result.phi, learners, result, {**info, "inner_steps": result.inner_steps},
                          {"method": plan.meta.method, "inner_steps": result.inner_steps,
                           "meta_updates": result.meta_updates}, replicas.load_summary)
    # Only now, with the checkpoint accepted (or none), is the folder this run's: a refused run changes nothing.
    out.mkdir(parents=True, exist_ok=True)
    if comm.is_main():
        if snapshots is not None and plan.snapshot_every:
            snapshots.mkdir(exist_ok=True)
        if plan.config is not None:
            import yaml
            history = _extensions(out / "config.yaml")
            if resumed and trainer.extended_from is not None:
                history.append(f"# extended: meta.trajectories {trainer.extended_from} -> "
                               f"{plan.meta.trajectories}, continued from the checkpoint at inner step "
                               f"{trainer.inner_steps}\n")
                log(history[-1][2:].strip())
            write_bytes(out / "config.yaml", ("".join(history) + yaml.safe_dump(plan.config, sort_keys=False))
                        .encode())
    metrics = out / ("metrics.jsonl" if comm.is_main() else f"metrics.rank{comm.rank}.jsonl")
    finished_before = out / "summary.json"
    if resumed:
        truncate_metrics(metrics, trainer.inner_steps, trainer.resumed_metrics_rows)
        if plan.snapshot_every:
            # A checkpoint at a trajectory's last step precedes that trajectory's end, and its snapshot.
            done = trainer.inner_steps - (trainer.position["k"] == plan.meta.inner_steps)
            state["next"] = (done // plan.snapshot_every + 1) * plan.snapshot_every
        total = plan.meta.trajectories * plan.meta.inner_steps
        if trainer.inner_steps >= total and finished_before.is_file():
            log(f"{out}: finished at inner step {trainer.inner_steps}; nothing to run")
        else:
            log(f"resumed from the checkpoint at inner step {trainer.inner_steps} (trajectory "
                f"{trainer.position['m'] + 1}, step {trainer.position['k']})")
    elif metrics.exists():
        kept = _free_name(metrics)
        metrics.rename(kept)
        warnings.warn(f"{out}: a run without a checkpoint to resume from left {metrics.name}; kept as {kept.name}, "
                      f"and this run starts over", stacklevel=3)
    kept_rows = len(metrics.read_text().splitlines()) if resumed and metrics.exists() else 0
    sinks = []
    if "tensorboard" in plan.loggers:
        from ..training.tensorboard import TensorBoardSink
        sinks.append(TensorBoardSink(out / "tensorboard"))
    if "wandb" in plan.loggers:
        from ..training.wandb_log import WandbSink
        sinks.append(WandbSink(out / "wandb", plan.config or {}, name=out.name))
    trainer.metrics = MetricsWriter(metrics, rows=kept_rows, sinks=sinks)
    if snapshots is not None and plan.snapshot_every and not resumed:
        save(trainer.phi, snapshots / f"step-{0:08d}.safetensors", 0)
    steps_before = trainer.inner_steps
    result = trainer.run()
    info = {**info, "inner_steps": result.inner_steps}
    if resumed and result.inner_steps == steps_before and finished_before.is_file():
        # A finished run asked again: nothing ran, so its files (and the wall time it took) stay as they were.
        before = json.loads(finished_before.read_text())
        if before.get("inner_steps") == result.inner_steps:
            return RunOutcome(result.phi, learners, result, info, before, replicas.load_summary)
    save(result.phi, out / INIT_NAME, result.inner_steps)
    summary = {"method": plan.meta.method, "inner_steps": result.inner_steps, "meta_updates": result.meta_updates,
               "wall_time": result.wall_time, "world_size": comm.world_size, "comm": comm.backend_name,
               "backend": learners.backend, **(learners.engine.choice() if learners.engine is not None else {}),
               "tasks": plan.info.get("sources") or [t.label for t in tasks]}
    if comm.is_main():
        write_json(out / "summary.json", summary)
    return RunOutcome(result.phi, learners, result, info, summary, replicas.load_summary)
