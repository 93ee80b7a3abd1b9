"""The paper-claims table and the published curves beside ours, from committed files only.

:func:`markdown` is the ``paper-claims`` block of docs/results.md: one row per claim of Wang et
al. (paper A) with every source's comparisons and the verdict rule of
:mod:`icalign.analysis.paper`, then the published transformer's normalised MSE under `replace`
next to icalign's clean-trained transformer. :func:`figure` draws the same curves;
``icalign readme --figures`` saves it as ``<results root>/paper/paper_claims.png``.

The published numbers are read from ``docs/published/self_correction_reward_noise.json``
(extracted from the published notebook by ``docs/published/extract_self_correction.py``), found
next to the results root (``<root>/../docs/published``), since the results root is the
repository's ``figures/``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.lines import Line2D

from icalign.analysis import claims as CL
from icalign.analysis import paper as P
from icalign.analysis import sweep_claims as SC
from icalign.io import read_json, save_figure
from icalign.viz import necessity as NV
from icalign.viz.md import ci, table
from icalign.viz.sweeps import size_title
from icalign.viz.style import NMSE_LABEL, T_LABEL, band, colormap, integer_ticks, new_figure

__all__ = ["PUBLISHED", "FILES", "FIGURE", "published", "results", "markdown", "figure", "save"]

#: The published numbers, relative to the repository root (the results root's parent).
PUBLISHED = Path("docs/published/self_correction_reward_noise.json")
#: Each source's result file under the results root.
FILES = {"quick ablations": "ablations/quick/ablations.json", "full ablations": "ablations/full/ablations.json",
         "necessity (quick)": "necessity/quick/necessity.json",
         "reward noise (quick)": "reward-noise/quick/reward_noise.json",
         "reward noise (full)": "reward-noise/full/reward_noise.json"}
#: The figure, under the results root.
FIGURE = Path("paper/paper_claims.png")
_NOISE = ("reward noise (full)", "reward noise (quick)")
_KEYS = ("repository", "path", "commit", "cell_index", "ts", "levels", "nmse", "mapping")


def published(root: Path) -> dict:
    """The published curves (``PUBLISHED`` next to the results root), checked for the fields
    this module reads."""
    path = Path(root).resolve().parent / PUBLISHED
    if not path.is_file():
        raise ValueError(f"{path}: no published curves; they are read from {PUBLISHED} next to the results root "
                         f"{root} (the repository's figures/)")
    pub = read_json(path)
    missing = [k for k in _KEYS if k not in pub]
    if missing:
        raise ValueError(f"{path}: lacks the fields {missing}; rerun docs/published/extract_self_correction.py")
    bad = [p for p in pub["levels"] if len(pub["nmse"].get(str(p), [])) != len(pub["ts"])]
    if bad:
        raise ValueError(f"{path}: the curves at p = {bad} do not have one value per t of {pub['ts']}")
    return pub


def results(root: Path) -> dict[str, Optional[dict]]:
    """{source: its committed result, or None where the file is absent}."""
    return {s: read_json(Path(root) / f) if (Path(root) / f).exists() else None for s, f in FILES.items()}


def _label(entry: dict) -> str:
    c = entry["claim"]
    if entry["kind"] == "necessity":
        return f"{c['variant']}, N = {c['n']}"
    return c["claim"].split(": ", 1)[1] if ": " in c["claim"] else "replace, p = 1 vs 0"


def _entry(entry: dict) -> str:
    c, txt = entry["claim"], f"{_label(entry)}: **{entry['claim']['verdict']}**"
    if entry["kind"] == "necessity":
        if c.get("p_worse") is not None:
            txt += f" (one-sided p = {c['p_worse']:.3f}, median difference {c['median_difference']:+.3f})"
    elif c["n"]:
        txt += f", {CL.short(c)}"
    if c.get("reason") and entry["status"] == "withheld":
        txt += f"; {c['reason'].split(' (')[0]}"
    elif c.get("health"):  # the labels only ("under-converged"); who and why are in the source's own section
        txt += f" ({', '.join(dict.fromkeys(h.split(': ')[-1] for h in c['health'].split('; ')))})"
    return txt + (f" *(not counted: {entry['why']})*" if entry["why"] else "")


def _cell(row: dict, res: dict) -> str:
    out = []
    for source, entries in row["evidence"].items():
        if entries:
            pop = f" ({NV.population(res[source])})" if P.SOURCES[source] == "necessity" else ""
            out.append(f"*{source}*{pop}: " + "; ".join(map(_entry, entries)))
    return "<br>".join(out) or "no comparison"


def _at(res: dict, lv: str, t: int) -> str:
    s = res["transformer"][str(res["train_levels"][0])]["replace"][lv]["nmse"]
    return ci(s, res["ts"].index(t))


def markdown(root: Path) -> str:
    """The paper-claims table and the published-vs-ours table, from the files under ``root``."""
    res, pub = results(root), published(root)
    rows = P.rows(res)
    claims = table(["claim of Wang et al. (where stated)", "comparisons by source (verdict, effect [95% interval], "
                    "units, what the interval is about)", "result"],
                   [[f"{r['claim']} ({r['where']})", _cell(r, res), r["sentence"].replace(
                       r["result"][0].upper() + r["result"][1:], f"**{r['result']}**", 1)] for r in rows])
    ours = [s for s in _NOISE if res[s] is not None]
    ends = (pub["ts"][0], pub["ts"][-1])
    curves = table(["p"] + [f"{who} t = {t}" for t in ends for who in ["published"] + [f"ours, {s.split(' (')[1][:-1]}"
                                                                                        for s in ours]],
                   [[f"{p:g}"] + [x for i, t in enumerate(ends) for x in
                                  [f"{pub['nmse'][str(p)][pub['ts'].index(t)]:.3f}"]
                                  + [_at(res[s], str(float(p)), t) for s in ours]] for p in pub["levels"]])
    return (claims + "\n\n"
            f"Published transformer ([{pub['path']}]({pub['repository']}/blob/{pub['commit']}/{pub['path']}), cell "
            f"{pub['cell_index']}; one unseeded model, no interval) and icalign's clean-trained transformer "
            f"(mean [95% interval over seeds, on these contexts]), normalised MSE under `replace` at p:\n\n{curves}"
            f"\n\n![paper claims](../figures/{FIGURE.as_posix()})")


def figure(root: Path):
    """Published transformer curves (dashed, one model, no interval) beside icalign's
    clean-trained transformer (solid, 95% band over seeds), one panel per committed size."""
    res, pub = results(root), published(root)
    ours = [s for s in _NOISE if res[s] is not None]
    if not ours:
        raise ValueError(f"no reward-noise result under {root}: expected {[FILES[s] for s in _NOISE]}")
    fig, axes = new_figure(1, len(ours), figsize=(5.6 * len(ours), 4.6), sharey="row")
    cmap = colormap("viridis")
    colors = [cmap(0.9 * i / max(len(pub["levels"]) - 1, 1)) for i in range(len(pub["levels"]))]
    for ax, source in zip(axes[0], ours):
        r = res[source]
        clean = str(r["train_levels"][0])
        keep = [i for i, t in enumerate(r["ts"]) if t >= pub["ts"][0]]
        for p, color in zip(pub["levels"], colors):
            s = r["transformer"][clean]["replace"][str(float(p))]["nmse"]
            band(ax, np.asarray(r["ts"])[keep], {k: [s[k][j] for j in keep] for k in ("mean", "low", "high")}, color)
            ax.plot(pub["ts"], pub["nmse"][str(p)], ls="--", marker="x", ms=4, lw=1.2, color=color)
        health = SC.noise_health(r)[clean]["status"]
        ax.set_title(textwrap.fill(f"ours, {source}: {size_title(r)}; clean-trained transformer's health: {health}",
                                   70), fontsize=8)
        ax.set_xlabel(T_LABEL)
        ax.grid(alpha=0.3)
        integer_ticks(ax)
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
    axes[0][0].set_ylabel(NMSE_LABEL)
    handles = ([Line2D([], [], color=c, lw=3) for c in colors]
               + [Line2D([], [], color="k", marker="o", ms=3), Line2D([], [], color="k", ls="--", marker="x", ms=4)])
    fig.legend(handles, [f"p = {p:g}" for p in pub["levels"]] + ["ours (95% band over seeds)",
                                                                 "published (one model, no interval)"],
               loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Transformer trained on clean rewards, evaluated with shown rewards replaced at p: Wang et al.'s "
                 f"published model (dashed; {pub['path'].split('/')[-1]} @ {pub['commit'][:7]}, cell "
                 f"{pub['cell_index']})\nbeside icalign's (solid, mean and 95% band over seeds on these contexts)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def save(root: Path) -> list[Path]:
    """Draw :func:`figure` and write it to ``root`` / ``FIGURE``."""
    return save_figure(figure(root), Path(root) / FIGURE.with_suffix(""), formats=("png",))
