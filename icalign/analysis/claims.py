"""The claim engine: one rule for every verdict of the project.

A claim says that one learner ("worse", predicted to have the higher error) is worse than
another ("better") on the same evaluation contexts. Its **effect** is worse - better,
computed from paired differences, one per *unit*:

* two trained models: seeds are the unit. Seed s of each model is averaged over the
  contexts, and d_s = worse_s - better_s (models paired by seed index: same data stream);
* a trained model against a learner without a seed (GD): d_s = model_s - mean(GD), both
  on the same contexts (the mean of a paired difference is the difference of the means);
* two learners without seeds: contexts are the unit, d_c = worse_c - better_c.

The 95% Student-t interval of mean(d) over the units decides the verdict:

* **supported**: the interval lies above 0;
* **contradicted**: it lies below 0;
* **not resolved**: it contains 0; the claim reports how many units a test would need to
  detect the observed effect with 80% power, if it were the true one;
* **not trained**: a trained model in the claim failed its training-health gate
  (:mod:`icalign.analysis.health`); it is no evidence either way.

Every claim also reports the smallest effect its units could detect with 80% power
(:func:`icalign.core.stats.mde`). Old result files that stored only each learner's mean and
interval are re-analysed exactly where that is possible (a model against a fixed reference:
the sd of d_s is the model's seed sd, recovered from its interval). Where the pairing needs
per-unit values that were not stored, the sd of d is bounded by sd_worse + sd_better (never
smaller than the truth, so a "supported" stays true), and the claim says so.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from icalign.core import stats

__all__ = ["arm", "sample", "effect", "claim", "agreement", "unresolvable", "verdict", "VERDICTS", "line", "table",
           "short"]

VERDICTS = ("supported", "contradicted", "not resolved", "not trained")
_UNITS = ("seeds", "contexts")


def _num(x) -> float:
    return float("nan") if x is None or (isinstance(x, str) and x.lower() == "nan") else float(x)


def arm(label: str, summary: dict, i: int = -1, *, n_contexts: int, health: Optional[dict] = None) -> dict:
    """One side of a claim: learner ``label`` at t index ``i`` of its result ``summary``
    (as written by :func:`icalign.core.stats.summarise`), with its units' values when the
    summary kept them (``per_seed`` or ``last``; ``last`` is the last t only) and the
    training health of a trained model."""
    unit = summary.get("unit", "seeds")
    if unit not in _UNITS:
        raise ValueError(f"summary unit must be one of {_UNITS}, got {unit!r}")
    values = None
    if unit == "seeds" and "per_seed" in summary:
        values = [float(row[i]) for row in summary["per_seed"]]
    elif unit == "contexts" and "last" in summary and i in (-1, len(summary["mean"]) - 1):
        values = [float(v) for v in summary["last"]]
    return {"label": label, "unit": unit, "values": values, "mean": _num(summary["mean"][i]),
            "low": _num(summary["low"][i]), "high": _num(summary["high"][i]), "n": int(summary["n"]),
            "n_contexts": int(n_contexts), "health": health}


def sample(label: str, values, unit: str, *, n_contexts: int, health: Optional[dict] = None) -> dict:
    """One side of a claim from its units' values directly (one per seed or per context)."""
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}")
    s = stats.t_interval(values)
    return {"label": label, "unit": unit, "values": [float(v) for v in np.ravel(values)], "mean": s["mean"],
            "low": s["low"], "high": s["high"], "n": s["n"], "n_contexts": int(n_contexts), "health": health}


def _sd(a: dict) -> float:
    return stats.sd_from_interval(a["mean"], a["low"], a["high"], a["n"]) if a["values"] is None \
        else float(np.std(a["values"], ddof=1)) if len(a["values"]) > 1 else float("nan")


def _interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    if n < 2 or not np.isfinite(sd):
        return float("nan"), float("nan")
    from scipy import stats as st

    half = st.t.ppf(0.5 + stats.LEVEL / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def effect(worse: dict, better: dict) -> dict:
    """worse - better from paired differences (module docstring): {"effect", "low", "high",
    "sd", "unit", "n", "n_contexts", "pairing", "mde", "needed"}."""
    if worse["n_contexts"] != better["n_contexts"]:
        raise ValueError(f"claims compare learners on the same contexts; got {worse['n_contexts']} and "
                         f"{better['n_contexts']} contexts")
    units = {worse["unit"], better["unit"]}
    unit = "seeds" if "seeds" in units else "contexts"
    a, b = worse, better
    if len(units) == 2:  # a model against a learner without a seed: the latter is a fixed reference
        model, ref = (a, b) if a["unit"] == "seeds" else (b, a)
        sign = 1.0 if model is a else -1.0
        if model["values"] is not None:
            d = sign * (np.asarray(model["values"]) - ref["mean"])
            pairing = "paired: each seed against the reference on the same contexts"
        else:
            d, sd = None, _sd(model)
            pairing = "paired, recovered from the stored seed interval (per-seed values not stored)"
    elif a["values"] is not None and b["values"] is not None:
        if len(a["values"]) != len(b["values"]):
            raise ValueError(f"paired arms need the same number of {unit}: {len(a['values'])} vs {len(b['values'])}")
        d = np.asarray(a["values"]) - np.asarray(b["values"])
        pairing = "paired by seed" if unit == "seeds" else "paired by context"
    else:
        d, sd = None, _sd(a) + _sd(b)
        pairing = (f"bound: per-{unit[:-1]} values not stored, so the sd of the difference is bounded by "
                   f"the sum of the two sds (conservative)")
    if d is not None:
        s = stats.t_interval(d)
        mean, lo, hi, sd, n = s["mean"], s["low"], s["high"], s["sd"], s["n"]
    else:
        n = a["n"] if a["unit"] == unit else b["n"]
        mean = a["mean"] - b["mean"]
        lo, hi = _interval(mean, sd, n)
    return {"effect": mean, "low": lo, "high": hi, "sd": sd, "unit": unit, "n": int(n),
            "n_contexts": worse["n_contexts"], "pairing": pairing, "mde": stats.mde(sd, n),
            "needed": stats.units_needed(mean, sd)}


def verdict(eff: dict, arms: Sequence[dict] = ()) -> tuple[str, str]:
    """(verdict, reason) of a claim with effect ``eff`` whose trained models are ``arms``."""
    sick = [a for a in arms if a.get("health") and a["health"]["status"] != "trained"]
    if sick:
        return "not trained", "; ".join(f"{a['label']} did not train ({a['health']['reason']})" for a in sick)
    lo, hi = eff["low"], eff["high"]
    if not np.isfinite([lo, hi]).all():
        return "not resolved", "no interval (fewer than two units)"
    if lo > 0:
        return "supported", ""
    if hi < 0:
        return "contradicted", ""
    need = eff["needed"]
    return "not resolved", ("the interval contains 0; " + (
        f"{need} {eff['unit']} would detect the observed effect with 80% power" if need
        else f"the observed effect is too small to detect with {stats.MAX_UNITS:,} {eff['unit']}"))


def claim(text: str, worse: dict, better: dict, metric: str = "nmse", t: Optional[int] = None) -> dict:
    """A claim record (as stored in result files and rendered in markdown and the README)."""
    eff = effect(worse, better)
    v, reason = verdict(eff, [worse, better])
    return {"claim": text, "worse": worse["label"], "better": better["label"], "metric": metric, "t": t,
            "worse_value": _value(worse), "better_value": _value(better), **eff, "verdict": v, "reason": reason}


def unresolvable(text: str, worse: str, better: str, verdict_: str, reason: str, metric: str = "nmse",
                 t: Optional[int] = None) -> dict:
    """A claim record without numbers (e.g. a variant that diverged: ``verdict_`` "not trained")."""
    if verdict_ not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict_!r}")
    nan = float("nan")
    return {"claim": text, "worse": worse, "better": better, "metric": metric, "t": t, "worse_value": "-",
            "better_value": "-", "effect": nan, "low": nan, "high": nan, "sd": nan, "unit": "seeds", "n": 0,
            "n_contexts": 0, "pairing": "none", "mde": nan, "needed": None, "verdict": verdict_, "reason": reason}


def _value(a: dict) -> str:
    return f"{a['mean']:.3f}" + (f" [{a['low']:.3f}, {a['high']:.3f}]" if np.isfinite([a["low"], a["high"]]).all()
                                 else "")


def _f(x, nd=3) -> str:
    x = _num(x)
    return "nan" if not np.isfinite(x) else f"{x:+.{nd}f}"


def short(c: dict) -> str:
    """effect [interval] (units): the numbers of a claim in one phrase."""
    return (f"{_f(c['effect'])} [{_f(c['low'])}, {_f(c['high'])}], {c['n']} {c['unit']}"
            + ("" if c["unit"] == "contexts" else f" x {c['n_contexts']} contexts"))


def line(c: dict) -> str:
    """One markdown bullet: the claim, its verdict, effect, interval, units, detectable effect,
    units needed, and why (not trained / not resolved)."""
    mde = _num(c["mde"])
    txt = (f"- {c['claim']}: **{c['verdict']}**. {c['worse']} minus {c['better']}: {short(c)}"
           + (f"; smallest effect detectable at 80% power {mde:.3f}" if np.isfinite(mde) else ""))
    if c["pairing"].startswith("bound") or "recovered" in c["pairing"]:
        txt += f" ({c['pairing']})"
    return txt + (f". {c['reason'][0].upper()}{c['reason'][1:]}." if c["reason"] else ".")


def table(claims: Sequence[dict]) -> str:
    """A markdown table of claims."""
    rows = ["| claim | worse - better [95% interval] | units | detectable (80%) | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        need = c["needed"]
        v = c["verdict"] + (f" (needs {need} {c['unit']})" if c["verdict"] == "not resolved" and need else "")
        rows.append(f"| {c['claim']} | {_f(c['effect'])} [{_f(c['low'])}, {_f(c['high'])}] | {c['n']} {c['unit']}"
                    f"{'' if c['unit'] == 'contexts' else ' x ' + str(c['n_contexts']) + ' contexts'} | "
                    f"{_num(c['mde']):.3f} | **{v}** |")
    return "\n".join(rows)


def agreement(text: str, a: dict, b: dict, margin: float, margin_text: str = "the margin") -> dict:
    """A claim that ``a`` and ``b`` agree within ``margin`` (an equivalence claim), from the
    same paired effect a - b as :func:`claim`: **supported** when its whole 95% interval lies
    inside (-margin, +margin), **contradicted** when it lies wholly outside [-margin, +margin]
    (the two surely differ by more than the margin), **not resolved** otherwise, and **not
    trained** when either side failed its health gate. The record is :func:`claim`'s, with
    ``worse`` = a, ``better`` = b and the margin added."""
    m = _num(margin)
    if not (np.isfinite(m) and m > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    eff = effect(a, b)
    v, reason = verdict(eff, [a, b])
    if v != "not trained":
        lo, hi = eff["low"], eff["high"]
        if not np.isfinite([lo, hi]).all():
            v, reason = "not resolved", "no interval (fewer than two units)"
        elif -m < lo and hi < m:
            v, reason = "supported", f"the interval lies inside +-{m:.3g} ({margin_text})"
        elif hi < -m or lo > m:
            v, reason = "contradicted", f"the interval lies outside +-{m:.3g} ({margin_text})"
        else:
            v, reason = "not resolved", f"the interval reaches past +-{m:.3g} ({margin_text})"
    return {"claim": text, "worse": a["label"], "better": b["label"], "metric": "agreement", "t": None,
            "worse_value": _value(a), "better_value": _value(b), **eff, "margin": m, "verdict": v, "reason": reason}
