"""The ``meta-test`` command: settings read from the init's own records (printed with where each came from), the
finetuning meta-test, and the paired baseline."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from ..core.yamlio import parse_overrides
from ..training.progress import log_of


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
    from ..data.init_file import run_init
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


def run_meta_test(args) -> int:
    from .meta_test import MetaTestConfig, markdown_table, meta_test
    if (args.init is None) == (args.from_ != "scratch"):
        raise ConfigError("meta-test: give either --init FILE or --from scratch")
    from ..data.init_file import read_info
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
    cfg = MetaTestConfig(targets=args.targets, init=str(init) if init else None,
                         model=model, protocol=chosen["protocol"][0], steps=args.steps, seeds=args.seeds,
                         first_seed=args.first_seed,
                         resolution=chosen["resolution"][0], train_images=args.train_images, batch_size=args.batch_size,
                         images_per_class=args.images_per_class, augment=chosen["augment"][0],
                         data_root=args.data_root, cache_dir=args.cache_dir, device=args.device).validate()
    quiet = {"log": log_of(args), "progress": False if args.quiet else None}
    from ..core.determinism import deterministic_algorithms
    with deterministic_algorithms(args.deterministic):
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
    from .meta_test import meta_test
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
