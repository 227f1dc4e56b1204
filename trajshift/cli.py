"""The ``trajshift`` command."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, Interrupted, TrajshiftError
from .progress import log_line
from .schema import Rule, check_value
from .yamlio import parse_overrides


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


def run_config_of(init: Path) -> Path | None:
    """The config.yaml of the meta-train run an init file belongs to: beside it (init.safetensors) or one folder
    up (snapshots/step-N.safetensors)."""
    for folder in (init.parent, init.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def resolve_init(path: str) -> Path:
    """An init file; a run folder means its init (init.safetensors, or an older run's init.pt); a method folder of
    a sweep means its chosen run's."""
    from .init_file import run_init
    from .sweep import chosen_run
    p = Path(path)
    if p.is_dir():
        run = chosen_run(p) or p
        found = run_init(run)
        if found is None:
            raise ConfigError(f"--init {path}: a folder without init.safetensors (or init.pt); give an init file, a "
                              f"meta-train run folder or a method folder of a sweep")
        return found
    return p


def _meta_train(args) -> int:
    from .meta_train import load_config, meta_train
    overrides = parse_overrides(args.set)
    if args.backend:
        overrides["execution.backend"] = args.backend
    if args.init_from:
        overrides["init_from"] = args.init_from
    if args.quiet:
        overrides["meta.progress"] = False          # no bar and no periodic lines either
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
    print(f"wrote {Path(args.out) / 'init.safetensors'} ({summary['meta_updates']} meta-updates, {summary['inner_steps']} "
          f"inner steps per task, {summary['wall_time']:.0f} s)")
    return 0


def _meta_test(args) -> int:
    from .meta_test import MetaTestConfig, markdown_table, meta_test
    if (args.init is None) == (args.from_ != "scratch"):
        raise ConfigError("meta-test: give either --init FILE or --from scratch")
    from .init_file import read_info
    init = resolve_init(args.init) if args.init else None
    run_config = run_config_of(init) if init else None
    info = read_info(init) if init else {}
    run = {}
    if run_config is not None:
        import yaml
        run = yaml.safe_load(run_config.read_text()) or {}
    # Every default and where it came from: printed, so a run is never tested under settings nobody chose.
    chosen: dict[str, tuple[object, str]] = {}
    if args.model is not None:
        chosen["model"] = ({"name": args.model}, "--model")
    elif isinstance(info.get("model"), dict):
        chosen["model"] = (dict(info["model"]), "init.json")
    elif run.get("model") is not None:
        chosen["model"] = (dict(run["model"]) if isinstance(run["model"], dict) else {"name": run["model"]},
                           "the run's config.yaml")
    elif init is not None:
        from .meta_test import load_init, match_registered_model
        chosen["model"] = (match_registered_model(load_init(init), f"--init {init}"), "matched by the file's keys")
    else:
        chosen["model"] = ({"name": "resnet20"}, "default")
    model = chosen["model"][0]
    if args.activation:
        model["activation"] = args.activation
    for key, value in parse_overrides(args.set).items():
        if not key.startswith("model."):
            raise ConfigError(f"--set {key}: meta-test takes model options only (model.KEY=VALUE, e.g. "
                              f"model.width=32)")
        model[key.split(".", 1)[1]] = value
    from .run_config import check_model_spec
    check_model_spec(model)
    validation = run.get("validation") or {}
    for key, flag, recorded, fallback in (
            ("resolution", args.resolution, info.get("resolution"), None),
            ("augment", args.augment, info.get("augment") or validation.get("augment"), "crop+flip"),
            ("protocol", args.protocol, validation.get("protocol"), "paper")):
        if flag is not None:
            chosen[key] = (flag, "command line")
        elif recorded is not None:
            chosen[key] = (recorded, "init.json" if key != "protocol" else "the run's validation block")
        else:
            chosen[key] = (fallback, "default" if fallback is not None else "each dataset's registered resolution")
    if not args.quiet:
        print("meta-test settings: " + "; ".join(f"{k} {v!r} ({src})" if k != "resolution" or v is not None
                                                 else f"{k}: {src}" for k, (v, src) in chosen.items())
              + "; each target normalised by its own training-set mean and std")
    cfg = MetaTestConfig(targets=[t.strip() for t in args.targets.split(",") if t.strip()], init=str(init) if init else None,
                         model=model, protocol=chosen["protocol"][0], steps=args.steps, seeds=args.seeds,
                         resolution=chosen["resolution"][0], train_images=args.train_images, batch_size=args.batch_size,
                         images_per_class=_int_list(args.images_per_class, "--images-per-class")
                         if args.images_per_class else None, augment=chosen["augment"][0],
                         data_root=args.data_root, cache_dir=args.cache_dir, device=args.device).validate()
    quiet = dict(log=(lambda *_: None) if args.quiet else log_line, progress=False if args.quiet else None)
    report = meta_test(cfg, args.out, **quiet)
    print(markdown_table(report))
    if args.baseline:
        _paired_baseline(args, cfg, init, report, quiet)
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def _paired_baseline(args, cfg, init: Path | None, report: dict, quiet: dict) -> None:
    """--baseline start|FILE: finetune the baseline with the same seeds and subsamples, then the paired difference
    (init minus baseline) per setting, with its 95% CI over seeds; written into results.json."""
    import dataclasses

    from .atomic import write_json
    from .init_file import snapshot_files
    from .meta_test import meta_test
    from .stats import mean_ci95
    if args.baseline == "start":
        run = run_config_of(init).parent if init is not None and run_config_of(init) else None
        snaps = snapshot_files(run) if run else []
        if not snaps or not snaps[0].stem.endswith("-00000000"):
            raise ConfigError(f"--baseline start: {init or 'scratch'} has no run folder with its starting weights "
                              f"(snapshots/step-00000000; the run needs snapshot_every > 0); give --baseline FILE")
        baseline = snaps[0]
    else:
        baseline = resolve_init(args.baseline)
    base = meta_test(dataclasses.replace(cfg, init=str(baseline)), Path(args.out) / "baseline", **quiet)
    difference = {}
    for n, res in report["by_images_per_class"].items():
        ref = base["by_images_per_class"][n]
        diffs = [a - b for a, b in zip(res["average"]["per_seed"], ref["average"]["per_seed"])]
        mean, ci = mean_ci95(diffs)
        per_target = {}
        for t, r in res["targets"].items():
            m, c = mean_ci95([a - b for a, b in zip(r["accs"], ref["targets"][t]["accs"])])
            per_target[t] = {"mean": m, "ci95": c}
        difference[n] = {"mean": mean, "ci95": ci, "per_seed": diffs, "targets": per_target}
        ci_text = "n/a" if ci is None else f"{100 * ci:.2f}"
        print(f"paired difference, {report['init']} minus baseline {baseline}"
              + (f" ({n} per class)" if n != "all" else "") + f": {100 * mean:+.2f} ± {ci_text} points "
              f"(target average, 95% CI over {len(diffs)} seeds; the same seeds and subsamples)")
    report["baseline"] = {"init": str(baseline), "by_images_per_class": base["by_images_per_class"]}
    report["difference"] = difference
    write_json(Path(args.out) / "results.json", report)


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
    cfg.validate(flags=True)              # every flag checked before any work starts
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
        from .init_file import run_init
        for name in ("config.yaml", "metrics.jsonl", "init.safetensors"):
            if not (Path(run) / name).exists() and not (name.startswith("init") and run_init(run)):
                raise ConfigError(f"{run}: not a meta-train run folder (no {name}); give folders written by "
                                  f"`trajshift meta-train --out`")
    check_value(args.seeds, int, Rule(low=2), "--seeds")       # a confidence interval needs 2
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
    for key, low in (("steps", 1), ("finetune_steps", 1), ("seeds", 2), ("images_per_class", 1)):
        check_value(getattr(args, key), int, Rule(low=low), f"--{key.replace('_', '-')}")
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
    from .meta_test import PROTOCOLS
    from .methods import METHODS
    from .models import MODELS
    from .optim import OPTIMIZERS
    print("methods:    " + ", ".join(METHODS.names()))
    print("optimizers: " + ", ".join(OPTIMIZERS.names()))
    print("models:     " + ", ".join(MODELS.names()))
    print("datasets:   " + ", ".join(DATASETS.names()))
    print("protocols:  " + ", ".join(PROTOCOLS.names()))
    return 0


def build_parser():
    from . import cli_parser
    handlers = {"synthetic": _synthetic, "meta_train": _meta_train, "meta_test": _meta_test,
                "approx_error": _approx_error, "sweep": _sweep, "validate": _validate, "report": _report,
                "demo": _demo, "download": _download, "list": _list}
    return cli_parser.build_parser(handlers)


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
