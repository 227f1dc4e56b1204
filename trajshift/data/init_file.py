"""One initialization format, for the command line and the Python API, and the loading of pretrained weights.

An initialization is the model's **body**: every parameter and buffer except the head (the parameters that are a
task's own, chosen by the meta-learned-parameter filter), written as

* ``init.safetensors``: the tensors only (nothing in it can run code; it loads in any framework), and
* ``init.json`` beside it: ``{"format": "trajshift-init/1", "model": <spec or null>, "meta_learned": [names],
  "head": [name globs], "batchnorm": <rule>, "resolution": ..., "augment": ..., ...}`` (how it was made).

Snapshots are the same pair (``snapshots/step-N.safetensors`` + ``step-N.json``). Older runs' ``init.pt`` (a torch
state_dict, read with ``weights_only=True``) are still read, as is any plain state_dict or safetensors file.

**The BatchNorm rule** (stated once, here): running statistics are buffers of the body. A pretrained file's
statistics are loaded like its weights, so every task starts from them; during meta-training each task updates its
own; the learned initialization holds their mean over the source tasks (``num_batches_tracked`` rounded).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError, unsafe_or_unreadable

FORMAT = "trajshift-init/1"
INIT_NAME = "init.safetensors"
LEGACY_INIT_NAME = "init.pt"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
BATCHNORM_RULE = ("running statistics: the mean over the source tasks of each task's statistics at the end "
                  "(each task starts from the initial or pretrained statistics)")


def run_init(run: str | Path) -> Path | None:
    """A meta-train run folder's initialization file (init.safetensors, or an older run's init.pt), None if none."""
    for name in (INIT_NAME, LEGACY_INIT_NAME):
        if (Path(run) / name).is_file():
            return Path(run) / name
    return None


def snapshot_files(run: str | Path) -> list[Path]:
    """The run's snapshots (snapshots/step-N.safetensors, or an older run's step-N.pt), in step order."""
    folder = Path(run) / "snapshots"
    if not folder.is_dir():
        return []
    found = {p.stem: p for p in folder.glob("step-*.pt")}
    found.update({p.stem: p for p in folder.glob("step-*.safetensors")})
    return [found[k] for k in sorted(found)]


def snapshot_steps(path: str | Path) -> int | None:
    """The cumulative inner steps of a snapshot file (step-N.safetensors), None for the final init."""
    return int(Path(path).stem.split("-")[1]) if Path(path).stem.startswith("step-") else None


def save_init(path: str | Path, state_dict: dict[str, torch.Tensor], info: dict) -> Path:
    """Write ``path`` (.safetensors; a folder means FOLDER/init.safetensors) and its .json beside it, atomically."""
    from safetensors.torch import save

    from ..core.atomic import write_bytes, write_json
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / INIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    write_bytes(path, save(tensors))
    write_json(path.with_suffix(".json"), {"format": FORMAT, **info})
    return path


def read_info(path: str | Path) -> dict:
    """The .json beside an initialization file ({} when there is none or it is unreadable)."""
    side = Path(path).with_suffix(".json")
    try:
        info = json.loads(side.read_text()) if side.is_file() else {}
    except (ValueError, OSError):
        return {}
    return info if isinstance(info, dict) else {}


def read_init(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, info) of an initialization: a .safetensors file, a torch state_dict file (weights only; a
    checkpoint that wraps it under "state_dict" or "model" is unwrapped), or a run folder (its init)."""
    from .errors import DataError
    path = Path(path)
    if path.is_dir():
        found = run_init(path)
        if found is None:
            raise DataError(f"{path}: a folder without {INIT_NAME} or {LEGACY_INIT_NAME}; give an initialization "
                            f"file or a finished meta-train run folder")
        path = found
    if not path.is_file():
        raise DataError(f"{path}: no such initialization file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({err})") from None
        return sd, read_info(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  any failure of a weights-only load is a refusal
        raise DataError(unsafe_or_unreadable(path, err)) from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not isinstance(sd.get(key), torch.Tensor):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return dict(sd), read_info(path)


@dataclass
class LoadSummary:
    """What loading a pretrained file into a model did."""
    source: str
    matched: list[str] = field(default_factory=list)       # loaded from the file
    missing: list[str] = field(default_factory=list)       # body keys the file lacks: left at their initial values
    unused: list[str] = field(default_factory=list)        # file keys the model has no use for
    heads_skipped: list[str] = field(default_factory=list)  # file keys of the head, not taken (heads=False)
    prefix_removed: str = ""

    def format(self) -> str:
        def names(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        lines = [f"init_from {self.source}: {len(self.matched)} tensors loaded"
                 + (f" (prefix {self.prefix_removed!r} removed from the file's keys)" if self.prefix_removed else "")]
        lines.append(f"  left at random (not in the file): {names(self.missing) if self.missing else 'none'}")
        lines.append(f"  in the file but unused: {names(self.unused) if self.unused else 'none'}")
        if self.heads_skipped:
            lines.append(f"  head tensors in the file, not taken (each task has its own head): "
                         f"{names(self.heads_skipped)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "matched": len(self.matched), "missing": self.missing, "unused": self.unused,
                "heads_skipped": self.heads_skipped, "prefix_removed": self.prefix_removed}


def _strip_prefix(sd: dict[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """A file saved from a wrapper (DistributedDataParallel's "module.", Lightning's "model.", ...) has one common
    prefix in front of every key: remove it when that is what makes the keys fit the model."""
    if set(sd) & own:
        return sd, ""
    for prefix in ("module.", "model.", "_orig_mod.", "backbone.", "encoder."):
        if all(k.startswith(prefix) for k in sd) and {k[len(prefix):] for k in sd} & own:
            return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, ""


def load_pretrained(model: nn.Module, sd: dict[str, torch.Tensor], head: set[str] | list[str], source: str,
                    heads: bool = False) -> LoadSummary:
    """Copy the file's tensors into ``model`` (parameters and buffers, BatchNorm statistics included), bit for bit
    (cast to the model's dtype), except the head's unless ``heads``. A key in both with different shapes is one
    error naming the key and both shapes; keys on one side only are reported, not errors."""
    own = model.state_dict()
    sd, prefix = _strip_prefix(sd, set(own))
    head = set(head)
    head_modules = {h.rsplit(".", 1)[0] for h in head if "." in h}
    head_keys = {k for k in own if k in head or k.rsplit(".", 1)[0] in head_modules}
    summary = LoadSummary(source, prefix_removed=prefix)
    take = {}
    for k, v in sd.items():
        if k not in own:
            summary.unused.append(k)
        elif k in head_keys and not heads:
            summary.heads_skipped.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(f"init_from {source}: {k} has shape {tuple(v.shape)} in the file, "
                              f"{tuple(own[k].shape)} in the model; the file was made for another model (or another "
                              f"width/class count): check model, or leave {k} out of the file")
        else:
            take[k] = v
    summary.matched = sorted(take)
    summary.missing = sorted(k for k in own if k not in take and (heads or k not in head_keys))
    if not take:
        raise ConfigError(f"init_from {source}: none of the file's {len(sd)} keys (e.g. {', '.join(list(sd)[:3])}) "
                          f"is a key of the model (e.g. {', '.join(list(own)[:3])}); the file was made for another "
                          f"model")
    with torch.no_grad():
        for k, v in take.items():
            own[k].copy_(v.to(own[k].dtype))
    return summary
