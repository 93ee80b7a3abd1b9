"""Figures of the sweeps (reward noise, ablations), drawn from result dicts alone.

Every curve is a mean with its 95% interval shaded (over seeds for transformers, over
contexts for the GD learners; the results file says which).
"""

from __future__ import annotations

import numpy as np

from icalign.viz.style import NMSE_LABEL, T_LABEL, band, colormap, floats, integer_ticks, new_figure

__all__ = ["ablation_panels", "ablation_bars", "noise_curves", "noise_summary"]

def _size_title(res: dict) -> str:
    hw = res.get("hardware") or {}
    return f"{res['size_note']}; {hw.get('device', '?')}"


# ---------------------------------------------------------------------------------------------
# Ablations
# ---------------------------------------------------------------------------------------------


def _factors(res):
    seen = []
    for v in res["variants"]:
        if v["factor"] not in seen:
            seen.append(v["factor"])
    return seen


def ablation_panels(res: dict):
    """One panel per factor: normalised MSE against t for each value, the base in black,
    the GD (adam) learner dashed."""
    ts = res["ts"]
    factors = _factors(res)
    ncol = min(3, len(factors))
    nrow = -(-len(factors) // ncol)
    fig, axes = new_figure(nrow, ncol, figsize=(5.0 * ncol, 3.8 * nrow), sharey=True)
    for ax in axes.flat[len(factors):]:
        ax.axis("off")
    for ax, factor in zip(axes.flat, factors):
        vs = [v for v in res["variants"] if v["factor"] == factor]
        cmap = colormap("plasma")
        for i, v in enumerate(vs):
            arch = res["architectures"].get(v["arch"], {})
            label = f"{v['field']}={v['value']}" + (" (base)" if v["is_base"] else "")
            if arch.get("status") != "ok":
                ax.plot([], [], "x", color="red", label=f"{label}: {arch.get('status', 'missing')}")
                continue
            color = "black" if v["is_base"] else cmap(0.85 * i / max(len(vs) - 1, 1))
            band(ax, ts, arch["nmse"], color, label=label, lw=2.0 if v["is_base"] else 1.2)
        if "adam" in res.get("gd", {}):
            band(ax, ts, res["gd"]["adam"]["nmse"], "grey", ls="--", marker=None, label="GD (adam)")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_title(factor.replace("_", " "))
        ax.set_xlabel(T_LABEL)
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel(NMSE_LABEL)
    fig.suptitle(f"Ablations, one factor at a time (causal mask kept); mean and 95% interval over "
                 f"{len(res['seeds'])} seeds\n{_size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


def ablation_bars(res: dict):
    """Normalised MSE at the largest t for every variant (95% interval as whiskers), grouped
    by factor; base variants hatched; GD (adam) as a dashed line."""
    factors = _factors(res)
    cmap = colormap("tab10")
    labels, means, errs, colors, hatches, missing = [], [], [], [], [], []
    for fi, factor in enumerate(factors):
        for v in (v for v in res["variants"] if v["factor"] == factor):
            arch = res["architectures"].get(v["arch"], {})
            labels.append(f"{factor.replace('_', ' ')}\n{v['field']}={v['value']}")
            colors.append(cmap(fi % 10))
            hatches.append("//" if v["is_base"] else "")
            if arch.get("status") == "ok":
                m = float(arch["nmse"]["mean"][-1])
                lo, hi = float(arch["nmse"]["low"][-1]), float(arch["nmse"]["high"][-1])
                means.append(m)
                errs.append([m - lo, hi - m] if np.isfinite([lo, hi]).all() else [0, 0])
                missing.append(False)
            else:
                means.append(0.0)
                errs.append([0, 0])
                missing.append(True)
    x = np.arange(len(labels))
    fig, axes = new_figure(figsize=(max(8, 0.55 * len(labels)), 4.2))
    ax = axes[0][0]
    bars = ax.bar(x, means, yerr=np.array(errs).T, color=colors, capsize=2, edgecolor="black", lw=0.5)
    for b, h in zip(bars, hatches):
        b.set_hatch(h)
    for xi, miss in zip(x, missing):
        if miss:
            ax.text(xi, 0.02, "diverged", rotation=90, ha="center", va="bottom", fontsize=7, color="red")
    if "adam" in res.get("gd", {}):
        ax.axhline(float(res["gd"]["adam"]["nmse"]["mean"][-1]), color="grey", ls="--", lw=1, label="GD (adam)")
        ax.legend(fontsize=8)
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylabel(f"normalised MSE at t = {res['ts'][-1]}")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Error at the largest t per variant (hatched: base); mean and 95% interval over "
                 f"{len(res['seeds'])} seeds\n{_size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Reward noise
# ---------------------------------------------------------------------------------------------


def noise_curves(res: dict):
    """Rows: normalised MSE and PL loss against t; columns: corruption models. One colour per
    level: the clean-trained transformer solid, GD (adam) dashed."""
    ts = res["ts"]
    kinds = list(res["corruptions"])
    clean = str(res["train_levels"][0])
    fig, axes = new_figure(2, len(kinds), figsize=(4.4 * len(kinds), 7.2), sharey="row")
    cmap = colormap("viridis")
    for col, kind in enumerate(kinds):
        spec = res["corruptions"][kind]
        levels = [str(lv) for lv in spec["levels"]]
        for row, metric in enumerate(("nmse", "pl")):
            ax = axes[row][col]
            for i, lv in enumerate(levels):
                color = cmap(0.9 * i / max(len(levels) - 1, 1))
                band(ax, ts, res["transformer"][clean][kind][lv][metric], color,
                      label=f"{spec['level_name']}={lv}")
                band(ax, ts, res["gd"]["adam"][kind][lv][metric], color, ls="--", marker=None)
            ax.grid(alpha=0.3)
            integer_ticks(ax)
            if row == 0:
                ax.set_title(f"corruption: {kind}")
                ax.axhline(1.0, color="grey", lw=0.6, ls=":")
            else:
                ax.set_xlabel(T_LABEL)
        axes[0][col].legend(fontsize=7)
    axes[0][0].set_ylabel(NMSE_LABEL)
    axes[1][0].set_ylabel("PL loss on the true ranking")
    fig.suptitle("Transformer trained on clean rewards (solid) vs GD, adam (dashed), evaluated under "
                 f"corrupted rewards; 95% intervals shaded\n{_size_title(res)}", fontsize=9)
    fig.tight_layout()
    return fig


def noise_summary(res: dict):
    """Normalised MSE at the largest t against the corruption level, per corruption model:
    the clean-trained transformer, the transformer trained at that level (the training
    corruption model only), and both GD learners, each with its 95% interval."""
    kinds = list(res["corruptions"])
    clean = str(res["train_levels"][0])
    fig, axes = new_figure(1, len(kinds), figsize=(4.4 * len(kinds), 3.8), sharey=True)
    train_kind = res["train_config"]["corruption"]

    def pick(getter, levels):
        ss = [getter(lv) for lv in levels]
        return {k: [s[k][-1] for s in ss] for k in ("mean", "low", "high")}

    for ax, kind in zip(axes[0], kinds):
        spec = res["corruptions"][kind]
        levels = [str(lv) for lv in spec["levels"]]
        x = floats(levels)
        band(ax, x, pick(lambda lv: res["transformer"][clean][kind][lv]["nmse"], levels), "C0",
              label="TF trained clean")
        if kind == train_kind:
            lv_tr = [lv for lv in levels if lv in res["transformer"]]
            band(ax, floats(lv_tr), pick(lambda lv: res["transformer"][lv][kind][lv]["nmse"], lv_tr), "C3",
                  label="TF trained at that level")
        band(ax, x, pick(lambda lv: res["gd"]["adam"][kind][lv]["nmse"], levels), "C1", ls="--",
              label="GD (adam)")
        band(ax, x, pick(lambda lv: res["gd"]["gd"][kind][lv]["nmse"], levels), "C2", ls=":", label="GD (plain)")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_title(f"corruption: {kind}")
        ax.set_xlabel(f"level {spec['level_name']}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"normalised MSE at t = {res['ts'][-1]}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Error at the largest t against the corruption level (95% intervals)\n{_size_title(res)}",
                 fontsize=9)
    fig.tight_layout()
    return fig
