"""The TF-vs-GD experiment drawn from its results dict only: figure and markdown."""

from __future__ import annotations

import numpy as np

from icalign.analysis import claims as CL
from icalign.viz.md import brief, find, label, loaded, machine, num, table, training_note
from icalign.viz.style import (NMSE_LABEL, RANDOM_LABEL, T_LABEL, band, band_note, clip_ylim, floats, hardware_note,
                               integer_ticks, new_figure, random_direction_line)

__all__ = ["tf_vs_gd", "STYLE", "markdown", "verdict", "summary", "health_line"]

STYLE = {
    "transformer": dict(color="C0", marker="o", label="trained transformer"),
    "adam": dict(color="C1", marker="s", label="GD baseline (Adam, lr 0.1, 50 steps)"),
    "gd": dict(color="C2", marker="^", label="plain GD (lr 1, 50 steps)"),
}


def _interval(stats: dict, n: int) -> dict:
    """The 95% interval of a summary; results written before intervals were stored have only
    the s.e.m., from which the Student-t interval over n contexts follows exactly."""
    if "low" in stats:
        return stats
    from scipy import stats as st

    half = st.t.ppf(0.975, n - 1) * floats(stats["sem"])
    m = floats(stats["mean"])
    return {"mean": m, "low": m - half, "high": m + half}


def tf_vs_gd(res: dict):
    """Left: normalised MSE 1 - cos(y_hat, y*) against t, 95% interval over contexts, for the
    transformer (its first seed, when the result trained several) and the GD learners. Middle: transformer minus each learner, paired per
    context, with its 95% interval over contexts (one trained model: the interval says
    nothing about other seeds). Right: how GD-like the transformer is: cosine between its
    predicted direction and each learner's, and between their sensitivities d u / d
    candidates (means over contexts)."""
    cmp = res["comparison"]
    t = np.asarray(cmp["t"])
    n = int(cmp["n_contexts"])
    fig, axes = new_figure(1, 3, figsize=(13, 4.0))
    ax, dax, ax2 = axes[0]
    means = []
    for name, stats in cmp["nmse"].items():
        style = STYLE.get(name, dict(label=name))
        band(ax, t, _interval(stats, n), style.get("color"), label=style["label"], marker=style.get("marker"), ms=4,
             alpha=0.2)
        means += list(floats(stats["mean"]))
    random_direction_line(ax, RANDOM_LABEL)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel(NMSE_LABEL)
    integer_ticks(ax)
    clip_ylim(ax, means + [1.0])
    ax.legend(fontsize=7)
    m, tr = res["model_config"], res["train_config"]
    seeds = res.get("seeds", [])
    first = f"; seed {seeds[0]}, the first of {len(seeds)}" if len(seeds) > 1 else ""
    ax.set_title(f"{res.get('name') or res.get('size') or 'in memory'}: {m['n_layers']} layers, {m['n_heads']} heads, "
                 f"width {m['d_model']}, {m['token_layout']}; {training_note(res, tr)}{first}\n"
                 f"bands: {band_note('contexts', n)}", fontsize=8)

    diffs = cmp.get("nmse_diff")
    k = 1 if t[0] == 1 else 0  # t = 1 (nothing to rank yet) would dwarf the differences that matter
    if diffs:
        dmeans = []
        for name, d in diffs.items():
            style = STYLE.get(name, {})
            band(dax, t[k:], {key: floats(d[key])[k:] for key in ("mean", "low", "high")}, style.get("color"),
                 label=f"transformer - {name}" + (f" (t = 1: {floats(d['mean'])[0]:+.3f})" if k else ""),
                 marker=style.get("marker"), ms=4)
            dmeans += list(floats(d["mean"])[k:])
        dax.axhline(0.0, color="k", lw=0.8)
        clip_ylim(dax, dmeans + [0.0], lo=-2.0, hi=2.0)
        dax.legend(fontsize=7)
    else:
        dax.text(0.5, 0.5, "per-context values not stored\nin this result file:\nno paired difference",
                 ha="center", va="center", transform=dax.transAxes, fontsize=9)
        dax.set_xticks([])
        dax.set_yticks([])
    dax.set_xlabel(T_LABEL)
    dax.set_ylabel("transformer - GD learner (< 0: transformer better)", fontsize=8)
    integer_ticks(dax)
    dax.set_title(f"paired per context, from t = 2; {band_note('contexts', n)}\n(one trained model: no seed "
                  f"variation)", fontsize=8)

    for name, diff in cmp["pred_diff"].items():
        c = STYLE.get(name, {}).get("color")
        ax2.plot(t, floats(diff["cos"]["mean"]), color=c, ls="-", label=f"cos(y_tf, y_{name})")
        sens = cmp.get("sensitivity", {}).get(name)
        if sens:
            ax2.plot(t, floats(sens["candidates"]["cos"]["mean"]), color=c, ls="--",
                     label=f"cos of d u/d candidates, tf vs {name}")
    ax2.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax2.set_xlabel(T_LABEL)
    ax2.set_ylabel("cosine similarity (mean over contexts)", fontsize=8)
    ax2.set_ylim(top=1.05)
    integer_ticks(ax2)
    ax2.set_title(f"transformer vs GD ({n} contexts; sensitivities on {cmp['n_sensitivity']})", fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle(f"TF vs GD, in-context alignment (d={m['d']}, N={m['n']}); measured on {hardware_note(res)}",
                 fontsize=10)
    fig.tight_layout()
    return fig


_LABELS = {"transformer": "transformer", "adam": "Adam baseline", "gd": "plain GD"}
_TS = (1, 2, 5, 10, 15)


def _diff(res: dict) -> str:
    cmp, ts = res["comparison"], res["comparison"]["t"]
    t = 15 if 15 in ts else ts[-1]
    if "nmse_diff" not in cmp:
        return ("Per-context values are not stored in this file, so the paired difference transformer - GD is not "
                "available (the table's means are).")
    d, i = cmp["nmse_diff"], ts.index(t)
    cells = "; ".join(f"{k} {num(v['mean'][i])} [{num(v['low'][i])}, {num(v['high'][i])}]" for k, v in d.items())
    return (f"Transformer minus GD learner at t = {t}, paired over {cmp['n_contexts']} contexts (95% interval; one "
            f"trained model, so it says nothing about other seeds): {cells}.")


def markdown(res: dict) -> str:
    """The result as markdown: its size, normalised MSE of the three learners at t = 1, 2, 5,
    10, 15, the paired difference, the training-health gate and how GD-like the answers are."""
    from icalign.analysis import health

    cmp, ts = res["comparison"], res["comparison"]["t"]
    m, tr = res["model_config"], res["train_config"]
    seeds = res.get("seeds", [])
    first = {"transformer": f"transformer (seed {seeds[0]}, the first of {len(seeds)})"} if len(seeds) > 1 else {}
    rows = [[first.get(k, _LABELS[k])] + [num(cmp["nmse"][k]["mean"][ts.index(t)]) for t in _TS if t in ts]
            for k in _LABELS]
    rows += _reference_rows(res, [t for t in _TS if t in ts])
    # a result with claims stored the gate's verdict; an older one stored no model to measure
    g = res["health"] if "claims" in res else health.legacy(res.get("health"))
    parts = [f"**{label(res)}** ({m['n_layers']} layers, {m['n_heads']} heads, width "
             f"{m['d_model']}, {m['token_layout']} tokens, batch {tr['batch']}, {training_note(res, tr)}; "
             f"{machine(res)}, {num(res['seconds']['total'], 0)} s including the evaluation{loaded(res)}), "
             "normalised MSE:\n\n" + table(["t"] + [str(t) for t in _TS if t in ts], rows),
             _diff(res) + f" Training health: **{g['status']}**" + (f" ({g['reason']})." if g["reason"] else ".")]
    if res.get("claims"):
        parts.append(f"Claims at t = {ts[-1]}, every one of the {len(res['seeds'])} seeds on every context "
                     f"(the table above and the figure show the first seed):\n\n{CL.table(res['claims'])}")
    sens = cmp.get("sensitivity", {}).get("adam")
    if sens and 2 in ts and 4 in ts:
        late = [c for t, c in zip(ts, cmp["pred_diff"]["adam"]["cos"]["mean"]) if t >= 4]
        s = sens["candidates"]["cos"]["mean"]
        parts.append(f"From t = 4 on the transformer's predicted direction has cosine >= {num(min(late), 2)} with the "
                     f"Adam learner's; the cosine between their sensitivities to the candidates goes from "
                     f"{num(s[ts.index(2)], 2)} at t = 2 to {num(s[-1], 2)} at t = {ts[-1]}.")
    return "\n\n".join(parts)


def _reference_rows(res: dict, ts: list) -> list:
    """Table rows of the trivial predictors (what a model that learned nothing scores), when stored."""
    ref, t_all = res.get("reference"), res["comparison"]["t"]
    if not ref:
        return []
    return [[p] + [num(ref[p]["replace"]["0.0"][t_all.index(t)]) for t in ts] for p in ref]


def health_line(res: dict) -> str:
    """``training health: <status> (<reason>)``: the stored gate's verdict on the trained models."""
    g = res.get("health") or {"status": "unknown", "reason": "not stored in this result"}
    return f"training health: {g['status']}" + (f" ({g['reason']})" if g.get("reason") else "")


def summary(res: dict) -> str:
    """What `icalign run tf-vs-gd` prints: the health line, the normalised MSE of every learner
    (the transformer: mean over its seeds) beside both trivial predictors at t = 1, 2, 5, 10, 15,
    and the claims."""
    ts, nm = res["comparison"]["t"], res.get("nmse") or res["comparison"]["nmse"]
    ref = {p: v["replace"]["0.0"] for p, v in res.get("reference", {}).items()}
    lines = [f"[{res['experiment']}] {health_line(res)}"]
    for t in _TS:
        if t in ts:
            i = ts.index(t)
            lines.append(f"  t={t:2d}  normalised MSE  " + "  ".join(
                [f"{k}={float(v['mean'][i]):.3f}" for k, v in nm.items()]
                + [f"{p} (reference)={float(c[i]):.3f}" for p, c in ref.items()]))
    lines += [f"  {CL.line(c)}" for c in res.get("claims", [])]
    return "\n".join(lines)


def verdict(*results: dict) -> str:
    """Two lines for the README: each result's claim "the transformer beats GD (adam)" at the
    largest t with its training health, or, for a file written before tf-vs-gd made claims,
    its one model's error against Adam's at t = 15 (the table's last)."""
    parts = []
    for res in results:
        cmp = res["comparison"]
        if res.get("claims"):
            c = find(res["claims"], "GD (adam)")
            parts.append(f"{label(res)} ({res['model_config']['n_layers']} layers) at t = {c['t']}, the transformer "
                         f"beats GD (Adam): {brief(c)}; training health {res['health']['status']}")
            continue
        t = 15 if 15 in cmp["t"] else cmp["t"][-1]
        i = cmp["t"].index(t)
        nm, d = cmp["nmse"], cmp.get("nmse_diff", {}).get("adam")
        parts.append(f"{label(res)} ({res['model_config']['n_layers']} layers, one trained model) at t = {t}: "
                     f"{num(nm['transformer']['mean'][i])} against {num(nm['adam']['mean'][i])} for GD (Adam)"
                     + (f", transformer - Adam {num(d['mean'][i])} [{num(d['low'][i])}, {num(d['high'][i])}] paired "
                        f"over {cmp['n_contexts']} contexts (about new contexts, for this one model)" if d else ""))
    return "Normalised MSE of the trained transformer against GD: " + "; ".join(parts) + "."
