"""The ``trajshift`` command."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, Interrupted, TrajshiftError
from .progress import log_line


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _synthetic(args) -> int:
    from .analysis.synthetic_study import SyntheticStudyConfig, run_study
    starts = None
    if args.start:
        try:
            starts = [[float(v) for v in s.split(",")] for s in args.start]
        except ValueError:
            raise ConfigError(f"--start: expected X,Y numbers, got {args.start}") from None
    cfg = SyntheticStudyConfig(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], grid=args.grid, starts=starts,
        task_seeds=_int_list(args.task_seeds, "--task-seeds"), template=args.template, inner_steps=args.K,
        trajectories=args.M, alpha=args.alpha, beta=args.beta, momentum=args.momentum, optimizer=args.optimizer,
        reset_optimizer_state=not args.carry_optimizer_state, map_resolution=args.map_resolution,
        fixed_point_ks=_int_list(args.fixed_point_ks, "--fixed-point-ks"), fixed_point_grid=args.fixed_point_grid,
        fixed_point_iters=args.fixed_point_iters, horizon_ks=_int_list(args.horizon_ks, "--horizon-ks"))
    cfg.validate()             # every flag checked before any work starts
    results = run_study(args.out, cfg, log=(lambda *_: None) if args.quiet else log_line)
    out = Path(args.out)
    print(f"\nwrote {out / 'results.json'} and the figures in {out}/ ({results['wall_time']:.0f} s)")
    print("median meta-test loss (task-average loss after K steps from phi) over starts and task seeds:")
    print(f"{'method':>18}  {'equal meta-updates':>18}  {'equal inner steps':>18}  {'inner steps':>11}")
    for m, row in results["summary"].items():
        print(f"{m:>18}  {row['equal_meta_updates']['median']:>18.3e}  {row['equal_inner_steps']['median']:>18.3e}"
              f"  {row['mean_inner_steps']:>11.0f}")
    return 0


def _parse_value(text: str):
    from .yamlio import load
    return load(text)


def _overrides(items: list[str] | None) -> dict:
    """--set KEY=VALUE items as {dotted key: YAML value}."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. meta.inner_steps=100), got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return overrides


def run_config_of(init: Path) -> Path | None:
    """The config.yaml of the meta-train run an init file belongs to: beside it (init.pt) or one folder up
    (snapshots/step-N.pt)."""
    for folder in (init.parent, init.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def resolve_init(path: str) -> Path:
    """An init file; a run folder means its init.pt; a method folder of a sweep means its chosen run's init.pt."""
    from .sweep import chosen_run
    p = Path(path)
    if p.is_dir():
        run = chosen_run(p) or p
        if not (run / "init.pt").is_file():
            raise ConfigError(f"--init {path}: a folder without init.pt; give an init file, a meta-train run folder "
                              f"or a method folder of a sweep")
        return run / "init.pt"
    return p


def _meta_train(args) -> int:
    from .experiment import load_config, meta_train
    overrides = _overrides(args.set)
    if args.backend:
        overrides["execution.backend"] = args.backend
    cfg = load_config(args.config, overrides)            # every key checked before any work starts
    if args.resume:
        from .checkpoint import list_checkpoints
        if not list_checkpoints(Path(args.out) / "checkpoints"):
            raise ConfigError(f"--resume: {Path(args.out) / 'checkpoints'} holds no checkpoint to resume from")
    summary = meta_train(cfg, args.out, log=(lambda *_: None) if args.quiet else log_line,
                         loggers=tuple(x.strip() for x in (args.log or "").split(",") if x.strip()))
    import os
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"wrote {Path(args.out) / 'init.pt'} ({summary['meta_updates']} meta-updates, {summary['inner_steps']} "
          f"inner steps per task, {summary['wall_time']:.0f} s)")
    return 0


def _meta_test(args) -> int:
    from .evaluate import MetaTestConfig, markdown_table, meta_test
    if (args.init is None) == (args.from_ != "scratch"):
        raise ConfigError("meta-test: give either --init FILE or --from scratch")
    from .experiment import model_spec_beside
    init = resolve_init(args.init) if args.init else None
    model = {"name": args.model or "resnet20"}
    run_config = run_config_of(init) if init else None
    beside = model_spec_beside(init) if init else None
    if args.model is None and beside is not None:
        model = beside                                                  # saved with the file
    elif args.model is None and run_config is not None:
        import yaml
        model = dict(yaml.safe_load(run_config.read_text())["model"])    # the architecture the run trained
    if args.activation:
        model["activation"] = args.activation
    for key, value in _overrides(args.set).items():
        if not key.startswith("model."):
            raise ConfigError(f"--set {key}: meta-test takes model options only (model.KEY=VALUE, e.g. "
                              f"model.width=32)")
        model[key.split(".", 1)[1]] = value
    from .experiment import check_model_spec
    check_model_spec(model)
    cfg = MetaTestConfig(targets=[t.strip() for t in args.targets.split(",") if t.strip()], init=str(init) if init else None,
                         model=model, protocol=args.protocol, steps=args.steps, seeds=args.seeds,
                         resolution=args.resolution, train_images=args.train_images, batch_size=args.batch_size,
                         images_per_class=_int_list(args.images_per_class, "--images-per-class")
                         if args.images_per_class else None, augment=args.augment,
                         data_root=args.data_root, cache_dir=args.cache_dir, device=args.device).validate()
    report = meta_test(cfg, args.out, log=(lambda *_: None) if args.quiet else log_line)
    print(markdown_table(report))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def _approx_error(args) -> int:
    from .analysis.approx_error import ApproxErrorConfig, run_study
    def numbers(text, flag, kind=float):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    cfg = ApproxErrorConfig(datasets=[d.strip() for d in args.datasets.split(",") if d.strip()],
                            resolution=args.resolution, draws=args.draws, data_root=args.data_root,
                            cache_dir=args.cache_dir, alpha=args.alpha, beta=args.beta, k=args.k,
                            model={"name": "conv4", "width": args.width})
    if args.alphas:
        cfg.alphas = numbers(args.alphas, "--alphas")
    if args.betas:
        cfg.betas = numbers(args.betas, "--betas")
    if args.ks:
        cfg.ks = numbers(args.ks, "--ks", int)
    if args.quick:      # a smoke run: tiny sweeps and model, 2 draws
        cfg.alphas, cfg.betas, cfg.ks, cfg.draws, cfg.k = [0.003, 0.03], [0.01, 1.0], [1, 3], 2, 3
        cfg.model = {"name": "conv4", "width": 4}
    for key in ("draws", "k", "resolution"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key}: expected an integer >= 1, got {getattr(cfg, key)}")
    if cfg.draws < 2:
        raise ConfigError("--draws: need at least 2 draws for a confidence interval")
    results = run_study(args.out, cfg, log=(lambda *_: None) if args.quiet else log_line)
    print(f"wrote {Path(args.out) / 'results.json'} and approx_error.png ({results['wall_time']:.0f} s)")
    return 0


def _sweep(args) -> int:
    from .sweep import parse_grid, run_sweep
    report = run_sweep(args.config, args.out, parse_grid(args.grid),
                       [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
                       args.jobs, args.set, log=(lambda *_: None) if args.quiet else log_line)
    key = next(iter(report["grid"]))
    for m, entry in report["methods"].items():
        print(f"{m}: chosen {entry['chosen']} (" + ", ".join(
            f"{p['values'][key]}: " + (f"{100 * p['score']:.2f}%" if p["status"] == "ok" else p["status"])
            for p in entry["points"]) + ")")
    print(f"wrote {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'sweep.png'}")
    return 0


def _validate(args) -> int:
    from .validation import score_run
    r = score_run(args.run, log=(lambda *_: None) if args.quiet else log_line)
    ci = "n/a" if r["ci95"] is None else f"{100 * r['ci95']:.2f}"
    print(f"{args.run}: meta-validation accuracy {100 * r['score']:.2f}% +- {ci} ({len(r['per_seed'])} seeds)")
    return 0


def _report(args) -> int:
    from .analysis.report import make_report
    from .sweep import expand_runs
    args.runs = [str(r) for r in expand_runs(args.runs)]
    for run in args.runs:
        for name in ("config.yaml", "metrics.jsonl", "init.pt"):
            if not (Path(run) / name).exists():
                raise ConfigError(f"{run}: not a meta-train run folder (no {name}); give folders written by "
                                  f"`trajshift meta-train --out`")
    if args.seeds < 2:
        raise ConfigError("--seeds: need at least 2 seeds for a confidence interval")
    make_report(args.runs, [t.strip() for t in args.targets.split(",") if t.strip()], args.out, seeds=args.seeds,
                steps=args.steps, protocol=args.protocol, every_snapshot=args.every_snapshot,
                resolution=args.resolution, data_root=args.data_root, cache_dir=args.cache_dir,
                images_per_class=_int_list(args.images_per_class, "--images-per-class")
                if args.images_per_class else None, curve_images_per_class=args.curve_images_per_class,
                batch_size=args.batch_size, augment=args.augment,
                log=(lambda *_: None) if args.quiet else log_line)
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {Path(args.out) / 'report.json'} and the figures in {args.out}/")
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    for key in ("steps", "finetune_steps", "seeds"):
        if getattr(args, key) < 1 or (key == "seeds" and args.seeds < 2):
            raise ConfigError(f"--{key.replace('_', '-')}: expected an integer >= {2 if key == 'seeds' else 1}")
    report = run_demo(args.out, args.steps, args.finetune_steps, args.seeds, args.data_root, args.cache_dir,
                      images_per_class=args.images_per_class, log=(lambda *_: None) if args.quiet else log_line)
    r = report["results"]
    ci = lambda x: "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"
    print(f"meta-test on {report['target']} with {report['images_per_class']} training images per class, "
          f"{report['seeds']} seeds: from the CTS initialization {100 * r['cts']['mean']:.2f}% +- "
          f"{ci(r['cts']['ci95'])}, from scratch {100 * r['scratch']['mean']:.2f}% +- {ci(r['scratch']['ci95'])}")
    print(report["conclusion"])
    print(f"wrote {Path(args.out) / 'demo.json'} and the run in {Path(args.out) / 'meta-train'}/")
    return 0


def _download(args) -> int:
    from .data.download import download
    for name in [n.strip() for n in args.names.split(",") if n.strip()]:
        folder = download(name, args.data_root)
        print(f"{name}: {folder}")
    return 0


def _list(args) -> int:
    from .data.registry import DATASETS
    from .evaluate import PROTOCOLS
    from .methods import METHODS
    from .models import MODELS
    from .optim import OPTIMIZERS
    print("methods:    " + ", ".join(METHODS.names()))
    print("optimizers: " + ", ".join(OPTIMIZERS.names()))
    print("models:     " + ", ".join(MODELS.names()))
    print("datasets:   " + ", ".join(DATASETS.names()))
    print("protocols:  " + ", ".join(PROTOCOLS.names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajshift", description=(
        "Large-scale meta-learning of shared initializations with continual trajectory shifting "
        "(Shin et al., ICML 2021)."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("synthetic", help="the paper's synthetic 2-D study (Section 4.1, Figs. 4-5)",
                       description="Meta-train each method on the 8 Himmelblau-template tasks from a grid of starting "
                                   "points; write DIR/results.json and the figures (PNG) in DIR.")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--methods", default="cts,cts-accurate,reptile", help="comma-separated method names "
                   "(see `trajshift list`); default: %(default)s")
    s.add_argument("--grid", type=int, default=3, help="N: starting points on an N x N grid over [-5, 15]^2 "
                   "(default 3: {-5, 5, 15}^2)")
    s.add_argument("--start", action="append", metavar="X,Y", help="a starting point (repeatable); replaces "
                   "the grid")
    s.add_argument("--task-seeds", default="0", help="comma-separated seeds of the tasks' random rotations")
    s.add_argument("--template", default="scaled", help="scaled (reference code, default) or paper")
    s.add_argument("--K", type=int, default=100, help="inner steps per trajectory (default 100)")
    s.add_argument("--M", type=int, default=3, help="trajectories for CTS (default 3); every method gets M*K "
                   "meta-updates")
    s.add_argument("--alpha", type=float, default=0.05, help="inner learning rate (default 0.05)")
    s.add_argument("--beta", type=float, default=0.1, help="meta learning rate (default 0.1)")
    s.add_argument("--momentum", type=float, default=0.9, help="inner SGD momentum (default 0.9)")
    s.add_argument("--optimizer", default="sgd", help="inner optimizer name (default sgd)")
    s.add_argument("--carry-optimizer-state", action="store_true",
                   help="keep the inner optimizer state across resets (default: fresh state each trajectory)")
    s.add_argument("--map-resolution", type=int, default=100, help="quality-map grid (default 100 x 100)")
    s.add_argument("--fixed-point-ks", default="10,100", help="Reptile inner lengths for Fig. 5a-b")
    s.add_argument("--fixed-point-grid", type=int, default=41, help="starting grid for Fig. 5a-b (default 41)")
    s.add_argument("--fixed-point-iters", type=int, default=1000, help="max Reptile iterations for Fig. 5a-b")
    s.add_argument("--horizon-ks", default="1,5,10,25,50,75,100", help="meta-training horizons for Fig. 4c")
    s.add_argument("--quiet", action="store_true", help="no per-run lines")
    s.set_defaults(func=_synthetic)
    mt = sub.add_parser("meta-train", help="meta-train an initialization on image tasks from a YAML config",
                        description="Writes DIR/init.pt (a plain state_dict without the head), DIR/config.yaml "
                                    "(the resolved config), DIR/metrics.jsonl and DIR/snapshots/.")
    mt.add_argument("config", help="YAML config (see configs/)")
    mt.add_argument("--out", required=True, help="output folder")
    mt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set meta.method=reptile --set meta.inner_steps=100")
    mt.add_argument("--resume", action="store_true", help="require a checkpoint in DIR/checkpoints to resume from "
                    "(a run folder holding checkpoints is resumed automatically anyway)")
    mt.add_argument("--backend", choices=["loop", "batched", "auto"], default=None,
                    help="how the tasks run: one after another (loop), in one vmapped pass (batched), or the faster "
                         "of the two measured at start-up (auto, the default); same results either way")
    mt.add_argument("--log", default=None, metavar="tensorboard",
                    help="also log the metrics to TensorBoard (RUN/tensorboard/; needs pip install tensorboard)")
    mt.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    mt.set_defaults(func=_meta_train)
    te = sub.add_parser("meta-test", help="finetune from an initialization on target datasets; mean and 95%% CI",
                        description="Writes DIR/results.json ({targets: {NAME: {mean, ci95, accs}}, average}) and "
                                    "DIR/results.md.")
    te.add_argument("--init", help="state_dict file (a run's init.pt or snapshots/step-N.pt), a run folder, or a "
                    "method folder of a sweep (its chosen run)")
    te.add_argument("--from", dest="from_", default=None, choices=["scratch"], help="--from scratch: random init")
    te.add_argument("--targets", required=True, help="comma-separated dataset names or paths to image folders/"
                    "archives (class folders or manifest.csv)")
    te.add_argument("--out", required=True, help="output folder for results.json and results.md (created)")
    te.add_argument("--model", default=None, help="model name (default: the model of the run's config.yaml next "
                    "to --init, else resnet20)")
    te.add_argument("--activation", default=None, help="relu or softplus (default: the run's, else relu)")
    te.add_argument("--set", action="append", metavar="model.KEY=VALUE",
                    help="a model option, e.g. --set model.width=32 (default: the run's config.yaml)")
    te.add_argument("--protocol", default="paper", help="paper | table1 | reference (default paper)")
    te.add_argument("--steps", type=int, default=None, help="finetuning steps (default: the protocol's 1000)")
    te.add_argument("--seeds", type=int, default=5, help="runs per target (default 5)")
    te.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: each dataset's registered resolution; 32 for a path)")
    te.add_argument("--train-images", type=int, default=None, help="subsample the target's training set")
    te.add_argument("--images-per-class", default=None, metavar="N[,N...]",
                    help="low-data regime: subsample each target's training split to exactly N images per class "
                         "(seeded by the seed: the same subsample for every initialization; the test split stays "
                         "whole); several values give one meta-test each, e.g. 5,20,100")
    te.add_argument("--augment", default="crop+flip", choices=["crop+flip", "crop", "flip", "none"],
                    help="finetuning batch augmentation (default crop+flip, the paper's; flips are wrong for digits "
                         "and characters)")
    te.add_argument("--batch-size", type=int, default=None, help="finetuning batch (default: the protocol's; never "
                    "more than the training set)")
    te.add_argument("--data-root", default=None, help="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, ../shared/data)")
    te.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    te.add_argument("--device", default="cpu", help="torch device to finetune on, e.g. cuda (default cpu)")
    te.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    te.set_defaults(func=_meta_test)
    ae = sub.add_parser("approx-error", help="approximation error of the shift vs alpha, beta, k, ReLU/Softplus "
                        "(Section 3.3, Fig. 3)", description="Writes DIR/results.json and DIR/approx_error.png.")
    ae.add_argument("--out", required=True, help="output folder for results.json and approx_error.png")
    ae.add_argument("--datasets", default="quickdraw,omniglot", help="source tasks (default quickdraw,omniglot)")
    ae.add_argument("--resolution", type=int, default=28, help="image side in pixels (default 28)")
    ae.add_argument("--draws", type=int, default=10, help="draws per point (default 10)")
    ae.add_argument("--alpha", type=float, default=0.01, help="base inner learning rate (default 0.01)")
    ae.add_argument("--beta", type=float, default=0.01, help="base meta learning rate (default 0.01)")
    ae.add_argument("--k", type=int, default=50, help="base trajectory length (default 50)")
    ae.add_argument("--width", type=int, default=32, help="Conv4 width (default 32)")
    ae.add_argument("--alphas", default=None, help="alpha sweep, comma-separated (default 0.001,...,0.1)")
    ae.add_argument("--betas", default=None, help="beta sweep (default 0.001,0.01,0.1,1)")
    ae.add_argument("--ks", default=None, help="k sweep (default 1,5,10,25,50,100)")
    ae.add_argument("--data-root", default=None, help="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, ../shared/data)")
    ae.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    ae.add_argument("--quick", action="store_true", help="tiny sweeps and model, 2 draws (a smoke test)")
    ae.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    ae.set_defaults(func=_approx_error)
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
    sw.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    sw.set_defaults(func=_sweep)
    va = sub.add_parser("validate", help="meta-validation score of a finished run (held-out source classes of its "
                        "config's validation block); cached in RUN/validation.json")
    va.add_argument("run", help="meta-train run folder")
    va.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    va.set_defaults(func=_validate)
    rp = sub.add_parser("report", help="compare meta-train runs: meta-train loss and meta-test accuracy vs "
                        "cumulative inner steps (Figs. 6a, 7), final table (Fig. 6b)")
    rp.add_argument("runs", nargs="+", help="run folders written by meta-train (one per method), sweep folders "
                    "(every method's chosen run) or a sweep's method folders (its chosen run)")
    rp.add_argument("--targets", required=True, help="comma-separated meta-test datasets (names or paths)")
    rp.add_argument("--out", required=True, help="report folder: report.json, table.md and the figures")
    rp.add_argument("--seeds", type=int, default=5, help="finetuning runs per target (default 5)")
    rp.add_argument("--steps", type=int, default=None, help="finetuning steps per meta-test (default: the "
                    "protocol's 1000)")
    rp.add_argument("--protocol", default="paper", help="paper | table1 | reference (default paper)")
    rp.add_argument("--images-per-class", default=None, metavar="N[,N...]",
                    help="low-data regime: meta-test the final inits at each N images per class of the targets' "
                         "training splits (Fig. 9: gain over scratch against N)")
    rp.add_argument("--curve-images-per-class", type=int, default=None, metavar="N",
                    help="the setting of the snapshot curves and bar charts (default: the first of "
                         "--images-per-class)")
    rp.add_argument("--batch-size", type=int, default=None, help="finetuning batch (default: the protocol's; "
                    "never more than the training set)")
    rp.add_argument("--augment", default="crop+flip", choices=["crop+flip", "crop", "flip", "none"],
                    help="finetuning batch augmentation (default crop+flip)")
    rp.add_argument("--every-snapshot", type=int, default=1, help="meta-test every n-th snapshot (default all)")
    rp.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: each dataset's registered resolution; 32 for a path)")
    rp.add_argument("--data-root", default=None, help="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, ../shared/data)")
    rp.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    rp.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    rp.set_defaults(func=_report)
    dm = sub.add_parser("demo", help="a small image meta-train + meta-test that works offline (real images: the "
                        "data folder's datasets, else scikit-learn's digits)",
                        description="Meta-trains CTS on the source datasets, then finetunes on the target with a few "
                                    "training images per class, from the CTS initialization and from scratch (the "
                                    "same random weights CTS started from), 5 seeds; prints both accuracies with 95%% "
                                    "CIs and what their paired difference shows. A few minutes on 2 CPU cores.")
    dm.add_argument("--out", required=True, help="output folder: demo.json and the meta-train run folder")
    dm.add_argument("--steps", type=int, default=1000, help="meta-training inner steps per task (default 1000)")
    dm.add_argument("--finetune-steps", type=int, default=100, help="meta-test finetuning steps (default 100)")
    dm.add_argument("--seeds", type=int, default=5, help="finetuning runs per initialization (default 5)")
    dm.add_argument("--images-per-class", type=int, default=5, help="target training images per class "
                    "(default 5: the low-data regime where an initialization can matter)")
    dm.add_argument("--data-root", default=None, help="folder holding the datasets (default: $TRAJSHIFT_DATA, ./data, ../shared/data)")
    dm.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $TRAJSHIFT_CACHE or ~/.cache/trajshift)")
    dm.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and the final summary")
    dm.set_defaults(func=_demo)
    dl = sub.add_parser("download", help="fetch registered datasets from their canonical addresses (sha256 checked "
                        "where known)")
    dl.add_argument("names", help="comma-separated dataset names")
    dl.add_argument("--data-root", default="data", help="where to put them (default ./data)")
    dl.set_defaults(func=_download)
    ls = sub.add_parser("list", help="list the registered methods, optimizers, models, datasets and protocols")
    ls.set_defaults(func=_list)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"trajshift: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings
    warnings.formatwarning = _one_line_warning      # users see what happened, not our source line
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = 1
    try:
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"--out {out}: an existing file, not a folder; give a folder path (created if missing)")
        rc = args.func(args)
        return rc
    except Interrupted as err:
        print(f"trajshift: {err}", file=sys.stderr)
        rc = 130
        return rc
    except KeyboardInterrupt:
        print("trajshift: interrupted", file=sys.stderr)
        rc = 130
        return rc
    except TrajshiftError as err:
        print(f"trajshift: error: {err}", file=sys.stderr)
        rc = 2
        return rc
    finally:
        if _shutdown_distributed():
            # Under torchrun: everything is written (atomically, fsynced) and the group is destroyed; leave without
            # interpreter finalization, where gloo's worker threads can still abort the process (a known PyTorch
            # issue: "terminate called without an active exception" at exit).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc if isinstance(rc, int) else 1)


def _shutdown_distributed() -> bool:
    """Leave the process group together (a barrier, then destroy); True when there was one."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
