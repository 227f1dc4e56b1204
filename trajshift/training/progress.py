"""Progress for the long commands: a tqdm bar (with an ETA) when stderr is a terminal, and otherwise (nohup, a
pipe, CI) plain log lines every ``PLAIN_EVERY_S`` seconds: what was done, the rate and the time left, as Lightning
and timm print them. ``TRAJSHIFT_PROGRESS_SECONDS`` changes the period; ``progress: false`` (or --quiet) silences
both."""
from __future__ import annotations

import math
import os
import sys
import time

PLAIN_EVERY_S = 30.0


def _period() -> float:
    try:
        return float(os.environ.get("TRAJSHIFT_PROGRESS_SECONDS", PLAIN_EVERY_S))
    except ValueError:
        return PLAIN_EVERY_S


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class PlainProgress:
    """tqdm's update/set_postfix/close, printed as one line to stderr at the first update, then every period,
    and at the end: ``meta-test: 120/500 steps (24%), 3.1 steps/s, 0:39 elapsed, ETA 2:02, loss 1.23``."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.t0 = self.last = time.perf_counter()
        self.postfix: dict = {}
        self.printed = False
        self.period = _period()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.printed or now - self.last >= self.period or self.n >= self.total:
            self.last = now
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix.update(values)

    def _print(self, now: float) -> None:
        self.printed = True
        elapsed = now - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = _clock(left) if not math.isnan(left) else "?"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{pct}, {rate:.3g} {self.unit}s/s, "
              f"{_clock(elapsed)} elapsed, ETA {eta}{extra}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str = "step", show: bool | None = None, initial: int = 0):
    """A tqdm bar on a terminal, plain periodic lines elsewhere; ``show`` False: nothing (None: decide by stderr)."""
    if show is False:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm
        b = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        b.update(initial)
        return b
    return PlainProgress(total, desc, unit, initial)


def log_line(*parts) -> None:
    """print, above any active progress bar instead of through it."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts))


class _LoopBar:
    """The meta-training progress: one tick per inner step; every 10 steps it shows the last read-back's loss and
    the meta-update count (it forces no host sync of its own)."""

    def __init__(self, trainer, show: bool | None):
        self.trainer = trainer
        cfg = trainer.cfg
        self.bar = bar(cfg.trajectories * cfg.inner_steps, cfg.method, show=show,
                       initial=trainer.position["m"] * cfg.inner_steps + trainer.position["k"])

    def step(self) -> None:
        k = self.trainer.position["k"]
        if (k % 10 == 0 or k == self.trainer.cfg.inner_steps) and self.trainer.readback.last:
            self.bar.set_postfix(loss=f"{self.trainer.readback.last['loss_mean']:.4g}",
                                 meta=self.trainer.meta_updates)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def loop_bar(trainer, show: bool | None) -> _LoopBar:
    return _LoopBar(trainer, show)


def log_of(args):
    """The commands' log function: log_line, or a silent one under --quiet."""
    return (lambda *_: None) if getattr(args, "quiet", False) else log_line
