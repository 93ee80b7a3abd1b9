"""The ablation sweep drawn from its result dict alone: figures and markdown.

Bands are 95% Student-t intervals over seeds; a paired difference's whisker is the claim
engine's interval (icalign.analysis.claims). Variants whose training-health gate says "failed" are drawn hollow
and labelled "not trained": they are no evidence about the architecture.
"""

from __future__ import annotations

from icalign.viz import md

import numpy as np

from icalign.analysis import claims as CL
from icalign.analysis import sweep_claims as report  # the claims and health it shows
from icalign.viz.md import ci, health_note, label, machine, num, table
from icalign.viz.style import (NMSE_LABEL, T_LABEL, band, band_note, clip_ylim, colormap, effects,
                               integer_ticks, new_figure)
from icalign.viz.sweeps import size_title

__all__ = ["ablation_panels", "ablation_bars", "markdown", "verdict"]


def _factors(res):
    return list(dict.fromkeys(v["factor"] for v in res["variants"]))


def ablation_panels(res: dict):
    """One panel per factor: normalised MSE against t (from t = 2) for each value, the base
    in black, GD (adam) dashed grey."""
    ts = res["ts"]
    k = 1 if ts[0] == 1 else 0
    health = report.ablation_health(res)
    factors = _factors(res)
    ncol = min(3, len(factors))
    nrow = -(-len(factors) // ncol)
    fig, axes = new_figure(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), sharey=True)
    for ax in axes.flat[len(factors):]:
        ax.axis("off")
    means = []
    for ax, factor in zip(axes.flat, factors):
        vs = [v for v in res["variants"] if v["factor"] == factor]
        cmap = colormap("plasma")
        for i, v in enumerate(vs):
            arch = res["architectures"].get(v["arch"], {})
            label = f"{v['field']}={v['value']}" + (" (base)" if v["is_base"] else "")
            if arch.get("status") != "ok":
                ax.plot([], [], "x", color="red", label=f"{label}: {arch.get('status', 'missing')}")
                continue
            sick = CL.withheld(health[v["arch"]])
            color = "black" if v["is_base"] else cmap(0.85 * i / max(len(vs) - 1, 1))
            s = {key: arch["nmse"][key][k:] for key in ("mean", "low", "high")}
            band(ax, ts[k:], s, color, label=label + (" FAILED TRAINING" if sick else ""), ls=":" if sick else "-",
                 lw=2.0 if v["is_base"] else 1.2)
            means += list(s["mean"])
        if "adam" in res.get("gd", {}):
            g = res["gd"]["adam"]["nmse"]
            band(ax, ts[k:], {key: g[key][k:] for key in ("mean", "low", "high")}, "grey", ls="--", marker=None,
                 label="GD (adam)")
        ax.set_title(factor.replace("_", " "), fontsize=10)
        ax.set_xlabel(T_LABEL)
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[:len(factors)]:
        clip_ylim(ax, means + [0.0])
    for row in axes:
        row[0].set_ylabel(NMSE_LABEL)
    fig.suptitle(f"Ablations, one factor at a time (causal mask kept); bands: {band_note('seeds', len(res['seeds']))}, "
                 f"cut at the frame; t = 1 omitted; dotted: not trained\n{size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


def _base_of(res: dict, factor: str):
    return next((v for v in res["variants"] if v["factor"] == factor and v["is_base"]), None)


def ablation_bars(res: dict):
    """Left: normalised MSE at the largest t per variant (dot: mean; small dots: each seed),
    GD (adam) and the trivial predictors as lines. Right: the paired difference to the
    factor's base with its 95% interval over seeds (> 0: worse than the base). Hollow and
    marked: variants that did not train."""
    health = report.ablation_health(res)
    C, seeds = res["n_eval_contexts"], res["seeds"]
    rows = [v for f in _factors(res) for v in res["variants"] if v["factor"] == f]
    fig, axes = new_figure(1, 2, figsize=(10.0, 0.28 * len(rows) + 1.8), sharey=True,
                           gridspec_kw={"width_ratios": [1, 1.3]})
    ax, dax = axes[0]
    cmap = colormap("tab10")
    colors = {f: cmap(i % 10) for i, f in enumerate(_factors(res))}
    y = np.arange(len(rows))[::-1]
    effs, means = [], []
    for yi, v in zip(y, rows):
        arch = res["architectures"].get(v["arch"], {})
        color = colors[v["factor"]]
        if arch.get("status") != "ok":
            ax.text(0.02, yi, "diverged", color="red", va="center", fontsize=8, transform=ax.get_yaxis_transform())
            continue
        sick = CL.withheld(health[v["arch"]])
        per = [s[-1] for s in arch["nmse_per_seed"]]
        ax.plot(per, [yi] * len(per), ".", color=color, ms=4, alpha=0.6)
        ax.plot(np.mean(per), yi, "o", ms=6, color=color, mfc="white" if sick else color)
        means += per
        base = _base_of(res, v["factor"])
        if sick:
            dax.text(0.02, yi, "not trained", color=color, va="center", fontsize=8,
                     transform=dax.get_yaxis_transform())
        elif base and not v["is_base"] and res["architectures"].get(base["arch"], {}).get("status") == "ok":
            b = res["architectures"][base["arch"]]
            arm = lambda a, h: CL.arm(v["name"], report.arch_summary(a), n_contexts=C, health=h)
            e = CL.effect(arm(arch, None), arm(b, None))
            effects(dax, [yi], [e], color, horizontal=True, hollow=CL.withheld(health[base["arch"]]))
            effs.append(e)
    for p, ls in zip(res.get("reference", {}), (":", "-.")):
        ax.axvline(res["reference"][p][-1], color="grey", ls=ls, lw=1, label=f"{p} (trivial)")
    if "adam" in res.get("gd", {}):
        ax.axvline(float(res["gd"]["adam"]["nmse"]["mean"][-1]), color="C1", ls="--", lw=1, label="GD (adam)")
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(0.0, lo), min(2.0, max(hi, 1.05)))
    ax.set_yticks(y, [f"{v['name']}" + (" (base)" if v["is_base"] else "") for v in rows], fontsize=8)
    ax.set_xlabel(f"nmse at t = {res['ts'][-1]} (dot: mean, small: each seed)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    dax.axvline(0.0, color="k", lw=0.8)
    finite = [x for e in effs for x in (e["effect"],) if np.isfinite(x)]
    if finite:
        dax.set_xlim(max(-2.0, min(finite) - 0.25), min(2.0, max(finite) + 0.25))
    blocks = any("cells" in a.get("nmse", {}) for a in res["architectures"].values())
    dax.set_xlabel("variant - base: the claims' paired 95% interval\n" + (
        "(each seed on its own block of the contexts)" if blocks else "(over seeds, on these contexts only)"),
        fontsize=8)
    for a in (ax, dax):
        a.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Ablations at the largest t. Right: > 0 means worse than the factor's base; whiskers cut at the "
                 f"frame; hollow dots: not trained (no evidence)\n{size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


def markdown(res: dict) -> str:
    """The result as markdown: every variant's normalised MSE at t = 2 and the largest t with
    its interval over seeds and its health, the references, and every claim."""
    ts, i2 = res["ts"], res["ts"].index(2)
    health = report.ablation_health(res)
    rows = []
    for v in res["variants"]:
        arch = res["architectures"].get(v["arch"], {})
        s = arch.get("nmse") if arch.get("status") == "ok" else None
        rows.append([v["name"] + (" (base)" if v["is_base"] else ""),
                     "diverged" if s is None else ci(s, i2), "diverged" if s is None else ci(s, -1),
                     health[v["arch"]]["status"] if v["arch"] in health else arch.get("status", "missing")])
    g = res["gd"]["adam"]["nmse"]
    rows.append(["GD learner (adam)", num(g["mean"][i2]), num(g["mean"][-1]), "reference"])
    for k, curve in res.get("reference", {}).items():
        rows.append([f"{k} (trivial predictor)", num(curve[i2]), num(curve[-1]), "reference"])
    names = {v["arch"]: v["name"] for v in res["variants"]}
    return (f"**{label(res)}** ({md.size_note(res)}; {len(res['seeds'])} seeds; {machine(res)}, "
            f"{num(res['seconds'] / 60, 1)} min), normalised MSE, mean [95% interval over seeds]:\n\n"
            + table(["variant", "t = 2", f"t = {ts[-1]}", "training health"], rows)
            + "\n\n" + health_note(health, lambda k: names[k])
            + f"\n\nClaims (normalised MSE at t = {ts[-1]}; effect = worse - better, paired by seed):\n\n"
            + CL.table(report.ablation_claims(res)))


def verdict(res: dict) -> str:
    """Two lines for the README: how many claims each verdict got, and which variants failed training."""
    cl = report.ablation_claims(res)
    health = report.ablation_health(res)
    sick = [v["name"] for v in res["variants"] if v["arch"] in health and CL.withheld(health[v["arch"]])]
    count = {v: sum(c["verdict"] == v for c in cl) for v in CL.VERDICTS}
    how = " (judged from the stored errors: this file predates the current gate)" if _old(health) else ""
    return (f"{label(res)} ({len(res['seeds'])} seeds): of the {len(cl)} claims, "
            + ", ".join(f"{n} {v}" for v, n in count.items() if n)
            + (f". Failed training{how}: {', '.join(sick)} (no evidence about those architectures)." if sick
               else ". No variant failed training."))


def _old(health: dict) -> bool:  # judged from an old file's stored errors (the current gate stores its runs)
    return any("runs" not in g for g in health.values())
