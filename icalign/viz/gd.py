"""The GD baseline drawn from its result: normalised MSE against t per corruption level (figure and
markdown)."""

from __future__ import annotations

from icalign.viz.md import machine, num, table
from icalign.viz.style import NMSE_LABEL, T_LABEL, band, colormap, integer_ticks, new_figure, random_direction_line

__all__ = ["curves_by_level", "markdown", "verdict"]


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


def markdown(res: dict) -> str:
    """The result as markdown: normalised MSE at the smallest and largest t per level, both
    learners, and what one compiled sweep took."""
    ts, L = res["ts"], res["learners"]
    i0, i1 = 0, len(ts) - 1
    rows = [[lv] + [f"{num(L['adam']['levels'][lv]['mean'][i])} / {num(L['gd']['levels'][lv]['mean'][i])}"
                    for i in (i0, i1)] for lv in L["adam"]["levels"]]
    secs = " and ".join(f"{num(L[k]['seconds_incl_compile'], 1)} s ({k})" for k in ("adam", "gd"))
    return (f"Normalised MSE, mean over {res['protocol']['contexts']} contexts (seed {res['protocol']['seed']}), "
            f"Adam baseline / plain GD:\n\n"
            + table(["p", f"t = {ts[i0]}", f"t = {ts[i1]}"], rows)
            + f"\n\nEach learner's whole sweep is one compiled call: {secs} on a {machine(res)}, compilation included.")


def verdict(res: dict) -> str:
    """Two lines for the README: the curve at clean and fully replaced rewards, and how far
    plain GD lies from Adam."""
    ts, L = res["ts"], res["learners"]
    lv = list(L["adam"]["levels"])
    a = L["adam"]["levels"]
    gap = max(abs(float(L["adam"]["levels"][v]["mean"][i]) - float(L["gd"]["levels"][v]["mean"][i]))
              for v in lv for i in range(len(ts)))
    return (f"With clean rewards GD's error falls from {num(a[lv[0]]['mean'][0])} at t = {ts[0]} to "
            f"{num(a[lv[0]]['mean'][-1])} at t = {ts[-1]}; with every shown reward replaced (p = {lv[-1]}) it ends "
            f"at {num(a[lv[-1]]['mean'][-1])} (1 is a random direction). Plain GD lies within {num(gap)} of Adam "
            "everywhere.")
