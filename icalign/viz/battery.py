"""The mechanism battery drawn from a result's ``battery`` record only (docs/theory.md 7.1): the
summary table (each test's predictions beside its verdicts), the checks beside it, and a
figure of every test's distances over its margin."""

from __future__ import annotations

from icalign.viz.md import brief, num, table
from icalign.viz.style import new_figure

__all__ = ["table_md", "markdown", "counts", "figure"]


def _dist(c: dict) -> str:
    """The mean distance and its interval from one of the verdict's equivalence claims."""
    return f"{num(c['effect'])} [{num(c['low'])}, {num(c['high'])}]"


def table_md(res: dict) -> str:
    """The battery's summary: one row per test with what each account predicts (written in the
    code before any run) and, per trained model family, the verdict with the distances it
    rests on (mean [95% interval], seeds x contexts) and the margin."""
    bat = res.get("battery")
    if not bat:
        raise ValueError("this mechanism result has no battery; rerun `icalign run mechanism`")
    families = list(bat)
    tests = list(dict.fromkeys(t for f in families for t in bat[f]["verdicts"]))
    rows = []
    for t in tests:
        first = next(bat[f]["verdicts"][t] for f in families if t in bat[f]["verdicts"])
        p = first["predictions"]
        cells = []
        for f in families:
            v = bat[f]["verdicts"].get(t)
            cells.append("-" if v is None else
                         f"**{v['verdict']}**: to GD {_dist(v['distance_to_gd'])}, to the minimiser "
                         f"{_dist(v['distance_to_minimiser'])}, margin {num(v['margin'])}"
                         + (f" ({v['reason']})" if v["verdict"] == "not resolved" else ""))
        rows.append([t, p["GD"], p["minimiser"], p["neither"], *cells])
    return table(["test", "runs GD predicts", "computes the minimiser predicts", "neither predicts",
                  *[f"result: {f}" for f in families]], rows)


def markdown(res: dict) -> str:
    """The battery's section: the summary table, then the checks beside it."""
    out = ["**The battery** (docs/theory.md 7.1): each test's predictions were written in the code before the run; "
           "distances are means [95% interval over the seeds' blocks of test-half contexts, about new seeds and new "
           "contexts] in the test's units, judged against the margin (half the two predictions' separation on the "
           "fitting half; for the invariance tests the learner's own approximation error):\n\n" + table_md(res)]
    for fam, bat in res["battery"].items():
        chk = bat["checks"]
        sel = [[q, brief(v["claim"])] for q, v in chk["selectivity"].items()]
        out.append(f"{fam}: {chk['newton']['claim']['claim']}: {brief(chk['newton']['claim'])} "
                   f"(Fu et al.'s prediction: {chk['newton']['prediction']}). "
                   f"Attention, {chk['attention']['claim']['claim']}: {brief(chk['attention']['claim'])}. "
                   "Probe selectivity (the trained model's held-out R^2 above a random init's, at each seed's layer "
                   "chosen on the fitting half):\n\n" + table(["probe target", "verdict (null - trained share of 1 - R^2)"], sel))
    return "\n\n".join(out)


def counts(res: dict) -> dict:
    """{family: {verdict: count}} over the battery's tests."""
    out = {}
    for f, fam in (res.get("battery") or {}).items():
        out[f] = {}
        for v in fam["verdicts"].values():
            out[f][v["verdict"]] = out[f].get(v["verdict"], 0) + 1
    return out


def figure(res: dict, title: str = ""):
    """The battery at a glance: per trained model family (columns) and test (rows), the
    learner's mean distance to what GD predicts and to what the minimiser predicts, each with
    its 95% interval (seeds x contexts), divided by the test's margin so that every test reads
    on one axis: the verdict's line is at 1 (below it: within the margin)."""
    bat = res["battery"]
    fams = list(bat)
    tests = list(dict.fromkeys(t for f in fams for t in bat[f]["verdicts"]))
    fig, axes = new_figure(1, len(fams), figsize=(5.2 * len(fams), 0.55 * len(tests) + 1.8))
    for col, fam in enumerate(fams):
        ax = axes[0, col]
        for row, t in enumerate(tests):
            v = bat[fam]["verdicts"].get(t)
            if v is None:
                continue
            for dy, key, style in ((-0.12, "distance_to_gd", dict(color="C2", marker="^", label="to GD's prediction")),
                                   (0.12, "distance_to_minimiser",
                                    dict(color="C1", marker="s", label="to the minimiser's prediction"))):
                c, m = v[key], v["margin"]
                lo, mid, hi = (max(x / m, 1e-3) for x in (c["low"], c["effect"], c["high"]))
                first = col == 0 and style["label"] not in ax.get_legend_handles_labels()[1]
                ax.errorbar([mid], [row + dy], xerr=[[mid - lo], [hi - mid]], fmt=style["marker"], color=style["color"],
                            ms=5, capsize=2, label=style["label"] if first else None)
            ax.text(1.02, row, v["verdict"], transform=ax.get_yaxis_transform(), fontsize=8, va="center")
        ax.axvline(1.0, color="0.4", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 3e1)  # one scale for every panel (values below 1e-3 of the margin sit at its edge)
        ax.set_yticks(range(len(tests)), tests if col == 0 else [""] * len(tests), fontsize=8)
        ax.set_ylim(len(tests) - 0.5, -0.5)
        ax.set_xlabel("distance / the test's margin (dashed: the margin)")
        ax.set_title(f"{fam} ({next(iter(bat[fam]['verdicts'].values()))['seeds']} seeds)", fontsize=9)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8,
               bbox_to_anchor=(0.5, -0.04))
    fig.suptitle((title + "; " if title else "") + "verdicts at the right of each panel", fontsize=9)
    fig.subplots_adjust(wspace=0.45, bottom=0.16)
    return fig
