"""Figure of the TF-vs-GD experiment, drawn from its results dict only."""

from __future__ import annotations

import numpy as np

from icalign.viz.style import (NMSE_LABEL, RANDOM_LABEL, T_LABEL, band, floats, hardware_note, integer_ticks,
                               new_figure, random_direction_line)

__all__ = ["tf_vs_gd", "STYLE"]

STYLE = {
    "transformer": dict(color="C0", marker="o", label="trained transformer"),
    "adam": dict(color="C1", marker="s", label="GD baseline (Adam, lr 0.1, 50 steps)"),
    "gd": dict(color="C2", marker="^", label="plain GD (lr 1, 50 steps)"),
}


def tf_vs_gd(res: dict):
    """Left: normalised MSE 1 - cos(y_hat, y*) against t, mean +- s.e.m. over contexts, for the
    transformer and the GD learners. Right: how GD-like the transformer is: cosine between
    its predicted direction and each learner's, and between their sensitivities
    d u / d candidates."""
    cmp = res["comparison"]
    t = np.asarray(cmp["t"])
    fig, axes = new_figure(1, 2, figsize=(11, 4.2))
    ax, ax2 = axes[0]
    for name, stats in cmp["nmse"].items():
        style = STYLE.get(name, dict(label=name))
        band(ax, t, stats, style.get("color"), label=style["label"] + " (band: s.e.m.)", marker=style.get("marker"),
             ms=4, alpha=0.2)
    random_direction_line(ax, RANDOM_LABEL)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel(NMSE_LABEL)
    integer_ticks(ax)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    m, tr = res["model_config"], res["train_config"]
    ax.set_title(f"{res.get('name') or res.get('size') or 'in memory'}: {m['n_layers']} layers, {m['n_heads']} heads, "
                 f"width {m['d_model']}, {m['token_layout']}; {tr['steps']} steps", fontsize=9)

    for name, diff in cmp["pred_diff"].items():
        c = STYLE.get(name, {}).get("color")
        ax2.plot(t, floats(diff["cos"]["mean"]), color=c, ls="-", label=f"cos(y_tf, y_{name})")
        sens = cmp.get("sensitivity", {}).get(name)
        if sens:
            ax2.plot(t, floats(sens["candidates"]["cos"]["mean"]), color=c, ls="--",
                     label=f"cos of d u/d candidates, tf vs {name}")
    ax2.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax2.set_xlabel(T_LABEL)
    ax2.set_ylabel("cosine similarity")
    ax2.set_ylim(top=1.05)
    integer_ticks(ax2)
    ax2.set_title(f"transformer vs GD ({cmp['n_contexts']} contexts; sensitivities on "
                  f"{cmp['n_sensitivity']})", fontsize=9)
    ax2.legend(fontsize=8)
    fig.suptitle(f"TF vs GD, in-context alignment (d={m['d']}, N={m['n']}); measured on {hardware_note(res)}",
                 fontsize=10)
    return fig
