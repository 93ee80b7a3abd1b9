"""Figures of the TF-vs-GD experiment, drawn from its results JSON only.

Plots read result files; they never import training code, so a figure can be redrawn from a
committed JSON without JAX doing any work. The figure is a ``matplotlib.figure.Figure`` made
directly, not through pyplot's figure manager.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from icalign.plots import integer_ticks, save
from icalign.results import read_json

__all__ = ["plot_tf_vs_gd"]

STYLE = {
    "transformer": dict(color="C0", marker="o", label="trained transformer"),
    "adam": dict(color="C1", marker="s", label="GD baseline (Adam, lr 0.1, 50 steps)"),
    "gd": dict(color="C2", marker="^", label="plain GD (lr 1, 50 steps)"),
}


def _floats(xs) -> np.ndarray:
    """A results list as floats: JSON stores NaN as the string "nan" (e.g. Adam's Jacobian at
    t = 1, where the update divides by sqrt(0)); matplotlib would plot strings as categories."""
    return np.array([float(x) for x in xs])


def plot_tf_vs_gd(result_json: Path, stem: Path) -> list[Path]:
    """Left: normalised MSE 1 - cos(y_hat, y*) against t, mean +- s.e.m. over contexts, for the
    transformer and the GD learners. Right: how GD-like the transformer is: cosine between
    its predicted direction and each learner's, and between their sensitivities
    d u / d candidates."""
    res = read_json(result_json)
    cmp = res["comparison"]
    t = np.asarray(cmp["t"])
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    for name, stats in cmp["nmse"].items():
        mean, sem = _floats(stats["mean"]), _floats(stats["sem"])
        style = STYLE.get(name, dict(label=name))
        ax.plot(t, mean, ms=4, **style)
        ax.fill_between(t, mean - sem, mean + sem, color=style.get("color"), alpha=0.2, lw=0)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="random direction")
    ax.set_xlabel("in-context examples t")
    ax.set_ylabel("normalised MSE  1 - cos(y_hat, y*)")
    ax.set_xticks(t[:: max(1, len(t) // 10)])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    size = "quick" if res.get("quick") else "full"
    m = res["model_config"]
    tr = res["train_config"]
    ax.set_title(f"{size}: {m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, "
                 f"{m['token_layout']}; {tr['steps']} steps", fontsize=9)

    for name, diff in cmp["pred_diff"].items():
        c = STYLE.get(name, {}).get("color")
        ax2.plot(t, _floats(diff["cos"]["mean"]), color=c, ls="-", label=f"cos(y_tf, y_{name})")
        sens = cmp.get("sensitivity", {}).get(name)
        if sens:
            ax2.plot(t, _floats(sens["candidates"]["cos"]["mean"]), color=c, ls="--",
                     label=f"cos of d u/d candidates, tf vs {name}")
    ax2.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("in-context examples t")
    ax2.set_ylabel("cosine similarity")
    ax2.set_ylim(top=1.05)
    integer_ticks(ax2)
    ax2.set_title(f"transformer vs GD ({cmp['n_contexts']} contexts; sensitivities on "
                  f"{cmp['n_sensitivity']})", fontsize=9)
    ax2.legend(fontsize=8)
    hw = res.get("hardware", {})
    fig.suptitle(f"TF vs GD, in-context alignment (d={m['d']}, N={m['n']}); measured on "
                 f"{hw.get('backend', '?')} ({hw.get('device', '')}, {hw.get('cpu_count', '?')} cores)", fontsize=10)
    return save(fig, stem)
