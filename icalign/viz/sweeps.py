"""The reward-noise sweep drawn from its result dict alone: figures and markdown.

Every band and whisker is a 95% Student-t interval: over seeds for transformers, over
contexts for the GD learners; differences are the claim engine's paired differences
(icalign.analysis.claims). y-limits follow the means inside the metric's range, so a wide
3-seed interval is cut at the frame instead of flattening the curves; t = 1 (one candidate,
nothing to rank) is left out of the curves.
"""

from __future__ import annotations

from icalign.viz import md

from icalign.analysis import claims as CL
from icalign.analysis import sweep_claims as report  # the claims and health it shows
from icalign.viz.md import brief, find, health_note, label, loaded, machine, num, table
from icalign.viz.style import (NMSE_LABEL, PAIRED_NOTE, T_LABEL, band, band_note, clip_ylim, colormap, effects, floats,
                               integer_ticks, new_figure)

__all__ = ["noise_curves", "noise_summary", "size_title", "markdown", "verdict"]


def size_title(res: dict) -> str:
    hw = res.get("hardware") or {}
    return f"{md.size_note(res)}; {len(res['seeds'])} seeds; {hw.get('device', '?')}"


def _from_t2(res: dict, summary: dict) -> tuple[list, dict]:
    """t and summary without t = 1."""
    ts = res["ts"]
    k = 1 if ts[0] == 1 else 0
    return ts[k:], {key: summary[key][k:] for key in ("mean", "low", "high")}


def noise_curves(res: dict):
    """Rows: normalised MSE and PL loss against t; columns: corruption models. One colour per
    level: the clean-trained transformer solid, GD (adam) dashed."""
    kinds = list(res["corruptions"])
    clean = str(res["train_levels"][0])
    fig, axes = new_figure(2, len(kinds), figsize=(3.4 * len(kinds), 6.4), sharey="row")
    cmap = colormap("viridis")
    for col, kind in enumerate(kinds):
        spec = res["corruptions"][kind]
        levels = [str(lv) for lv in spec["levels"]]
        for row, metric in enumerate(("nmse", "pl")):
            ax, means = axes[row][col], []
            for i, lv in enumerate(levels):
                color = cmap(0.9 * i / max(len(levels) - 1, 1))
                for s, ls, lab in ((res["transformer"][clean][kind][lv][metric], "-", f"{spec['level_name']}={lv}"),
                                   (res["gd"]["adam"][kind][lv][metric], "--", None)):
                    t, cut = _from_t2(res, s)
                    band(ax, t, cut, color, label=lab, ls=ls, marker=None if ls == "--" else "o")
                    means += list(cut["mean"])
            ax.grid(alpha=0.3)
            integer_ticks(ax)
            if row == 0:
                ax.set_title(f"corruption: {kind}", fontsize=10)
                ax.axhline(1.0, color="grey", lw=0.6, ls=":")
                clip_ylim(ax, means)
            else:
                ax.set_xlabel(T_LABEL)
        axes[0][col].legend(fontsize=7)
    axes[0][0].set_ylabel(NMSE_LABEL)
    axes[1][0].set_ylabel("PL loss on the true ranking")
    fig.suptitle("Transformer trained on clean rewards (solid) and GD, adam (dashed) under corrupted rewards; bands: "
                 f"{band_note('seeds')} (transformer), over contexts (GD); t = 1 omitted\n{size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


def _arm(res, who: str, kind: str, lv: str, health: dict):
    C = res["n_eval_contexts"]
    if who == "gd":
        return CL.arm("GD (adam)", res["gd"]["adam"][kind][lv]["nmse"], n_contexts=C)
    return CL.arm(who, res["transformer"][who][kind][lv]["nmse"], n_contexts=C, health=health.get(who))


def noise_summary(res: dict):
    """Per corruption model (columns): top, normalised MSE at the largest t against the level
    for the clean-trained transformer, the transformer trained at that level (training
    corruption only), GD (adam) and the trivial reference predictors; bottom, the paired
    difference transformer - GD (adam) with its 95% interval over seeds (below 0: the
    transformer is better). Hollow markers: a transformer whose training-health gate says
    "failed" (no evidence)."""
    kinds = list(res["corruptions"])
    clean = str(res["train_levels"][0])
    health = report.noise_health(res)
    train_kind = res["train_config"]["corruption"]
    fig, axes = new_figure(2, len(kinds), figsize=(2.6 * len(kinds) + 0.6, 6.0), sharey="row")
    pick = lambda ss: {k: [s[k][-1] for s in ss] for k in ("mean", "low", "high")}
    hollow: set = set()  # series already in the legend as not trained
    for col, kind in enumerate(kinds):
        spec = res["corruptions"][kind]
        levels = [str(lv) for lv in spec["levels"]]
        x = floats(levels)
        ax, dax = axes[0][col], axes[1][col]
        series = [(clean, levels, "C0", "TF trained clean", 0.0)]
        if kind == train_kind:
            series.append((None, [lv for lv in levels if lv in res["transformer"] and lv != clean], "C3",
                           "TF trained at that level", 0.012 * (x.max() - x.min())))
        means = []
        for who, lvs, color, label, dx in series:
            cells = [res["transformer"][who or lv][kind][lv]["nmse"] for lv in lvs]
            band(ax, floats(lvs), pick(cells), color, label=label)
            means += [c["mean"][-1] for c in cells]
            for lv in lvs:
                e = CL.effect(_arm(res, who or lv, kind, lv, health), _arm(res, "gd", kind, lv, health))
                sick = CL.withheld(health.get(who or lv))
                effects(dax, floats([lv]) + dx, [e], color, hollow=sick,
                        label=f"{label}: failed training (hollow)" if sick and label not in hollow else None)
                hollow |= {label} if sick else set()
        gd = [res["gd"]["adam"][kind][lv]["nmse"] for lv in levels]
        band(ax, x, pick(gd), "C1", ls="--", label="GD (adam)")
        means += [g["mean"][-1] for g in gd]
        for p, ls in zip(res.get("reference", {}), (":", "-.")):
            ref = [res["reference"][p][kind][lv][-1] for lv in levels]
            ax.plot(x, ref, color="grey", ls=ls, lw=1, label=f"{p} (trivial)")
            means += ref
        ax.axhline(1.0, color="grey", lw=0.5, ls=":")
        clip_ylim(ax, means)
        ax.set_title(f"corruption: {kind}", fontsize=10)
        dax.axhline(0.0, color="k", lw=0.8)
        dax.set_xlabel(f"level {spec['level_name']}")
        for a in (ax, dax):
            a.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"nmse at t = {res['ts'][-1]}")
    axes[1][0].set_ylabel("TF - GD (adam), paired\n(< 0: transformer better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    h2, l2 = axes[1][0].get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Error at the largest t against the corruption level. Top bands: {band_note('seeds')} "
                 f"(transformers), over contexts (GD). Bottom whiskers: the\n"
                 f"{PAIRED_NOTE if _cells(res) else 'paired 95% interval of the claims (over seeds, on these contexts only)'}"
                 f"\n{size_title(res)}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def markdown(res: dict) -> str:
    """The result as markdown: normalised MSE under ``replace`` at t = 2 and the largest t for
    both transformers and both GD learners (and the trivial predictors, where stored), the
    training-health gate and every claim."""
    ts, tf, gd = res["ts"], res["transformer"], res["gd"]
    i2, i1 = ts.index(2), len(ts) - 1
    clean = str(res["train_levels"][0])
    pair = lambda s: f"{num(s['mean'][i2])} / {num(s['mean'][i1])}"
    ref = res.get("reference")
    rows = []
    for lv in map(str, res["corruptions"]["replace"]["levels"]):
        at = tf.get(lv, {}).get("replace", {}).get(lv)
        rows.append([lv, pair(tf[clean]["replace"][lv]["nmse"]), pair(at["nmse"]) if at else "-",
                     pair(gd["adam"]["replace"][lv]["nmse"]), pair(gd["gd"]["replace"][lv]["nmse"])]
                    + ([num(ref[k]["replace"][lv][-1]) for k in ref] if ref else []))
    extra = [f"{k} t = {ts[-1]}" for k in ref] if ref else []
    return (f"**{label(res)}** ({md.size_note(res)}; {len(res['seeds'])} seeds; {machine(res)}, "
            f"{num(res['seconds']['total'] / 60, 1)} min{loaded(res)}), normalised MSE under `replace` at t = 2 / "
            f"t = {ts[-1]}" + ("" if ref else " (this file stores no trivial-predictor reference)") + ":\n\n"
            + table(["p", "TF trained clean", "TF trained at p", "GD (Adam)", "GD (plain)"] + extra, rows)
            + "\n\n" + health_note(report.noise_health(res), lambda k: f"TF trained at p = {k}")
            + f"\n\nClaims (normalised MSE at t = {ts[-1]}; effect = worse - better, 95% interval):\n\n"
            + CL.table(report.noise_claims(res)))


def _cells(res: dict) -> bool:
    """Whether the result kept every seed's value on every context (the claims' blocks)."""
    return "cells" in res["transformer"][str(res["train_levels"][0])]["replace"]["0.0"]["nmse"]


def verdict(res: dict) -> str:
    """Three lines for the README: what corruption does, whether the clean-trained
    transformer beats GD, and how many claims each verdict got."""
    cl = report.noise_claims(res)
    count = {v: sum(c["verdict"] == v for c in cl) for v in CL.VERDICTS}
    return (f"{label(res)}: fully replaced rewards degrade the clean-trained transformer: "
            f"{brief(find(cl, 'degrade the clean-trained'))} and GD: {brief(find(cl, 'degrade GD'))}; on clean rewards "
            f"the transformer beats GD: {brief(find(cl, 'on clean rewards'))}. Of its {len(cl)} claims, "
            + ", ".join(f"{n} {v}" for v, n in count.items() if n) + ".")
