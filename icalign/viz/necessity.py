"""The necessity study drawn from its result: each trained architecture's error against N, median
over seeds and every seed (figure), and its tables and claims (markdown)."""

from __future__ import annotations

import math

from icalign.viz.md import machine, num, table
from icalign.viz.style import new_figure

__all__ = ["GATE_NOTE", "necessity", "markdown", "verdict"]

#: Why this study has no training-health gate (icalign.analysis.health).
GATE_NOTE = ("Training health: the ranking-objective gate does not apply here. These models regress a target "
             "(the output of one PL gradient step) instead of minimising the ranking objective, so that objective's "
             "optimum and its reward-blind reference do not measure their training; the held-out relative error "
             "to the target does, and a diverged seed is the training failure (verdict \"not trained\").")


def necessity(results: dict):
    """Median held-out relative error over seeds (line) and every seed (dots, log scale)
    against N for each trained architecture; a diverged architecture is an x at the top. The
    hand-built construction's float64 error is stated in a box (it is ~1e-31, far below the
    trained errors, so plotting it would flatten them)."""
    table = results["results"]
    ns = sorted(int(n) for n in table)
    variants = list(next(iter(table.values()))["variants"])
    fig, axes = new_figure(figsize=(8.4, 4.5))
    ax = axes[0][0]
    markers = "osD^v<>"
    finite_all = [float(v) for n in ns for name in variants
                  for v in table[str(n)]["variants"][name]["rel_error_per_seed"] if math.isfinite(float(v))]
    top = max(finite_all) * 1.6 if finite_all else 1.0
    k = len(variants)
    for i, name in enumerate(variants):
        shift = 2 ** ((i - (k - 1) / 2) * 0.05)  # spread the variants a little along N
        medians, xs = [], []
        for n in ns:
            seeds = [float(v) for v in table[str(n)]["variants"][name]["rel_error_per_seed"]]
            finite = sorted(v for v in seeds if math.isfinite(v))
            x = n * shift
            ax.plot([x] * len(finite), finite, ls="none", marker=markers[i % len(markers)], ms=3.5, alpha=0.35,
                    color=f"C{i}")
            if len(finite) < len(seeds):
                ax.plot([x], [top], marker="x", ms=8, mew=2, color=f"C{i}", ls="none")
            if finite:
                mid = len(finite) // 2
                medians.append(finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2)
                xs.append(x)
        ax.plot(xs, medians, marker=markers[i % len(markers)], color=f"C{i}", label=name)
    built = max(float(table[str(n)]["construction_rel_error_float64"]) for n in ns)
    ax.text(0.02, 0.03, f"hand-built construction (float64): relative error <= {built:.0e} at every N\n"
            f"x at the top: diverged (loss NaN) at this learning rate", transform=ax.transAxes, fontsize=8,
            bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("number of candidates N")
    ax.set_ylabel("relative error  E|f - y+|^2 / E|y+ - y0|^2")
    p = results["protocol"]
    ax.set_title(f"One PL GD step, trained architectures: median (line) and each of {p['seeds']} seeds (dots),\n"
                 f"{p['adam_steps']} Adam steps ({results['size']} size)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _diverged(entry: dict) -> str:
    k, n = entry["diverged_seeds"], len(entry["rel_error_per_seed"])
    return "" if not k else f"; {'every seed' if k == n else f'{k} of {n} seeds'} diverged at this learning rate"


def markdown(res: dict) -> str:
    """The result as markdown: best / median relative error per architecture and N, the
    construction's float64 error, and every claim with its rank test."""
    table_, p = res["results"], res["protocol"]
    ns = sorted(table_, key=int)
    gone = lambda v: v["diverged_seeds"] == len(v["rel_error_per_seed"])
    cell = lambda v: "diverged" if gone(v) else (
        f"{num(v['best'])} / {num(v['median'])}"
        + (f" ({v['diverged_seeds']} diverged)" if v["diverged_seeds"] else ""))
    rows = [[name] + [cell(table_[n]["variants"][name]) for n in ns] for name in table_[ns[0]]["variants"]]
    rows.append(["hand-built construction (float64)"] + [f"{float(table_[n]['construction_rel_error_float64']):.0e}"
                                                        for n in ns])
    med = lambda n, name: "diverged" if gone(table_[str(n)]["variants"][name]) else num(
        table_[str(n)]["variants"][name]["median"])
    test = lambda c: ("no test: a diverged seed is a training failure, not evidence" if c["p_worse"] is None else
                      f"one-sided p = {c['p_worse']:.3g} that it is worse, {c['p_better']:.3g} that it is better")
    claims = "\n".join(
        f"- N = {c['n']}, {c['variant']}: {c['claim']}: **{c['verdict']}** (median {med(c['n'], c['variant'])} vs "
        f"full {med(c['n'], 'full')}{_diverged(table_[str(c['n'])]['variants'][c['variant']])}; {test(c)})"
        for c in res["claims"])
    return (f"Relative error, best / median over {p['seeds']} seeds ({p['adam_steps']} Adam steps, batch {p['batch']}, "
            f"lr {p['lr']:g}; {p['metric']}; {machine(res)}, {num(res['seconds'] / 60, 1)} min):\n\n"
            + table(["architecture"] + [f"N = {n}" for n in ns], rows)
            + f"\n\n{GATE_NOTE}\n\nClaims ({res['claims'][0]['statistic']}; {population(res)}):\n\n" + claims)


def population(res: dict) -> str:
    """What the rank tests are about: every seed draws its own held-out batch of contexts
    (``analysis.necessity.fit_variant``), so a seed's error is one draw of (trained model,
    contexts)."""
    p = res["protocol"]
    return (f"{p['seeds']} seeds per architecture, each scored on its own held-out batch of {p['batch']} contexts: "
            "about new seeds and new contexts")


def verdict(res: dict) -> str:
    """Two lines for the README: each reduced architecture's verdicts over N, and the
    construction's float64 error."""
    by = {}
    for c in res["claims"]:
        by.setdefault(c["variant"], {}).setdefault(c["verdict"], []).append(str(c["n"]))
    worst = max(float(r["construction_rel_error_float64"]) for r in res["results"].values())
    return (f"Trained on the one-step PL target ({population(res)}), " + "; ".join(
        f"{variant}: " + ", ".join(f"{v} at N = {'/'.join(ns)}" for v, ns in verdicts.items())
        for variant, verdicts in by.items())
        + f". The hand-built construction's float64 relative error is at most {worst:.0e}.")
