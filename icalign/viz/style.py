"""The one plotting style: figures, labels, bands and number parsing shared by every figure.

Figures are made as ``matplotlib.figure.Figure`` objects, never through pyplot, so importing
icalign never selects or switches a backend (a notebook keeps its own) and no figure is
registered globally. Save one with :func:`icalign.io.save_figure`.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["NMSE_LABEL", "T_LABEL", "RANDOM_LABEL", "new_figure", "colormap", "floats", "band", "integer_ticks",
           "random_direction_line", "hardware_note"]

NMSE_LABEL = "normalised MSE  1 - cos(y_hat, y*)"
T_LABEL = "in-context examples t"
RANDOM_LABEL = "random direction"


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6.0, 4.0), **subplot_kw):
    """(Figure, axes as a 2-D array) without pyplot."""
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def colormap(name: str):
    return matplotlib.colormaps[name]


def floats(xs) -> np.ndarray:
    """A results list as floats. JSON stores NaN as the string "nan" (``icalign.io``), and a
    missing value as None; both become NaN (matplotlib would plot strings as categories)."""
    return np.array([np.nan if x is None else float(x) for x in np.ravel(xs)], dtype=float)


def band(ax, x, summary: dict, color, label=None, ls="-", marker="o", lw=1.4, alpha=0.18, ms=3):
    """Plot ``summary['mean']`` against x with the interval [low, high] shaded where both
    bounds are finite (NaN bounds, e.g. a single seed, leave a gap; the mean is still drawn).
    ``summary`` holds 'mean' and either 'low'/'high' or 'sem' (then mean +- sem)."""
    x = np.asarray(x, float)
    m = floats(summary["mean"])
    if "low" in summary:
        lo, hi = floats(summary["low"]), floats(summary["high"])
    else:
        sem = floats(summary["sem"])
        lo, hi = m - sem, m + sem
    ax.plot(x, m, ls=ls, marker=marker, ms=ms, color=color, label=label, lw=lw)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(x, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), color=color, alpha=alpha, lw=0)


def integer_ticks(ax) -> None:
    """Integer ticks on the x axis: t counts in-context examples, so 2.5 means nothing."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def random_direction_line(ax, label=None) -> None:
    """The normalised MSE of a random direction (1)."""
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label=label)


def hardware_note(res: dict) -> str:
    hw = res.get("hardware") or {}
    return f"{hw.get('backend', '?')} ({hw.get('device', '?')}, {hw.get('cpu_count', '?')} cores)"
