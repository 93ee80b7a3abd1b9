"""Verdicts of the mechanism study, by the claim engine (:mod:`icalign.analysis.claims`).

Every claim compares two per-context quantities on the same test-half contexts, paired by
context: the transformer's distances to two references, its own read-out's error at two
layers, or how far an intervention moves the transformer and a reference learner. The effect
is the mean of the per-context differences, with a 95% interval over those contexts (one
trained model per study: the interval covers context sampling, not training). What is compared
(the closest reference, the best layer) was chosen on the fitting half (the study's
``selection``), never on the contexts that judge it. A model that failed its training-health
gate makes its claims "not trained" (the engine reads ``health`` on the model's arms).
"""

from __future__ import annotations

import numpy as np

from icalign.analysis import claims as CL
from icalign.analysis.interventions import MONOTONE

__all__ = ["LABELS", "claims"]

LABELS = {"minimiser": "the minimiser of the training loss", "gd_cosine": "fitted GD (cosine PL)",
          "gd_sqdist": "fitted GD (squared-distance PL)", "exact": "exact recovery",
          "transformer": "the transformer"}




def _need(study: dict) -> tuple[dict, dict]:
    """The per-context test values and the fitting half's choices; results written before
    they were stored cannot be judged (their claims compared unpaired means, chosen on the
    contexts that judged them)."""
    if "cells" not in study or "selection" not in study:
        raise ValueError("this mechanism result stores no per-context values or fitting-half choices; rerun "
                         "`icalign run mechanism` to judge its claims")
    return study["cells"], study["selection"]


def _fmt(a: dict) -> str:
    return f"{a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def _claim(text: str, worse: dict, better: dict, study: dict, chosen: str, t=None) -> dict:
    """The engine's claim of ``worse`` above ``better``, with the values compared, the
    population its interval is about and what the fitting half chose."""
    c = CL.claim(text, worse, better, t=t)
    h, sample = study["halves"], f"one trained model, {c['n_contexts']} test-half contexts"
    c.setdefault("population", sample)  # the engine's own, where it states one
    return {**c, "sample": sample, "values": f"{worse['label']} {_fmt(worse)} vs {better['label']} {_fmt(better)}",
            "chosen_on": f"fitting half ({h['fit'][1] - h['fit'][0]} contexts): {chosen}" if chosen else "none"}


def _distance_claims(study: dict, task: str) -> list[dict]:
    """At each claim t, the reference closest on the fitting half against the next closest
    there, and against exact recovery (the mechanism that reads reward values) when that is
    not already one of the two."""
    cells, sel = _need(study)
    d, health, out = cells["distance"], study.get("health"), []
    for j, t in enumerate(cells["t"]):
        order, fit = sel["closest"][str(t)]["order"], sel["closest"][str(t)]["fit_mean"]
        chosen = f"{order[0]} closest, {order[1]} next (" + ", ".join(f"{r} {fit[r]:.3f}" for r in order) + ")"
        for other in [order[1]] + [r for r in ("exact",) if r not in order[:2] and r in d]:
            worse, better = (CL.cells(r, [d[r][j]], health=health) for r in (other, order[0]))
            out.append(_claim(f"{task}, t = {t}: the transformer is closer to {LABELS[order[0]]} than to "
                              f"{LABELS[other]}", worse, better, study, chosen, t))
    return out


def _layer_claim(study: dict) -> list[dict]:
    """Does the inner layer whose own read-out is closest to y* on the fitting half point
    closer to y* than the output does, on the test half?"""
    _, sel = _need(study)
    best = sel["layer"]["layer"]
    if best is None:
        return []
    rows = {str(r["layer"]): r["own"]["nmse"]["values"] for r in study["layers"]}
    worse, better = (CL.cells(lab, [rows[k]], health=study.get("health"))
                     for lab, k in (("output", "output"), (f"layer {best}", best)))
    fit = sel["layer"]["fit_mean"]
    return [_claim(f"read by the model's own read-out, layer {best} points closer to y* than the output does",
                   worse, better, study, f"layer {best} (error {fit[best]:.3f}; output {fit['output']:.3f})")]


def claims(res: dict) -> list[dict]:
    """Closest references at t = 2 and at the largest t for each study; whether an
    intermediate layer is closer to y* than the output; for each monotone reward map, whether
    the transformer's answer moves more than PL-GD's (which cannot move) and less than under
    reversed rewards."""
    sh = res["shared"]
    out = _distance_claims(sh, "shared queries")
    if "triplet" in res:
        out += _distance_claims(res["triplet"], "per-triplet queries")
    out += _layer_claim(sh)
    iv, health = sh["interventions"], sh.get("health")
    rev = CL.cells("reversed", [iv["reverse"]["transformer"]["values"]], health=health)
    for kind in MONOTONE:
        tf = CL.cells("transformer", [iv[kind]["transformer"]["values"]], health=health)
        out.append(_claim(f"the {kind} reward map moves the transformer's answer more than PL-GD's", tf,
                          CL.cells("PL-GD", iv[kind]["gd_cosine"]["values"]), sh, ""))
        out.append(_claim(f"the {kind} reward map moves the transformer's answer less than reversing the rewards",
                          rev, {**tf, "label": kind}, sh, ""))
    return out
