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


def interval_over_seeds(values: list[float], comparisons: int = 1) -> dict:
    """A t-interval of the mean of per-seed values (e.g. one paired difference per meta-training seed, each already
    averaged over finetuning seeds), with the Bonferroni interval for `comparisons` intervals read beside it:
    half-width t_{1 - 0.025 / comparisons, n - 1} * s / sqrt(n). Returns {mean, ci95, ci95_bonferroni,
    per_meta_seed, excludes_zero, excludes_zero_bonferroni}; with one value both half-widths are nan."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    mean, ci = mean_ci95(values)
    n = len(values)
    if n > 1:
        from scipy.stats import t
        s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        bonferroni = float(t.ppf(1 - 0.025 / comparisons, n - 1)) * s / math.sqrt(n)
    else:
        bonferroni = math.nan
    return {"mean": mean, "ci95": ci, "ci95_bonferroni": bonferroni, "per_meta_seed": list(values),
            "excludes_zero": bool(abs(mean) > ci), "excludes_zero_bonferroni": bool(abs(mean) > bonferroni)}
