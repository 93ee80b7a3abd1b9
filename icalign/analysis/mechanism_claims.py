"""Verdicts of the mechanism study, from its stored intervals only (the rule of
``icalign.analysis.report.verdict``: supported when two 95% intervals do not overlap in the
predicted direction, contradicted when they do not overlap the other way, else not resolved)."""

from __future__ import annotations

from icalign.analysis.interventions import MONOTONE
from icalign.analysis.report import verdict

__all__ = ["LABELS", "claims", "closest"]

LABELS = {"minimiser": "the minimiser of the training loss", "gd_cosine": "fitted GD (cosine PL)",
          "gd_sqdist": "fitted GD (squared-distance PL)", "exact": "exact recovery",
          "transformer": "the transformer"}


def _fmt(s: dict, i: int | None = None) -> str:
    pick = (lambda k: s[k]) if i is None else (lambda k: s[k][i])
    return f"{float(pick('mean')):.3f} [{float(pick('low')):.3f}, {float(pick('high')):.3f}]"


def _as_series(s: dict) -> dict:
    return {k: [s[k]] for k in ("mean", "low", "high")}


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
            out.append({"claim": f"{task}, t = {t}: the transformer is closer to {LABELS[order[0]]} than to "
                                 f"{LABELS[other]}",
                        "verdict": verdict(d[other], d[order[0]], i),
                        "values": f"{order[0]} {_fmt(d[order[0]], i)} vs {other} {_fmt(d[other], i)}"})
    return out


def _layer_claim(layers: list[dict]) -> list[dict]:
    """Does some intermediate layer, read by the model's own read-out, point closer to y* than
    the output does?"""
    inner = [r for r in layers if r["layer"] not in (0, "output")]
    if not inner:
        return []
    best = min(inner, key=lambda r: r["own"]["nmse"]["mean"])
    out_row = layers[-1]["own"]["nmse"]
    return [{"claim": f"read by the model's own read-out, layer {best['layer']} points closer to y* than the output does",
             "verdict": verdict(_as_series(out_row), _as_series(best["own"]["nmse"]), 0),
             "values": f"layer {best['layer']} {_fmt(best['own']['nmse'])} vs output {_fmt(out_row)}"}]


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
        out.append({"claim": f"the {kind} reward map moves the transformer's answer more than PL-GD's",
                    "verdict": verdict(_as_series(tf), _as_series(pl), 0),
                    "values": f"transformer {_fmt(tf)} vs PL-GD {_fmt(pl)}"})
        out.append({"claim": f"the {kind} reward map moves the transformer's answer less than reversing the rewards",
                    "verdict": verdict(_as_series(rev), _as_series(tf), 0),
                    "values": f"reversed {_fmt(rev)} vs {kind} {_fmt(tf)}"})
    return out
