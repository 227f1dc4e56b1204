"""Image meta-training from a YAML config (``trajshift meta-train CONFIG.yaml --out DIR``).

Writes DIR/config.yaml (resolved), DIR/metrics.jsonl, DIR/snapshots/step-XXXXXXXX.safetensors and
DIR/init.safetensors: the learned initialization, the model's body without its head (the parameters meta_params does
not select), with init.json beside it (trajshift/data/init_file.py: the format and the BatchNorm rule). ``init_from``
starts every task from a pretrained body. The config: trajshift/commands/run_config.py.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ..core.atomic import write_bytes, write_json
from ..core.determinism import deterministic_algorithms
from ..core.errors import ConfigError
from ..core.sampling import stream_seed
from ..data.init_file import BATCHNORM_RULE, INIT_NAME
from ..data.init_file import save_init as save_init_file
from ..engine.learners import head_names
from ..engine.module_learners import ModuleLearners
from ..models import build_model
from .run_config import ExperimentConfig, load_config, run_identity  # noqa: F401  (the command's API)


def build_models(model_spec: dict, num_classes: list[int], seed: int, task_ids: list[int] | None = None,
                 meta_params: dict | None = None, init_from: str | None = None, init_heads: bool = False,
                 log=None) -> list[torch.nn.Module]:
    """One model per task: the same initial body (seeded, or loaded from ``init_from``: a pretrained state_dict,
    .safetensors or trajshift init; trajshift/data/init_file.py), a head sized for each task and seeded by the task's
    global index (so a task gets the same head whichever process builds it). The head is what ``meta_params`` does
    not select (default: fc.*, head.*, classifier.*); it is taken from ``init_from`` only with ``init_heads``."""
    torch.manual_seed(stream_seed(seed, 0xB0D7))
    template = build_model(model_spec, 2)
    head = set(head_names(template, meta_params))
    warn_class_dependent_meta_params(lambda c: build_model(model_spec, c), head, f"model {model_spec}")
    loaded = None
    if init_from is not None:
        from ..data.init_file import load_pretrained, read_init
        loaded, _ = read_init(init_from)
        summary = load_pretrained(template, loaded, head, str(init_from), heads=False)
        (log or print)(summary.format())
    body = {k: v for k, v in template.state_dict().items() if k not in head}
    models = []
    for t, c in zip(task_ids if task_ids is not None else range(len(num_classes)), num_classes):
        torch.manual_seed(stream_seed(seed, t, 0x4EAD))
        m = build_model(model_spec, c)
        m.load_state_dict(body, strict=False)
        if loaded is not None and init_heads:
            from ..data.init_file import load_pretrained
            load_pretrained(m, loaded, set(), f"{init_from} (heads, task {t})", heads=True)
        models.append(m)
    return models


def warn_class_dependent_meta_params(make: Callable[[int], torch.nn.Module], head: set[str], what: str) -> list[str]:
    """Warn (and return the names) when a meta-learned parameter's shape depends on the class count: it is a head
    that the head filter missed (say a head named ``out``), meta-learned silently when the tasks' class counts
    happen to be equal. Found by building the model for 2 and 3 classes."""
    a, b = ({n: tuple(p.shape) for n, p in make(c).named_parameters()} for c in (2, 3))
    culprits = [n for n in a if n not in head and a[n] != b.get(n)]
    if culprits:
        warnings.warn(f"{what}: {', '.join(culprits)} change shape with the number of classes, so they are a head, "
                      f"but the head filter meta-learns them; name the head (meta_params: {{exclude: "
                      f"[{culprits[0].rsplit('.', 1)[0]}.*]}}, or head= in the Python API)", stacklevel=3)
    return culprits


def init_state_dict(learners: ModuleLearners, phi: torch.Tensor, comm=None) -> dict[str, torch.Tensor]:
    """The learned initialization as a head-less plain state_dict: phi for the meta-learned parameters and the mean
    over all tasks (all ranks: a collective) of the buffers (BatchNorm statistics; num_batches_tracked rounded)."""
    from ..engine.comm import LocalComm
    comm = comm or LocalComm()
    head = set(learners.local_specs[0].names)
    sd = {k: v for k, v in learners.task_state_dict(0, phi.detach().to(torch.float32)).items() if k not in head}
    for name in [n for n, _ in learners.modules[0].named_buffers()]:
        values = torch.stack([dict(m.named_buffers())[name].detach().double() for m in learners.modules])
        mean = comm.task_mean(values.sum(0, keepdim=True), len(learners.modules))[0]
        sd[name] = mean.float() if sd[name].is_floating_point() else mean.round().to(sd[name].dtype)
    return {k: v.clone().contiguous() for k, v in sd.items()}


def init_info(model_spec, learners: ModuleLearners, meta_params: dict | None, method: str, inner_steps: int | None,
              specs: list | None = None, init_from: str | None = None) -> dict:
    """init.json: what the initialization is and how it was made; meta-test takes its defaults from it."""
    info = {"model": model_spec, "meta_params": meta_params, "meta_learned": list(learners.spec.names),
            "head": list(learners.local_specs[0].names), "batchnorm": BATCHNORM_RULE, "method": method,
            "inner_steps": inner_steps, "init_from": init_from}
    if specs:
        for key in ("resolution", "augment"):           # the sources' common value: meta-test's default
            values = {str(getattr(s, key)) for s in specs}
            info[key] = getattr(specs[0], key) if len(values) == 1 else None
        info["sources"] = [s.label for s in specs]
    return info


def probe_forward(model: torch.nn.Module, x: torch.Tensor, model_spec) -> None:
    """One forward of a real batch before any work, so a model that cannot take the data fails now, named."""
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as err:  # noqa: BLE001  any failure here is the model's refusal of this input
        raise ConfigError(f"model {model_spec}: its forward fails on an input of shape {tuple(x.shape)} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the model "
                          f"or the tasks' resolution") from None
    finally:
        model.train(was)


# Methods whose meta-gradient uses validation batches (FOMAML's last-step gradient, iMAML's g_val).
HELD_OUT_METHODS = ("fomaml", "fomaml++", "imaml")


def tr_inner(path: Path) -> int | None:
    """The cumulative inner steps of a snapshot file (step-N.safetensors), None for the final init."""
    return int(Path(path).stem.split("-")[1]) if Path(path).stem.startswith("step-") else None


def model_spec_beside(init: Path) -> dict | None:
    """The model spec saved beside an init file (init.json, step-N.json for a snapshot), if any."""
    from ..data.init_file import read_info
    spec = read_info(init).get("model")
    return dict(spec) if isinstance(spec, dict) and ("name" in spec or "factory" in spec) else None


def _free_name(path: Path) -> Path:
    """path.1, path.2, ...: the first that does not exist."""
    i = 1
    while path.with_name(f"{path.name}.{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.{i}")


LOGGERS = ("tensorboard", "wandb")


def meta_train(cfg: ExperimentConfig, out: str | Path, log=print, comm=None, loggers: tuple[str, ...] = ()) -> dict:
    """Meta-train, holding the run folder's lock (a second run on the same folder is refused). ``loggers``: more
    places for the metrics rows than metrics.jsonl ("tensorboard": RUN/tensorboard/)."""
    from ..engine.comm import init_from_env
    from ..training.checkpoint import RunLock
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    comm = comm or init_from_env(cfg.device)
    if not comm.is_main():
        with deterministic_algorithms(cfg.deterministic):
            return _meta_train(cfg, out, log, comm, ())
    created = not Path(out).exists()
    try:
        with RunLock(out), deterministic_algorithms(cfg.deterministic):
            return _meta_train(cfg, out, log, comm, loggers)
    except BaseException:
        if created:
            _remove_if_empty(Path(out))      # a refused run leaves no folder behind (one that wrote files keeps them)
        raise


def _extensions(config: Path) -> list[str]:
    """The "# extended: ..." lines at the top of a run's config.yaml (its history of extensions of M)."""
    if not config.is_file():
        return []
    return [line + "\n" for line in config.read_text().splitlines() if line.startswith("# extended:")]


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds no file (empty subfolders such as snapshots/ included)."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def _meta_train(cfg: ExperimentConfig, out: str | Path, log, comm, loggers=()) -> dict:
    """Meta-train on the config's tasks. Under torchrun the tasks are sharded over the ranks (contiguous blocks,
    sizes differing by at most one); every mean over tasks is one all-reduce; only rank 0 writes config.yaml,
    init.safetensors, snapshots/ and summary.json; every rank writes its own tasks' metrics (metrics.jsonl on rank 0,
    metrics.rank<R>.jsonl on the others)."""
    from ..data.tasks import TaskSpec, build_tasks
    from ..engine.comm import shard
    from ..training.loop import MetaTrainer
    if comm.world_size > len(cfg.tasks):
        raise ConfigError(f"{comm.world_size} processes for {len(cfg.tasks)} tasks: every process needs at least one "
                          f"task; launch at most {len(cfg.tasks)} processes")
    mine = list(shard(len(cfg.tasks), comm.world_size, comm.rank))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks([cfg.tasks[i] for i in mine], cfg.batch_size, cfg.seed, cfg.data_root, cfg.cache_dir,
                        cfg.device, task_ids=mine)
    for task, gid in zip(tasks, mine):
        val = (f"{len(task.y['val'])} val" if task.spec.val_fraction > 0 else
               "no val (val = train: val_fraction is 0)")
        log(f"task {gid}: {task.spec.label}: {task.num_classes} classes, {len(task.y['train'])} train / {val} / "
            f"{len(task.y['test'])} test images at {task.spec.resolution}px"
            + (f" (rank {comm.rank})" if comm.world_size > 1 else ""))
    no_val = [f"tasks[{gid}]" for task, gid in zip(tasks, mine) if task.spec.val_fraction == 0]
    if cfg.meta.method in HELD_OUT_METHODS and no_val:
        warnings.warn(f"{cfg.meta.method} computes its meta-gradient on a held-out batch, but {', '.join(no_val)} "
                      f"hold nothing out (val_fraction: 0), so that batch is training data; set val_fraction "
                      f"(e.g. 0.2) on these tasks", stacklevel=2)
    models = [m.to(cfg.device) for m in build_models(cfg.model, [t.num_classes for t in tasks], cfg.seed, mine,
                                                     cfg.meta_params, cfg.init_from, cfg.init_heads,
                                                     log=log if comm.is_main() else (lambda *_: None))]
    probe_forward(models[0], tasks[0].batch(0, "val")[0][:2], cfg.model)
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step, split),
                              include=cfg.meta_params["include"], exclude=cfg.meta_params["exclude"],
                              **cfg.execution)
    snapshots = out / "snapshots"
    if comm.is_main():
        snapshots.mkdir(exist_ok=True)
    state = {"next": cfg.snapshot_every, "backend_logged": False}

    def report_backend(tr):
        if not state["backend_logged"]:
            state["backend_logged"] = True
            timing = ", ".join(f"{k} {v:.1f} ms" for k, v in learners.backend_timings.items())
            how = ""
            if state.get("resumed") and cfg.execution["backend"] == "auto":
                how = " (chosen at the run's start; resumed)"      # the checkpoint's choice, not measured again
            elif timing:
                how = f" (measured per step of all of this process's tasks: {timing})"
            log(f"backend: {learners.backend}{how}" + (f" (rank {comm.rank})" if comm.world_size > 1 else ""))

    specs = [TaskSpec.from_dict(t, "") for t in cfg.tasks]

    def save_init(tr_phi, path):     # a collective (BatchNorm statistics are averaged over all ranks)
        sd = init_state_dict(learners, tr_phi, comm)
        if comm.is_main():
            # Its description beside it (init.json), so the file can be meta-tested (or shared) on its own.
            save_init_file(path, sd, init_info(cfg.model, learners, cfg.meta_params, cfg.meta.method,
                                               tr_inner(path), specs, cfg.init_from))

    def snapshot(tr):
        # At a trajectory's last step, wait for its end: Algorithm 1's meta-update happens there, so a snapshot at a
        # trajectory boundary holds every method's phi after the same work.
        if tr.position["k"] == cfg.meta.inner_steps:
            return
        if cfg.snapshot_every and tr.inner_steps >= state["next"]:
            save_init(tr.phi, snapshots / f"step-{tr.inner_steps:08d}.safetensors")
            state["next"] = (tr.inner_steps // cfg.snapshot_every + 1) * cfg.snapshot_every

    from ..training.metrics import MetricsWriter, truncate_metrics
    metrics = out / ("metrics.jsonl" if comm.is_main() else f"metrics.rank{comm.rank}.jsonl")
    checkpointing = cfg.checkpoint_every > 0
    trainer = MetaTrainer(learners, cfg.meta, metrics_path=None, step_callbacks=[report_backend, snapshot], comm=comm,
                          trajectory_callbacks=[snapshot],
                          task_ids=mine, checkpoint_dir=out / "checkpoints" if checkpointing else None,
                          checkpoint_every=cfg.checkpoint_every if checkpointing else 0,
                          keep_checkpoints=cfg.keep_checkpoints, identity=run_identity(cfg))
    resumed = checkpointing and trainer.resume()        # automatic resume from the newest valid checkpoint
    # Only now, with the checkpoint accepted (or none), is the folder this run's: a refused run changes nothing.
    if comm.is_main():
        history = _extensions(out / "config.yaml")
        if resumed and trainer.extended_from is not None:
            history.append(f"# extended: meta.trajectories {trainer.extended_from} -> {cfg.meta.trajectories}, "
                           f"continued from the checkpoint at inner step {trainer.inner_steps}\n")
            log(history[-1][2:].strip())
        write_bytes(out / "config.yaml", ("".join(history) + yaml.safe_dump(cfg.to_dict(), sort_keys=False)).encode())
    state["resumed"] = bool(resumed)
    if resumed:
        truncate_metrics(metrics, trainer.inner_steps, trainer.resumed_metrics_rows)
        if cfg.snapshot_every:
            # A checkpoint at a trajectory's last step precedes that trajectory's end, and its snapshot.
            done = trainer.inner_steps - (trainer.position["k"] == cfg.meta.inner_steps)
            state["next"] = (done // cfg.snapshot_every + 1) * cfg.snapshot_every
        log(f"resumed from the checkpoint at inner step {trainer.inner_steps} (trajectory "
            f"{trainer.position['m'] + 1}, step {trainer.position['k']})")
    elif metrics.exists():
        kept = _free_name(metrics)
        metrics.rename(kept)
        warnings.warn(f"{out}: a run without a checkpoint to resume from left {metrics.name}; kept as {kept.name}, "
                      f"and this run starts over", stacklevel=2)
    kept_rows = len(metrics.read_text().splitlines()) if resumed and metrics.exists() else 0
    sinks = []
    if "tensorboard" in loggers:
        from ..training.tensorboard import TensorBoardSink
        sinks.append(TensorBoardSink(out / "tensorboard"))
    if "wandb" in loggers:
        from ..training.wandb_log import WandbSink
        sinks.append(WandbSink(out / "wandb", cfg.to_dict(), name=out.name))
    trainer.metrics = MetricsWriter(metrics, rows=kept_rows, sinks=sinks)
    if cfg.snapshot_every and not resumed:
        save_init(trainer.phi, snapshots / f"step-{0:08d}.safetensors")
    steps_before = trainer.inner_steps
    result = trainer.run()
    finished_before = out / "summary.json"
    if resumed and result.inner_steps == steps_before and finished_before.is_file():
        # A finished run asked again: nothing ran, so its files (and the wall time it took) stay as they were.
        before = json.loads(finished_before.read_text())
        if before.get("inner_steps") == result.inner_steps:
            return before
    save_init(result.phi, out / INIT_NAME)
    summary = {"method": cfg.meta.method, "inner_steps": result.inner_steps, "meta_updates": result.meta_updates,
               "wall_time": result.wall_time, "world_size": comm.world_size,
               "tasks": [TaskSpec.from_dict(t, "").label for t in cfg.tasks]}
    if comm.is_main():
        write_json(out / "summary.json", summary)
    return summary
