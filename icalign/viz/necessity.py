"""Figure of the necessity study: each trained architecture's error against N, median over
seeds and every seed."""

from __future__ import annotations

import math

from icalign.viz.style import new_figure

__all__ = ["necessity"]


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
