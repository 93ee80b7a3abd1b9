"""Figure of the necessity study: the error floor of each trained architecture against N."""

from __future__ import annotations

import math

from icalign.viz.style import new_figure

__all__ = ["necessity"]


def necessity(results: dict):
    """Error floor (min over finite seeds, log scale) against N for each trained
    architecture; a variant whose every seed diverged is marked with an x at the top. The
    hand-built construction's float64 error is stated in a box (it is ~1e-31, far below
    the trained floors, so plotting it would flatten them)."""
    table = results["results"]
    ns = sorted(int(n) for n in table)
    variants = list(next(iter(table.values()))["variants"])
    fig, axes = new_figure(figsize=(6.6, 4.3))
    ax = axes[0][0]
    markers = "osD^v<>"
    top = 0.0
    diverged = []
    for i, name in enumerate(variants):
        floors = []
        for n in ns:
            seeds = [float(v) for v in table[str(n)]["variants"][name]["rel_error_per_seed"]]
            finite = [v for v in seeds if math.isfinite(v)]
            floors.append(min(finite) if finite else float("nan"))
            if not finite:
                diverged.append((n, i, name))
        top = max([top] + [f for f in floors if math.isfinite(f)])
        ax.plot(ns, floors, marker=markers[i % len(markers)], color=f"C{i}", label=f"{name} (trained)")
    for n, i, name in diverged:
        ax.plot([n], [top * 1.3], marker="x", ms=10, mew=2.5, color=f"C{i}", ls="none")
        ax.annotate(f"{name}: diverged (NaN)", (n, top * 1.3), textcoords="offset points", xytext=(-12, -4),
                    ha="right", va="top", fontsize=8, color=f"C{i}")
    built = max(float(table[str(n)]["construction_rel_error_float64"]) for n in ns)
    ax.text(0.02, 0.03, f"hand-built construction (float64): relative error <= {built:.0e} at every N",
            transform=ax.transAxes, fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("number of candidates N")
    ax.set_ylabel("relative error  E|f - y+|^2 / E|y+ - y0|^2")
    p = results["protocol"]
    ax.set_title(f"One PL GD step, trained architectures: best of {p['seeds']} seeds, "
                 f"{p['adam_steps']} Adam steps ({results['size']} size)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center right")
    return fig
