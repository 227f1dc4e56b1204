"""Meta-test: finetune from an initialization (or from scratch) on target datasets with a fresh head; report the
mean top-1 test accuracy over seeds with its 95% confidence interval (Student t).

Protocols (``--protocol``):
* paper: Section 4.2: SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, 1,000 steps, batch 128. The
  paper says "an appropriate learning rate schedule" without more: we decay x0.1 at 50% and 75% of the steps.
* table1: Section 4.3 / Table 1: Nesterov SGD, lr 0.01, x0.2 at steps 400/700/900 (of 1,000), weight decay 1e-4,
  batch 256, 1,000-image training subsets.
* reference: the authors' code: Adam, lr 1e-3, weight decay 5e-4, batch 128, 1,000 steps, x0.3 at 40/70/90%.
``steps`` rescales the schedule (milestones are fractions of the steps).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.atomic import write_json, write_text
from ..core.errors import ConfigError
from ..core.registry import Registry
from ..core.sampling import stream_seed
from ..core.schema import Rule, opt, revalidate
from ..core.stats import mean_ci95
from ..data.tasks import AUGMENTATIONS
from ..engine.learners import head_names
from ..engine.optim import build_optimizer
from ..models import build_model
from .seed_cache import SeedCache


@dataclass(frozen=True)
class Protocol:
    name: str
    optimizer: dict
    steps: int
    milestones: tuple[float, ...]       # fractions of the steps
    gamma: float
    batch_size: int
    train_images: int | None = None
    description: str = ""


PROTOCOLS: Registry[Protocol] = Registry("protocol", "--protocol")
for _p in (
    Protocol("paper", {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, 1000,
             (0.5, 0.75), 0.1, 128, None, "Section 4.2 (schedule x0.1 at 50%/75%: our choice)"),
    Protocol("table1", {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, 1000,
             (0.4, 0.7, 0.9), 0.2, 256, 1000, "Table 1: 1,000-image subsets"),
    Protocol("reference", {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4}, 1000, (0.4, 0.7, 0.9), 0.3, 128,
             None, "the reference code"),
):
    PROTOCOLS.register(_p.name, _p)


def meta_params_beside(init: str | Path) -> dict | None:
    """The meta_params (head split) recorded in the init.json beside an init file, if any."""
    from ..data.init_file import read_info
    mp = read_info(init).get("meta_params")
    return mp if isinstance(mp, dict) else None


def load_init(path: str | Path) -> dict[str, torch.Tensor]:
    """An initialization's tensors: .safetensors, a torch state_dict (weights_only=True: no code runs) or a run
    folder (trajshift/data/init_file.py)."""
    from ..data.init_file import read_init
    return read_init(path)[0]


def load_body(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str,
              meta_params: dict | None = None) -> None:
    """Load everything but the head (the parameters ``meta_params`` does not select; default fc.*, head.*,
    classifier.*); any other mismatch is an error that names the keys."""
    head = set(head_names(model, meta_params))
    body = {k: v for k, v in sd.items() if k not in head}
    _check_shapes(model, body, where)
    result = model.load_state_dict(body, strict=False)
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{where}: the initialization does not fit the model: missing {missing[:4]}, "
                          f"unexpected {result.unexpected_keys[:4]}; check --model")


def match_registered_model(sd: dict[str, torch.Tensor], where: str) -> dict:
    """The registered model (with default options) whose body has exactly the file's key names and shapes, for a
    bare state_dict that came without init.json; refused, with the models whose key names fit, when none or several
    do."""
    from ..models import MODELS
    names_fit, fits = [], []
    for name in MODELS.names():
        model = build_model({"name": name}, 2)
        head = set(head_names(model))
        own = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in head}
        body = {k: tuple(v.shape) for k, v in sd.items() if k not in head and not k.startswith(("fc.", "head.",
                                                                                              "classifier."))}
        if set(own) == set(body):
            names_fit.append(name)
            if own == body:
                fits.append(name)
    if len(fits) == 1:
        return {"name": fits[0]}
    if names_fit:
        raise ConfigError(f"{where}: no init.json beside it, and its keys fit {', '.join(names_fit)} but not with the "
                          f"default options (a width or depth differs); give --model NAME and its options, e.g. "
                          f"--model {names_fit[0]} --set model.width=32")
    raise ConfigError(f"{where}: no init.json beside it, and its keys fit no registered model "
                      f"({', '.join(MODELS.names())}); give --model, or a model of your own through the Python API "
                      f"(trajshift.finetune)")


def _check_shapes(model, body, where) -> None:
    own = model.state_dict()
    for k, v in body.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise ConfigError(f"{where}: {k} has shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the "
                              f"model; check --model")


def finetune(task, model_spec: dict, init: dict | None, protocol: Protocol, steps: int, seed: int,
             device="cpu", where: str = "init", on_step=None, meta_params: dict | None = None) -> float:
    """Train a fresh-headed model on ``task`` for ``steps`` steps; returns its test accuracy."""
    torch.manual_seed(stream_seed(seed, 0xF17E))
    model = build_model(model_spec, task.num_classes).to(device)
    if init is not None:
        load_body(model, init, where, meta_params)
    return train_and_evaluate(model, task, protocol, steps, seed, on_step)


def train_and_evaluate(model: torch.nn.Module, task, protocol: Protocol, steps: int, seed: int, on_step=None,
                       loss_fn=None) -> float:
    """The protocol's finetuning of ``model`` (its head fresh, its body loaded) on ``task`` (``task.batch(step,
    "train")`` and ``task.evaluate(model)``), then its test accuracy: what meta-test and trajshift.finetune run."""
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    opt = build_optimizer(model.parameters(), protocol.optimizer, f"protocol {protocol.name}")
    # The learning rate times gamma at each milestone (fractions of the steps; never at step 0).
    milestones = sorted({max(1, round(f * steps)) for f in protocol.milestones})
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=protocol.gamma)
    model.train()
    for step in range(steps):
        x, y = task.batch(step, "train")
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            from ..core.errors import DivergenceError
            raise DivergenceError(f"meta-test on {task.label}: loss {loss.item()} at step {step} (seed {seed})")
        loss.backward()
        opt.step()
        schedule.step()
        if on_step is not None:
            on_step()
    return task.evaluate(model)


def check_protocol(name: str, path: str) -> str:
    PROTOCOLS.get(name)                  # an unknown name lists the registered protocols
    return name


def _model(spec, path):
    from ..models import MODELS, import_factory
    if "factory" in spec:
        import_factory(str(spec["factory"]), f"{path}.factory")
    else:
        MODELS.get(spec.get("name"))
    return spec


def _targets(value, path):
    if not value:
        raise ConfigError(f"{path}: give at least one dataset name or path")
    return value


@dataclass
class MetaTestConfig:
    targets: list = opt(check=_targets, doc="dataset names or paths to image folders/archives (class folders or "
                        "manifest.csv), or task specs {dataset, classes, resolution}; comma-separated on the command line")
    init: str | None = opt(None, doc="None: from scratch")
    model: dict = opt(factory=lambda: {"name": "resnet20"}, check=_model)
    protocol: str = opt("paper", check=check_protocol)
    steps: int | None = opt(None, low=1, doc="finetuning steps (default: the protocol's 1000)")
    seeds: int = opt(5, low=1, doc="finetuning runs per target")
    first_seed: int = opt(0, low=0, doc="the first finetuning seed (seeds first_seed .. first_seed + seeds - 1): "
                          "another set of target subsamples, head weights and batch orders, e.g. one per "
                          "meta-training seed so that intervals cover the subsamples")
    resolution: int | None = opt(None, low=4, doc="image side in pixels (default: each dataset's registered "
                                 "resolution; 32 for a path)")
    train_images: int | None = opt(None, low=1, doc="subsample the target's training set (default: the protocol's)")
    images_per_class: list[int] | None = opt(None, items=Rule(low=1), doc=(
        "low-data regime: subsample each target's training split to exactly N images per class (seeded by the seed: "
        "the same subsample for every initialization; the test split stays whole); several values give one meta-test "
        "each, e.g. 5,20,100 (report: Fig. 9's gain against N)"))
    augment: str = opt("crop+flip", choices=tuple(AUGMENTATIONS), doc="finetuning batches (the paper's crop+flip)")
    batch_size: int | None = opt(None, low=1, doc="finetuning batch (default: the protocol's; never more than the "
                                 "training set)")
    data_root: str | None = opt(None, doc="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, "
                                "../shared/data)")
    cache_dir: str | None = opt(None, doc="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    device: str = opt("cpu")
    meta_params: dict | None = opt(None, doc="the head split of the init (default: init.json beside it, else fc.*)")

    def validate_fields(self, where):
        if self.images_per_class is not None:
            if not self.images_per_class:
                raise ConfigError("--images-per-class: give at least one number")
            if self.train_images is not None:
                raise ConfigError("--images-per-class and --train-images: give one of them")

    def validate(self) -> MetaTestConfig:
        return revalidate(self, flags=True)


def meta_test(cfg: MetaTestConfig, out: str | Path | None = None, log=print, progress: bool | None = None) -> dict:
    """Finetune from ``cfg.init`` on every target, ``cfg.seeds`` times. Seed s fixes the target's training subsample,
    the head's initial weights and the batch order, whatever the initialization: results of two initializations are
    paired by seed.

    Returns (and writes as DIR/results.json) one shape whatever the options: {init, protocol, steps, seeds, model,
    augment, images_per_class: [N1, ...] or null, by_images_per_class: {"N1": {targets, average}, ...} (one key,
    "all", without a per-class subsample), targets: {NAME: {mean, ci95, accs, ...}} and average: {mean, ci95,
    per_seed} of the first setting}. A CI needs 2 seeds: with one it is null."""
    cfg.validate()
    protocol = PROTOCOLS.get(cfg.protocol)
    steps = cfg.steps or protocol.steps
    init = load_init(cfg.init) if cfg.init else None
    t0 = time.perf_counter()
    report = {"init": cfg.init or "scratch", "protocol": protocol.name, "steps": steps, "seeds": cfg.seeds,
              "first_seed": cfg.first_seed, "model": cfg.model, "augment": cfg.augment}
    from ..training.progress import bar
    settings = cfg.images_per_class or [None]
    progress = bar(len(settings) * len(cfg.targets) * cfg.seeds * steps, "meta-test", show=progress)
    log = _above(progress, log)
    try:
        report["images_per_class"] = None if cfg.images_per_class is None else list(cfg.images_per_class)
        cache = SeedCache(out, cfg, steps)
        report["by_images_per_class"] = {"all" if n is None else str(n):
                                         _meta_test_setting(cfg, init, protocol, steps, n, log, progress, cache)
                                         for n in settings}
        report.update(next(iter(report["by_images_per_class"].values())))      # the first setting, at the top
    finally:
        progress.close()
    report["wall_time"] = time.perf_counter() - t0
    if cfg.seeds < 2:
        import warnings
        warnings.warn("a 95% confidence interval needs at least 2 seeds: ci95 is null in the results", stacklevel=2)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", report)
        write_text(out / "results.md", markdown_table(report))
    return report


def _above(progress, log):
    """``log`` printing above an active progress bar: print becomes tqdm.write; any other function (the CLI's
    log_line, which is tqdm.write, or a silent one for --quiet) is kept as it is."""
    from ..training.progress import log_line
    return log_line if log is print else log


def _meta_test_setting(cfg: MetaTestConfig, init, protocol: Protocol, steps: int, per_class: int | None,
                       log, progress, cache: SeedCache | None = None) -> dict:
    from ..data.cache import prepare
    from ..data.registry import DATASETS
    from ..data.tasks import ImageTask, TaskSpec
    results: dict = {}
    per_seed: dict[int, list[float]] = {}
    meta_params = cfg.meta_params or (meta_params_beside(cfg.init) if cfg.init else None)
    for target in cfg.targets:
        # A target is a dataset name or path, or a task spec {dataset, classes, resolution, ...} (held-out classes).
        base = dict(target) if isinstance(target, dict) else {"dataset": target}
        name = target if isinstance(target, str) else TaskSpec.from_dict(base, "target").label
        res = base.get("resolution") or cfg.resolution or (
            DATASETS.get(base["dataset"]).resolution if base["dataset"] in DATASETS else 32)
        data = prepare(base["dataset"], res, cfg.data_root, cfg.cache_dir, manifest=base.get("manifest"),
                       class_depth=base.get("class_depth"))
        accs = []
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            spec = TaskSpec.from_dict({**base, "resolution": res, "augment": cfg.augment,
                                       "train_images": None if per_class else cfg.train_images or protocol.train_images,
                                       "images_per_class": per_class}, f"target {name}")
            task = ImageTask(spec, data, cfg.batch_size or protocol.batch_size, seed, 0, cfg.device,
                             where=f"target {name}")
            # A batch never holds an image twice: with a few images per class it is the whole training set.
            task.batch_size = min(task.batch_size, len(task.y["train"]))
            key = cache.key(target=base, resolution=res, images_per_class=per_class, seed=seed) if cache else None
            if cache is not None and key in cache.done:
                accs.append(cache.done[key])
                progress.update(steps)
            else:
                accs.append(finetune(task, cfg.model, init, protocol, steps, seed, cfg.device, cfg.init or "scratch",
                                     on_step=lambda: progress.update(1), meta_params=meta_params))
                if cache is not None:
                    cache.add(key, accs[-1])
            per_seed.setdefault(seed, []).append(accs[-1])
            log(f"{name}{f' ({per_class} per class)' if per_class else ''} seed {seed}: test accuracy "
                f"{100 * accs[-1]:.2f}%")
        mean, ci = mean_ci95(accs)
        results[name] = {"mean": mean, "ci95": ci, "accs": accs, "resolution": res, "batch_size": task.batch_size,
                         "train_images": len(task.y["train"]), "test_images": len(task.y["test"])}
    seed_means = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
    avg_mean, avg_ci = mean_ci95(seed_means)
    return {"targets": results, "average": {"mean": avg_mean, "ci95": avg_ci, "per_seed": seed_means}}


def _pct(mean, ci) -> str:
    return f"{100 * mean:.2f} ± " + ("n/a" if ci is None or math.isnan(ci) else f"{100 * ci:.2f}")


def markdown_table(report: dict) -> str:
    settings = ([(None, report)] if "by_images_per_class" not in report else
                [(None if n == "all" else n, r) for n, r in report["by_images_per_class"].items()])
    lines = [(f"Meta-test of `{report['init']}` ({report['protocol']} protocol, {report['steps']} steps, "
              f"{report['seeds']} seeds; mean test accuracy and 95% confidence interval over seeds, %). The average "
              f"row's interval is over seeds of the per-seed mean over targets."), ""]
    head = "| target | " + " | ".join("accuracy" if n is None else f"{n} per class" for n, _ in settings) + " |"
    lines += [head, "|---" * (len(settings) + 1) + "|"]
    for name in settings[0][1]["targets"]:
        lines.append(f"| {name} | " + " | ".join(_pct(r["targets"][name]["mean"], r["targets"][name]["ci95"])
                                                for _, r in settings) + " |")
    lines.append("| **average** | " + " | ".join(_pct(r["average"]["mean"], r["average"]["ci95"])
                                                 for _, r in settings) + " |")
    return "\n".join(lines) + "\n"
