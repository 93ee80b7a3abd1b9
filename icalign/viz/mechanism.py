"""The mechanism study drawn from its results dict only (docs/theory.md section 7): figures and
markdown."""

from __future__ import annotations

import numpy as np

from icalign.viz import battery as VB
from icalign.viz import md
from icalign.viz.md import brief, ci, find, label, machine, num, table
from icalign.viz.style import NMSE_LABEL, T_LABEL, band, floats, hardware_note, integer_ticks, new_figure

__all__ = ["distances", "layers", "probes", "invariance", "triplets", "battery", "REF_STYLE", "markdown", "verdict"]

REF_STYLE = {
    "transformer": dict(color="C0", marker="o", label="trained transformer"),
    "minimiser": dict(color="C1", marker="s", label="minimiser of the training loss"),
    "gd_cosine": dict(color="C2", marker="^", label="GD, cosine PL (eta, steps fitted per t)"),
    "gd_sqdist": dict(color="C4", marker="v", label="GD, squared-distance PL (fitted per t)"),
    "exact": dict(color="C3", marker="D", label="exact recovery"),
}
DIST_LABEL = "distance to the transformer  1 - cos"


def _title(res: dict, pooled: bool = False) -> str:
    m, seeds = res["model_config"], res["shared"].get("seeds") or [res["seed"]]
    shown = "" if len(seeds) < 2 else f"; all {len(seeds)} seeds" if pooled else f"; seed {seeds[0]} of {len(seeds)} shown"
    return (f"{res.get('name') or 'in memory'}: {m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, "
            f"{m['token_layout']} tokens{shown}; {hardware_note(res)}")


def _health(study: dict) -> str:
    """" (training health: failed)" for a model that is not "converged", so a figure never shows it bare."""
    h = study.get("health") or {}
    return f" (training health: {h['status']})" if h.get("status") not in (None, "converged") else ""


def _curves(ax, study: dict, key: str, ylabel: str, names) -> None:
    t = np.asarray(study["t"])
    for name in names:
        st = REF_STYLE[name]
        band(ax, t, study[key][name], st["color"], label=st["label"], marker=st["marker"], ms=3)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel(ylabel)
    integer_ticks(ax)
    ax.set_ylim(bottom=0)


def distances(res: dict):
    """Per t, how far the transformer's answer is from each reference learner (1 - cos, mean
    and 95% interval over held-out contexts), and every learner's error against y*; one row
    per task (shared queries; per-triplet queries if run)."""
    studies = [("shared queries", res["shared"])] + ([("per-triplet queries", res["triplet"])] if "triplet" in res else [])
    fig, axes = new_figure(len(studies), 2, figsize=(11, 3.8 * len(studies)))
    refs = list(res["shared"]["distance"])
    for row, (task, study) in enumerate(studies):
        _curves(axes[row, 0], study, "distance", DIST_LABEL, refs)
        axes[row, 0].set_title(f"{task}{_health(study)}: the transformer's distance to each reference", fontsize=8)
        _curves(axes[row, 1], study, "nmse", NMSE_LABEL, ["transformer"] + refs)
        axes[row, 1].set_title(f"{task}: error of every learner (band: 95% interval)", fontsize=9)
        axes[row, 1].legend(fontsize=7)
    fig.subplots_adjust(hspace=0.35)
    fig.suptitle(_title(res), fontsize=9)
    return fig


def layers(res: dict):
    """Two read-outs of every layer (rows): the model's own read-out applied to the layer
    (nothing fitted) and a linear read-out fitted to y*'s direction on other contexts. Left:
    distance to GD's trajectory at each step count (best step size; fitting half), the marker
    at the best count. Right: held-out distance to the best GD point and to the minimiser, and
    the error against y* (95% intervals; with clean rewards exact recovery is y*)."""
    sh = res["shared"]
    rows = sh["layers"]
    fig, axes = new_figure(2, 2, figsize=(11, 8))
    x = np.arange(len(rows))
    ticks = [str(r["layer"]) for r in rows]
    kinds = (("own", "model's own read-out"), ("fitted", "read-out fitted to y*"))
    for i, (kind, title) in enumerate(kinds):
        ax, ax2 = axes[i]
        prof = np.asarray(sh["layer_profile"][kind], float)
        k = np.arange(prof.shape[1])
        for j, r in enumerate(rows):
            lab = f"layer {r['layer']}" if r["layer"] != "output" else "model output"
            c = f"C{j % 10}"
            ax.plot(k, prof[j], color=c, lw=1.3, label=f"{lab}: best {r[kind]['steps']} steps, eta {r[kind]['eta']:.3g}")
            ax.plot([r[kind]["steps"]], [prof[j, r[kind]["steps"]]], "o", color=c, ms=5)
        ax.set_xlabel("GD steps on cosine PL (from the transformer's answer at t = 0)")
        ax.set_ylabel("mean distance 1 - cos (best step size)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.set_title(f"{title} vs GD's trajectory (t >= 2, fitting half)", fontsize=9)
        series = [("distance_to_gd", "to best GD point", "C2"), ("distance_to_minimiser", "to the minimiser", "C1"),
                  ("nmse", "error vs y* (= exact recovery)", "k")]
        for j, (key, lab, c) in enumerate(series):
            m = floats([r[kind][key]["mean"] for r in rows])
            lo, hi = floats([r[kind][key]["low"] for r in rows]), floats([r[kind][key]["high"] for r in rows])
            ax2.errorbar(x + 0.1 * (j - 1), m, yerr=[m - lo, hi - m], fmt="o-", color=c, ms=3, lw=1, capsize=2, label=lab)
        ax2.set_xticks(x, ticks)
        ax2.set_xlabel("layer (0: after the read-in)")
        ax2.set_ylabel("1 - cos (held-out, 95% interval)")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=7)
        ax2.set_title(f"{title}: which learner each layer is close to", fontsize=9)
    fig.subplots_adjust(hspace=0.3)
    fig.suptitle(_title(res), fontsize=9)
    return fig


def probes(res: dict):
    """Held-out R^2 of a linear probe per layer for each quantity the construction computes
    (solid, band: 95% bootstrap interval over contexts) and of the same probe fitted on
    shuffled targets (dashed): only the gap between the two is evidence. A star marks each
    quantity's layer chosen on the fitting half."""
    pr = res["shared"]["probes"]
    fig, axes = new_figure(1, 1, figsize=(7.5, 4.4))
    ax = axes[0, 0]
    for i, (name, v) in enumerate(pr.items()):
        x = np.arange(len(v["r2"]["mean"]))
        band(ax, x, v["r2"], f"C{i}", label=name, ms=3)
        ax.plot(x, floats(v["r2_shuffled"]["mean"]), color=f"C{i}", ls="--", lw=0.9)
        best = v["layer"]["layer"]
        ax.plot([best], [floats(v["r2"]["mean"])[best]], "*", color=f"C{i}", ms=11, mec="k", mew=0.6)
    ax.plot([], [], color="grey", ls="--", label="shuffled-target control (each colour)")
    ax.plot([], [], "*", color="grey", mec="k", ms=9, label="layer chosen on the fitting half (test-half R^2)")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer (0: after the read-in)")
    ax.set_ylabel("test-half R^2 of a linear probe")
    integer_ticks(ax)
    ax.set_ylim(top=1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(_title(res), fontsize=8)
    return fig


def invariance(res: dict):
    """The invariance table: mean change 1 - cos of each learner's answer under each
    intervention (averaged over t, 95% interval over contexts in brackets). PL learners cannot
    move under the monotone maps, permutations or (cosine) a rescaling."""
    iv = res["shared"]["interventions"]
    kinds = list(iv)
    names = [n for n in REF_STYLE if n in iv[kinds[0]]]
    vals = np.array([[float(iv[k][n]["mean"]) for n in names] for k in kinds])
    fig, axes = new_figure(1, 1, figsize=(9.5, 0.55 * len(kinds) + 1.8))
    ax = axes[0, 0]
    im = ax.imshow(np.clip(vals, 0, None), cmap="Blues", vmin=0, vmax=max(float(np.nanmax(vals)), 1e-6), aspect="auto")
    for i, k in enumerate(kinds):
        for j, n in enumerate(names):
            v = iv[k][n]
            txt = f"{v['mean']:.2g}\n[{v['low']:.2g}, {v['high']:.2g}]"
            ax.text(j, i, txt, ha="center", va="center", fontsize=6.5,
                    color="white" if vals[i, j] > 0.6 * np.nanmax(vals) else "black")
    ax.set_xticks(range(len(names)), [REF_STYLE[n]["label"].split(" (")[0] for n in names], fontsize=7, rotation=12)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    fig.colorbar(im, ax=ax, label="change of the answer  1 - cos")
    ax.set_title("output change under each intervention (mean over t; 95% interval over contexts)", fontsize=9)
    fig.suptitle(_title(res), fontsize=8)
    return fig


def triplets(res: dict):
    """Per-triplet queries: the transformer's implicit weights W_imp (the slope of an affine
    least-squares fit over test queries drawn from their distribution given the seen
    triplets) against GD's W at the fitted step size and count, and the least-squares W*
    (exact recovery), by the cosine of the flattened matrices; how affine the transformer is in
    its query (R^2) and how much of its answer moves with the query (|W x| against |b|)."""
    w = res["triplet"]["weights"]
    t = np.asarray(res["triplet"]["t"])
    fig, axes = new_figure(1, 1, figsize=(7.5, 4.4))
    ax = axes[0, 0]
    series = [("cos_imp_gd", "cos(W_imp, W_GD)", "C2"), ("cos_update_imp_gd", "cos(W_imp - W_0, W_GD - W_0)", "C4"),
              ("cos_imp_ls", "cos(W_imp, least-squares W*)", "C3"), ("cos_gd_ls", "cos(W_GD, least-squares W*)", "C1"),
              ("imp_fit_r2", "R^2 of the affine fit", "k"), ("imp_query_share", "|W_imp x| / (|W_imp x| + |b|)", "grey")]
    # where the fitted GD takes 0 steps, W_GD - W_0 = 0 and its cosine is undefined: not drawn
    moved = np.asarray(res["triplet"]["fitted_gd"]["cosine"]["steps"]) > 0
    for key, lab, c in series:
        keep = moved if key == "cos_update_imp_gd" else np.ones_like(moved)
        band(ax, t[keep], {k: np.asarray(w[key][k], float)[keep] for k in ("mean", "low", "high")}, c, label=lab,
             ms=3)
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("cosine of flattened weights / R^2 / share (95% interval)")
    ax.set_ylim(-0.5, 1.05)
    integer_ticks(ax)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(_title(res) + _health(res["triplet"]), fontsize=8)
    return fig


_REFS = {"minimiser": "minimiser of the training loss", "gd_cosine": "fitted GD, cosine PL",
         "gd_sqdist": "fitted GD, squared-distance PL", "exact": "exact recovery"}


def _distance_table(study: dict, t_values) -> str:
    ts = study["t"]
    idx = [ts.index(t) for t in t_values if t in ts]
    rows = [[_REFS[r]] + [ci(study["distance"][r], i) for i in idx] for r in _REFS]
    rows.append(["(transformer's own error 1 - cos(y, y*))"] + [ci(study["nmse"]["transformer"], i) for i in idx])
    rows += [[f"(error of the {p}, a trivial predictor)"] + [num(v[i]) for i in idx]
             for p, v in study["trivial_nmse"].items()]
    fit = study["fitted_gd"]["cosine"]
    rows.append(["(fitted cosine GD: steps / eta)"] + [f"{fit['steps'][i]} / {fit['eta'][i]:.3g}" for i in idx])
    return table(["distance of the transformer to"] + [f"t = {ts[i]}" for i in idx], rows)


def _current(res: dict) -> dict:
    if "selection" not in res["shared"] or "health" not in res["shared"]:
        raise ValueError("this mechanism result predates per-context claims chosen on the fitting half; rerun "
                         "`icalign run mechanism`")
    return res


def _trained(study: dict) -> str:
    """How a study's model was trained: "1500 steps, lr 0.001", or the fair protocol's choice."""
    sel = study.get("protocol")
    return md.training_note({"protocol": [sel] if sel else []}, study["train_config"])


def markdown(res: dict) -> str:
    """The result as markdown: distances to the reference learners per t, the layer read-outs,
    the probes, the interventions, the per-triplet-query model and every claim."""
    from icalign.analysis import claims as CL

    m, sh, tr = _current(res)["model_config"], res["shared"], res["shared"]["train_config"]
    seeds = sh.get("seeds") or [res["seed"]]
    models = (f"{len(seeds)} trained models (seeds {seeds[0]}-{seeds[-1]}), the tables show seed {seeds[0]}; the "
              "claims pair every seed" if len(seeds) > 1 else "one trained model")
    parts = [f"**{label(res)}** ({m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, "
             f"{m['token_layout']} tokens, batch {tr['batch']}, {_trained(sh)}; {machine(res)}, "
             f"{num(res['seconds']['total'] / 60, 1)} min in all). Mean [95% interval over "
             f"{res['config']['eval']['contexts'] - res['config']['eval']['contexts'] // 2} test-half contexts, "
             f"{models}]; "
             "distance = 1 - cos between the two answers:\n\n"
             + _distance_table(sh, (1, 2, 5, 10, sh["t"][-1]))]
    rows = [[r["layer"], f"{r['own']['steps']} / {r['own']['eta']:.3g}", ci(r["own"]["distance_to_gd"]),
             ci(r["own"]["distance_to_minimiser"]), ci(r["own"]["nmse"]), ci(r["fitted"]["nmse"])]
            for r in sh["layers"]]
    parts.append(f"Layers (pooled over t >= 2): the model's own read-out applied to each layer, matched to cosine-PL "
                 f"GD from the transformer's answer at t = 0 (at most {sh['k_max']} steps), and the error of a "
                 "read-out fitted to y* on other contexts:\n\n" + table(
                     ["layer", "best GD steps / eta", "own read-out to GD", "own read-out to minimiser",
                      "own read-out error vs y*", "fitted read-out error vs y*"], rows))
    rows = []
    for name, v in sh["probes"].items():
        best = v["layer"]["layer"]
        rows.append([name, ci(v["r2"], 0), f"{ci(v['r2'], best)} (layer {best})", ci(v["r2_shuffled"], best)])
    parts.append("Probes (test-half R^2, 95% bootstrap interval over contexts; each quantity's layer is the one "
                 "with the highest R^2 on the fitting half, where the probes were fitted):\n\n" + table(
                     ["quantity", "layer 0 (tokens)", "layer chosen on the fitting half", "shuffled control there"],
                     rows))
    iv = sh["interventions"]
    rows = [[k] + [ci(iv[k][n]) for n in ["transformer", *_REFS]] for k in iv]
    parts.append("Change of the answer (1 - cos, mean over t) under each intervention:\n\n" + table(
        ["intervention", "transformer"] + list(_REFS.values()), rows))
    if "triplet" in res:
        pt, tt = res["triplet"], res["triplet"]["train_config"]
        w, ts = pt["weights"], pt["t"]
        idx = [ts.index(t) for t in sorted({2, 10, ts[-1]}) if t in ts]
        rows = [[lab] + [ci(w[k], i) for i in idx] for k, lab in (
            ("cos_imp_gd", "cos(W_imp, W_GD)"), ("cos_update_imp_gd", "cos(W_imp - W_0, W_GD - W_0)"),
            ("cos_imp_ls", "cos(W_imp, least-squares W*)"), ("cos_gd_ls", "cos(W_GD, least-squares W*)"),
            ("imp_fit_r2", "R^2 of the affine fit"),
            ("imp_query_share", "share of the answer that moves with the query"))]
        parts.append(f"Per-triplet queries (correlation {tt['query_corr']:g} with the test query; {_trained(pt)}; "
                     "the minimiser here is an oracle: it ranks the unshown candidates at the test query):"
                     "\n\n" + _distance_table(pt, (2, 5, 10, ts[-1])) + "\n\nImplicit weights:\n\n"
                     + table(["", *(f"t = {ts[i]}" for i in idx)], rows))
    studies = [("shared-query", sh)] + ([("per-triplet-query", res["triplet"])] if "triplet" in res else [])
    parts.append(" ".join(f"Training health of the {k} model: **{v['health']['status']}**"
                          + (f" ({v['health']['reason']})." if v["health"]["reason"] else ".") for k, v in studies))
    fit = sh["halves"]["fit"][1] - sh["halves"]["fit"][0]
    parts.append(f"Claims (effect = worse - better, paired by context: each claim's two values come from the same "
                 f"test-half contexts; with several seeds each seed is judged on its own block of them and the 95% "
                 f"interval is over the seeds' blocks (about new seeds and new contexts), with one over the contexts; "
                 f"what is "
                 f"compared, the closest reference and the best layer, was chosen on the other {fit} contexts, the "
                 "fitting half):\n\n" + CL.table(res["claims"]) + "\n\n" + "\n".join(
                     f"- {c['claim']}: {c['sample']}" + ("" if c["chosen_on"] == "none" else
                                                         f"; chosen on the {c['chosen_on']}") for c in res["claims"]))
    if res.get("battery"):
        parts.insert(1, VB.markdown(res))
    return "\n\n".join(parts)


def verdict(res: dict) -> str:
    """The README's lines, from the battery's summary table and nothing else: per trained model
    family, which tests came out "GD", "minimiser", "neither" or "not resolved" (each test's
    predictions and distances are in docs/results.md), and the two checks beside them."""
    _current(res)
    if not res.get("battery"):
        raise ValueError("this mechanism result has no battery; rerun `icalign run mechanism`")
    seeds = len(res["shared"].get("seeds") or [0])
    parts = []
    for fam, bat in res["battery"].items():
        by = {}
        for name, v in bat["verdicts"].items():
            by.setdefault(v["verdict"], []).append(name)
        order = [k for k in ("GD", "minimiser", "neither", "not resolved", "not trained") if k in by]
        parts.append(f"{fam} models: " + "; ".join(f"**{k}** on {', '.join(by[k])}" for k in order))
    chk = res["battery"]["clean-trained"]["checks"]
    counts = [q for q, v in chk["selectivity"].items() if v["counts"]]
    return (f"The mechanism battery ({seeds} seeds, each test's verdict by the rule of docs/theory.md 7.1, intervals "
            "over new seeds and new contexts): " + ". ".join(parts)
            + f". Clean-trained, the head chosen on the fitting half attends to the best shown candidate more than "
              f"uniformly: {brief(chk['attention']['claim'])}; probes above their random-init control: "
            + (", ".join(counts) if counts else "none") + f" (of {len(chk['selectivity'])}).")


def battery(res: dict):
    """The battery figure (:func:`icalign.viz.battery.figure`) under this result's title."""
    return VB.figure(res, _title(res, pooled=True))
