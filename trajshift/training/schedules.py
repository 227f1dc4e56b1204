"""Inner learning-rate schedules over a whole run (``meta.inner_lr_schedule``): the factor f(s, N) that multiplies
the inner optimizer's configured learning rate at inner step s = 0, 1, ..., N - 1 of a run of N = K * M inner steps.

    constant  f = 1                                   (the paper, every method)
    cosine    f = (1 + cos(pi s / N)) / 2             (from 1 at the first step to nearly 0 at the last)
    linear    f = 1 - s / N

A function of the run's step count only, so a resumed run takes the same rates as one that never stopped.
"""
from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda s, n: 1.0,
    "cosine": lambda s, n: 0.5 * (1.0 + math.cos(math.pi * s / n)),
    "linear": lambda s, n: 1.0 - s / n,
}
