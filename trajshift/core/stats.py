"""Confidence intervals of a mean (Student's t)."""
from __future__ import annotations

import math


def t975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% quantile of Student's t (SciPy, installed with scikit-learn)."""
    if df < 1:
        raise ValueError("need at least 2 values for a confidence interval")
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval of the mean): t_{0.975, n-1} * s / sqrt(n), with s the
    sample standard deviation (n - 1 in the denominator). One value: half-width nan."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * s / math.sqrt(n)
