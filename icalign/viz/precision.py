"""The precision experiment drawn from its results dict only: figure and markdown."""

from __future__ import annotations

import numpy as np

from icalign.viz.md import brief, label, machine, num, table
from icalign.viz.style import NMSE_LABEL, T_LABEL, band, band_note, floats, integer_ticks, new_figure

__all__ = ["precision_figure", "markdown", "verdict"]

# bfloat16 dashed: where the two agree, the float32 line must still show beneath it
STYLE = {"float32": dict(color="C0", marker="o", ls="-"), "bfloat16": dict(color="C3", marker="s", ls="--")}


def _windows(losses, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed training loss averaged over consecutive windows of ``width`` steps (the loss
    of one step is one batch: too noisy to compare curves)."""
    a = np.asarray([floats(row) for row in losses])  # (seeds, steps)
    k = a.shape[1] // width
    return (np.arange(k) + 0.5) * width, a[:, :k * width].reshape(a.shape[0], k, width).mean(axis=2)


def precision_figure(res: dict):
    """Left: training loss (window means) per step, each seed a thin line and the seed mean a
    thick one, float32 and bfloat16. Right: held-out normalised MSE against t, mean over seeds
    with its 95% interval over seeds. The legend gives each precision's training time (or says the
    run was loaded)."""
    fig, axes = new_figure(1, 2, figsize=(11, 4.0))
    ax, ax2 = axes[0]
    steps = len(res["float32"]["train_loss_per_seed"][0])
    width = max(1, min(int(res["window"]), steps // 20))  # at least 20 points on the curve
    for p, st in STYLE.items():
        x, w = _windows(res[p]["train_loss_per_seed"], width)
        for row in w:
            ax.plot(x, row, color=st["color"], lw=0.6, alpha=0.35)
        took = ("loaded from its run folder" if res[p]["train_loaded"]  # a load time is no training time
                else f"{float(res[p]['train_seconds']):.0f} s incl. compile")
        ax.plot(x, w.mean(axis=0), color=st["color"], lw=2.0, ls=st["ls"], label=f"{p} ({len(w)} seeds; {took})")
        band(ax2, res["t"], res[p]["nmse"], st["color"], label=p, marker=st["marker"], ls=st["ls"])
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean over {width}-step windows)")
    ax.legend(fontsize=7)
    m, tr = res["model_config"], res["train_config"]
    ax.set_title(f"{res.get('name') or 'in memory'}: {m['n_layers']} layers, {m['n_heads']} heads, width "
                 f"{m['d_model']}; {tr['steps']} steps, batch {tr['batch']}\nthin: each seed; thick: seed mean",
                 fontsize=8)
    ax2.set_xlabel(T_LABEL)
    ax2.set_ylabel(NMSE_LABEL)
    integer_ticks(ax2)
    ax2.legend(fontsize=7)
    verdicts = "; ".join(f"{c['claim'].split('same ')[-1]}: {c['verdict']}" for c in res.get("claims", []))
    ax2.set_title(f"bands: {band_note('seeds', len(res['seeds']))}, {res['eval_contexts']} contexts\n{verdicts}",
                  fontsize=7)
    return fig


def markdown(res: dict) -> str:
    """The result as markdown: per precision the final training loss, per-seed held-out error,
    health and training time, and the two agreement claims."""
    from icalign.analysis.claims import line

    m, tr = res["model_config"], res["train_config"]
    rows = [[p, num(float(sum(res[p]["final_train_loss"])) / len(res[p]["final_train_loss"])),
             ", ".join(num(v) for v in res[p]["final_nmse"]), num(res[p]["nmse"]["mean"][-1]),
             res[p]["health"]["status"], "loaded" if res[p]["train_loaded"] else num(res[p]["train_seconds"], 0)]
            for p in ("float32", "bfloat16")]
    return (f"{label(res)} ({m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, {tr['steps']} steps, "
            f"batch {tr['batch']}; {len(res['seeds'])} seeds, the same in both; {res['eval_contexts']} held-out "
            f"contexts; {machine(res)}):\n\n"
            + table(["matmuls", f"final training loss (mean of last {res['window']} steps, seed mean)",
                     f"normalised MSE at t = {res['t'][-1]}, per seed", "seed mean", "health",
                     "training s (incl. compile)"], rows)
            + _references(res) + "\n\n" + "\n".join(line(c) for c in res["claims"]))


def _references(res: dict) -> str:
    """Both trivial predictors' errors on the same contexts (from the health gate), if stored."""
    ref = res["float32"]["health"].get("references")
    if not ref:
        return ""
    return (f"\n\nTrivial predictors on the same contexts at t = {ref['t']}: mean of candidates "
            f"{num(ref['mean of candidates'])}, best shown candidate {num(ref['best shown candidate'])} (the models: "
            + ", ".join(f"{p} {num(res[p]['health']['references']['model'])}" for p in ("float32", "bfloat16")) + ").")


def verdict(res: dict) -> str:
    """One line per claim for the README: bfloat16 and float32 agree (or not)."""
    return "; ".join(f"{c['claim']}: {brief(c)}" for c in res["claims"]) + "."
