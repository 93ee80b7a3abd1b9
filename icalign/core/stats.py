"""Summary statistics: means with 95% Student-t intervals, and the power of the t-test that
decides a claim (the smallest effect it detects, the number of units it would need).

A claim compares two learners on the same evaluation contexts through their paired
differences d (one per unit: a training seed, or a context for a learner without a seed).
Its 95% interval is mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n); the claim is *supported*
when the interval lies on the predicted side of 0. For normal d with true mean delta and
sd sigma, that happens with probability

    power(delta) = P(T > t_{0.975, n-1}),   T ~ noncentral t(df = n - 1, nc = delta sqrt(n) / sigma),

exactly (not a normal approximation; with 3 seeds the two differ a lot). :func:`mde` inverts
it: the smallest true effect supported with probability 0.8 given sigma and n.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_ci", "mean_sem", "summarise", "t_interval", "power", "mde", "units_needed", "sd_from_interval",
           "sd_range", "CELL_DIGITS", "LEVEL", "POWER", "MAX_UNITS"]

LEVEL = 0.95  #: two-sided level of every interval
POWER = 0.8  #: power at which the smallest detectable effect is quoted
MAX_UNITS = 10_000  #: units_needed gives up (returns None) beyond this


def mean_ci(values, axis: int = 0, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def summarise(values, unit: str, keep: bool = False) -> dict:
    """Mean and 95% Student-t interval per t.

    ``unit="seeds"``: values (R, B, T); each seed's mean over contexts is one sample (the
    trained model is the unit of replication). ``unit="contexts"``: values (B, T), one sample
    per context (a GD learner has no training seed). ``keep=True`` also stores the units
    themselves, so that claims can pair them: ``per_seed`` (R, T) and ``cells`` (R, B) (every
    seed on every context at the last t: what a claim's seeds x contexts interval needs) for
    seeds, ``last`` (B,) (every context at the last t) for contexts. Cells are rounded to
    ``CELL_DIGITS`` significant digits (far below any interval's width) to keep files small.
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
    out = {"mean": mean.tolist(), "low": lo.tolist(), "high": hi.tolist(), "n": int(per.shape[0]), "unit": unit}
    if keep:
        out.update({"per_seed": per.tolist(), "cells": _round(v[:, :, -1]).tolist()} if unit == "seeds"
                   else {"last": per[:, -1].tolist()})
    return out


CELL_DIGITS = 7  #: significant digits of stored per-(seed, context) values


def _round(v: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda x: float(f"{x:.{CELL_DIGITS}g}"))(v) if v.size else v


def t_interval(values, level: float = LEVEL) -> dict:
    """{"mean", "low", "high", "sd", "n"} of a 1-D sample (NaN interval with one value)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("values must hold at least one number, got an empty sample")
    mean, lo, hi = mean_ci(v, level=level)
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return {"mean": float(mean), "low": float(lo), "high": float(hi), "sd": sd, "n": int(v.size)}


def _t_crit(n: int, level: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df=n - 1))


def power(effect: float, sd: float, n: int, level: float = LEVEL) -> float:
    """Probability that the ``level`` interval of n paired differences (true mean ``effect``,
    sd ``sd``, normal) lies entirely above 0 when effect > 0 (below 0 when effect < 0)."""
    from scipy import stats

    if n < 2:
        raise ValueError(f"n must be >= 2 (an interval needs two units), got {n}")
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    nc = abs(effect) * math.sqrt(n) / sd
    return float(stats.nct.sf(_t_crit(n, level), df=n - 1, nc=nc))


def mde(sd: float, n: int, target: float = POWER, level: float = LEVEL) -> float:
    """The smallest |effect| detected with probability ``target`` by n paired units of sd
    ``sd`` (NaN when sd is not a positive number or n < 2)."""
    from scipy.optimize import brentq

    if n < 2 or not (np.isfinite(sd) and sd > 0):
        return float("nan")
    hi = sd
    while power(hi, sd, n, level) < target:
        hi *= 2
    return float(brentq(lambda e: power(e, sd, n, level) - target, 0.0, hi, xtol=1e-10 * sd))


def units_needed(effect: float, sd: float, target: float = POWER, level: float = LEVEL,
                 max_units: int = MAX_UNITS) -> int | None:
    """The fewest units (seeds or contexts) with which a true effect ``effect`` of sd ``sd``
    would be detected with probability ``target``; None beyond ``max_units`` or when effect
    is 0 or sd is not a positive number."""
    if not (np.isfinite(sd) and sd > 0 and np.isfinite(effect)) or effect == 0:
        return None
    if power(effect, sd, max_units, level) < target:
        return None
    lo, hi = 2, max_units  # power grows with n: bisect for the first n that reaches target
    if power(effect, sd, lo, level) >= target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if power(effect, sd, mid, level) < target else (lo, mid)
    return hi


def sd_range(sd: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` confidence interval of a normal sample's true sd from its sample sd over n
    values (chi-square with n - 1 degrees of freedom): how little a 3-seed sd says. (NaN, NaN)
    when n < 2 or sd is not finite."""
    from scipy import stats

    if n < 2 or not np.isfinite(sd):
        return float("nan"), float("nan")
    df = n - 1
    return (float(sd * math.sqrt(df / stats.chi2.ppf(0.5 + level / 2, df))),
            float(sd * math.sqrt(df / stats.chi2.ppf(0.5 - level / 2, df))))


def sd_from_interval(mean: float, low: float, high: float, n: int, level: float = LEVEL) -> float:
    """The sample sd behind a Student-t interval [low, high] of n values (what mean_ci
    computed): half-width * sqrt(n) / t_{level, n-1}. Exact; lets an old result that stored
    only summaries be re-analysed."""
    if n < 2 or not np.isfinite([low, high]).all():
        return float("nan")
    return float((high - low) / 2 * math.sqrt(n) / _t_crit(n, level))
