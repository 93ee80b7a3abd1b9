"""Figures from result files. Plots read results (dicts loaded from JSON); they never import
training or learner code, so a figure can be redrawn from a results file alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["save", "curves_by_level"]


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


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
