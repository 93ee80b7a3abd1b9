"""Summary statistics for curves over contexts or seeds: means with 95% intervals."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_ci", "mean_sem", "summarise"]


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


def mean_sem(values, axis: int = 0) -> dict:
    """{"mean", "sem"} along ``axis`` (sem = 0 with a single sample)."""
    x = np.asarray(values, np.float64)
    n = x.shape[axis]
    sem = x.std(axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(x.mean(axis))
    return {"mean": x.mean(axis), "sem": sem}


def summarise(values, unit: str) -> dict:
    """Mean and 95% Student-t interval per t.

    ``unit="seeds"``: values (R, B, T); each seed's mean over contexts is one sample (the
    trained model is the unit of replication). ``unit="contexts"``: values (B, T), one sample
    per context (a GD learner has no training seed).
    """
    v = np.asarray(values, np.float64)
    want = {"seeds": 3, "contexts": 2}
    if unit not in want:
        raise ValueError(f"unit must be 'seeds' or 'contexts', got {unit!r}")
    if v.ndim != want[unit]:
        layout = "(seeds R, contexts B, T)" if unit == "seeds" else "(contexts B, T)"
        raise ValueError(f"values must have shape {layout} for unit={unit!r}, got shape {v.shape}")
    if v.shape[0] < 2:
        raise ValueError(f"values need at least 2 {unit} for an interval, got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values must be finite, got {int(np.sum(~np.isfinite(v)))} NaN or inf entries "
                         "(a diverged learner is reported as such, not averaged)")
    per = v.mean(axis=1) if unit == "seeds" else v
    mean, lo, hi = mean_ci(per, axis=0)
    return {"mean": mean.tolist(), "low": lo.tolist(), "high": hi.tolist(), "n": int(per.shape[0]),
            "unit": unit}
