"""``trajshift demo``: a small image meta-train and meta-test that runs offline on a fresh machine.

It uses real images: the datasets found in the data folder (sources Fashion-MNIST, Omniglot and half of Tiny
ImageNet; target QuickDraw) when they are there, else scikit-learn's digits split by class (sources: digits 0-2 and
3-5; target: digits 6-9). It meta-trains an initialization with CTS, then meta-tests it against training from
scratch on the target, and writes both results.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .data.errors import DataError
from .data.registry import DATASETS, find_dataset_folder


def _available(name: str, data_root) -> bool:
    try:
        find_dataset_folder(DATASETS.get(name), data_root)
        return True
    except DataError:
        return False


def choose_datasets(data_root=None) -> tuple[list[dict], dict, str]:
    """(source task specs, target spec, a sentence saying which data is used)."""
    if all(_available(n, data_root) for n in ("fashion-mnist", "omniglot", "tiny-imagenet", "quickdraw")):
        sources = [{"dataset": "fashion-mnist", "resolution": 28, "train_images": 2000},
                   {"dataset": "omniglot", "resolution": 28, "classes": "0:50"},
                   {"dataset": "tiny-imagenet", "resolution": 32, "classes": "0:50"}]
        return sources, {"dataset": "quickdraw", "resolution": 28}, \
            "data folder found: sources fashion-mnist, omniglot[0:50], tiny-imagenet[0:50]; target quickdraw"
    sources = [{"dataset": "digits", "resolution": 28, "classes": "0:3", "name": "digits[0:3]"},
               {"dataset": "digits", "resolution": 28, "classes": "3:6", "name": "digits[3:6]"}]
    return sources, {"dataset": "digits", "resolution": 28, "classes": "6:10"}, (
        "no data folder with the image datasets found: using scikit-learn's digits (sources: digits 0-2 and 3-5; "
        "target: digits 6-9)")


def run_demo(out: str | Path, steps: int = 200, finetune_steps: int = 100, seeds: int = 5, data_root=None,
             cache_dir=None, log=print) -> dict:
    from .data.cache import prepare
    from .data.tasks import ImageTask, TaskSpec
    from .evaluate import PROTOCOLS, finetune, load_init
    from .experiment import ExperimentConfig, meta_train
    from .stats import mean_ci95
    out = Path(out)
    sources, target, note = choose_datasets(data_root)
    log(note)
    K = 20
    cfg = ExperimentConfig.from_dict({
        "model": {"name": "conv4", "width": 32}, "tasks": sources, "batch_size": 32, "seed": 0,
        "data_root": data_root, "cache_dir": cache_dir,
        "meta": {"method": "cts", "inner_steps": K, "trajectories": max(1, steps // K), "meta_lr": 0.1,
                 "inner_optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}})
    summary = meta_train(cfg, out / "meta-train", log=log)
    spec = TaskSpec.from_dict(target, "target")
    data = prepare(spec.dataset, spec.resolution, data_root, cache_dir)
    protocol = PROTOCOLS.get("reference")      # Adam: robust at a few hundred steps
    init = load_init(out / "meta-train" / "init.pt")
    results = {}
    for label, state in (("cts", init), ("scratch", None)):
        accs = []
        for seed in range(seeds):
            task = ImageTask(spec, data, 32, seed, 0, where="target")
            accs.append(finetune(task, cfg.model, state, protocol, finetune_steps, seed))
        mean, ci = mean_ci95(accs)
        results[label] = {"mean": mean, "ci95": ci, "accs": accs}
        log(f"meta-test on {spec.label} from {label}: {100 * mean:.2f} +- {100 * ci:.2f}% "
            f"({finetune_steps} finetuning steps, {seeds} seeds)")
    report = {"data": note, "meta_train": summary, "target": spec.label, "finetune_steps": finetune_steps,
              "protocol": protocol.name, "results": results}
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    (out / "demo-config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return report
