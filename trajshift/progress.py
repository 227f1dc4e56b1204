"""Progress bars (tqdm, with an ETA) for the long commands, and log lines that print above them.

A bar appears only when stderr is a terminal (tqdm's ``disable=None``): logs and CI output stay clean."""
from __future__ import annotations


def bar(total: int, desc: str, unit: str = "step"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None, leave=False)


def log_line(*parts) -> None:
    """print, above any active progress bar instead of through it."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts))


class _LoopBar:
    """The meta-training bar: one tick per inner step; every 10 steps it shows the last read-back's loss and the
    meta-update count (it forces no host sync of its own)."""

    def __init__(self, trainer, show: bool):
        self.trainer, self.bar = trainer, None
        if show:
            from tqdm import tqdm
            cfg = trainer.cfg
            self.bar = tqdm(total=cfg.trajectories * cfg.inner_steps, desc=cfg.method, unit="step",
                            dynamic_ncols=True)
            self.bar.update(trainer.position["m"] * cfg.inner_steps + trainer.position["k"])

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if self.trainer.position["k"] % 10 == 0:
                self.bar.set_postfix(loss=f"{self.trainer.readback.last['loss_mean']:.4g}",
                                     meta=self.trainer.meta_updates)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def loop_bar(trainer, show: bool) -> _LoopBar:
    return _LoopBar(trainer, show)
