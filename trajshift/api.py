"""The PyTorch-native API: your model, your Datasets, torch.optim classes; state_dicts out.

    result = trajshift.fit(model_fn, [ds_a, ds_b, ds_c], method="cts", inner_steps=1000, trajectories=10,
                           meta_lr=0.01, optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                           batch_size=128, init_from="resnet18_imagenet.pth")
    torch.save(result.init_state_dict(), "init.pt")          # or result.save("runs/x"): init.safetensors + init.json
    scores = trajshift.finetune(result, model_fn, target_train, target_test, protocol="table1", seeds=5,
                                baseline="resnet18_imagenet.pth")  # paired with the pretrained model by seed

Both are thin callers of the layers every door shares: ``fit`` builds its tasks from your Datasets and runs the one
run orchestration (trajshift/runs/train.py: replicas, head rule, identity, run folder) that ``trajshift meta-train``
runs; ``finetune`` resolves its settings (trajshift/evaluation/settings.py) and runs the meta-test's finetuning
loop, the very code of ``trajshift meta-test`` (for a target given by dataset name or path, the meta-test itself).

The model: ``model_fn(task_index, num_classes) -> nn.Module``, a factory or class taking ``num_classes=``, or one
module (copied per task, so every task must then have its class count). Give it by import path (a function or class
defined in a module) and init.json records it, so ``meta-test``, ``report`` and ``finetune`` rebuild it
(trajshift/runs/models.py). The head: ``head=`` names it as you write the model (``"out"``, ``"top.1"``, a module, a
list); default: the model's ``get_classifier()`` (timm), else the modules named fc, head or classifier
(trajshift/models/heads.py).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .core.errors import ConfigError
from .core.stats import mean_ci95
from .data.init_file import LoadSummary, save_init
from .data.torch_datasets import DatasetTask, as_dataset_list
from .engine.module_learners import ModuleLearners
from .engine.optim import optimizer_spec
from .runs.models import ModelFn, model_source
from .runs.replicas import init_tensors
from .runs.train import RunPlan, init_state_dict, train
from .training.config import MetaConfig
from .training.loop import TrainResult


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns: phi, the trained replicas, the run's counts, and the initialization as a state_dict."""
    phi: torch.Tensor
    learners: ModuleLearners
    train: TrainResult | None
    info: dict
    load_summary: LoadSummary | None = None

    def init_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned initialization: the body (no head) with phi, BatchNorm statistics averaged over the tasks;
        ``model.load_state_dict(sd, strict=False)`` leaves only the head missing."""
        return init_state_dict(self.learners, self.phi)

    def task_state_dict(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s whole module as it ended (its head and statistics included), body from phi."""
        return self.learners.task_state_dict(task, phi=self.phi)

    @property
    def head(self) -> list[str]:
        """The head's parameter names (each task's own; not in the init)."""
        return list(self.info.get("head", []))

    def save(self, path: str | Path) -> Path:
        """init.safetensors + init.json (a folder, or a .safetensors path); returns the file's path."""
        return save_init(path, self.init_state_dict(), self.info)


def fit(model, datasets: Sequence[torch.utils.data.Dataset], *, method: str = "cts", inner_steps: int = 100,
        trajectories: int = 10, meta_lr: float = 0.01, optimizer=None, batch_size: int = 128, init_from=None,
        head=None, num_classes: Sequence[int] | None = None, val_datasets: Sequence | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
        device: str | torch.device = "cpu", out: str | Path | None = None, checkpoint_every: int = 500,
        snapshot_every: int = 0, backend: str | None = None, autocast: str | None = None, compile: bool = False,
        channels_last: bool = False, graphs: bool = False, max_group: int | None = None,
        threads: int | None = None, callbacks: Sequence[Callable] = (), input_key=None, label_key=None,
        collate_fn=None, num_workers: int = 0, log=print,
        **meta_options) -> FitResult:
    """Meta-learn a shared initialization of ``model``'s body over ``datasets`` (one task each).

    ``optimizer``: the inner optimizer: a torch.optim class, a partial of one, or {name, lr, ...} (default SGD lr
    0.05 momentum 0.9). ``init_from``: a pretrained body (state_dict path, .safetensors, trajshift init or run
    folder, a state_dict or a FitResult): loaded into every task before meta-training, heads never. ``head``: the
    head's module path(s), parameter names or globs (module docstring). ``val_datasets``: held-out data for
    fomaml/imaml's meta-gradient (default: the training sets). ``out``: a run folder for metrics.jsonl, checkpoints
    and init.safetensors: an interrupted fit with the same inputs resumes there, and a fit with other inputs (model,
    data, head, init_from, method options) is refused, naming the first difference. ``meta_options``: any other
    MetaConfig field (options, meta_optimizer, reset_optimizer_state, dtype, clip_grad_norm, ...); a misspelled one is
    refused with "did you mean". Execution (the CLI's ``execution`` block, the same defaults; none changes the math):
    ``backend`` (loop, batched or auto, the default), ``autocast``, ``compile``, ``channels_last``, ``graphs`` (CUDA
    graphs for each step's optimizer step, meta-update and shift, and the batched groups; CUDA only), ``max_group`` (tasks per vmapped call). ``threads``:
    torch's intra-op threads during the fit (restored after). ``callbacks``: functions of the trainer, called after
    every meta-update (MetaTrainer's). ``log=None``: nothing printed (no progress bar either). Data: Datasets or
    DataLoaders (their dataset and collate_fn) whose items are (input, label) pairs, dicts (``{"pixel_values",
    "labels"}``, ``{"image", "label"}``, ...) or tuples with more fields; ``input_key``/``label_key`` name the fields
    (keys or positions) where the common names do not; ``collate_fn`` turns a list of items into (inputs, labels);
    ``num_workers`` > 0 fetches and decodes training batches in that many worker processes, each batch under its
    own seed, so the run is the same as with none."""
    data_format = {"input_key": input_key, "label_key": label_key, "collate_fn": collate_fn,
                   "num_workers": num_workers}
    _check_meta_options(meta_options)
    from .runs.config import check_execution
    execution = check_execution({"backend": backend or _default_backend(), "autocast": autocast,
                                 "compile": bool(compile), "channels_last": bool(channels_last),
                                 "graphs": bool(graphs), "max_group": max_group})
    if log is None:
        log = _silent
        meta_options.setdefault("progress", False)
    with _threads(threads):
        return _fit(model, datasets, method, inner_steps, trajectories, meta_lr, optimizer, batch_size, init_from,
                    head, num_classes, val_datasets, loss, seed, device, out, checkpoint_every, snapshot_every,
                    execution, list(callbacks), log, meta_options, data_format)


def _silent(*_args, **_kwargs) -> None:
    return None


def _default_backend() -> str:
    from .engine.module_learners import ExecutionConfig
    return ExecutionConfig().backend


def _check_meta_options(options: dict) -> None:
    """fit's **meta_options are MetaConfig fields: a misspelled one is refused naming the closest."""
    from .core.schema import did_you_mean
    allowed = [f.name for f in dataclasses.fields(MetaConfig)
               if f.name not in ("method", "inner_steps", "trajectories", "meta_lr", "inner_optimizer", "seed")]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"fit: unexpected keyword {key!r}; {did_you_mean(key, allowed + list(_FIT_KEYWORDS))}"
                              f"fit takes {', '.join(_FIT_KEYWORDS)} and the MetaConfig fields {', '.join(allowed)}")


class _threads:
    """torch.set_num_threads(n) inside, the caller's count restored after (None: unchanged)."""

    def __init__(self, n: int | None):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"threads: expected an integer >= 1, got {n!r}")
        self.n, self.before = n, None

    def __enter__(self):
        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.before is not None:
            torch.set_num_threads(self.before)


def _fit(model, datasets, method, inner_steps, trajectories, meta_lr, optimizer, batch_size, init_from, head,
         num_classes, val_datasets, loss, seed, device, out, checkpoint_every, snapshot_every, execution, callbacks,
         log, meta_options, data_format) -> FitResult:
    datasets = as_dataset_list(datasets, "datasets")
    source = model_source(model)
    if isinstance(model, torch.nn.Module) and num_classes is not None and len(set(num_classes)) > 1:
        raise ConfigError(f"model: one module was given for datasets of {sorted(set(num_classes))} classes; its head "
                          f"fits one class count; pass model_fn(task, num_classes) instead")
    inner = optimizer_spec(optimizer if optimizer is not None else {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                           "optimizer")
    cfg = MetaConfig(method=method, inner_steps=inner_steps, trajectories=trajectories, meta_lr=meta_lr,
                     inner_optimizer=inner, seed=seed, **meta_options).validate()
    vals = as_dataset_list(val_datasets, "val_datasets") if val_datasets is not None else [None] * len(datasets)
    if len(vals) != len(datasets) or (num_classes is not None and len(num_classes) != len(datasets)):
        raise ConfigError("val_datasets / num_classes: give one per dataset")
    tasks = [DatasetTask(ds, batch_size, seed, t, device, val=vals[t], label=f"datasets[{t}]",
                         num_classes=None if num_classes is None else num_classes[t], **data_format)
             for t, ds in enumerate(datasets)]
    capped = [f"{t.label} ({len(t.data['train'])} items)" for t in tasks if len(t.data["train"]) < batch_size]
    if capped:
        warnings.warn(f"batch_size {batch_size} is more than {', '.join(capped)} hold: their batches are capped to "
                      f"the whole dataset (a batch never holds an item twice)", stacklevel=3)
    if isinstance(model, torch.nn.Module) and len({t.num_classes for t in tasks}) > 1:
        raise ConfigError(f"model: one module was given for datasets of {sorted({t.num_classes for t in tasks})} "
                          f"classes; its head fits one class count; pass model_fn(task, num_classes) instead")
    plan = RunPlan(tasks=tasks, make=source.make, meta=cfg, seed=seed, batch_size=batch_size,
                   model_spec=source.spec, model_note=source.why_not, head=head, init_from=init_from,
                   execution=execution, loss=loss, out=Path(out) if out is not None else None,
                   snapshot_every=snapshot_every, checkpoint_every=checkpoint_every,
                   info={"sources": [t.label for t in tasks], "made_by": "trajshift.fit"}, device=device,
                   task_names=[t.label for t in tasks], callbacks=callbacks)
    outcome = train(plan, log=log)
    return FitResult(outcome.phi, outcome.learners, outcome.train, outcome.info, outcome.load_summary)


def finetune(init, model=None, train_dataset=None, test_dataset=None, *, protocol: str | None = None,
             seeds: int = 5, first_seed: int = 0, steps: int | None = None, batch_size: int | None = None,
             baseline=None, head=None, num_classes: int | None = None, loss: Callable | None = None,
             images_per_class: int | None = None, data_root=None, cache_dir=None, optimizer=None,
             scheduler=None, threads: int | None = None, input_key=None, label_key=None, collate_fn=None,
             num_workers: int = 0, device: str | torch.device = "cpu", log=None) -> dict:
    """Finetune ``init``'s body with a fresh head on a target: the finetuning of ``trajshift meta-test``.

    ``init`` / ``baseline``: a file path (state_dict, .safetensors, init or run folder), a state_dict, a FitResult,
    or None / "scratch" (the model's own random body). ``model``: as ``fit`` takes it; default: the one init.json
    (or the FitResult) records. The target: ``train_dataset`` and ``test_dataset`` as torch Datasets, or
    ``train_dataset`` as a dataset name or path, which runs ``trajshift meta-test``'s own code (the same numbers as
    the command and ``report``). ``head``: default the init's recorded head, else the default rule. ``protocol``:
    default the run's validation block, else ``paper`` (trajshift/evaluation/settings.py); ``steps`` rescales it.
    Seed s (first_seed .. first_seed + seeds - 1) fixes the head's initial weights and the batch order whatever the
    init, so two inits are paired by seed. ``optimizer`` (a torch.optim class, a partial of one or {name, ...}) and
    ``scheduler`` (a function of the optimizer returning a torch LR scheduler, stepped once per step, e.g.
    ``functools.partial(CosineAnnealingLR, T_max=500)``) replace the protocol's; its steps and batch stay.
    ``threads``: torch's threads meanwhile. Returns the record of meta-test's results.json ({init, protocol, steps,
    seeds, first_seed, settings, targets: {target: {mean, ci95, accs}}, average: {mean, ci95, per_seed},
    by_images_per_class: {"all" or N: ...}}) plus accs, mean and ci95 at the top; with a baseline also {baseline:
    {...}, difference: {mean, ci95, per_seed}} (init minus baseline, in accuracy units)."""
    with _threads(threads):
        return _finetune(init, model, train_dataset, test_dataset, protocol, seeds, first_seed, steps, batch_size,
                         baseline, head, num_classes, loss, images_per_class, data_root, cache_dir, optimizer,
                         scheduler, device, log, {"input_key": input_key, "label_key": label_key,
                                                  "collate_fn": collate_fn, "num_workers": num_workers})


def _finetune(init, model, train_dataset, test_dataset, protocol, seeds, first_seed, steps, batch_size, baseline,
              head, num_classes, loss, images_per_class, data_root, cache_dir, optimizer, scheduler, device,
              log, data_format) -> dict:
    if init is not None and not isinstance(init, str) and isinstance(init, (str, Path)):
        init = str(init)
    if seeds < 2:
        warnings.warn("a 95% confidence interval needs at least 2 seeds: ci95 is null (seeds=1)", stacklevel=3)
    if isinstance(train_dataset, (str, Path)):
        if optimizer is not None or scheduler is not None:
            raise ConfigError("finetune: optimizer= and scheduler= apply to torch Datasets; a target given by name "
                              "or path is finetuned by a protocol (protocol=)")
        return _finetune_named(init, model, str(train_dataset), protocol, seeds, first_seed, steps, batch_size,
                               baseline, head, images_per_class, data_root, cache_dir, device, log)
    if images_per_class is not None:
        raise ConfigError("finetune: images_per_class subsamples a target given by name or path; subsample your "
                          "Dataset yourself (torch.utils.data.Subset)")
    if train_dataset is None or test_dataset is None:
        raise ConfigError("finetune: give train_dataset and test_dataset (torch Datasets), or train_dataset as a "
                          "dataset name or path")
    from .evaluation.meta_test import dropped_head_note, finetune_seed
    from .evaluation.protocols import PROTOCOLS
    from .evaluation.settings import resolve
    log = log or (lambda message: warnings.warn(message, stacklevel=4))
    probe = DatasetTask(train_dataset, 1, 0, 0, label="train_dataset", test=test_dataset,
                        num_classes=num_classes, **data_format)
    n_classes = probe.num_classes
    from .data.torch_datasets import label_set
    unseen = sorted(label_set(probe.data["test"], probe.items) - label_set(probe.data["train"], probe.items))
    if unseen:
        warnings.warn(f"finetune: test_dataset has class(es) {', '.join(map(str, unseen[:8]))} that train_dataset "
                      f"lacks: no finetuning can learn them, so the accuracy is capped below 100%", stacklevel=3)

    chosen = {"model": model}

    def run(source) -> dict:
        scratch = source is None or (isinstance(source, str) and source == "scratch")
        # A scratch baseline is the init's model with its own random body: the model the init resolved to.
        settings = resolve(None if scratch else source, model=chosen["model"], head=head, protocol=protocol,
                           given_by="argument", image_targets=False)
        if chosen["model"] is None and settings["model"] is not None and not scratch:
            chosen["model"] = settings["model"]
        chosen_model = settings["model"]
        if chosen_model is None:
            raise ConfigError("finetune: model: give the model (model_fn, a factory or a module); the init records "
                              "none that can be rebuilt")
        make = model_source(chosen_model).make
        proto = PROTOCOLS.get(settings["protocol"])
        if optimizer is not None:          # the user's optimizer (and scheduler) on the protocol's steps and batch
            proto = dataclasses.replace(proto, name=f"{proto.name} with the given optimizer",
                                        optimizer=optimizer_spec(optimizer, "optimizer"))
        n_steps = steps or proto.steps
        sd, where = (None, "scratch") if scratch else init_tensors(source)
        accs, said = [], False
        for seed in range(first_seed, first_seed + seeds):
            task = DatasetTask(train_dataset, batch_size or proto.batch_size, seed, 0, device, test=test_dataset,
                               num_classes=n_classes, label="target", **data_format)
            acc, dropped = finetune_seed(make, task, sd, proto, n_steps, seed, device, where,
                                         head=settings["head"], loss_fn=loss, scheduler=scheduler)
            accs.append(acc)
            if dropped and not said:
                log(dropped_head_note(where, dropped))
                said = True
        return _record(where, accs, proto.name, n_steps, seeds, first_seed, settings.record(), "target")

    report = run(init)
    if baseline is not None:
        report = _with_baseline(report, run(baseline))
    return report


def _finite(ci):
    import math
    return None if ci is None or math.isnan(ci) else ci


def _record(init: str, accs: list[float], protocol: str, steps: int, seeds: int, first_seed: int, settings: dict,
            target: str) -> dict:
    """meta-test's results.json shape for one target without a per-class subsample, accs/mean/ci95 at the top."""
    mean, ci = mean_ci95(accs)
    ci = _finite(ci)
    setting = {"targets": {target: {"mean": mean, "ci95": ci, "accs": accs}},
               "average": {"mean": mean, "ci95": ci, "per_seed": accs}}
    return {"init": init, "protocol": protocol, "steps": steps, "seeds": seeds, "first_seed": first_seed,
            "settings": settings, "images_per_class": None, "by_images_per_class": {"all": setting}, **setting,
            "accs": accs, "mean": mean, "ci95": ci}


def _head_filter(head) -> dict | None:
    """A head given by names as the config filter meta-test takes (exclude entries are read as head names)."""
    if head is None or isinstance(head, dict):
        return head
    return {"include": ["*"], "exclude": [head] if isinstance(head, str) else list(head)}


def _with_baseline(report: dict, base: dict) -> dict:
    diffs = [a - b for a, b in zip(report["accs"], base["accs"])]
    mean, ci = mean_ci95(diffs)
    return {**report, "baseline": base, "difference": {"mean": mean, "ci95": ci, "per_seed": diffs}}


def _finetune_named(init, model, target, protocol, seeds, first_seed, steps, batch_size, baseline, head,
                    images_per_class, data_root, cache_dir, device, log) -> dict:
    """A target by dataset name or path: ``trajshift meta-test``'s own code, settings resolved the same way."""
    from .evaluation.meta_test import MetaTestConfig, meta_test

    def run(source) -> dict:
        scratch = source is None or (isinstance(source, str) and source == "scratch")
        if not scratch and not isinstance(source, (str, Path)):
            raise ConfigError("finetune: with a target given by name or path, give init as a file path or run "
                              "folder (save a FitResult first: result.save(folder))")
        spec = model if isinstance(model, dict) or model is None else model_source(model).spec
        if model is not None and spec is None:
            raise ConfigError(f"finetune: {model_source(model).why_not}")
        cfg = MetaTestConfig(targets=[target], init=None if scratch else str(source), model=spec, protocol=protocol,
                             steps=steps, seeds=seeds, first_seed=first_seed, batch_size=batch_size,
                             images_per_class=[images_per_class] if images_per_class else None,
                             data_root=data_root, cache_dir=cache_dir, device=str(device), given_by="argument",
                             meta_params=_head_filter(head))
        res = meta_test(cfg, None, log=log or (lambda *_: None), progress=False)
        setting = next(iter(res["by_images_per_class"].values()))
        mean, ci = mean_ci95(setting["average"]["per_seed"])
        return {**res, "accs": setting["average"]["per_seed"], "mean": mean, "ci95": _finite(ci)}

    report = run(init)
    if baseline is not None:
        report = _with_baseline(report, run(baseline))
    return report


_FIT_KEYWORDS = ("method", "inner_steps", "trajectories", "meta_lr", "optimizer", "batch_size", "init_from", "head",
                 "num_classes", "val_datasets", "loss", "seed", "device", "out", "checkpoint_every", "snapshot_every",
                 "backend", "autocast", "compile", "channels_last", "graphs", "max_group", "threads", "callbacks",
                 "log")

__all__ = ["FitResult", "ModelFn", "finetune", "fit"]
