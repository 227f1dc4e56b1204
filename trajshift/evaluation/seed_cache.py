"""Finished seeds of a meta-test, kept on disk so an interrupted meta-test resumes where it stopped."""
from __future__ import annotations

from pathlib import Path


class SeedCache:
    """Finished (initialization, target, setting, seed) results of a meta-test, one JSON line each in
    OUT/finished-seeds.jsonl, so an interrupted meta-test resumes where it stopped (the key holds everything that
    changes a result: the init file's sha256, the model, the target spec, the protocol, the steps, ...)."""

    def __init__(self, out: Path | None, cfg, steps: int):
        import hashlib
        import json
        self.path = None if out is None else Path(out) / "finished-seeds.jsonl"
        digest = "scratch"
        if cfg.init:
            from ..data.init_file import run_init
            p = Path(cfg.init)
            p = (run_init(p) or p) if p.is_dir() else p
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        self.common = {"init": digest, "model": cfg.model, "protocol": cfg.protocol, "steps": steps,
                       "augment": cfg.augment, "batch_size": cfg.batch_size, "train_images": cfg.train_images,
                       "meta_params": cfg.meta_params}
        self.done: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.done[row["key"]] = float(row["accuracy"])
                except (ValueError, KeyError, TypeError):
                    continue                       # a line cut by a kill: that seed runs again

    def key(self, **parts) -> str:
        import json
        return json.dumps({**self.common, **parts}, sort_keys=True, default=str)

    def add(self, key: str, accuracy: float) -> None:
        self.done[key] = accuracy
        if self.path is not None:
            import json
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "accuracy": accuracy}) + "\n")
                f.flush()
