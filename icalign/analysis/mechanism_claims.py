"""Verdicts of the mechanism study, by the claim engine (:mod:`icalign.analysis.claims`).

Every comparison is between two learners on the same contexts, one trained model, so contexts
are the unit. The study stores each learner's mean and 95% interval over contexts, not the
per-context values, so the engine bounds the sd of the paired difference by the sum of the two
sds: conservative, so a "supported" stays true."""

from __future__ import annotations

from icalign.analysis import claims as CL
from icalign.analysis.interventions import MONOTONE

__all__ = ["LABELS", "claims", "closest"]

LABELS = {"minimiser": "the minimiser of the training loss", "gd_cosine": "fitted GD (cosine PL)",
          "gd_sqdist": "fitted GD (squared-distance PL)", "exact": "exact recovery",
          "transformer": "the transformer"}


def _fmt(s: dict, i: int | None = None) -> str:
    pick = (lambda k: s[k]) if i is None else (lambda k: s[k][i])
    return f"{float(pick('mean')):.3f} [{float(pick('low')):.3f}, {float(pick('high')):.3f}]"


def _as_series(s: dict) -> dict:
    return {**{k: [s[k]] for k in ("mean", "low", "high")}, **{k: s[k] for k in ("n", "unit") if k in s}}


def _n(s: dict) -> int:
    """The number of contexts behind a stored interval; results written before it was stored
    cannot be judged (guessing it would change the interval)."""
    if "n" not in s:
        raise ValueError("this mechanism result stores no number of contexts with its intervals; rerun "
                         "`icalign run mechanism` to judge its claims")
    return int(s["n"])


def _claim(text: str, worse: dict, better: dict, i: int, n: int, labels=("worse", "better")) -> dict:
    """``worse`` predicted above ``better`` at index ``i`` of their series, over ``n`` contexts."""
    arms = [CL.arm(label, {"n": n, "unit": "contexts", **s}, i, n_contexts=n) for label, s in zip(labels, (worse, better))]
    return CL.claim(text, *arms)


def closest(study: dict, i: int) -> list[str]:
    """References ordered by the transformer's mean distance to them at t index i."""
    return sorted(study["distance"], key=lambda r: float(study["distance"][r]["mean"][i]))


def _distance_claims(study: dict, task: str, t_values) -> list[dict]:
    """The closest reference against the next closest, and against exact recovery (the
    mechanism that reads reward values) when that is not already the one compared."""
    out, ts, d = [], study["t"], study["distance"]
    for t in t_values:
        i = ts.index(t)
        order = closest(study, i)
        rivals = [order[1]] + ([r for r in ("exact",) if r not in order[:2] and r in d])
        for other in rivals:
            c = _claim(f"{task}, t = {t}: the transformer is closer to {LABELS[order[0]]} than to {LABELS[other]}",
                       d[other], d[order[0]], i, _n(d[other]), (other, order[0]))
            out.append({**c, "values": f"{order[0]} {_fmt(d[order[0]], i)} vs {other} {_fmt(d[other], i)}"})
    return out


def _layer_claim(layers: list[dict]) -> list[dict]:
    """Does some intermediate layer, read by the model's own read-out, point closer to y* than
    the output does?"""
    inner = [r for r in layers if r["layer"] not in (0, "output")]
    if not inner:
        return []
    best = min(inner, key=lambda r: r["own"]["nmse"]["mean"])
    out_row = layers[-1]["own"]["nmse"]
    c = _claim(f"read by the model's own read-out, layer {best['layer']} points closer to y* than the output does",
               _as_series(out_row), _as_series(best["own"]["nmse"]), 0, _n(out_row), ("output", f"layer {best['layer']}"))
    return [{**c, "values": f"layer {best['layer']} {_fmt(best['own']['nmse'])} vs output {_fmt(out_row)}"}]


def claims(res: dict) -> list[dict]:
    """Closest references at t = 2 and at the largest t for each study; whether an
    intermediate layer is closer to y* than the output; for each monotone reward map, whether
    the transformer's answer moves more than PL-GD's (which cannot move) and less than under
    reversed rewards."""
    sh = res["shared"]
    out = _distance_claims(sh, "shared queries", (2, sh["t"][-1]))
    if "triplet" in res:
        out += _distance_claims(res["triplet"], "per-triplet queries", (2, res["triplet"]["t"][-1]))
    out += _layer_claim(sh["layers"])
    iv = sh["interventions"]
    for kind in MONOTONE:
        tf, pl, rev = iv[kind]["transformer"], iv[kind]["gd_cosine"], iv["reverse"]["transformer"]
        m = _n(tf)
        c = _claim(f"the {kind} reward map moves the transformer's answer more than PL-GD's", _as_series(tf),
                   _as_series(pl), 0, m, ("transformer", "PL-GD"))
        out.append({**c, "values": f"transformer {_fmt(tf)} vs PL-GD {_fmt(pl)}"})
        c = _claim(f"the {kind} reward map moves the transformer's answer less than reversing the rewards",
                   _as_series(rev), _as_series(tf), 0, m, ("reversed", kind))
        out.append({**c, "values": f"reversed {_fmt(rev)} vs {kind} {_fmt(tf)}"})
    return out
