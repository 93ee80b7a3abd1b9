"""Verdicts of the mechanism study, by the claim engine (:mod:`icalign.analysis.claims`).

Every claim compares two per-context quantities on the same test-half contexts, paired by
context: the transformer's distances to two references, its own read-out's error at two
layers, or how far an intervention moves the transformer and a reference learner. With several
trained models (``per_seed``: every seed studied on the same contexts) the engine splits the
test-half contexts into one block per seed, so the interval covers new seeds and new contexts;
with one model it is over contexts and covers context sampling only. What is compared (the
closest reference, the best layer) was chosen on the fitting halves (each seed's
``selection``, averaged over seeds), never on the contexts that judge it. A model that failed its training-health
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




def _need(study: dict) -> list[dict]:
    """Every seed's per-context test values and fitting-half choices (``per_seed``; one seed's
    own in results of one trained model); results written before they were stored cannot be
    judged (their claims compared unpaired means, chosen on the contexts that judged them)."""
    if "cells" not in study or "selection" not in study:
        raise ValueError("this mechanism result stores no per-context values or fitting-half choices; rerun "
                         "`icalign run mechanism` to judge its claims")
    return study.get("per_seed") or [{"cells": study["cells"], "selection": study["selection"]}]


def _stack(per: list, get) -> np.ndarray:
    """(S, C): one row of per-context values per seed (every seed on the same contexts)."""
    return np.asarray([get(p) for p in per], float)


def _pooled_order(per: list, pick) -> tuple[list, dict]:
    """Keys ordered by their fitting-half mean averaged over the seeds (each seed's own
    fitting half), so the seeds' test halves cannot change what is compared."""
    fits = [pick(p) for p in per]
    fit = {k: float(np.mean([f[k] for f in fits])) for k in fits[0]}
    return sorted(fit, key=fit.get), fit


def _fmt(a: dict) -> str:
    return f"{a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def _claim(text: str, worse: dict, better: dict, study: dict, chosen: str, t=None) -> dict:
    """The engine's claim of ``worse`` above ``better``, with the values compared, the
    population its interval is about and what the fitting half chose."""
    c = CL.claim(text, worse, better, t=t)
    S = len(study.get("seeds") or [0])
    h = study["halves"]
    sample = (f"{S} trained models (seeds) on the same {c['n_contexts']} test-half contexts" if S > 1
              else f"one trained model, {c['n_contexts']} test-half contexts")
    c.setdefault("population", sample)  # the engine's own, where it states one
    return {**c, "sample": sample, "values": f"{worse['label']} {_fmt(worse)} vs {better['label']} {_fmt(better)}",
            "chosen_on": f"fitting half ({h['fit'][1] - h['fit'][0]} contexts): {chosen}" if chosen else "none"}


def _distance_claims(study: dict, task: str) -> list[dict]:
    """At each claim t, the reference closest on the fitting half against the next closest
    there, and against exact recovery (the mechanism that reads reward values) when that is
    not already one of the two."""
    per = _need(study)
    cells, health, out = per[0]["cells"], study.get("health"), []
    for j, t in enumerate(cells["t"]):
        order, fit = _pooled_order(per, lambda p: p["selection"]["closest"][str(t)]["fit_mean"])
        chosen = f"{order[0]} closest, {order[1]} next (" + ", ".join(f"{r} {fit[r]:.3f}" for r in order) + ")"
        for other in [order[1]] + [r for r in ("exact",) if r not in order[:2] and r in cells["distance"]]:
            worse, better = (CL.cells(r, _stack(per, lambda p: p["cells"]["distance"][r][j]), health=health)
                             for r in (other, order[0]))
            out.append(_claim(f"{task}, t = {t}: the transformer is closer to {LABELS[order[0]]} than to "
                              f"{LABELS[other]}", worse, better, study, chosen, t))
    return out


def _layer_claim(study: dict) -> list[dict]:
    """Does the inner layer whose own read-out is closest to y* on the fitting half point
    closer to y* than the output does, on the test half?"""
    per = _need(study)
    if per[0]["selection"]["layer"]["layer"] is None:
        return []
    sel0 = per[0]["selection"]["layer"]
    inner = sel0.get("candidates") or [sel0["layer"]]  # the layers choose_layer chose among
    order, fit = _pooled_order(per, lambda p: {k: p["selection"]["layer"]["fit_mean"][k] for k in inner + ["output"]})
    best = next(k for k in order if k in inner)
    if "layer_nmse" in per[0]:
        rows = lambda k: _stack(per, lambda p: p["layer_nmse"][k])
    else:  # one trained model: its layers' own values
        own = {str(r["layer"]): r["own"]["nmse"]["values"] for r in study["layers"]}
        rows = lambda k: np.asarray([own[k]])
    worse, better = (CL.cells(lab, rows(k), health=study.get("health"))
                     for lab, k in (("output", "output"), (f"layer {best}", best)))
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
    health = sh.get("health")
    if "per_seed" in sh:
        iv = lambda kind, who: _stack(sh["per_seed"], lambda p: p["interventions"][kind][who])
    else:  # one trained model
        iv = lambda kind, who: np.asarray([sh["interventions"][kind][who]["values"]])
    rev = CL.cells("reversed", iv("reverse", "transformer"), health=health)
    for kind in MONOTONE:
        tf = CL.cells("transformer", iv(kind, "transformer"), health=health)
        out.append(_claim(f"the {kind} reward map moves the transformer's answer more than PL-GD's", tf,
                          CL.cells("PL-GD", iv(kind, "gd_cosine")), sh, ""))
        out.append(_claim(f"the {kind} reward map moves the transformer's answer less than reversing the rewards",
                          rev, {**tf, "label": kind}, sh, ""))
    return out
