"""The ``trajshift`` command."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from ..core.errors import ConfigError, Interrupted, TrajshiftError
from ..core.schema import Rule, check_value
from ..core.yamlio import parse_overrides
from ..training.progress import log_of


def _synthetic(args) -> int:
    from ..analysis.synthetic_study import SyntheticStudyConfig, run_study
    from .cli_options import config_from_args
    from .cli_parser import SYNTHETIC_FLAGS
    starts = None
    if args.start:
        try:
            starts = [[float(v) for v in s.split(",")] for s in args.start]
        except ValueError:
            raise ConfigError(f"--start: expected X,Y numbers, got {args.start}") from None
    # Every flag checked by the config's own rules before any work starts, named by its flag.
    cfg = config_from_args(SyntheticStudyConfig, args, SYNTHETIC_FLAGS,
                           extra={"starts": starts} if starts is not None else None)
    results = run_study(args.out, cfg, log=log_of(args))
    out = Path(args.out)
    print(f"\nwrote {out / 'results.json'} and the figures in {out}/ ({results['wall_time']:.0f} s)")
    print("median meta-test loss (task-average loss after K steps from phi) over starts and task seeds:")
    print(f"{'method':>18}  {'equal meta-updates':>18}  {'equal inner steps':>18}  {'inner steps':>11}")
    for m, row in results["summary"].items():
        print(f"{m:>18}  {row['equal_meta_updates']['median']:>18.3e}  {row['equal_inner_steps']['median']:>18.3e}"
              f"  {row['mean_inner_steps']:>11.0f}")
    return 0


def _meta_test(args) -> int:
    from .cli_meta_test import run_meta_test
    return run_meta_test(args)


def _meta_train(args) -> int:
    from ..runs.experiment import load_config, meta_train
    overrides = parse_overrides(args.set)
    if args.backend:
        overrides["execution.backend"] = args.backend
    if args.init_from:
        overrides["init_from"] = args.init_from
    if args.quiet:
        overrides["meta.progress"] = False          # no bar and no periodic lines either
    cfg = load_config(args.config, overrides)            # every key checked before any work starts
    if args.resume:
        from ..training.checkpoint import list_checkpoints
        if not list_checkpoints(Path(args.out) / "checkpoints"):
            raise ConfigError(f"--resume: {Path(args.out) / 'checkpoints'} holds no checkpoint to resume from")
    summary = meta_train(cfg, args.out, log=log_of(args),
                         loggers=tuple(x.strip() for x in (args.log or "").split(",") if x.strip()))
    import os
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"wrote {Path(args.out) / 'init.safetensors'} ({summary['meta_updates']} meta-updates, {summary['inner_steps']} "
          f"inner steps per task, {summary['wall_time']:.0f} s)")
    return 0


def _approx_error(args) -> int:
    from ..analysis.approx_error import ApproxErrorConfig, run_study
    from .cli_options import config_from_args
    from .cli_parser import APPROX_ERROR_FLAGS
    cfg = config_from_args(ApproxErrorConfig, args, APPROX_ERROR_FLAGS,
                           extra={"model": {"name": "conv4", "width": args.width}})
    if args.quick:      # a smoke run: tiny sweeps and model, 2 draws
        cfg.alphas, cfg.betas, cfg.ks, cfg.draws, cfg.k = [0.003, 0.03], [0.01, 1.0], [1, 3], 2, 3
        cfg.model = {"name": "conv4", "width": 4}
    cfg.validate(flags=True)              # every flag checked before any work starts
    results = run_study(args.out, cfg, log=log_of(args))
    print(f"wrote {Path(args.out) / 'results.json'} and approx_error.png ({results['wall_time']:.0f} s)")
    return 0


def _sweep(args) -> int:
    from ..runs.sweep import parse_grid, run_sweep
    report = run_sweep(args.config, args.out, parse_grid(args.grid),
                       [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
                       args.jobs, args.set, log=log_of(args))
    key = next(iter(report["grid"]))
    for m, entry in report["methods"].items():
        print(f"{m}: chosen {entry['chosen']} (" + ", ".join(
            f"{p['values'][key]}: " + (f"{100 * p['score']:.2f}%" if p["status"] == "ok" else p["status"])
            for p in entry["points"]) + ")")
    print(f"wrote {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'sweep.png'}")
    return 0


def _validate(args) -> int:
    from ..evaluation.validation import score_run, score_snapshots
    if args.at is not None and not all(isinstance(n, int) and n >= 0 for n in args.at):
        raise ConfigError(f"--at: expected inner-step counts >= 0 like 2000,5000,10000, got {args.at}")
    if args.at and not args.snapshots:
        raise ConfigError(f"--at {','.join(map(str, args.at))} picks snapshots to score; add --snapshots")
    if args.snapshots:
        quiet = {"log": log_of(args), "progress": False if args.quiet else None}
        for steps, r in score_snapshots(args.run, at=args.at, **quiet).items():
            ci = "n/a" if r["ci95"] is None else f"{100 * r['ci95']:.2f}"
            print(f"{args.run} at {int(steps):,} inner steps: meta-validation accuracy {100 * r['score']:.2f}% +- {ci}")
        return 0
    r = score_run(args.run, log=log_of(args), progress=False if args.quiet else None)
    ci = "n/a" if r["ci95"] is None else f"{100 * r['ci95']:.2f}"
    print(f"{args.run}: meta-validation accuracy {100 * r['score']:.2f}% +- {ci} ({len(r['per_seed'])} seeds)")
    return 0


def _report(args) -> int:
    from ..analysis.report import make_report
    from ..runs.sweep import expand_runs
    args.runs = [str(r) for r in expand_runs(args.runs)]
    for run in args.runs:
        from ..data.init_file import run_init
        for name in ("config.yaml", "metrics.jsonl", "init.safetensors"):
            if not (Path(run) / name).exists() and not (name.startswith("init") and run_init(run)):
                raise ConfigError(f"{run}: not a meta-train run folder (no {name}); give folders written by "
                                  f"`trajshift meta-train --out`")
    check_value(args.seeds, int, Rule(low=2), "--seeds")       # a confidence interval needs 2
    make_report(args.runs, args.targets, args.out, seeds=args.seeds,
                steps=args.steps, protocol=args.protocol, every_snapshot=args.every_snapshot,
                resolution=args.resolution, data_root=args.data_root, cache_dir=args.cache_dir,
                images_per_class=args.images_per_class, curve_images_per_class=args.curve_images_per_class,
                batch_size=args.batch_size, augment=args.augment,
                log=log_of(args))
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {Path(args.out) / 'report.json'} and the figures in {args.out}/")
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    for key, low in (("steps", 1), ("finetune_steps", 1), ("seeds", 2), ("images_per_class", 1)):
        check_value(getattr(args, key), int, Rule(low=low), f"--{key.replace('_', '-')}")
    report = run_demo(args.out, args.steps, args.finetune_steps, args.seeds, args.data_root, args.cache_dir,
                      images_per_class=args.images_per_class, log=log_of(args))
    r = report["results"]
    ci = lambda x: "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"
    print(f"meta-test on {report['target']} with {report['images_per_class']} training images per class, "
          f"{report['seeds']} seeds: from the CTS initialization {100 * r['cts']['mean']:.2f}% +- "
          f"{ci(r['cts']['ci95'])}, from scratch {100 * r['scratch']['mean']:.2f}% +- {ci(r['scratch']['ci95'])}")
    print(report["conclusion"])
    print(f"wrote {Path(args.out) / 'demo.json'} and the run in {Path(args.out) / 'meta-train'}/")
    return 0


def _download(args) -> int:
    from ..data.download import download
    for name in [n.strip() for n in args.names.split(",") if n.strip()]:
        folder = download(name, args.data_root)
        print(f"{name}: {folder}")
    return 0


def _list(args) -> int:
    from ..data.registry import DATASETS
    from ..engine.optim import OPTIMIZERS
    from ..evaluation.protocols import PROTOCOLS
    from ..methods import METHODS
    from ..models import MODELS
    print("methods:    " + ", ".join(METHODS.names()))
    print("optimizers: " + ", ".join(OPTIMIZERS.names()))
    print("models:     " + ", ".join(MODELS.names()))
    print("datasets:   " + ", ".join(DATASETS.names()))
    print("protocols:  " + ", ".join(PROTOCOLS.names()))
    return 0


def _diagnose(args) -> int:
    from ..analysis.diagnose import diagnose, format_table
    print(format_table(diagnose(args.run)))
    return 0


def build_parser():
    from . import cli_parser
    handlers = {"synthetic": _synthetic, "meta_train": _meta_train, "meta_test": _meta_test,
                "approx_error": _approx_error, "sweep": _sweep, "validate": _validate, "report": _report,
                "demo": _demo, "download": _download, "list": _list, "diagnose": _diagnose}
    return cli_parser.build_parser(handlers)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"trajshift: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings
    warnings.formatwarning = _one_line_warning      # users see what happened, not our source line
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "command", None):
        # One line that names the command and the closest option, not the top-level usage.
        from ..core.schema import did_you_mean
        command = parser._subparsers._group_actions[0].choices[args.command]
        options = [o for a in command._actions for o in a.option_strings]
        print(f"trajshift {args.command}: error: unknown option {unknown[0]!r}; "
              f"{did_you_mean(unknown[0].split('=')[0], options)}see trajshift {args.command} --help", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = 1
    try:
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"--out {out}: an existing file, not a folder; give a folder path (created if missing)")
        if getattr(args, "threads", None) is not None:
            check_value(args.threads, int, Rule(low=1), "--threads")
            import torch
            torch.set_num_threads(args.threads)
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
