"""The ``meta-test`` command: settings read from the init's own records (printed with where each came from), the
finetuning meta-test, and the paired baseline."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from ..core.yamlio import parse_overrides
from ..training.progress import log_of


def resolve_init(path: str) -> Path:
    """An init file; a run folder means its init (init.safetensors, or an older run's init.pt); a method folder of
    a sweep means its chosen run's."""
    from ..data.init_file import run_init
    from ..runs.sweep import chosen_run
    p = Path(path)
    if p.is_dir():
        run = chosen_run(p) or p
        found = run_init(run)
        if found is None:
            raise ConfigError(f"--init {path}: a folder without init.safetensors (or init.pt); give an init file, a "
                              f"meta-train run folder or a method folder of a sweep")
        return found
    return p


def run_meta_test(args) -> int:
    """The flags as explicit settings; everything else from the init's records or the declared defaults
    (trajshift/evaluation/settings.py, printed with where each came from by the meta-test itself)."""
    from ..evaluation.meta_test import (
        MetaTestConfig,
        markdown_table,
        meta_test,
        resolve_settings,
    )
    if (args.init is None) == (args.from_ != "scratch"):
        raise ConfigError("meta-test: give either --init FILE or --from scratch")
    init = resolve_init(args.init) if args.init else None
    model = None
    if args.model is not None:        # a registered name, or a factory of your own by import path
        model = {"factory": args.model} if ":" in args.model else {"name": args.model}
    overrides = {}
    for key, value in parse_overrides(args.set).items():
        if not key.startswith("model."):
            raise ConfigError(f"--set {key}: meta-test takes model options only (model.KEY=VALUE, e.g. "
                              f"model.width=32)")
        overrides[key.split(".", 1)[1]] = value
    if args.activation:
        overrides["activation"] = args.activation
    if overrides:                     # options on top of the given or the recorded model
        base = model or resolve_settings(MetaTestConfig(targets=args.targets, init=str(init) if init else None))[
            "model"]
        model = {**base, **overrides}
    if model is not None:
        from ..runs.config import check_model_spec
        check_model_spec(model)
    cfg = MetaTestConfig(targets=args.targets, init=str(init) if init else None, model=model, protocol=args.protocol,
                         steps=args.steps, seeds=args.seeds, first_seed=args.first_seed, resolution=args.resolution,
                         train_images=args.train_images, batch_size=args.batch_size,
                         images_per_class=args.images_per_class, augment=args.augment, data_root=args.data_root,
                         cache_dir=args.cache_dir, device=args.device).validate()
    quiet = {"log": log_of(args), "progress": False if args.quiet else None}
    import contextlib

    from ..core.determinism import deterministic_algorithms
    from ..training.checkpoint import RunLock
    # One meta-test per output folder: a second one pointed at it is refused in one line (they would both write
    # its finished-seeds cache and results.json).
    lock = RunLock(args.out) if args.out is not None else contextlib.nullcontext()
    with lock, deterministic_algorithms(args.deterministic):
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

    from ..core.atomic import write_json
    from ..core.stats import mean_ci95
    from ..data.init_file import snapshot_files
    from ..evaluation.meta_test import meta_test
    from ..evaluation.settings import run_config_of
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
