"""Meta-test: finetune from an initialization (or from scratch) on target datasets with a fresh head; report the
mean top-1 test accuracy over seeds with its 95% confidence interval (Student t). The protocols and the finetuning
loop: trajshift/evaluation/protocols.py; the settings (model, resolution, augmentation, protocol) every door resolves
the same way: trajshift/evaluation/settings.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.atomic import write_json, write_text
from ..core.errors import ConfigError
from ..core.sampling import stream_seed
from ..core.schema import Rule, opt, revalidate
from ..core.stats import mean_ci95
from ..data.tasks import AUGMENTATIONS
from ..engine.learners import head_names
from ..models import build_model
from .protocols import PROTOCOLS, Protocol, check_protocol, train_and_evaluate
from .seed_cache import SeedCache


def resolve_settings(cfg: MetaTestConfig):
    """The meta-test's settings (trajshift/evaluation/settings.py): the config's explicit values, then the init's
    records, then the declared defaults."""
    from .settings import resolve
    return resolve(cfg.init, model=cfg.model, resolution=cfg.resolution, augment=cfg.augment,
                   protocol=cfg.protocol, given_by=cfg.given_by,
                   match_keys=lambda init: match_registered_model(load_init(init), f"--init {init}"))


def load_init(path: str | Path) -> dict[str, torch.Tensor]:
    """An initialization's tensors: .safetensors, a torch state_dict (weights_only=True: no code runs) or a run
    folder (trajshift/data/init_file.py)."""
    from ..data.init_file import read_init
    return read_init(path)[0]


def target_head(model: torch.nn.Module, head) -> list[str]:
    """The target model's head: ``head`` as the settings resolved it (None: the default rule; {"meta_params": ...}:
    an init's recorded filter; anything else: head names, trajshift/models/heads.py)."""
    from ..models.heads import head_from_meta_params, head_parameter_names
    if isinstance(head, dict):                  # {"meta_params": filter} as resolved, or a filter itself
        return head_from_meta_params(model, head.get("meta_params", head))
    return head_parameter_names(model, head)


def load_body(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str, head=None) -> list[str]:
    """Load everything but the head (``target_head``); returns the init's keys that are the target model's head and
    were therefore dropped (each target gets a fresh head). Any other mismatch is an error that names the keys."""
    from ..models.heads import head_keys
    skip = head_keys(model.state_dict(), target_head(model, head))
    body = {k: v for k, v in sd.items() if k not in skip}
    _check_shapes(model, body, where)
    result = model.load_state_dict(body, strict=False)
    missing = [k for k in result.missing_keys if k not in skip]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{where}: the initialization does not fit the model: missing {missing[:4]}, "
                          f"unexpected {result.unexpected_keys[:4]}; check the model (--model / model=)")
    return sorted(k for k in sd if k in skip)


def dropped_head_note(where: str, dropped: list[str]) -> str:
    return (f"{where} holds {len(dropped)} tensors of the target model's head ({', '.join(dropped[:4])}"
            f"{', ...' if len(dropped) > 4 else ''}): dropped; each target gets a fresh head")


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


def finetune_seed(make, task, init: dict | None, protocol: Protocol, steps: int, seed: int, device="cpu",
                  where: str = "init", on_step=None, head=None, loss_fn=None,
                  scheduler=None) -> tuple[float, list[str]]:
    """Seed ``seed``'s finetuning: the model ``make(0, C)`` built under stream_seed(seed, 0xF17E) (its fresh head),
    the init's body loaded, the protocol run on ``task``; returns (test accuracy, the init's head keys dropped)."""
    torch.manual_seed(stream_seed(seed, 0xF17E))
    model = make(0, task.num_classes).to(device)
    dropped = load_body(model, init, where, head) if init is not None else []
    return train_and_evaluate(model, task, protocol, steps, seed, on_step, loss_fn=loss_fn,
                              scheduler=scheduler), dropped


def _model(spec, path):
    from ..models import MODELS, import_factory
    if spec is None:
        return None
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
    model: dict | None = opt(None, check=_model, doc="default: the init's records (trajshift/evaluation/settings.py)")
    protocol: str | None = opt(None, check=lambda v, p: v if v is None else check_protocol(v, p),
                               doc="default: the run's validation block, else paper")
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
    augment: str | None = opt(None, choices=(*AUGMENTATIONS, None), doc="finetuning batches (default: init.json's, "
                              "else the paper's crop+flip)")
    batch_size: int | None = opt(None, low=1, doc="finetuning batch (default: the protocol's; never more than the "
                                 "training set)")
    data_root: str | None = opt(None, doc="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, "
                                "../shared/data)")
    cache_dir: str | None = opt(None, doc="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    device: str = opt("cpu")
    meta_params: dict | None = opt(None, doc="the head split of the init (default: init.json beside it, else fc.*)")
    given_by: str = opt("command line", doc="how the explicit settings are named where they are printed")

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
    init = load_init(cfg.init) if cfg.init else None
    chosen = resolve_settings(cfg)
    log(f"meta-test settings: {chosen.describe()}")
    import dataclasses
    cfg = dataclasses.replace(cfg, model=chosen["model"], protocol=chosen["protocol"], augment=chosen["augment"],
                              resolution=chosen["resolution"])
    protocol = PROTOCOLS.get(cfg.protocol)
    steps = cfg.steps or protocol.steps
    t0 = time.perf_counter()
    report = {"init": cfg.init or "scratch", "protocol": protocol.name, "steps": steps, "seeds": cfg.seeds,
              "first_seed": cfg.first_seed, "model": cfg.model, "augment": cfg.augment,
              "settings": chosen.record(), "head": chosen["head"]}
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
    head = {"meta_params": cfg.meta_params} if cfg.meta_params else resolve_settings(cfg)["head"]
    from ..models import build_model as build
    make = lambda task_index, c: build(cfg.model, c, task_index)
    dropped_said = False
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
                acc, dropped = finetune_seed(make, task, init, protocol, steps, seed, cfg.device, cfg.init or "scratch",
                                             on_step=lambda: progress.update(1), head=head)
                accs.append(acc)
                if dropped and not dropped_said:
                    log(dropped_head_note(cfg.init, dropped))
                    dropped_said = True
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
