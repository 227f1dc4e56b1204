"""The image meta-training config (``trajshift meta-train CONFIG.yaml``), declared with trajshift.core.schema:

    model: {name: resnet20, activation: relu, pooling: avg}
    tasks:                       # one head per task; see trajshift.data.tasks.TaskSpec
      - {dataset: tiny-imagenet, classes: "0:100", resolution: 64}
      - {dataset: fashion-mnist, resolution: 28}
    batch_size: 128
    seed: 0
    data_root: null              # default: $TRAJSHIFT_DATA, ./data, ../shared/data
    cache_dir: null              # default: $TRAJSHIFT_CACHE or ~/.cache/trajshift
    device: cpu
    deterministic: false         # true: bit-identical reruns on CUDA (deterministic kernels; CPU is so already)
    snapshot_every: 0            # save phi every S cumulative inner steps (0: never)
    meta_params: {include: ["*"], exclude: ["fc.*"]}     # meta-learned parameters; the rest is each task's head
    execution: {backend: auto, channels_last: false, autocast: none, compile: false}   # speed only, same math
    validation: null             # held-out source classes for `trajshift sweep` (trajshift.evaluation.validation)
    meta: {method: cts, inner_steps: 1000, trajectories: 200, meta_lr: 0.01,
           inner_optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}}

``--set KEY=VALUE`` overrides are merged into the mapping before it is checked: the same rules as the file.
"""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..core.errors import ConfigError
from ..core.schema import opt, parse
from ..engine.learners import DEFAULT_HEAD_PATTERNS
from ..engine.module_learners import ExecutionConfig
from ..models import MODELS, build_model
from ..training.config import MetaConfig


@dataclass
class MetaParams:
    """Name globs of the meta-learned parameters; every other parameter is a task's own (its head)."""
    include: list[str] = opt(factory=lambda: ["*"])
    exclude: list[str] = opt(factory=lambda: list(DEFAULT_HEAD_PATTERNS))


def check_execution(value: dict, path: str = "execution") -> dict:
    """The execution block with defaults filled in; every key and value checked."""
    if value.get("autocast") in ("none", "None", False):        # YAML spellings of "no autocast"
        value = {**value, "autocast": None}
    return dataclasses.asdict(parse(ExecutionConfig, value, path))


def _meta_params(value, path):
    return dataclasses.asdict(parse(MetaParams, value, path))


def _tasks(value, path):
    from ..data.tasks import check_task_specs
    return check_task_specs(value, path)


def _validation(value, path):
    from ..evaluation.validation import ValidationConfig
    return ValidationConfig.from_dict(value, path).to_dict()


def _device(value, path):
    try:
        torch.device(value)
    except RuntimeError as err:
        raise ConfigError(f"{path}: {err}") from None
    return value


def _init_from(value, path):
    if value is not None and not Path(value).exists():
        raise ConfigError(f"{path}: {value}: no such file or folder (a state_dict .pt, a .safetensors file or a "
                          f"trajshift run folder)")
    return None if value is None else str(value)


def check_model_spec(model, path: str = "model") -> dict:
    """Build the model once (2 classes) so an unknown name or a bad option fails now, naming the key."""
    model = {"name": model} if isinstance(model, str) else dict(model)
    if "factory" in model:
        # A model of the user's own: no signature probe and no forward here (its input size is the tasks'); the run
        # builds it and runs one forward of a real batch first (meta_train.probe_forward), naming it if that fails.
        from ..models import import_factory
        if "name" in model:
            raise ConfigError(f"{path}: give name (a registered model) or factory (an import path), not both")
        import_factory(str(model["factory"]), f"{path}.factory")
        return model
    cls = MODELS.get(model.get("name"))
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes")]
    for key in model:
        if key != "name" and key not in allowed:
            raise ConfigError(f"{path}.{key}: not an option of {model['name']}; allowed: {', '.join(allowed)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # torch's own warnings about zero-sized layers: ours says more
            net = build_model(model, 2)
        with torch.no_grad():           # a forward pass: some bad options (a width of 0) only fail here
            net.eval()(torch.zeros(1, int(model.get("in_channels", 3)), 16, 16))
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as err:
        bad = [f"{k}={v!r}" for k, v in model.items() if k != "name" and isinstance(v, (int, float)) and v <= 0]
        raise ConfigError(f"{path}: {model} cannot be built" + (f" ({', '.join(bad)}: expected > 0)" if bad else
                                                                f" ({str(err).splitlines()[0]})")) from None
    return model


@dataclass
class ExperimentConfig:
    model: dict | str = opt(check=check_model_spec)
    tasks: list = opt(check=_tasks)
    meta: MetaConfig = opt()
    batch_size: int = opt(128, low=1)
    seed: int = opt(0, low=0)
    data_root: str | None = opt(None)
    cache_dir: str | None = opt(None)
    device: str = opt("cpu", check=_device)
    snapshot_every: int = opt(0, low=0, doc="save phi every S cumulative inner steps (0: never)")
    checkpoint_every: int = opt(500, low=0, doc="loop steps between checkpoints (0: none); one more at exit")
    keep_checkpoints: int = opt(3, low=1)
    meta_params: dict = opt(factory=lambda: dataclasses.asdict(MetaParams()), check=_meta_params)
    execution: dict | None = opt(factory=lambda: dataclasses.asdict(ExecutionConfig()), check=check_execution)
    validation: dict | None = opt(None, check=_validation)
    init_from: str | None = opt(None, check=_init_from, doc="pretrained body: a state_dict, .safetensors or trajshift "
                                                             "init file (or run folder), loaded before meta-training")
    init_heads: bool = opt(False, doc="also take the head from init_from (only when every task's class count fits)")
    deterministic: bool = opt(False, doc="torch.use_deterministic_algorithms during the run: bit-identical reruns on "
                                         "CUDA, at some speed; CPU runs are deterministic without it")

    def validate_fields(self, where):
        if self.execution is None:                      # `execution:` left empty: the defaults
            self.execution = dataclasses.asdict(ExecutionConfig())

    @staticmethod
    def from_dict(d: dict, where: str = "") -> ExperimentConfig:
        # One seed: the run's `seed` is also the method's (the random shift's directions), as trajshift.fit(seed=)
        # does, unless the meta block names its own.
        if isinstance(d, dict) and isinstance(d.get("meta"), dict) and "seed" not in d["meta"] and "seed" in d:
            d = {**d, "meta": {**d["meta"], "seed": d["seed"]}}
        return parse(ExperimentConfig, d, where)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "meta"},
                "meta": self.meta.to_dict()}

    @property
    def head_patterns(self) -> list[str]:
        """Name globs of the parameters that are each task's own (not meta-learned): the head."""
        return list(self.meta_params.get("exclude", DEFAULT_HEAD_PATTERNS))


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML config, merge ``overrides`` ({"meta.inner_steps": 100, ...}) and check everything."""
    path = Path(path)
    try:
        from ..core.yamlio import load
        data = load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for key, value in (overrides or {}).items():          # "meta.inner_steps" -> nested
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ExperimentConfig.from_dict(data)


def identity_meta_params(cfg: ExperimentConfig) -> dict:
    """The head filter as older runs recorded it (exclude fc.*) when it selects the same head on this model: the
    default filter became fc.*, head.*, classifier.* (the library's), which changes no registered model's split."""
    from ..engine.learners import head_names
    from ..models import build_model
    legacy = {"include": cfg.meta_params["include"], "exclude": ["fc.*"]}
    try:
        model = build_model(cfg.model, 2)
        same = head_names(model, cfg.meta_params) == head_names(model, legacy)
    except Exception:  # noqa: BLE001  a model that cannot be built here is checked (and named) when the run builds it
        same = False
    return legacy if same else cfg.meta_params


__all__ = ["ExecutionConfig", "ExperimentConfig", "MetaParams", "check_model_spec", "identity_meta_params",
           "load_config"]
