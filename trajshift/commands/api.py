"""The PyTorch-native API: your model, your Datasets, torch.optim classes; state_dicts out.

    result = trajshift.fit(model_fn, [ds_a, ds_b, ds_c], method="cts", inner_steps=1000, trajectories=10,
                           meta_lr=0.01, optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                           batch_size=128, init_from="resnet18_imagenet.pth")
    torch.save(result.init_state_dict(), "init.pt")          # or result.save("runs/x"): init.safetensors + init.json
    scores = trajshift.finetune(result, model_fn, target_train, target_test, protocol="table1", seeds=5,
                                baseline="resnet18_imagenet.pth")  # paired with the pretrained model by seed

``model_fn(task_index, num_classes) -> nn.Module`` builds a task's learner (or give one module: it is copied per
task, so every task must then have its class count). The head (not meta-learned, one per task) is every parameter
under ``head`` (default: the modules named fc, head or classifier). Every task starts from the same body: task 0's
freshly built one, or ``init_from``'s (trajshift/data/init_file.py: what is loaded, and the BatchNorm rule). Your
modules are copied, never re-pointed, and the engine's own replicas survive zero_grad(), .to(), .train()/.eval().
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.sampling import stream_seed
from ..core.stats import mean_ci95
from ..data.init_file import (
    BATCHNORM_RULE,
    LoadSummary,
    load_pretrained,
    read_init,
    save_init,
)
from ..data.torch_datasets import DatasetTask, as_dataset_list
from ..engine.learners import DEFAULT_HEAD_PATTERNS, head_names
from ..engine.module_learners import ModuleLearners
from ..engine.optim import optimizer_spec
from ..training.config import MetaConfig
from ..training.loop import MetaTrainer, TrainResult
from .meta_train import init_state_dict, warn_class_dependent_meta_params

ModelFn = Callable[[int, int], nn.Module]


def _model_fn(model: ModelFn | nn.Module, what: str) -> ModelFn:
    if isinstance(model, nn.Module):
        def copy_of(task: int, num_classes: int) -> nn.Module:
            return copy.deepcopy(model)
        return copy_of
    if not callable(model):
        raise ConfigError(f"{what}: expected model_fn(task_index, num_classes) -> nn.Module, or an nn.Module; got "
                          f"{type(model).__name__}")
    return model


def head_patterns(head: str | Sequence[str] | None) -> list[str]:
    """Name globs of the head: None -> fc.*, head.*, classifier.*; "out" -> out.*; globs are kept."""
    if head is None:
        return list(DEFAULT_HEAD_PATTERNS)
    names = [head] if isinstance(head, str) else list(head)
    return [h if any(c in h for c in "*?[") or "." in h else f"{h}.*" for h in names]


def _source_of(init) -> tuple[dict[str, torch.Tensor] | None, str]:
    """An initialization given to the API: a path (file or run folder), a state_dict, a FitResult, or None."""
    if init is None or (isinstance(init, str) and init == "scratch"):
        return None, "scratch"
    if isinstance(init, FitResult):
        return init.init_state_dict(), "the fit result"
    if isinstance(init, dict):
        return init, "a state_dict"
    if isinstance(init, (str, Path)):
        return read_init(init)[0], str(init)
    raise ConfigError(f"init: expected a file path, a state_dict, a FitResult or None; got {type(init).__name__}")


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns: phi, the trained replicas, the run's counts, and the initialization as a state_dict."""
    phi: torch.Tensor
    learners: ModuleLearners
    train: TrainResult
    info: dict
    load_summary: LoadSummary | None = None

    def init_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned initialization: the body (no head) with phi, BatchNorm statistics averaged over the tasks;
        ``model.load_state_dict(sd, strict=False)`` leaves only the head missing."""
        return init_state_dict(self.learners, self.phi)

    def task_state_dict(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s whole module as it ended (its head and statistics included), body from phi."""
        return self.learners.task_state_dict(task, phi=self.phi)

    def save(self, path: str | Path) -> Path:
        """init.safetensors + init.json (a folder, or a .safetensors path); returns the file's path."""
        return save_init(path, self.init_state_dict(), self.info)


def fit(model: ModelFn | nn.Module, datasets: Sequence[torch.utils.data.Dataset], *, method: str = "cts",
        inner_steps: int = 100, trajectories: int = 10, meta_lr: float = 0.01, optimizer=None, batch_size: int = 128,
        init_from=None, head: str | Sequence[str] | None = None, include: Sequence[str] = ("*",),
        num_classes: Sequence[int] | None = None, val_datasets: Sequence | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
        device: str | torch.device = "cpu", out: str | Path | None = None, checkpoint_every: int = 500,
        log=print, **meta_options) -> FitResult:
    """Meta-learn a shared initialization of ``model``'s body over ``datasets`` (one task each).

    ``optimizer``: the inner optimizer: a torch.optim class, a partial of one, or {name, lr, ...} (default SGD lr
    0.05 momentum 0.9). ``init_from``: a pretrained body (state_dict path, .safetensors, trajshift init or run
    folder, or a state_dict): loaded into every task before meta-training, heads never. ``val_datasets``: held-out
    data for fomaml/imaml's meta-gradient (default: the training sets). ``out``: a run folder for metrics.jsonl,
    checkpoints (an interrupted fit with the same arguments resumes there) and init.safetensors. ``meta_options``:
    any other MetaConfig field (options, meta_optimizer, reset_optimizer_state, dtype, clip_grad_norm, ...) and
    ModuleLearners' backend.
    """
    datasets = as_dataset_list(datasets, "datasets")
    make = _model_fn(model, "model")
    backend = meta_options.pop("backend", "loop")
    inner = optimizer_spec(optimizer if optimizer is not None else {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                           "optimizer")
    cfg = MetaConfig(method=method, inner_steps=inner_steps, trajectories=trajectories, meta_lr=meta_lr,
                     inner_optimizer=inner, seed=seed, **meta_options).validate()
    vals = as_dataset_list(val_datasets, "val_datasets") if val_datasets is not None else [None] * len(datasets)
    if len(vals) != len(datasets) or (num_classes is not None and len(num_classes) != len(datasets)):
        raise ConfigError("val_datasets / num_classes: give one per dataset")
    tasks = [DatasetTask(ds, batch_size, seed, t, device, val=vals[t], label=f"datasets[{t}]",
                         num_classes=None if num_classes is None else num_classes[t])
             for t, ds in enumerate(datasets)]
    patterns = head_patterns(head)
    models, summary = _build_replicas(make, [t.num_classes for t in tasks], seed, include, patterns, init_from,
                                      isinstance(model, nn.Module), log)
    models = [m.to(device) for m in models]
    learners = ModuleLearners(models, lambda t, step, split: tasks[t].batch(step, split), loss=loss,
                              include=include, exclude=patterns, backend=backend)
    run = Path(out) if out is not None else None
    trainer = MetaTrainer(learners, cfg, metrics_path=None,
                          checkpoint_dir=run / "checkpoints" if run is not None else None,
                          checkpoint_every=checkpoint_every if run is not None else 0,
                          identity={"api": "fit", "tasks": [len(ds) for ds in datasets], "seed": seed,
                                    "batch_size": batch_size, "head": patterns})
    if run is not None:
        from ..training.metrics import MetricsWriter, truncate_metrics
        resumed = trainer.resume()
        metrics = run / "metrics.jsonl"
        if resumed:
            truncate_metrics(metrics, trainer.inner_steps, trainer.resumed_metrics_rows)
            log(f"resumed {run} at inner step {trainer.inner_steps}")
        elif metrics.exists():
            metrics.unlink()          # a run without a checkpoint starts over
        rows = len(metrics.read_text().splitlines()) if resumed and metrics.exists() else 0
        trainer.metrics = MetricsWriter(metrics, rows=rows)
    result = trainer.run()
    info = {"model": _factory_name(model), "meta_params": {"include": list(include), "exclude": patterns},
            "meta_learned": list(learners.spec.names), "head": list(learners.local_specs[0].names),
            "batchnorm": BATCHNORM_RULE, "method": method, "inner_steps": result.inner_steps,
            "init_from": None if init_from is None or isinstance(init_from, dict) else str(init_from),
            "sources": [t.label for t in tasks], "made_by": "trajshift.fit"}
    fitted = FitResult(result.phi, learners, result, info, summary)
    if run is not None:
        fitted.save(run)
        (run / "summary.json").write_text(json.dumps({"method": method, "inner_steps": result.inner_steps,
                                                      "meta_updates": result.meta_updates}) + "\n")
    return fitted


def _factory_name(model) -> dict | None:
    """A model spec for init.json when the factory has an import path (module:qualname), else None."""
    qual = getattr(model, "__qualname__", "")
    if callable(model) and not isinstance(model, nn.Module) and qual and "<" not in qual:
        return {"factory": f"{model.__module__}:{qual}"}
    return None


def _build_replicas(make: ModelFn, num_classes: list[int], seed: int, include, head: list[str], init_from,
                    one_module: bool, log) -> tuple[list[nn.Module], LoadSummary | None]:
    """One module per task with task 0's body (or init_from's) everywhere and each task's own head."""
    models = []
    for t, c in enumerate(num_classes):
        torch.manual_seed(stream_seed(seed, t, 0x4EAD))
        models.append(make(t, c))
    if one_module and len(set(num_classes)) > 1:
        raise ConfigError(f"model: one module was given for datasets of {sorted(set(num_classes))} classes; its head "
                          f"fits one class count; pass model_fn(task, num_classes) instead")
    heads = set(head_names(models[0], {"include": list(include), "exclude": head}))
    if not one_module:
        warn_class_dependent_meta_params(lambda c: make(0, c), heads, "model_fn")
    summary = None
    if init_from is not None:
        sd, source = _source_of(init_from)
        summary = load_pretrained(models[0], sd, heads, source, heads=False)
        log(summary.format())
    body = {k: v for k, v in models[0].state_dict().items()
            if k not in heads and k.rsplit(".", 1)[0] not in {h.rsplit(".", 1)[0] for h in heads}}
    for t, m in enumerate(models[1:], start=1):
        own = m.state_dict()
        bad = [k for k, v in body.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"model: task {t}'s module differs from task 0's in {bad[0]} (the body must be the same "
                              f"in every task; only the head may depend on the class count)"
                              + ("; with one module given, every dataset needs its class count: pass model_fn(task, "
                                 "num_classes) instead" if one_module else ""))
        m.load_state_dict(body, strict=False)
    return models, summary


def finetune(init, model: ModelFn | nn.Module, train_dataset, test_dataset, *, protocol: str = "table1",
             seeds: int = 5, steps: int | None = None, batch_size: int | None = None, baseline=None,
             head: str | Sequence[str] | None = None, num_classes: int | None = None,
             loss: Callable | None = None, device: str | torch.device = "cpu") -> dict:
    """Finetune ``init``'s body with a fresh head on a target (the same code as ``trajshift meta-test``).

    ``init`` / ``baseline``: a file path (state_dict, .safetensors, init or run folder), a state_dict, a FitResult,
    or None / "scratch" (the model's own random body). Seed s fixes the head's initial weights and the batch order
    whatever the init, so the two are paired by seed. Returns {accs, mean, ci95, protocol, steps} with, for a
    baseline, {baseline: {...}, difference: {mean, ci95, per_seed}} (init minus baseline, in accuracy units)."""
    from .meta_test import PROTOCOLS, train_and_evaluate
    proto = PROTOCOLS.get(protocol)
    steps = steps or proto.steps
    make = _model_fn(model, "model")
    patterns = head_patterns(head)
    n_classes = num_classes or DatasetTask(train_dataset, 1, 0, 0).num_classes

    def run(source) -> dict:
        sd, where = _source_of(source)
        accs = []
        for seed in range(seeds):
            torch.manual_seed(stream_seed(seed, 0xF17E))
            net = make(0, n_classes)
            if sd is not None:
                heads = set(head_names(net, {"include": ["*"], "exclude": patterns}))
                summary = load_pretrained(net, sd, heads, where)
                if summary.missing or summary.unused:
                    warnings.warn(summary.format(), stacklevel=3)
            task = DatasetTask(train_dataset, batch_size or proto.batch_size, seed, 0, device, test=test_dataset,
                               num_classes=n_classes, label="target")
            accs.append(train_and_evaluate(net.to(device), task, proto, steps, seed, loss_fn=loss))
        mean, ci = mean_ci95(accs)
        return {"init": where, "accs": accs, "mean": mean, "ci95": ci}

    report = {**run(init), "protocol": proto.name, "steps": steps, "seeds": seeds}
    if baseline is not None:
        base = run(baseline)
        diffs = [a - b for a, b in zip(report["accs"], base["accs"])]
        mean, ci = mean_ci95(diffs)
        report["baseline"] = base
        report["difference"] = {"mean": mean, "ci95": ci, "per_seed": diffs}
    return report


__all__ = ["FitResult", "finetune", "fit", "head_patterns"]
