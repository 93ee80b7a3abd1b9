"""Figures from result files. Plots read results (dicts loaded from JSON); they never import
training or learner code, so a figure can be redrawn from a results file alone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["save", "integer_ticks", "curves_by_level"]


def save(fig, stem: Path, formats=("png", "pdf")) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf, each atomically (temp file + rename, so a killed
    run never leaves half a figure); close the figure; return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{fmt}")
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a figure is meant to be read
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    plt.close(fig)
    return paths


def integer_ticks(ax) -> None:
    """Integer ticks on the x axis: t counts in-context examples, so 2.5 means nothing."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves_by_level(results: dict, stem: Path, title: str) -> list[Path]:
    """One panel per learner: mean normalised MSE against t, one curve per corruption level,
    with its 95% interval shaded. ``results['learners'][name]['levels'][level]`` holds
    'mean', 'low', 'high' lists aligned with ``results['ts']``."""
    ts = results["ts"]
    learners = results["learners"]
    fig, axes = plt.subplots(1, len(learners), figsize=(5.2 * len(learners), 4.0), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (name, res) in zip(axes[0], learners.items()):
        levels = list(res["levels"])
        for i, level in enumerate(levels):
            c = res["levels"][level]
            color = cmap(i / max(len(levels) - 1, 1))
            ax.plot(ts, c["mean"], "o-", ms=3, color=color, label=f"{results['level_name']} = {level}")
            ax.fill_between(ts, c["low"], c["high"], color=color, alpha=0.2, lw=0)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(res["label"])
        ax.set_xlabel("in-context examples t")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised MSE  1 - cos(y_hat, y*)")
    axes[0][-1].legend(fontsize=8, title=results.get("corruption", ""))
    fig.suptitle(title, fontsize=10)
    return save(fig, stem)


def necessity(results: dict, stem: Path) -> list[Path]:
    """Error floor (min over finite seeds, log scale) against N for each trained
    architecture; a variant whose every seed diverged is marked with an x at the top. The
    hand-built construction's float64 error is stated in a box (it is ~1e-31, far below
    the trained floors, so plotting it would flatten them)."""
    import math

    table = results["results"]
    ns = sorted(int(n) for n in table)
    variants = list(next(iter(table.values()))["variants"])
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
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
    return save(fig, stem)
