"""The ``trajshift`` command line: every command, option and help text (the handlers are in trajshift/commands/cli.py)."""
from __future__ import annotations

import argparse

from ..analysis.approx_error import ApproxErrorConfig
from ..analysis.synthetic_study import SyntheticStudyConfig
from ..evaluation.meta_test import MetaTestConfig
from .cli_options import _converter, add_config_flags

# The synthetic study's flags: config field -> flag (defaults, types and help come from the dataclass).
SYNTHETIC_FLAGS = {
    "methods": "--methods", "grid": "--grid", "task_seeds": "--task-seeds", "template": "--template",
    "inner_steps": "--K", "trajectories": "--M", "alpha": "--alpha", "beta": "--beta", "momentum": "--momentum",
    "optimizer": "--optimizer", "reset_optimizer_state": "!--carry-optimizer-state",
    "map_resolution": "--map-resolution", "fixed_point_ks": "--fixed-point-ks", "fixed_point_grid": "--fixed-point-grid",
    "fixed_point_iters": "--fixed-point-iters", "horizon_ks": "--horizon-ks",
}
FINETUNE_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "targets", "steps", "seeds", "first_seed", "resolution", "images_per_class", "batch_size")}
DATA_FLAGS = {"data_root": "--data-root", "cache_dir": "--cache-dir"}
APPROX_ERROR_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "datasets", "resolution", "draws", "alpha", "beta", "k", "alphas", "betas", "ks", "data_root", "cache_dir")}


def _data_options(sub: argparse.ArgumentParser) -> None:
    add_config_flags(sub, MetaTestConfig, DATA_FLAGS, keep_defaults=True)


def _evaluation_settings(sub: argparse.ArgumentParser) -> None:
    """The settings meta-test and report resolve alike (trajshift/evaluation/settings.py): a flag wins, else the
    init's records, else the declared default; choices from the registries."""
    from ..data.tasks import AUGMENTATIONS
    from ..evaluation.protocols import PROTOCOLS
    from ..evaluation.settings import DEFAULT_AUGMENT, DEFAULT_PROTOCOL
    sub.add_argument("--protocol", default=None, choices=PROTOCOLS.names(),
                     help=f"finetuning protocol (default: the run's validation block, else {DEFAULT_PROTOCOL})")
    sub.add_argument("--augment", default=None, choices=list(AUGMENTATIONS),
                     help=f"finetuning batch augmentation (default: the sources' recorded in init.json, else "
                          f"{DEFAULT_AUGMENT}, the paper's; flips are wrong for digits and characters)")


def _finetune_options(sub: argparse.ArgumentParser) -> None:
    """The finetuning flags meta-test and report share: one declaration (MetaTestConfig), one meaning."""
    add_config_flags(sub, MetaTestConfig, FINETUNE_FLAGS, keep_defaults=True)


def _quiet(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")


def build_parser(handlers: dict) -> argparse.ArgumentParser:
    """The command line; ``handlers`` maps each command to its function (trajshift.commands.cli)."""
    p = argparse.ArgumentParser(prog="trajshift", description=(
        "Large-scale meta-learning of shared initializations with continual trajectory shifting "
        "(Shin et al., ICML 2021)."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("synthetic", help="the paper's synthetic 2-D study (Section 4.1, Figs. 4-5)",
                       description="Meta-train each method on the 8 Himmelblau-template tasks from a grid of starting "
                                   "points; write DIR/results.json and the figures (PNG) in DIR.")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--start", action="append", metavar="X,Y", help="a starting point (repeatable); replaces "
                   "the grid")
    add_config_flags(s, SyntheticStudyConfig, SYNTHETIC_FLAGS, inverted_help={
        "reset_optimizer_state": "carry the inner optimizer's state (momentum buffers) across trajectory resets, as "
                                 "the reference code does for the image experiments"})
    s.add_argument("--quiet", action="store_true", help="no per-run lines")
    s.set_defaults(func=handlers["synthetic"])
    mt = sub.add_parser("meta-train", help="meta-train an initialization on image tasks from a YAML config",
                        description="Writes DIR/init.safetensors (the body without the head) with DIR/init.json, "
                                    "DIR/config.yaml "
                                    "(the resolved config), DIR/metrics.jsonl and DIR/snapshots/.")
    mt.add_argument("config", help="YAML config (see configs/)")
    mt.add_argument("--out", required=True, help="output folder")
    mt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set meta.method=reptile --set meta.inner_steps=100")
    mt.add_argument("--resume", action="store_true", help="require a checkpoint in DIR/checkpoints to resume from "
                    "(a run folder holding checkpoints is resumed automatically anyway)")
    from ..engine.backends import BACKEND_CHOICES
    mt.add_argument("--backend", choices=list(BACKEND_CHOICES), default=None,
                    help="how the tasks run: one after another (loop), in one vmapped pass (batched), or the faster "
                         "of the two measured at start-up (auto, the default); same results either way")
    mt.add_argument("--log", default=None, metavar="tensorboard,wandb",
                    help="also log the metrics to TensorBoard (RUN/tensorboard/; needs pip install tensorboard) and/or "
                         "Weights & Biases (RUN/wandb/, offline without a login; needs pip install wandb)")
    mt.add_argument("--init-from", default=None, metavar="FILE",
                    help="start from a pretrained body: a state_dict .pt, a .safetensors file or a trajshift init/run "
                         "folder (the config's init_from); the head is never taken from it")
    _quiet(mt)
    mt.set_defaults(func=handlers["meta_train"])
    te = sub.add_parser("meta-test", help="finetune from an initialization on target datasets; mean and 95%% CI",
                        description="Writes DIR/results.json ({images_per_class, by_images_per_class: {N or 'all': "
                                    "{targets: {NAME: {mean, ci95, accs}}, average}}, and the first setting's targets "
                                    "and average at the top: one shape whatever the options) and DIR/results.md.")
    te.add_argument("--init", help="initialization file (a run's init.safetensors or snapshots/step-N.safetensors, "
                    "an older init.pt, any state_dict .pt or .safetensors), a run folder, or a "
                    "method folder of a sweep (its chosen run)")
    te.add_argument("--from", dest="from_", default=None, choices=["scratch"], help="--from scratch: random init")
    te.add_argument("--baseline", default=None, metavar="start|FILE",
                    help="also finetune a baseline with the same seeds and subsamples and print the paired difference: "
                         "'start' is the run's own starting weights (snapshots/step-00000000: the common random or "
                         "pretrained initialization every method started from), or an init file / run folder")
    te.add_argument("--out", required=True, help="output folder for results.json and results.md (created)")
    te.add_argument("--model", default=None, help="a registered model name, or a model of your own as "
                    "package.module:factory (called as factory(num_classes=C); --set model.call='task, num_classes' "
                    "for a Python API model_fn); default: init.json's model, else the run's config.yaml, else the "
                    "registered model whose keys the file fits; resnet20 from scratch")
    te.add_argument("--activation", default=None, help="relu or softplus (default: the run's, else relu)")
    te.add_argument("--set", action="append", metavar="model.KEY=VALUE",
                    help="a model option, e.g. --set model.width=32 (default: the run's config.yaml)")
    te.add_argument("--train-images", type=int, default=None, help="subsample the target's training set")
    _evaluation_settings(te)
    _finetune_options(te)
    _data_options(te)
    te.add_argument("--device", default="cpu", help="torch device to finetune on, e.g. cuda (default cpu)")
    te.add_argument("--deterministic", action="store_true", help="deterministic kernels while finetuning "
                    "(torch.use_deterministic_algorithms): bit-identical reruns on CUDA; CPU is so already")
    _quiet(te)
    te.set_defaults(func=handlers["meta_test"])
    ae = sub.add_parser("approx-error", help="approximation error of the shift vs alpha, beta, k, ReLU/Softplus "
                        "(Section 3.3, Fig. 3)", description="Writes DIR/results.json and DIR/approx_error.png.")
    ae.add_argument("--out", required=True, help="output folder for results.json and approx_error.png")
    add_config_flags(ae, ApproxErrorConfig, APPROX_ERROR_FLAGS)
    ae.add_argument("--width", type=int, default=32, help="Conv4 width (default 32)")
    ae.add_argument("--quick", action="store_true", help="tiny sweeps and model, 2 draws (a smoke test)")
    _quiet(ae)
    ae.set_defaults(func=handlers["approx_error"])
    sw = sub.add_parser("sweep", help="choose a hyperparameter (e.g. meta.meta_lr) per method on meta-validation "
                        "(held-out source classes), never on meta-test targets",
                        description="Each (method, value) is a meta-train run folder DIR/METHOD/KEY=VALUE (an "
                                    "interrupted sweep resumes); each is scored on the config's validation block. "
                                    "Writes DIR/sweep.json and DIR/sweep.png.")
    sw.add_argument("config", help="meta-train YAML config with a validation block")
    sw.add_argument("--out", required=True, help="sweep folder")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                    help="values to try, e.g. meta.meta_lr=0.001,0.01,0.1,1,10 (repeatable: the product)")
    sw.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
    sw.add_argument("--jobs", type=int, default=1, help="runs at once (default 1); each gets cores/jobs threads")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    _quiet(sw)
    sw.set_defaults(func=handlers["sweep"])
    va = sub.add_parser("validate", help="meta-validation score of a finished run (held-out source classes of its "
                        "config's validation block); cached in RUN/validation.json")
    va.add_argument("run", help="meta-train run folder")
    va.add_argument("--snapshots", action="store_true", help="score every snapshot (snapshots/step-N) instead of the "
                    "final init; cached in RUN/validation-snapshots.json (a best-over-beta curve per budget)")
    va.add_argument("--at", type=_converter(list, int), default=None, metavar="N,N,...",
                    help="with --snapshots: score only the snapshot nearest to each of these inner-step counts")
    _quiet(va)
    va.set_defaults(func=handlers["validate"])
    dg = sub.add_parser("diagnose", help="each trajectory's effective Reptile step (beta K rho for CTS) from the "
                        "run's logged ||gap_k||; writes RUN/diagnose.json")
    dg.add_argument("run", help="meta-train run folder")
    dg.set_defaults(func=handlers["diagnose"])
    rp = sub.add_parser("report", help="compare meta-train runs: meta-train loss and meta-test accuracy vs "
                        "cumulative inner steps (Figs. 6a, 7), final table (Fig. 6b)")
    rp.add_argument("runs", nargs="+", help="run folders written by meta-train (one per method), sweep folders "
                    "(every method's chosen run) or a sweep's method folders (its chosen run)")
    rp.add_argument("--out", required=True, help="report folder: report.json, table.md and the figures")
    rp.add_argument("--curve-images-per-class", type=int, default=None, metavar="N",
                    help="the setting of the snapshot curves and bar charts (default: the first of "
                         "--images-per-class)")
    _evaluation_settings(rp)
    rp.add_argument("--every-snapshot", type=int, default=1, help="meta-test every n-th snapshot (default all)")
    _finetune_options(rp)
    _data_options(rp)
    _quiet(rp)
    rp.set_defaults(func=handlers["report"])
    dm = sub.add_parser("demo", help="a small image meta-train + meta-test that works offline (real images: the "
                        "data folder's datasets, else scikit-learn's digits)",
                        description="Meta-trains CTS on the source datasets, then finetunes on the target with a few "
                                    "training images per class, from the CTS initialization and from scratch (the "
                                    "same random weights CTS started from), 5 seeds; prints both accuracies with 95% "
                                    "CIs and what their paired difference shows. A few minutes on 2 CPU cores.")
    dm.add_argument("--out", required=True, help="output folder: demo.json and the meta-train run folder")
    dm.add_argument("--steps", type=int, default=1000, help="meta-training inner steps per task (default 1000)")
    dm.add_argument("--finetune-steps", type=int, default=100, help="meta-test finetuning steps (default 100)")
    dm.add_argument("--seeds", type=int, default=5, help="finetuning runs per initialization (default 5)")
    dm.add_argument("--images-per-class", type=int, default=5, help="target training images per class "
                    "(default 5: the low-data regime where an initialization can matter)")
    _data_options(dm)
    _quiet(dm)
    dm.set_defaults(func=handlers["demo"])
    dl = sub.add_parser("download", help="fetch registered datasets from their canonical addresses (sha256 checked "
                        "where known)")
    dl.add_argument("names", help="comma-separated dataset names")
    dl.add_argument("--data-root", default="data", help="where to put them (default ./data)")
    dl.set_defaults(func=handlers["download"])
    ls = sub.add_parser("list", help="list the registered methods, optimizers, models, datasets and protocols")
    ls.set_defaults(func=handlers["list"])
    for command in sub.choices.values():      # on every command: a shared machine needs fewer threads than cores
        command.add_argument("--threads", type=int, default=None, metavar="N",
                             help="intra-op threads of this process (torch.set_num_threads; default: PyTorch's, one "
                                  "per core). On a shared or busy machine fewer threads can be much faster")
    return p
