"""The evaluation settings, resolved one way for every door: ``meta-test``, ``report``, ``trajshift.finetune``,
``validate``/``sweep`` and ``demo``.

Each setting comes from, in this order of precedence:

1. what the caller gave explicitly (a command-line flag, a keyword argument, a validation block, the demo's own
   choice): a stated choice always wins;
2. the initialization's own records: init.json beside the file (model, resolution, augmentation, head), then the
   meta-train run's config.yaml (its model, its validation block's protocol and augmentation);
3. one declared default (``DEFAULTS``), or for the model of a bare state_dict, the registered model whose keys fit.

The resolved settings are printed with where each came from (``describe``) and recorded in every result JSON
(``record``). One default protocol everywhere: ``paper`` (Section 4.2: the whole training set, 1,000 steps, batch
128), chosen because it is the paper's main meta-test (Figs. 6-9) and the only protocol that does not silently
subsample the target's training set; ``table1`` (1,000-image subsets, Section 4.3) is one flag away.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.tasks import DEFAULT_AUGMENT

DEFAULT_PROTOCOL = "paper"
DEFAULT_MODEL = {"name": "resnet20"}     # only for --from scratch without --model
NORMALISATION = "each target normalised by its own training-set mean and std"
DEFAULTS = {"protocol": DEFAULT_PROTOCOL, "augment": DEFAULT_AUGMENT, "resolution": None}


@dataclass
class Settings:
    """{name: (value, source)} in a fixed order: model, head, resolution, augment, protocol, normalisation."""
    values: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.values[key][0]

    def source(self, key) -> str:
        return self.values[key][1]

    def set(self, key, value, source) -> None:
        self.values[key] = (value, source)

    def describe(self) -> str:
        parts = []
        for key, (value, source) in self.values.items():
            if key == "resolution" and value is None:
                parts.append(f"resolution: {source}")
            elif key == "normalisation":
                parts.append(str(value))
            else:
                parts.append(f"{key} {value!r} ({source})")
        return "; ".join(parts)

    def record(self) -> dict:
        """For results JSON: {name: {value, source}}."""
        return {k: {"value": v, "source": s} for k, (v, s) in self.values.items()}


def run_config_of(init: Path) -> Path | None:
    """The config.yaml of the meta-train run an init file belongs to: beside it (init.safetensors) or one folder
    up (snapshots/step-N.safetensors)."""
    for folder in (init.parent, init.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def records_of(init) -> tuple[dict, dict]:
    """(init.json, the run's config.yaml) of an initialization file; ({}, {}) for none. A FitResult's own info."""
    if init is None:
        return {}, {}
    if hasattr(init, "info") and hasattr(init, "init_state_dict"):
        return dict(init.info), {}
    if isinstance(init, dict):
        return {}, {}
    from ..data.init_file import read_info, run_init
    path = Path(init)
    if path.is_dir():                      # a run folder: its init file's records
        path = run_init(path) or path
    info = read_info(path)
    config = run_config_of(path)
    run = {}
    if config is not None:
        import yaml
        run = yaml.safe_load(config.read_text()) or {}
    return info, run if isinstance(run, dict) else {}


def resolve(init, *, model=None, head=None, resolution=None, augment=None, protocol=None, given_by: str = "command line",
            image_targets: bool = True, match_keys=None) -> Settings:
    """The settings for evaluating ``init`` (a path, a FitResult, a state_dict or None for scratch). Explicit
    values (not None) win, named ``given_by``; then the records; then ``DEFAULTS``. ``image_targets``: False for
    the Python API's Datasets, whose own transforms decide resolution and augmentation (recorded as such).
    ``match_keys``: a function(state_dict path) -> model spec for a bare state_dict without records."""
    info, run = records_of(init)
    validation = run.get("validation") or {}
    s = Settings()
    if model is not None:
        s.set("model", model, given_by)
    elif isinstance(info.get("model"), dict):
        s.set("model", dict(info["model"]), "init.json")
    elif run.get("model") is not None:
        s.set("model", dict(run["model"]) if isinstance(run["model"], dict) else {"name": run["model"]},
              "the run's config.yaml")
    elif info.get("model_note"):
        from ..core.errors import ConfigError
        raise ConfigError(f"{init}: init.json names no model that can be rebuilt: {info['model_note']}; or give the "
                          f"model here (--model package.module:factory on the command line, model= in the API)")
    elif init is not None and match_keys is not None:
        s.set("model", match_keys(init), "matched by the file's keys")
    else:
        s.set("model", None if init is not None else dict(DEFAULT_MODEL), "default" if init is None else "none")
    if head is not None:
        s.set("head", head, given_by)
    elif isinstance(info.get("meta_params"), dict):
        s.set("head", {"meta_params": info["meta_params"]}, "init.json")
    elif isinstance(run.get("meta_params"), dict):
        s.set("head", {"meta_params": run["meta_params"]}, "the run's config.yaml")
    else:
        s.set("head", None, "default: fc, head or classifier (or the model's get_classifier())")
    if image_targets:
        recorded_res = info.get("resolution")
        if resolution is not None:
            s.set("resolution", resolution, given_by)
        elif recorded_res is not None:
            s.set("resolution", recorded_res, "init.json")
        else:
            s.set("resolution", None, "each dataset's registered resolution (32 for a path)")
        recorded_aug = info.get("augment") or validation.get("augment")
        if augment is not None:
            s.set("augment", augment, given_by)
        elif recorded_aug is not None:
            s.set("augment", recorded_aug, "init.json" if info.get("augment") else "the run's validation block")
        else:
            s.set("augment", DEFAULT_AUGMENT, "default")
    else:
        s.set("resolution", None, "the Dataset's own transforms")
        s.set("augment", None, "the Dataset's own transforms")
    if protocol is not None:
        s.set("protocol", protocol, given_by)
    elif validation.get("protocol") is not None:
        s.set("protocol", validation["protocol"], "the run's validation block")
    else:
        s.set("protocol", DEFAULT_PROTOCOL, "default")
    s.set("normalisation", NORMALISATION if image_targets else "the Dataset's own", "fixed")
    return s
