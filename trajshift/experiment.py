"""Image meta-training from a YAML config (``trajshift meta-train CONFIG.yaml --out DIR``).

Config (plain data; every key checked before any work):

    model: {name: resnet20, activation: relu, pooling: avg}
    tasks:                       # one head per task; see trajshift.data.tasks.TaskSpec
      - {dataset: tiny-imagenet, classes: "0:100", resolution: 64}
      - {dataset: fashion-mnist, resolution: 28}
    batch_size: 128
    seed: 0
    data_root: null              # default: $TRAJSHIFT_DATA, ./data, ../shared/data
    cache_dir: null              # default: $TRAJSHIFT_CACHE or ~/.cache/trajshift
    device: cpu
    snapshot_every: 0            # save phi every S cumulative inner steps (0: never)
    meta_params: {include: ["*"], exclude: ["fc.*"]}
    execution: {backend: auto, channels_last: false, autocast: none, compile: false}   # speed only, same math
    meta: {method: cts, inner_steps: 1000, trajectories: 200, meta_lr: 0.01,
           inner_optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}}

Writes DIR/config.yaml (resolved), DIR/metrics.jsonl, DIR/snapshots/step-XXXXXXXX.pt and DIR/init.pt: the learned
initialization as a plain state_dict of the model without its head (``model.load_state_dict(sd, strict=False)``
reports only fc.* missing). BatchNorm running statistics in it are the mean over the source tasks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .atomic import save_torch, write_bytes, write_json
from .config import MetaConfig
from .errors import ConfigError
from .learners import ModuleLearners, stream_seed
from .models import MODELS, build_model

TOP_KEYS = {"model", "tasks", "batch_size", "seed", "data_root", "cache_dir", "device", "snapshot_every", "meta",
            "meta_params", "checkpoint_every", "keep_checkpoints", "execution", "validation"}
EXECUTION_DEFAULTS = {"backend": "auto", "channels_last": False, "autocast": None, "compile": False}


@dataclass
class ExperimentConfig:
    model: dict
    tasks: list
    meta: MetaConfig
    batch_size: int = 128
    seed: int = 0
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    snapshot_every: int = 0
    checkpoint_every: int = 500      # loop steps between checkpoints (0: none); one more at exit
    keep_checkpoints: int = 3
    meta_params: dict = field(default_factory=lambda: {"include": ["*"], "exclude": ["fc.*"]})
    # How the T learners run (trajshift.learners.ModuleLearners): backend loop | batched | auto, channels_last,
    # autocast none | bf16 | fp16, compile. None of them changes the mathematics.
    execution: dict = field(default_factory=lambda: dict(EXECUTION_DEFAULTS))
    # Meta-validation on held-out source classes (trajshift.validation; used by `trajshift sweep`); None: none.
    validation: dict | None = None

    @staticmethod
    def from_dict(d: dict, where: str = "config") -> ExperimentConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        unknown = sorted(set(d) - TOP_KEYS, key=str)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(TOP_KEYS))}")
        for key in ("model", "tasks", "meta"):
            if key not in d:
                raise ConfigError(f"{where}: missing key {key!r}")
        model = d["model"] if isinstance(d["model"], dict) else {"name": d["model"]}
        check_model_spec(model)
        if not isinstance(d["tasks"], list) or not d["tasks"]:
            raise ConfigError(f"{where}.tasks: expected a non-empty list of tasks")
        from .data.tasks import TaskSpec
        for i, t in enumerate(d["tasks"]):
            TaskSpec.from_dict(t, f"tasks[{i}]")
        cfg = ExperimentConfig(model=model, tasks=d["tasks"], meta=MetaConfig.from_dict(d["meta"], "meta"),
                               **{k: d[k] for k in ("batch_size", "seed", "data_root", "cache_dir", "device",
                                                    "snapshot_every", "meta_params", "checkpoint_every",
                                                    "keep_checkpoints") if k in d},
                               execution=check_execution(d.get("execution") or {}))
        if d.get("validation") is not None:
            from .validation import ValidationConfig
            cfg.validation = ValidationConfig.from_dict(d["validation"]).to_dict()
        for key, low in (("batch_size", 1), ("seed", 0), ("snapshot_every", 0), ("checkpoint_every", 0),
                         ("keep_checkpoints", 1)):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{key}: expected an integer >= {low}, got {v!r}")
        mp = cfg.meta_params
        if not isinstance(mp, dict) or set(mp) - {"include", "exclude"} or not all(
                isinstance(v, list) and all(isinstance(g, str) for g in v) for v in mp.values()):
            raise ConfigError(f"meta_params: expected {{include: [name globs], exclude: [name globs]}}, got {mp!r}")
        try:
            torch.device(cfg.device)
        except RuntimeError as err:
            raise ConfigError(f"device: {err}") from None
        return cfg

    def to_dict(self) -> dict:
        return {"model": self.model, "tasks": self.tasks, "batch_size": self.batch_size, "seed": self.seed,
                "data_root": self.data_root, "cache_dir": self.cache_dir, "device": self.device,
                "snapshot_every": self.snapshot_every, "checkpoint_every": self.checkpoint_every,
                "keep_checkpoints": self.keep_checkpoints, "meta_params": self.meta_params,
                "execution": self.execution, "validation": self.validation, "meta": self.meta.to_dict()}


def check_execution(ex: dict) -> dict:
    """The execution block with defaults filled in; every key and value checked."""
    from .learners import AUTOCAST_DTYPES, BACKENDS
    if not isinstance(ex, dict):
        raise ConfigError(f"execution: expected a mapping like {EXECUTION_DEFAULTS}, got {ex!r}")
    unknown = sorted(set(ex) - set(EXECUTION_DEFAULTS), key=str)
    if unknown:
        raise ConfigError(f"execution.{unknown[0]}: unknown key; allowed keys: {', '.join(EXECUTION_DEFAULTS)}")
    out = {**EXECUTION_DEFAULTS, **ex}
    if out["autocast"] in ("none", "None", False):
        out["autocast"] = None
    if out["backend"] not in BACKENDS:
        raise ConfigError(f"execution.backend: unknown value {out['backend']!r}; allowed: {', '.join(BACKENDS)}")
    if out["autocast"] is not None and out["autocast"] not in AUTOCAST_DTYPES:
        raise ConfigError(f"execution.autocast: unknown value {out['autocast']!r}; allowed: none, "
                          f"{', '.join(AUTOCAST_DTYPES)}")
    for key in ("channels_last", "compile"):
        if not isinstance(out[key], bool):
            raise ConfigError(f"execution.{key}: expected true or false, got {out[key]!r}")
    if out["compile"] and out["backend"] == "loop":
        raise ConfigError("execution.compile: torch.compile applies to the batched backend; set execution.backend "
                          "to batched or auto, or compile to false")
    return out


def check_model_spec(model: dict) -> None:
    """Build the model once (2 classes) so an unknown name or a bad option fails now, naming the key."""
    import inspect
    cls = MODELS.get(model.get("name"))
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes")]
    for key in model:
        if key != "name" and key not in allowed:
            raise ConfigError(f"model.{key}: not an option of {model['name']}; allowed: {', '.join(allowed)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # torch's own warnings about zero-sized layers: ours says more
            net = build_model(model, 2)
        with torch.no_grad():           # a forward pass: some bad options (a width of 0) only fail here
            net.eval()(torch.zeros(1, 3, 16, 16))
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as err:
        bad = [f"{k}={v!r}" for k, v in model.items() if k != "name" and isinstance(v, (int, float)) and v <= 0]
        raise ConfigError(f"model: {model} cannot be built" + (f" ({', '.join(bad)}: expected > 0)" if bad else
                                                               f" ({str(err).splitlines()[0]})")) from None


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        from .yamlio import load
        data = load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    for key, value in (overrides or {}).items():          # "meta.inner_steps" -> nested
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ExperimentConfig.from_dict(data, str(path))


def build_models(model_spec: dict, num_classes: list[int], seed: int,
                 task_ids: list[int] | None = None) -> list[torch.nn.Module]:
    """One model per task: the same initial body (seeded), a head sized for each task and seeded by the task's
    global index (so a task gets the same head whichever process builds it)."""
    torch.manual_seed(stream_seed(seed, 0xB0D7))
    template = build_model(model_spec, 2)
    body = {k: v for k, v in template.state_dict().items() if not k.startswith("fc.")}
    models = []
    for t, c in zip(task_ids if task_ids is not None else range(len(num_classes)), num_classes):
        torch.manual_seed(stream_seed(seed, t, 0x4EAD))
        m = build_model(model_spec, c)
        m.load_state_dict(body, strict=False)
        models.append(m)
    return models


def init_state_dict(learners: ModuleLearners, phi: torch.Tensor, comm=None) -> dict[str, torch.Tensor]:
    """The learned initialization as a head-less plain state_dict: phi for the meta-learned parameters and the mean
    over all tasks (all ranks: a collective) of the buffers (BatchNorm statistics; num_batches_tracked rounded)."""
    from .comm import LocalComm
    comm = comm or LocalComm()
    sd = {k: v for k, v in learners.task_state_dict(0, phi.detach().to(torch.float32)).items()
          if not k.startswith("fc.")}
    for name in [n for n, _ in learners.modules[0].named_buffers()]:
        values = torch.stack([dict(m.named_buffers())[name].detach().double() for m in learners.modules])
        mean = comm.task_mean(values.sum(0, keepdim=True), len(learners.modules))[0]
        sd[name] = mean.float() if sd[name].is_floating_point() else mean.round().to(sd[name].dtype)
    return {k: v.clone().contiguous() for k, v in sd.items()}


# Methods whose meta-gradient uses validation batches (FOMAML's last-step gradient, iMAML's g_val).
HELD_OUT_METHODS = ("fomaml", "fomaml++", "imaml")


def tr_inner(path: Path) -> int | None:
    """The cumulative inner steps of a snapshot file (step-N.pt), None for init.pt."""
    return int(path.stem.split("-")[1]) if path.stem.startswith("step-") else None


def model_spec_beside(init: Path) -> dict | None:
    """The model spec saved beside an init file (init.json for init.pt, step-N.json for a snapshot), if any."""
    side = Path(init).with_suffix(".json")
    if side.is_file():
        import json
        try:
            spec = json.loads(side.read_text()).get("model")
        except (ValueError, AttributeError):
            return None
        return dict(spec) if isinstance(spec, dict) and "name" in spec else None
    return None


def run_identity(cfg: ExperimentConfig) -> dict:
    """Everything besides the meta block that makes a checkpoint belong to a run: the model, the tasks and their
    data options, the seed, the batch size, the meta-learned parameter filter and the execution options that change
    the arithmetic (autocast). The backend and channels_last change only the rounding and speed."""
    return {"model": cfg.model, "tasks": cfg.tasks, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "meta_params": cfg.meta_params, "execution": {"autocast": cfg.execution.get("autocast")}}


def _free_name(path: Path) -> Path:
    """path.1, path.2, ...: the first that does not exist."""
    i = 1
    while path.with_name(f"{path.name}.{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.{i}")


LOGGERS = ("tensorboard",)


def meta_train(cfg: ExperimentConfig, out: str | Path, log=print, comm=None, loggers: tuple[str, ...] = ()) -> dict:
    """Meta-train, holding the run folder's lock (a second run on the same folder is refused). ``loggers``: more
    places for the metrics rows than metrics.jsonl ("tensorboard": RUN/tensorboard/)."""
    from .checkpoint import RunLock
    from .comm import init_from_env
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    comm = comm or init_from_env(cfg.device)
    if not comm.is_main():
        return _meta_train(cfg, out, log, comm, ())
    with RunLock(out):
        return _meta_train(cfg, out, log, comm, loggers)


def _meta_train(cfg: ExperimentConfig, out: str | Path, log, comm, loggers=()) -> dict:
    """Meta-train on the config's tasks. Under torchrun the tasks are sharded over the ranks (contiguous blocks,
    sizes differing by at most one); every mean over tasks is one all-reduce; only rank 0 writes config.yaml,
    init.pt, snapshots/ and summary.json; every rank writes its own tasks' metrics (metrics.jsonl on rank 0,
    metrics.rank<R>.jsonl on the others)."""
    from .comm import shard
    from .data.tasks import TaskSpec, build_tasks
    from .trainer import MetaTrainer
    if comm.world_size > len(cfg.tasks):
        raise ConfigError(f"{comm.world_size} processes for {len(cfg.tasks)} tasks: every process needs at least one "
                          f"task; launch at most {len(cfg.tasks)} processes")
    mine = list(shard(len(cfg.tasks), comm.world_size, comm.rank))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    local = build_tasks([cfg.tasks[i] for i in mine], cfg.batch_size, cfg.seed, cfg.data_root, cfg.cache_dir,
                        cfg.device, task_ids=mine)
    for task, gid in zip(local, mine):
        val = (f"{len(task.y['val'])} val" if task.spec.val_fraction > 0 else
               "no val (val = train: val_fraction is 0)")
        log(f"task {gid}: {task.spec.label}: {task.num_classes} classes, {len(task.y['train'])} train / {val} / "
            f"{len(task.y['test'])} test images at {task.spec.resolution}px"
            + (f" (rank {comm.rank})" if comm.world_size > 1 else ""))
    no_val = [f"tasks[{gid}]" for task, gid in zip(local, mine) if task.spec.val_fraction == 0]
    if cfg.meta.method in HELD_OUT_METHODS and no_val:
        warnings.warn(f"{cfg.meta.method} computes its meta-gradient on a held-out batch, but {', '.join(no_val)} "
                      f"hold nothing out (val_fraction: 0), so that batch is training data; set val_fraction "
                      f"(e.g. 0.2) on these tasks", stacklevel=2)
    tasks = local
    models = [m.to(cfg.device) for m in build_models(cfg.model, [t.num_classes for t in tasks], cfg.seed, mine)]
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step, split),
                              include=cfg.meta_params.get("include", ["*"]),
                              exclude=cfg.meta_params.get("exclude", ["fc.*"]), **cfg.execution)
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
                how = f" (measured per step of all local tasks: {timing})"
            log(f"backend: {learners.backend}{how}" + (f" (rank {comm.rank})" if comm.world_size > 1 else ""))

    def save_init(tr_phi, path):     # a collective (BatchNorm statistics are averaged over all ranks)
        sd = init_state_dict(learners, tr_phi, comm)
        if comm.is_main():
            save_torch(sd, path)
            # Its model spec beside it, so the file can be meta-tested (or shared) on its own.
            write_json(path.with_suffix(".json"), {"model": cfg.model, "head": "not included (fc.*)",
                                                   "method": cfg.meta.method, "inner_steps": tr_inner(path)})

    def snapshot(tr):
        # At a trajectory's last step, wait for its end: Algorithm 1's meta-update happens there, so a snapshot at a
        # trajectory boundary holds every method's phi after the same work.
        if tr.position["k"] == cfg.meta.inner_steps:
            return
        if cfg.snapshot_every and tr.inner_steps >= state["next"]:
            save_init(tr.phi, snapshots / f"step-{tr.inner_steps:08d}.pt")
            state["next"] = (tr.inner_steps // cfg.snapshot_every + 1) * cfg.snapshot_every

    from .trainer import MetricsWriter, truncate_metrics
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
        write_bytes(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
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
        from .tensorboard import TensorBoardSink
        sinks.append(TensorBoardSink(out / "tensorboard"))
    trainer.metrics = MetricsWriter(metrics, rows=kept_rows, sinks=sinks)
    if cfg.snapshot_every and not resumed:
        save_init(trainer.phi, snapshots / f"step-{0:08d}.pt")
    result = trainer.run()
    save_init(result.phi, out / "init.pt")
    summary = {"method": cfg.meta.method, "inner_steps": result.inner_steps, "meta_updates": result.meta_updates,
               "wall_time": result.wall_time, "world_size": comm.world_size,
               "tasks": [TaskSpec.from_dict(t, "").label for t in cfg.tasks]}
    if comm.is_main():
        write_json(out / "summary.json", summary)
    return summary
