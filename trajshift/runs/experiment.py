"""Image meta-training from a YAML config (``trajshift meta-train CONFIG.yaml --out DIR``): the config's tasks built
as ImageTasks, then the one run orchestration (trajshift/runs/train.py), as ``trajshift.fit`` calls it.

Writes DIR/config.yaml (resolved), DIR/metrics.jsonl, DIR/snapshots/step-XXXXXXXX.safetensors and
DIR/init.safetensors: the learned initialization, the model's body without its head, with init.json beside it
(trajshift/data/init_file.py: the format and the BatchNorm rule). ``init_from`` starts every task from a pretrained
body. The config: trajshift/runs/config.py.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from ..models import build_model
from .config import ExperimentConfig, identity_meta_params, load_config  # noqa: F401  (the command's API)
from .models import model_source
from .train import LOGGERS, RunPlan, snapshot_steps, train  # noqa: F401


def model_spec_beside(init: Path) -> dict | None:
    """The model spec saved beside an init file (init.json, step-N.json for a snapshot), if any."""
    from ..data.init_file import read_info
    spec = read_info(init).get("model")
    return dict(spec) if isinstance(spec, dict) and ("name" in spec or "factory" in spec) else None


def build_models(model_spec: dict, num_classes: list[int], seed: int, task_ids: list[int] | None = None,
                 meta_params: dict | None = None, init_from: str | None = None, init_heads: bool = False,
                 log=None) -> list:
    """The config's task replicas (trajshift/runs/replicas.py's rule), without training: approx-error and the
    distributed tests build the same modules a run would."""
    from .replicas import build_replicas
    return build_replicas(lambda t, c: build_model(model_spec, c, t), num_classes, seed, task_ids,
                          meta_params=meta_params, init_from=init_from, init_heads=init_heads,
                          log=log or print, what=f"model {model_spec}").models


def meta_train(cfg: ExperimentConfig, out: str | Path, log=print, comm=None, loggers: tuple[str, ...] = ()) -> dict:
    """Meta-train the config's tasks into the run folder ``out``; returns summary.json's content."""
    from ..data.tasks import TaskSpec, build_tasks
    from ..engine.comm import init_from_env, shard
    comm = comm or init_from_env(cfg.device)
    if comm.world_size > len(cfg.tasks):
        raise ConfigError(f"{comm.world_size} processes for {len(cfg.tasks)} tasks: every process needs at least one "
                          f"task; launch at most {len(cfg.tasks)} processes")
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    mine = list(shard(len(cfg.tasks), comm.world_size, comm.rank))
    tasks = build_tasks([cfg.tasks[i] for i in mine], cfg.batch_size, cfg.seed, cfg.data_root, cfg.cache_dir,
                        cfg.device, task_ids=mine)
    for task, gid in zip(tasks, mine):
        val = (f"{len(task.y['val'])} val" if task.spec.val_fraction > 0 else
               "no val (val = train: val_fraction is 0)")
        log(f"task {gid}: {task.spec.label}: {task.num_classes} classes, {len(task.y['train'])} train / {val} / "
            f"{len(task.y['test'])} test images at {task.spec.resolution}px"
            + (f" (rank {comm.rank})" if comm.world_size > 1 else ""))
    specs = [TaskSpec.from_dict(t, "") for t in cfg.tasks]
    info = {"sources": [s.label for s in specs], "made_by": "trajshift meta-train"}
    for key in ("resolution", "augment"):           # the sources' common value: meta-test's default
        values = {str(getattr(s, key)) for s in specs}
        info[key] = getattr(specs[0], key) if len(values) == 1 else None
    source = model_source(cfg.model)
    plan = RunPlan(tasks=tasks, make=source.make, meta=cfg.meta, seed=cfg.seed, batch_size=cfg.batch_size,
                   model_spec=cfg.model, meta_params=cfg.meta_params, init_from=cfg.init_from,
                   init_heads=cfg.init_heads, execution=cfg.execution, task_ids=mine, num_tasks=len(cfg.tasks),
                   task_descriptions=cfg.tasks, task_names=[f"tasks[{gid}]" for gid in mine],
                   held_out_hint=("val_fraction: 0", "set val_fraction (e.g. 0.2) on these tasks"), identity_meta_params=identity_meta_params(cfg), out=Path(out),
                   snapshot_every=cfg.snapshot_every, checkpoint_every=cfg.checkpoint_every,
                   keep_checkpoints=cfg.keep_checkpoints, config=cfg.to_dict(), info=info, loggers=tuple(loggers),
                   deterministic=cfg.deterministic, device=cfg.device)
    return train(plan, log=log, comm=comm).summary
