"""Figure of the GD baseline: normalised MSE against t per corruption level."""

from __future__ import annotations

from icalign.viz.style import NMSE_LABEL, T_LABEL, band, colormap, integer_ticks, new_figure, random_direction_line

__all__ = ["curves_by_level"]


def curves_by_level(results: dict, title: str):
    """One panel per learner: mean normalised MSE against t, one curve per corruption level,
    with its 95% interval over contexts shaded. ``results['learners'][name]['levels'][level]``
    holds 'mean', 'low', 'high' lists aligned with ``results['ts']``."""
    ts = results["ts"]
    learners = results["learners"]
    fig, axes = new_figure(1, len(learners), figsize=(5.2 * len(learners), 4.0), sharey=True)
    cmap = colormap("viridis")
    for ax, (name, res) in zip(axes[0], learners.items()):
        levels = list(res["levels"])
        for i, level in enumerate(levels):
            band(ax, ts, res["levels"][level], cmap(i / max(len(levels) - 1, 1)),
                 label=f"{results['level_name']} = {level}", alpha=0.2)
        random_direction_line(ax)
        ax.set_title(res["label"])
        ax.set_xlabel(T_LABEL)
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(NMSE_LABEL)
    axes[0][-1].legend(fontsize=8, title=results.get("corruption", ""))
    fig.suptitle(f"{title}; 95% interval over contexts shaded", fontsize=10)
    return fig
