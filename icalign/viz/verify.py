"""The verification table (``icalign verify``) drawn from its result files as markdown: the
default run and the wide adversarial hunt (``--search``). It has no figure."""

from __future__ import annotations

import math

from icalign.viz.md import machine, num, table

__all__ = ["markdown", "verdict"]


def _floor4(x) -> str:
    """Four decimals, rounded down: a ratio of 0.99996 must not print as 1.0000."""
    return f"{math.floor(float(x) * 1e4) / 1e4:.4f}"


def markdown(res: dict, search: dict) -> str:
    """Every claim with its error, bound and ratio from ``res``, its worst relative error and
    bound/step, the worst ratio the wide hunt ``search`` found for it, how many claims pass in
    each, and the hunt per family."""
    found = {(r["claim"], r["N"]): r["search_worst_ratio"] for r in search["claims"]}
    sci = lambda x: "-" if x is None else f"{float(x):.1e}"
    rows = [[r["claim"], r["N"], sci(r["max_abs_error"]), sci(r["bound"]), sci(r["worst_ratio"]),
             sci(r["rel_error"]), "-" if r["bound_step"] is None else f"{sci(r['bound_step'])} ({r['rel_tol']:g})",
             "-" if found.get((r["claim"], r["N"])) is None else _floor4(found[(r["claim"], r["N"])])]
            for r in res["claims"]]
    passed = sum(r["pass"] for r in res["claims"])
    hunts = search["search"]["claims"].values()
    fams = [[f, f"{o['tried']:,}", f"{o['valid']:,}", num(o["accepted_fraction"], 2), o["over_bound"],
             o["over_tolerance"], _floor4(o["worst_ratio"]), sci(o["worst_tolerance"]), sci(o["worst_bound_step"])]
            for f, o in search["search"]["families"].items()]
    return (table(["claim", "N", "max abs error", "bound", "worst ratio", "worst relative error",
                   "worst bound/step (rel_tol)", "worst ratio found by search"], rows)
            + f"\n\n{passed}/{len(rows)} claims pass on {res['contexts']} random float64 contexts each "
              f"({num(res['seconds'], 0)} s on a {machine(res)}, including a short hunt per construction). A claim "
              f"passes when every error is within its bound (ratio <= 1) and the bound is within rel_tol of the "
              f"step (relative error = ||error|| / ||step||). The wide hunt (`--search`) tried "
              f"{sum(h['tried'] for h in hunts):,} contexts, of which {sum(h['valid'] for h in hunts):,} passed the "
              f"checks, in {num(search['seconds'] / 60, 1)} min; {sum(r['pass'] for r in search['claims'])}/"
              f"{len(search['claims'])} claims pass there. Per family of the hunt (summed over the construction "
              f"claims):\n\n"
              + table(["family", "tried", "accepted", "fraction accepted", "over bound", "over tolerance",
                       "worst ratio", "worst relative error / rel_tol", "worst bound/step"], fams))


def verdict(res: dict, search: dict) -> str:
    """Two lines for the README: claims passed, and the worst error/bound ratio the wide hunt found."""
    worst = max((r["search_worst_ratio"] for r in search["claims"] if r["search_worst_ratio"] is not None),
                default=None)
    tried = sum(h["tried"] for h in search["search"]["claims"].values())
    return (f"{sum(r['pass'] for r in res['claims'])}/{len(res['claims'])} claims pass on {res['contexts']} random "
            f"float64 contexts each; the wide hunt tried {tried:,} "
            f"contexts and {sum(r['pass'] for r in search['claims'])}/{len(search['claims'])} claims pass there"
            + ("" if worst is None else f" (worst error/bound ratio {_floor4(worst)}; above 1 would fail)") + ".")
