"""Summary statistics for curves over contexts or seeds: means with 95% intervals."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values, axis: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and a two-sided Student-t confidence interval for the mean along ``axis``.

    Returns (mean, low, high). With one sample the interval is undefined and returned as NaN.
    """
    from scipy import stats  # imported lazily: only summaries need scipy

    v = np.asarray(values, dtype=float)
    n = v.shape[axis]
    mean = v.mean(axis=axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    sem = v.std(axis=axis, ddof=1) / np.sqrt(n)
    half = stats.t.ppf(0.5 + level / 2, df=n - 1) * sem
    return mean, mean - half, mean + half
