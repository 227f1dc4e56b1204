"""Ctrl-C and SIGTERM during meta-training: a flag the loop reads after each inner step (a step is never cut in two);
the trainer then checkpoints that step and raises Interrupted, whose message says how to resume."""
from __future__ import annotations

import signal
import threading

from ..core.errors import Interrupted


class StopOnSignal:
    """``with StopOnSignal(active) as stop: ... if stop.signal: ...``. Only in one process and the main thread:
    under torch.distributed the ranks could not agree on a step to stop at. A second signal stops at once."""

    def __init__(self, active: bool = True):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.signal: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signal is not None:          # asked twice: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self):
        if self.active:
            self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def interrupted(signum: int, step: int, checkpointed: bool) -> Interrupted:
    name = signal.Signals(signum).name
    if checkpointed:
        return Interrupted(f"interrupted ({name}) at inner step {step}; run the same command again to resume from "
                           f"step {step}")
    return Interrupted(f"interrupted ({name}) at inner step {step}; this run keeps no checkpoints "
                       f"(checkpoint_every: 0), so running it again starts over")


class Supervised:
    """What surrounds a training run (trajshift.training.loop.MetaTrainer.run): the progress bar, the stop flag set by SIGINT
    or SIGTERM (checked after every step: the step is checkpointed, then Interrupted is raised), and at the end the
    last read-back and a final checkpoint; the bar and the metrics file are closed whatever happens."""

    def __init__(self, trainer):
        from .progress import loop_bar
        self.tr, cfg = trainer, trainer.cfg
        # progress null: a bar on a terminal, periodic plain lines elsewhere (trajshift/training/progress.py); false: none.
        self.bar = loop_bar(trainer, cfg.progress if trainer.comm.is_main() else False)
        self.stop = StopOnSignal(trainer.comm.world_size == 1)

    def __enter__(self):
        self.stop.__enter__()
        return self

    def after_step(self) -> None:
        self.bar.step()
        if self.stop.signal is not None:
            tr = self.tr
            tr.save_checkpoint()
            step = tr.position["m"] * tr.cfg.inner_steps + tr.position["k"]
            raise interrupted(self.stop.signal, step, tr.checkpoint_dir is not None)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop.__exit__(exc_type, exc, tb)
            if exc_type is None:
                self.tr.sync()
                if self.tr.checkpoint_every:
                    self.tr.save_checkpoint()           # at exit, whatever the period
        finally:
            self.bar.close()
            self.tr.metrics.close()
