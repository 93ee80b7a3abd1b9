"""The one plotting style: figures, labels, bands and number parsing shared by every figure.

Figures are made as ``matplotlib.figure.Figure`` objects, never through pyplot, so importing
icalign never selects or switches a backend (a notebook keeps its own) and no figure is
registered globally. Save one with :func:`icalign.io.save_figure`. Every figure shows itself
in a notebook as returned (:class:`NotebookFigure`), with or without ``%matplotlib inline``.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["NotebookFigure", "NMSE_LABEL", "PAIRED_NOTE",
           "T_LABEL", "RANDOM_LABEL", "NMSE_RANGE", "new_figure", "colormap", "floats",
           "band", "band_note", "integer_ticks", "random_direction_line", "hardware_note", "clip_ylim", "effects"]

NMSE_LABEL = "normalised MSE  1 - cos(y_hat, y*)"
T_LABEL = "in-context examples t"
RANDOM_LABEL = "random direction"
NMSE_RANGE = (0.0, 2.0)  #: the normalised MSE lies in [0, 2]; differences of two in [-2, 2]


class NotebookFigure(Figure):
    """A Figure that a notebook displays as a PNG when it is a cell's value. A Figure made
    without pyplot has no display hook of its own (IPython shows ``<Figure size ...>`` unless
    ``%matplotlib inline`` registered one); ``_repr_png_`` is IPython's hook for any object."""

    def _repr_png_(self) -> bytes:
        from icalign.io import figure_bytes

        return figure_bytes(self, "png", dpi=100)


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6.0, 4.0), **subplot_kw):
    """(Figure, axes as a 2-D array) without pyplot; the Figure displays itself in a notebook."""
    fig = NotebookFigure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def colormap(name: str):
    return matplotlib.colormaps[name]


def floats(xs) -> np.ndarray:
    """A results list as floats. JSON stores NaN as the string "nan" (``icalign.io``), and a
    missing value as None; both become NaN (matplotlib would plot strings as categories)."""
    return np.array([np.nan if x is None else float(x) for x in np.ravel(xs)], dtype=float)


def band(ax, x, summary: dict, color, label=None, ls="-", marker="o", lw=1.4, alpha=0.18, ms=3):
    """Plot ``summary['mean']`` against x with its 95% interval [low, high] shaded where both
    bounds are finite (NaN bounds, e.g. a single seed, leave a gap; the mean is still drawn).
    Every band of the project is such an interval (:func:`band_note` says over what); a
    summary without 'low'/'high' is an error, not a silently different band."""
    if "low" not in summary or "high" not in summary:
        raise ValueError(f"summary must hold 'mean', 'low' and 'high' (a 95% interval), got keys {sorted(summary)}")
    x = np.asarray(x, float)
    m = floats(summary["mean"])
    lo, hi = floats(summary["low"]), floats(summary["high"])
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


def band_note(unit: str, n=None) -> str:
    """What a shaded band or whisker is, for a legend or caption: every band of the project
    is a 95% Student-t interval, over seeds (trained models) or contexts (GD learners)."""
    return f"95% interval over {'' if n is None else f'{n} '}{unit}"


#: What a paired difference's whisker is: the claim engine's interval (icalign.analysis.claims).
PAIRED_NOTE = ("paired 95% interval of the claims (each seed on its own block of the contexts: about new seeds and new "
               "contexts, where every seed's per-context values are stored)")


def clip_ylim(ax, values, lo: float = NMSE_RANGE[0], hi: float = NMSE_RANGE[1], pad: float = 0.08) -> None:
    """y-limits around the plotted means ``values`` (NaN ignored), inside the metric's range
    [lo, hi]: intervals reaching past them are cut at the frame, not allowed to flatten the
    means (with 3 seeds a t-interval is 4.3 standard errors wide on each side)."""
    v = floats(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    span = max(float(v.max() - v.min()), 0.1)
    ax.set_ylim(max(lo, float(v.min()) - pad * span - 0.02), min(hi, float(v.max()) + pad * span + 0.02))


def effects(ax, y, eff: list, color, label=None, marker="o", horizontal: bool = False, limits=(-2.0, 2.0),
            hollow: bool = False) -> None:
    """Paired differences (claim-engine effects: {"effect", "low", "high"}) at positions y
    with their 95% intervals as whiskers, cut at ``limits``; ``hollow`` markers for effects
    that are no evidence (a model that did not train)."""
    m = floats([e["effect"] for e in eff])
    lo = np.clip(floats([e["low"] for e in eff]), *limits)
    hi = np.clip(floats([e["high"] for e in eff]), *limits)
    err = np.abs(np.stack([m - lo, hi - m]))
    err = np.where(np.isfinite(err), err, 0.0)
    kw = dict(fmt=marker, color=color, label=label, capsize=2.5, ms=5, lw=1.2, mfc="white" if hollow else color)
    if horizontal:
        ax.errorbar(m, y, xerr=err, **kw)
    else:
        ax.errorbar(y, m, yerr=err, **kw)
