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
    meta: {method: cts, inner_steps: 1000, trajectories: 200, meta_lr: 0.01,
           inner_optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}}

Writes DIR/config.yaml (resolved), DIR/metrics.jsonl, DIR/snapshots/step-XXXXXXXX.pt and DIR/init.pt: the learned
initialization as a plain state_dict of the model without its head (``model.load_state_dict(sd, strict=False)``
reports only fc.* missing). BatchNorm running statistics in it are the mean over the source tasks.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .config import MetaConfig
from .errors import ConfigError
from .learners import ModuleLearners, stream_seed
from .models import MODELS, build_model

TOP_KEYS = {"model", "tasks", "batch_size", "seed", "data_root", "cache_dir", "device", "snapshot_every", "meta",
            "meta_params"}


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
    meta_params: dict = field(default_factory=lambda: {"include": ["*"], "exclude": ["fc.*"]})

    @staticmethod
    def from_dict(d: dict, where: str = "config") -> "ExperimentConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        unknown = sorted(set(d) - TOP_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(TOP_KEYS))}")
        for key in ("model", "tasks", "meta"):
            if key not in d:
                raise ConfigError(f"{where}: missing key {key!r}")
        model = d["model"] if isinstance(d["model"], dict) else {"name": d["model"]}
        MODELS.get(model.get("name"))
        if not isinstance(d["tasks"], list) or not d["tasks"]:
            raise ConfigError(f"{where}.tasks: expected a non-empty list of tasks")
        from .data.tasks import TaskSpec
        for i, t in enumerate(d["tasks"]):
            TaskSpec.from_dict(t, f"tasks[{i}]")
        cfg = ExperimentConfig(model=model, tasks=d["tasks"], meta=MetaConfig.from_dict(d["meta"], "meta"),
                               **{k: d[k] for k in ("batch_size", "seed", "data_root", "cache_dir", "device",
                                                    "snapshot_every", "meta_params") if k in d})
        for key, low in (("batch_size", 1), ("seed", 0), ("snapshot_every", 0)):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{key}: expected an integer >= {low}, got {v!r}")
        mp = cfg.meta_params
        if not isinstance(mp, dict) or set(mp) - {"include", "exclude"}:
            raise ConfigError(f"meta_params: expected {{include: [globs], exclude: [globs]}}, got {mp!r}")
        try:
            torch.device(cfg.device)
        except RuntimeError as err:
            raise ConfigError(f"device: {err}") from None
        return cfg

    def to_dict(self) -> dict:
        return {"model": self.model, "tasks": self.tasks, "batch_size": self.batch_size, "seed": self.seed,
                "data_root": self.data_root, "cache_dir": self.cache_dir, "device": self.device,
                "snapshot_every": self.snapshot_every, "meta_params": self.meta_params, "meta": self.meta.to_dict()}


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    for key, value in (overrides or {}).items():          # "meta.inner_steps" -> nested
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ExperimentConfig.from_dict(data, str(path))


def build_models(model_spec: dict, num_classes: list[int], seed: int) -> list[torch.nn.Module]:
    """One model per task: the same initial body (seeded), a head sized for each task."""
    torch.manual_seed(stream_seed(seed, 0xB0D7))
    template = build_model(model_spec, num_classes[0])
    body = {k: v for k, v in template.state_dict().items() if not k.startswith("fc.")}
    models = []
    for t, c in enumerate(num_classes):
        torch.manual_seed(stream_seed(seed, t, 0x4EAD))
        m = build_model(model_spec, c)
        m.load_state_dict(body, strict=False)
        models.append(m)
    return models


def init_state_dict(learners: ModuleLearners, phi: torch.Tensor) -> dict[str, torch.Tensor]:
    """The learned initialization as a head-less plain state_dict: phi for the meta-learned parameters, the task
    mean of float buffers (BatchNorm statistics), the max of integer ones (num_batches_tracked)."""
    sd = {k: v for k, v in learners.task_state_dict(0, phi.detach().to(torch.float32)).items()
          if not k.startswith("fc.")}
    for name in [n for n, _ in learners.modules[0].named_buffers()]:
        values = torch.stack([dict(m.named_buffers())[name].detach() for m in learners.modules])
        sd[name] = values.float().mean(0) if values.is_floating_point() else values.max(0).values
    return {k: v.clone().contiguous() for k, v in sd.items()}


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def meta_train(cfg: ExperimentConfig, out: str | Path, log=print) -> dict:
    from .data.tasks import build_tasks
    from .trainer import MetaTrainer
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tasks = build_tasks(cfg.tasks, cfg.batch_size, cfg.seed, cfg.data_root, cfg.cache_dir, cfg.device)
    for t in tasks:
        log(f"task {t.task_id}: {t.spec.label}: {t.num_classes} classes, {len(t.y['train'])} train / "
            f"{len(t.y['val'])} val / {len(t.y['test'])} test images at {t.spec.resolution}px")
    models = [m.to(cfg.device) for m in build_models(cfg.model, [t.num_classes for t in tasks], cfg.seed)]
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step, split),
                              include=cfg.meta_params.get("include", ["*"]),
                              exclude=cfg.meta_params.get("exclude", ["fc.*"]))
    snapshots = out / "snapshots"
    snapshots.mkdir(exist_ok=True)
    state = {"next": cfg.snapshot_every}

    def snapshot(tr):
        if cfg.snapshot_every and tr.inner_steps >= state["next"]:
            save_atomic(init_state_dict(learners, tr.phi), snapshots / f"step-{tr.inner_steps:08d}.pt")
            state["next"] = (tr.inner_steps // cfg.snapshot_every + 1) * cfg.snapshot_every

    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    trainer = MetaTrainer(learners, cfg.meta, metrics_path=out / "metrics.jsonl", step_callbacks=[snapshot])
    if cfg.snapshot_every:
        save_atomic(init_state_dict(learners, trainer.phi), snapshots / f"step-{0:08d}.pt")
    result = trainer.run()
    save_atomic(init_state_dict(learners, result.phi), out / "init.pt")
    summary = {"method": cfg.meta.method, "inner_steps": result.inner_steps, "meta_updates": result.meta_updates,
               "wall_time": result.wall_time, "tasks": [t.spec.label for t in tasks]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
