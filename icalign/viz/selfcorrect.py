"""The self-correction experiment drawn from its results dict (the JSON) only: figures and markdown."""

from __future__ import annotations

import math

import numpy as np

from icalign.analysis.health import legacy
from icalign.viz.md import brief, find, health_text, machine, num, table
from icalign.viz.style import band, clip_ylim, colormap, floats, new_figure

__all__ = ["rounds_figure", "accuracy_gain_figure", "concept_figure", "probe_figure", "figures", "markdown", "verdict"]


def _colors(n):
    cmap = colormap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def _unit(L: dict) -> str:
    return "seeds" if L.get("units", {}).get("unit") == "seeds" else "contexts"


def rounds_figure(res: dict):
    """Rows: learners; columns: normalised MSE, the gain beyond the null critic's (paired per
    context or seed), and the choice entropy at the unsaturated beta, against round; one curve
    per critic setting (mean, 95% band over contexts, or over seeds for the transformer).
    Older results without the null critic show the gain and the beta = 1 entropy instead."""
    learners = res["learners"]
    names = res["critic_names"]
    colors = _colors(len(names))
    rounds = np.arange(res["rounds"] + 1)
    beta = res.get("entropy_beta")
    null = res.get("null_critic")
    cols = [("nmse", "normalised MSE  1 - cos(y_hat, y*)"),
            ("excess_gain", "gain minus the null critic's gain") if null else ("gain", "gain nmse_0 - nmse_t"),
            (f"entropy_b{beta:g}", f"choice entropy over N0, beta = {beta:g} (nats)") if beta else
            ("entropy", "PL choice entropy over N0, beta = 1 (nats; saturated)")]
    fig, axes = new_figure(len(learners), 3, figsize=(12, 3.0 * len(learners)))
    for row, (lname, L) in enumerate(learners.items()):
        for col, (key, ylabel) in enumerate(cols):
            ax = axes[row][col]
            for name, color in zip(names, colors):
                lw = 2.4 if name == null else 1.2
                band(ax, rounds, L["settings"][name][key], color, name, alpha=0.12, ms=2.5, lw=lw,
                     ls="--" if name == null else "-")
            means = [m for n in names for m in floats(L["settings"][n][key]["mean"])]
            clip_ylim(ax, means, *((-2.0, 2.0) if "gain" in key else (0.0, 2.0) if key == "nmse"
                                   else (0.0, np.log(res["n0"]) + 0.05)))
            if key == "excess_gain":
                ax.axhline(0.0, color="k", lw=0.8)
            if key.startswith("entropy"):
                ax.axhline(np.log(res["n0"]), color="grey", ls=":", lw=1)
            ax.set_xlabel("self-correction round t")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_title(f"{L['label']} (bands over {_unit(L)})", fontsize=9, loc="left")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, title="critic")
    fig.suptitle(f"Self-correction rounds per critic setting ({res['size']} size: {res['sizes']['contexts']} contexts x "
                 f"{res['sizes']['draws']} critic draws, N0 = {res['n0']}); bands: 95% interval (GD: over contexts; "
                 f"transformer: over seeds), cut at the frame; dashed: null critic; dotted: log N0", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig


def accuracy_gain_figure(res: dict):
    """Gain after T rounds beyond the null critic's (or the raw gain for older results)
    against the critic's pairwise ranking accuracy, one point per critic setting, per learner
    (columns). Top row: accuracy on the candidates (a property of the critic); bottom row:
    accuracy on the loop's own answers. Pearson r and p-value over critic settings in each
    title (a shift by the null gain leaves r unchanged); dashed: least-squares line."""
    learners = res["learners"]
    names = res["critic_names"]
    colors = _colors(len(names))
    key = "excess_gain_T" if res.get("null_critic") else "gain_T"
    rows = (("critic_accuracy", "critic accuracy on the N0 candidates"),
            ("loop_accuracy", "critic accuracy on the loop's answers"))
    fig, axes = new_figure(2, len(learners), figsize=(4.2 * len(learners) + 1.5, 7.0))
    for row, (which, xlabel) in enumerate(rows):
        for ax, (lname, L) in zip(axes[row], learners.items()):
            for name, color in zip(names, colors):
                s = L["settings"][name]
                g = s[key]
                ax.errorbar(s[which], g["mean"], yerr=[[g["mean"] - g["low"]], [g["high"] - g["mean"]]],
                            fmt="o", color=color, label=name, ms=5, capsize=2)
            acc = np.array([L["settings"][n][which] for n in names])
            gain = np.array([L["settings"][n][key]["mean"] for n in names])
            slope, icept = np.polyfit(acc, gain, 1)
            xs = np.linspace(acc.min(), acc.max(), 10)
            ax.plot(xs, icept + slope * xs, color="grey", lw=1, ls="--")
            c = L["correlation"][which]
            ax.set_title(f"{L['label']}\nPearson r = {float(c['r']):.2f}, p = {float(c['p']):.2g} (n = {c['n']} critics)",
                         fontsize=8)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"gain after T = {res['rounds']} rounds" + (" minus null" if key == "excess_gain_T" else ""),
                          fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, title="critic")
    fig.suptitle("Self-correction gain (minus the null critic's) against the critic's pairwise ranking accuracy; "
                 "whiskers: 95% interval (GD: over contexts; transformer: over seeds)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return fig


def concept_figure(res: dict):
    """Concept task: Bayes posterior, probe activation (probability and cosine), performance,
    model uncertainty and the Bayes concept-ambiguity term against round, per loop critic;
    solid: plain instructions, dashed: contrary instructions at the injection rounds (dotted
    verticals). Last panel: the corrected analytic law sigmoid(L0 + t Delta)."""
    C = res["concept"]
    names = C["critic_names"]
    colors = _colors(len(names))
    rounds = np.arange(res["concept_rounds"] + 1)
    panels = [("bayes_post", "Bayes posterior of the true concept"),
              ("probe_prob", f"probe P(true concept), layer {C['probes']['best_layer']}"),
              ("probe_cos", f"probe cosine activation, layer {C['probes']['best_layer']}"),
              ("nmse", "normalised MSE vs target family"),
              ("entropy", "model choice entropy over N0 (nats)"),
              ("mutual_info", "Bayes concept-ambiguity term I(choice; C)")]
    fig, axes = new_figure(2, 4, figsize=(18, 7.5))
    flat = axes.ravel()
    for ax, (key, title) in zip(flat, panels):
        for name, color in zip(names, colors):
            for cond, ls in (("plain", "-"), ("injected", "--")):
                band(ax, rounds, C["conditions"][cond][name][key], color,
                     f"{name} ({cond})" if key == panels[0][0] else None, ls, alpha=0.12, ms=2.5)
        for t in res["injections"]:
            ax.axvline(t, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("self-correction round t")
        ax.grid(alpha=0.3)
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    # probe log-odds against Bayes log-odds (loop rounds, plain instructions)
    ax = flat[6]
    for name, color in zip(names, colors):
        tr = C["tracking"][name]
        ax.plot(floats(tr["bayes_logit_mean"]), floats(tr["probe_logit_mean"]), "o-", color=color, ms=3,
                label=f"{name}: r = {float(tr['corr']):.2f}")
    ax.set_xlabel("Bayes log-odds of true concept (mean per round)")
    ax.set_ylabel("probe log-odds (mean per round)")
    ax.set_title("probe vs Bayes, per round (r: per context x round)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = flat[7]
    an = C["analytic"]
    for lab, curve in an["curves"].items():
        ax.plot(np.arange(len(curve)), floats(curve), label=lab)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"analytic: sigmoid(L0 + t Delta), L0 = {float(an['l0']):.2f}", fontsize=9)
    ax.set_xlabel("round t")
    ax.set_ylabel("p(C+ | q_t)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"Latent concept: transformer probe vs exact Bayes posterior (injection rounds "
                 f"{', '.join(map(str, res['injections']))} dotted; dashed = contrary instruction injected; "
                 f"mean over {res['sizes']['c_loop_contexts']} contexts, 95% band)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def probe_figure(res: dict):
    """Per-layer linear probes of the concept: held-out accuracy and correlation of the
    probe's log-odds with the exact Bayes log-odds (training-distribution contexts)."""
    P = res["concept"]["probes"]
    layers = np.arange(len(P["accuracy"]))
    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    axes = axes[0]
    axes[0].plot(layers, floats(P["accuracy"]), "o-", label="probe (held out)")
    axes[0].axhline(P["bayes_accuracy"], color="k", ls="--", lw=1, label="Bayes posterior")
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("accuracy reading C")
    axes[1].plot(layers, floats(P["corr_bayes"]), "o-", color="C1")
    axes[1].set_ylabel("Pearson r(probe log-odds, Bayes log-odds)")
    for ax in axes:
        ax.set_xlabel("layer (0 = read-in)")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Linear probes of the latent concept, per layer", fontsize=10)
    fig.tight_layout()
    return fig


def figures(res: dict) -> dict:
    """{suffix: Figure} of every figure the results support (the concept figures only when
    the concept part ran)."""
    out = {"rounds": rounds_figure(res), "accuracy_gain": accuracy_gain_figure(res)}
    if res.get("concept"):
        out.update(concept=concept_figure(res), probe=probe_figure(res))
    return out


def _claims(res: dict) -> list:
    from icalign.analysis.selfcorrect_claims import loop_claims

    out = []
    for name, L in res["learners"].items():
        health = L.get("train", {}).get("health")
        out += loop_claims(L, name, res["entropy_beta"], res["n0"], res["sizes"]["contexts"],
                           None if health is None else legacy(health))
    return out


def markdown(res: dict) -> str:
    """The result as markdown: per learner its gain with the null critic, the choice entropy at
    beta = 1 and at the experiment's beta with its headroom, accuracy-gain correlation, the
    transformer's training health, and every claim."""
    from icalign.analysis import claims as CL
    from icalign.analysis.selfcorrect_claims import saturation

    n0, beta, C = res["n0"], res["entropy_beta"], res["sizes"]["contexts"]
    rows = []
    for L in res["learners"].values():
        e1 = L["settings"]["exact"]["entropy"]["mean"]
        eb = L["settings"]["exact"][f"entropy_b{beta:g}"]["mean"]
        c = L["correlation"]["critic_accuracy"]
        rows.append([L["label"], num(L["settings"][res["null_critic"]]["gain_T"]["mean"]),
                     f"{num(e1[0], 2)} -> {num(e1[-1], 2)} ({num(100 * saturation(e1[0], n0), 1)}%)",
                     f"{num(eb[0], 2)} -> {num(eb[-1], 2)} ({num(100 * saturation(eb[0], n0), 1)}%)",
                     f"{num(c['r'], 2)} (p = {float(c['p']):.2g})"])
    tf = res["learners"].get("transformer", {}).get("train", {})
    return (f"{res['rounds']} rounds, N0 = {n0} candidates, {C} contexts x {res['sizes']['draws']} critic draws; "
            f"{len(res['critic_names'])} critic settings including the null critic (scores independent of the "
            f"answer); {machine(res)}, {num(res['wall_seconds'] / 60, 1)} min.\n\n"
            + table(["learner", "gain with the null critic", "entropy beta = 1, exact critic (headroom)",
                     f"entropy beta = {beta:g}, exact critic (headroom)", "Pearson r(accuracy, gain)"], rows)
            + (f"\n\nTransformer {health_text(tf['health'])}." if tf else "")
            + f"\n\nClaims (effect = worse - better, 95% interval; contexts are the unit for GD, seeds for the "
              f"transformer; headroom: how far the round-0 entropy lies below its maximum ln {n0} = "
              f"{math.log(n0):.3f}):\n\n" + CL.table(_claims(res)))


def verdict(res: dict) -> str:
    """Two lines for the README: the exact critic's gain beyond the loop's own effect, and the
    loop's own effect, per learner."""
    cl = _claims(res)
    names = list(res["learners"])
    return ("Beyond the loop's own effect (the null critic), the exact critic helps: " + "; ".join(
        f"{n}: {brief(find(cl, f'{n}: the exact critic helps'))}" for n in names)
        + ". The loop alone (null critic) improves the answer: " + "; ".join(
        f"{n}: {brief(find(cl, f'{n}: the loop alone'))}" for n in names) + ".")
