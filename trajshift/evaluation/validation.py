"""Meta-validation: the score of an initialization on held-out *source* data, for choosing hyperparameters
(``trajshift sweep``). Meta-test targets are never read here.

The held-out data are classes of the source datasets that meta-training never sees (for example Tiny ImageNet
classes 180:200 when the source tasks use 0:180), finetuned from the initialization with a fresh head in the same
low-data regime as the meta-test (a few images per class, paired seeds). Why classes held out of the sources rather
than a whole source task held out: every source domain stays in meta-training, and the validation tasks are new
tasks from the same distribution, which is what a meta-learned initialization is for (Section 3: phi should work on
new tasks of the task distribution).

Config block (in the meta-train YAML; checked before any work):

    validation:
      tasks:                       # task specs; their classes must be disjoint from the source tasks' of a dataset
        - {dataset: tiny-imagenet, classes: "180:200", resolution: 32}
      images_per_class: 10         # class-wise subsample of each validation task's training split (null: all)
      steps: 100                   # finetuning steps
      seeds: 5
      protocol: paper
      batch_size: 64
      augment: crop

The score is the mean over seeds of the per-seed mean accuracy over the validation tasks, with its 95% CI.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import ConfigError
from ..core.schema import opt, parse
from ..data.tasks import AUGMENTATIONS, check_task_specs
from .meta_test import check_protocol
from .settings import DEFAULT_PROTOCOL


def _tasks(value, path):
    return check_task_specs(value, path, " of held-out source classes, e.g. [{dataset: tiny-imagenet, classes: "
                                         "'180:200'}]")


@dataclass
class ValidationConfig:
    tasks: list = opt(check=_tasks)
    images_per_class: int | None = opt(10, low=1)
    steps: int = opt(100, low=1)
    seeds: int = opt(5, low=2)
    protocol: str = opt(DEFAULT_PROTOCOL, check=check_protocol)
    batch_size: int | None = opt(64, low=1)
    augment: str = opt("crop", choices=tuple(AUGMENTATIONS))

    @staticmethod
    def from_dict(d, where: str = "validation") -> ValidationConfig:
        return parse(ValidationConfig, d, where)

    def to_dict(self) -> dict:
        return asdict(self)


def class_indices(spec: dict, data_root=None, cache_dir=None) -> set[int]:
    """The indices (in the dataset's class list) of the classes a task spec selects."""
    from ..data.cache import prepare
    from ..data.tasks import TaskSpec, select_classes
    s = TaskSpec.from_dict(spec, "task")
    data = prepare(s.dataset, s.resolution, data_root, cache_dir, manifest=s.manifest, class_depth=s.class_depth)
    return set(select_classes(data.classes, s.classes, s.label))


def check_held_out(sources: list, validation: ValidationConfig, data_root=None, cache_dir=None) -> None:
    """Refuse a validation task that shares a class with a source task of the same dataset: the score would then
    reward memorising meta-training data instead of initializing new tasks well."""
    from ..data.tasks import TaskSpec
    for i, v in enumerate(validation.tasks):
        vs = TaskSpec.from_dict(v, f"validation.tasks[{i}]")
        held = None
        for j, t in enumerate(sources):
            ts = TaskSpec.from_dict(t, f"tasks[{j}]")
            if ts.dataset != vs.dataset:
                continue
            held = class_indices(v, data_root, cache_dir) if held is None else held
            shared = held & class_indices(t, data_root, cache_dir)
            if shared:
                raise ConfigError(f"validation.tasks[{i}] ({vs.label}) shares {len(shared)} class(es) with the source "
                                  f"task tasks[{j}] ({ts.label}); validation classes must be held out of "
                                  f"meta-training: choose disjoint class ranges")


def _run_settings(run: Path, data_root, cache_dir):
    import yaml
    raw = yaml.safe_load((run / "config.yaml").read_text())
    if not raw.get("validation"):
        raise ConfigError(f"{run}/config.yaml: no validation block; add validation: {{tasks: [...]}} (held-out "
                          f"source classes) to the config")
    val = ValidationConfig.from_dict(raw["validation"])
    data_root = data_root if data_root is not None else raw.get("data_root")
    cache_dir = cache_dir if cache_dir is not None else raw.get("cache_dir")
    return raw, val, data_root, cache_dir


def _score(init: Path, key: str, raw: dict, val: ValidationConfig, data_root, cache_dir, log,
           progress=None) -> dict:
    """The validation score of one initialization file, stored with its cache key (``_key``)."""
    from .meta_test import MetaTestConfig, meta_test
    cfg = MetaTestConfig(targets=val.tasks, init=str(init), model=raw["model"], protocol=val.protocol,
                         steps=val.steps, seeds=val.seeds, batch_size=val.batch_size, augment=val.augment,
                         images_per_class=[val.images_per_class] if val.images_per_class else None,
                         data_root=data_root, cache_dir=cache_dir, given_by="the run's validation block")
    report = meta_test(cfg, None, log=log, progress=progress)
    setting = report["by_images_per_class"][str(val.images_per_class)] if val.images_per_class else report
    return {"key": key, "score": setting["average"]["mean"], "ci95": setting["average"]["ci95"],
            "per_seed": setting["average"]["per_seed"],
            "tasks": {k: {"mean": v["mean"], "ci95": v["ci95"], "accs": v["accs"]}
                      for k, v in setting["targets"].items()},
            "validation": val.to_dict()}


def _key(init: Path, val: ValidationConfig) -> str:
    return hashlib.sha256(json.dumps({"validation": val.to_dict(), "init": hashlib.sha256(init.read_bytes())
                                      .hexdigest()}, sort_keys=True).encode()).hexdigest()[:16]


def score_run(run: str | Path, data_root=None, cache_dir=None, log=print, progress: bool | None = None) -> dict:
    """Meta-validation score of a finished meta-train run (its init.pt), cached in RUN/validation.json (keyed by the
    validation settings and the init file)."""
    from .meta_test import write_json
    run = Path(run)
    raw, val, data_root, cache_dir = _run_settings(run, data_root, cache_dir)
    from ..data.init_file import run_init
    init = run_init(run)
    if init is None:
        raise ConfigError(f"{run}: no init.safetensors (the meta-train run has not finished)")
    cached, key = run / "validation.json", _key(init, val)
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            return old
    result = {**_score(init, key, raw, val, data_root, cache_dir, log, progress), "run": str(run)}
    write_json(cached, result)
    return result


def nearest_snapshots(files: list[Path], at: list[int]) -> list[Path]:
    """The snapshot nearest to each requested count of inner steps (the earlier one on a tie), each once, in step
    order: a run with K = 300 has no snapshot at 2,000 steps, and 2,100 stands for it."""
    from ..data.init_file import snapshot_steps as tr_inner
    steps = {path: tr_inner(path) for path in files}
    chosen = {min(files, key=lambda path: (abs(steps[path] - want), steps[path])) for want in at}
    return sorted(chosen, key=steps.__getitem__)


def score_snapshots(run: str | Path, data_root=None, cache_dir=None, log=print,
                    progress: bool | None = None, at: list[int] | None = None) -> dict:
    """Meta-validation score of every snapshot of a run (snapshots/step-N), so that a method's curve can be the
    best over its meta learning rates at each budget (the issue "Evidence II", item 4). Cached per snapshot in
    RUN/validation-snapshots.json (keyed like validation.json), so an interrupted scoring resumes and snapshots
    written later (a run still training) are scored on the next call. ``at`` (inner-step counts) scores only the
    snapshot nearest to each, for runs with many short trajectories (Fig. 6c's K = 100 writes 100 snapshots).
    Returns {inner_steps: result} for every snapshot scored so far."""
    from ..data.init_file import snapshot_files
    from ..data.init_file import snapshot_steps as tr_inner
    from .meta_test import write_json
    run = Path(run)
    raw, val, data_root, cache_dir = _run_settings(run, data_root, cache_dir)
    files = snapshot_files(run)
    if not files:
        raise ConfigError(f"{run}: no snapshots; set snapshot_every in the config (e.g. K, one per trajectory)")
    if at:
        files = nearest_snapshots(files, at)
    cached = run / "validation-snapshots.json"
    scores = json.loads(cached.read_text()) if cached.is_file() else {}
    for path in files:
        steps, key = str(tr_inner(path)), _key(path, val)
        if scores.get(steps, {}).get("key") != key:
            scores[steps] = {**_score(path, key, raw, val, data_root, cache_dir, log, progress),
                             "snapshot": path.name}
            write_json(cached, dict(sorted(scores.items(), key=lambda kv: int(kv[0]))))
    return {k: scores[k] for k in sorted(scores, key=int)}
