"""Verdicts of the necessity study: is each reduced architecture worse than the full one?

Per (N, reduced architecture), an exact one-sided Mann-Whitney U (rank) test over seeds of the
held-out relative errors (:mod:`icalign.analysis.necessity`) against the full architecture's.
Its verdict words are the study's own (needed / not needed / not resolved / not trained), kept
beside the other experiments' claim lists so that every verdict lives in ``icalign.analysis``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALPHA", "seed_summary", "compare", "claims"]

ALPHA = 0.05  # one-sided level of every necessity claim


def seed_summary(rel) -> dict:
    """Median and best over seeds of the held-out relative error; a diverged seed (NaN) is
    counted, not hidden, and makes :func:`compare` answer "not trained"."""
    rel = np.asarray(rel, float)
    finite = rel[np.isfinite(rel)]
    nan = float("nan")
    return {"median": float(np.median(finite)) if finite.size else nan,
            "best": float(finite.min()) if finite.size else nan, "diverged_seeds": int(rel.size - finite.size)}


def compare(reduced, full) -> dict:
    """Is the reduced architecture's error larger than the full one's? Exact one-sided
    Mann-Whitney U (rank) tests on the per-seed errors, both directions. Rank-based, so one lucky
    or unlucky seed cannot carry it, and with 5 seeds per side the smallest attainable p is 1/252.
    Returns the two p-values and the verdict "needed" (reduced worse at ALPHA), "not needed"
    (reduced better at ALPHA), "not resolved", or "not trained" when a seed of either side
    diverged: a run that failed to train says nothing about what the architecture can express,
    so it is never counted as evidence (no p-values then)."""
    from scipy import stats

    a, b = np.asarray(reduced, float), np.asarray(full, float)
    bad = int((~np.isfinite(a)).sum()), int((~np.isfinite(b)).sum())
    if any(bad):
        return {"p_worse": None, "p_better": None, "median_difference": None,
                "verdict": "not trained", "diverged_seeds": {"reduced": bad[0], "full": bad[1]}}
    worse = float(stats.mannwhitneyu(a, b, alternative="greater", method="exact").pvalue)
    better = float(stats.mannwhitneyu(a, b, alternative="less", method="exact").pvalue)
    verdict = "needed" if worse <= ALPHA else "not needed" if better <= ALPHA else "not resolved"
    return {"p_worse": worse, "p_better": better, "verdict": verdict,
            "median_difference": float(np.median(a) - np.median(b)),
            "diverged_seeds": {"reduced": 0, "full": 0}}


_CLAIM = {"linear attention": "softmax attention is needed (linear attention is worse)",
          "one head": "multi-head attention is needed (one head of the same total width is worse)",
          "no FFN": "the FFN is needed (no FFN is worse)",
          "half the blocks": "N - 1 blocks are needed (half the blocks is worse)"}


def claims(results: dict) -> list[dict]:
    """One statement per (N, reduced architecture) against the full one, from :func:`compare`.
    ``results``: {N: {"variants": {name: {"rel_error_per_seed": [...]}}}}."""
    out = []
    for n, row in results.items():
        full = row["variants"].get("full")
        for name, entry in row["variants"].items():
            if name == "full" or full is None:
                continue
            c = compare(entry["rel_error_per_seed"], full["rel_error_per_seed"])
            out.append({"n": int(n), "variant": name, "claim": _CLAIM[name], **c,
                        "statistic": f"exact one-sided Mann-Whitney U over seeds, level {ALPHA}"})
    return out
