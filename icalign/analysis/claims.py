"""The claim engine: one rule for every verdict of the project.

A claim says that one learner ("worse", predicted to have the higher error) is worse than
another ("better") on the same evaluation contexts. Its **effect** is worse - better, and
the population its interval is about depends on what the result stored:

* **seeds x contexts** (a trained model whose result kept every seed's value on every
  context, ``cells``): the contexts are split into disjoint blocks, context c to seed c mod S,
  and d_s = mean over block s of (worse - better); a learner without a seed (GD) is paired
  context by context. The d_s are independent draws of (trained model, contexts), so their
  Student-t interval covers new seeds *and* new contexts: it carries the seed variance, the
  model x context interaction that seeds share on common contexts, and the residual. (Seed
  means on common contexts share that interaction and cover only these contexts, the more
  surely the more seeds; ``tests/test_calibration.py`` measures both.) With one seed,
  contexts are the unit and the interval is about that one trained model.
* **seeds, on these contexts** (an older file that kept only each seed's mean over the shared
  contexts, ``per_seed``): d_s = worse_s - better_s. The interval is about new seeds on
  *these* contexts, and every such claim says so.
* **contexts** (two learners without seeds): d_c = worse_c - better_c, paired by context.

The 95% Student-t interval of mean(d) over the units decides the verdict:

* **supported**: the interval lies above 0;
* **contradicted**: it lies below 0;
* **not resolved**: it contains 0;
* **not trained**: a trained model in the claim failed its training-health gate
  (:mod:`icalign.analysis.health`; status "failed", or "not trained" in files judged by the
  old gate); it is no evidence either way. An under-converged model (or one whose health is
  unknown) keeps its verdict, with that label beside it.

Power is a range, not a number: the smallest effect detected with 80% power
(:func:`icalign.core.stats.mde`) at the sample sd of d and at both ends of that sd's 95%
interval (:func:`icalign.core.stats.sd_range`): three seeds know their sd to a factor of six.

Files that stored only means and intervals are re-analysed exactly where possible (a model
against a fixed reference); elsewhere the sd of d is bounded by sd_worse + sd_better.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from icalign.core import stats

__all__ = ["arm", "sample", "cells", "effect", "claim", "agreement", "unresolvable", "verdict", "VERDICTS", "line",
           "table", "short", "blocks", "health_note", "withheld", "POPULATIONS"]

VERDICTS, _UNITS = ("supported", "contradicted", "not resolved", "not trained"), ("seeds", "contexts")
#: What an interval is about, by how the claim's units were formed (module docstring).
POPULATIONS = {"seeds x contexts": "new seeds and new contexts",
               "one seed": "new contexts, for this one trained model",
               "seeds, these contexts": "new seeds, on these evaluation contexts only",
               "contexts": "new contexts"}


def withheld(h: Optional[dict]) -> bool:
    """Withhold: the gate failed the model, or the old gate said it did not train (a file
    judged only by the old gate, read as "unknown" by ``health.legacy``): it may have failed."""
    return bool(h) and (h["status"] in ("failed", "not trained") or (h.get("old") or {}).get("status") == "not trained")


def _num(x) -> float:  # JSON stores NaN as "nan" or null
    return float("nan") if x is None or (isinstance(x, str) and x.lower() == "nan") else float(x)


def _arm(label, unit, values, grid, mean, low, high, n, n_contexts, health) -> dict:
    return {"label": label, "unit": unit, "values": values, "cells": grid, "mean": _num(mean), "low": _num(low),
            "high": _num(high), "n": int(n), "n_contexts": int(n_contexts), "health": health}


def arm(label: str, summary: dict, i: int = -1, *, n_contexts: int, health: Optional[dict] = None) -> dict:
    """One side of a claim: learner ``label`` at t index ``i`` of its result ``summary``
    (as written by :func:`icalign.core.stats.summarise`), with its units' values when the
    summary kept them (``per_seed``; ``cells`` and ``last`` are the last t only) and the
    training health of a trained model."""
    unit = summary.get("unit", "seeds")
    if unit not in _UNITS:
        raise ValueError(f"summary unit must be one of {_UNITS}, got {unit!r}")
    last = i in (-1, len(summary["mean"]) - 1)
    values = grid = None
    if unit == "seeds" and "per_seed" in summary:
        values = [float(row[i]) for row in summary["per_seed"]]
    elif unit == "contexts" and "last" in summary and last:
        values = [float(v) for v in summary["last"]]
    if unit == "seeds" and "cells" in summary and last:
        grid = np.asarray(summary["cells"], float)
        if grid.shape != (int(summary["n"]), int(n_contexts)):
            raise ValueError(f"{label}: stored cells have shape {grid.shape}, expected (seeds {summary['n']}, "
                             f"contexts {n_contexts})")
    return _arm(label, unit, values, grid, summary["mean"][i], summary["low"][i], summary["high"][i], summary["n"],
                n_contexts, health)


def sample(label: str, values, unit: str, *, n_contexts: int, health: Optional[dict] = None,
           own_contexts: bool = False) -> dict:
    """One side of a claim from its units' values directly (one per seed or per context).
    ``own_contexts``: each seed's value is over contexts of its own (e.g. its training
    stream's), so the seeds are draws of (model, contexts) and the claim covers both."""
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}")
    s = stats.t_interval(values)
    return {**_arm(label, unit, [float(v) for v in np.ravel(values)], None, s["mean"], s["low"], s["high"], s["n"],
                   n_contexts, health), "own": bool(own_contexts)}


def cells(label: str, values, *, health: Optional[dict] = None) -> dict:
    """One side of a claim from per-(seed, context) values: an (S, C) array for a trained
    model (S seeds, S may be 1, on C contexts) or a 1-D (C,) array for a learner without a
    seed. The arm's own mean and interval are over seed means (or contexts)."""
    v = np.asarray(values, float)
    if v.ndim not in (1, 2) or v.size == 0:
        raise ValueError(f"{label}: values must be a non-empty (seeds, contexts) or (contexts,) array, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{label}: values must be finite, got {int(np.sum(~np.isfinite(v)))} NaN or inf entries "
                         "(a diverged learner is reported as such, not averaged)")
    if v.ndim == 1:
        return sample(label, v, "contexts", n_contexts=v.size, health=health)
    per = v.mean(axis=1)
    s = stats.t_interval(per if len(per) > 1 else v[0])  # one seed: its own interval is over the contexts
    return _arm(label, "seeds", per.tolist(), v, s["mean"], s["low"], s["high"], v.shape[0], v.shape[1], health)


def blocks(d_SxC: np.ndarray) -> np.ndarray:
    """Each seed's mean paired difference over its own block of contexts, (..., S, C) ->
    (..., S): context c belongs to seed c mod S (equal blocks of C // S; the C mod S last
    contexts are left out so that every seed's mean has the same precision). Disjoint blocks
    make the seeds' values independent draws of (trained model, contexts); the engine's seeds
    x contexts interval is over them."""
    d = np.asarray(d_SxC, float)
    S, C = d.shape[-2:]
    if C < S:
        raise ValueError(f"a seeds x contexts interval needs at least one context per seed: {S} seeds, {C} contexts")
    k = C // S
    own = d[..., :k * S].reshape(*d.shape[:-1], k, S)  # [..., s, j, r]: context j * S + r
    return np.diagonal(own, axis1=-3, axis2=-1).mean(axis=-2)  # [..., j, s] at r = s, averaged over j


def _sd(a: dict) -> float:
    return stats.sd_from_interval(a["mean"], a["low"], a["high"], a["n"]) if a["values"] is None \
        else float(np.std(a["values"], ddof=1)) if len(a["values"]) > 1 else float("nan")


def _interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    if n < 2 or not np.isfinite(sd):
        return float("nan"), float("nan")
    from scipy import stats as st

    half = st.t.ppf(0.5 + stats.LEVEL / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _per_context(a: dict) -> Optional[np.ndarray]:
    """(S, C) for a trained arm with cells, (1, C) for a seedless arm with per-context values."""
    if a["cells"] is not None or a["unit"] != "contexts" or a["values"] is None:
        return a["cells"]
    return np.asarray(a["values"], float)[None, :]


def _units(worse: dict, better: dict):
    """(d, unit, population, pairing) of the paired differences, or (None, ...) with the
    bound's pairing when the values needed were not stored."""
    a, b = worse, better
    units = {a["unit"], b["unit"]}
    ga, gb = _per_context(a), _per_context(b)
    if units == {"contexts"}:
        if a["values"] is not None and b["values"] is not None:
            return np.asarray(a["values"]) - np.asarray(b["values"]), "contexts", "contexts", "paired by context"
        return None, "contexts", "contexts", ("bound: per-context values not stored, so the sd of the difference is "
                                              "bounded by the sum of the two sds (conservative)")
    if (ga is not None and gb is not None and (a["cells"] is not None or b["cells"] is not None)
            and ga.shape[1] >= max(ga.shape[0], gb.shape[0])):  # blocks need a context per seed
        if ga.shape[0] > 1 and gb.shape[0] > 1 and ga.shape[0] != gb.shape[0]:
            raise ValueError(f"paired arms need the same number of seeds: {ga.shape[0]} vs {gb.shape[0]}")
        d = ga - gb  # a seedless arm (1, C) broadcasts over the model's seeds
        if d.shape[0] == 1:
            return d[0], "contexts", "one seed", "paired by context (one trained model)"
        return (blocks(d), "seeds", "seeds x contexts",
                f"paired by context; each seed on its own {d.shape[1] // d.shape[0]} of the {d.shape[1]} contexts")
    pop = "seeds x contexts" if all(x.get("own") for x in (a, b) if x["unit"] == "seeds") else "seeds, these contexts"
    if len(units) == 2:  # a model against a learner without a seed, treated as a fixed reference
        model, ref = (a, b) if a["unit"] == "seeds" else (b, a)
        sign = 1.0 if model is a else -1.0
        if model["values"] is not None:
            return (sign * (np.asarray(model["values"]) - ref["mean"]), "seeds", pop,
                    "paired: each seed's mean against the reference on the same contexts")
        return None, "seeds", pop, "paired, recovered from the stored seed interval (per-seed values not stored)"
    if a["values"] is not None and b["values"] is not None:
        if len(a["values"]) != len(b["values"]):
            raise ValueError(f"paired arms need the same number of seeds: {len(a['values'])} vs {len(b['values'])}")
        return (np.asarray(a["values"]) - np.asarray(b["values"]), "seeds", pop,
                "paired by seed" + ("; each seed over contexts of its own" if pop == "seeds x contexts" else ""))
    return None, "seeds", pop, ("bound: per-seed values not stored, so the sd of the difference is bounded by the "
                                "sum of the two sds (conservative)")


def effect(worse: dict, better: dict, power: bool = True) -> dict:
    """worse - better from paired differences (module docstring): {"effect", "low", "high",
    "sd", "unit", "n", "n_contexts", "population", "pairing", "mde", "mde_range"}
    (``power=False`` leaves the last two NaN: simulations that need only the interval)."""
    if worse["n_contexts"] != better["n_contexts"]:
        raise ValueError(f"claims compare learners on the same contexts; got {worse['n_contexts']} and "
                         f"{better['n_contexts']} contexts")
    d, unit, population, pairing = _units(worse, better)
    if d is not None:
        s = stats.t_interval(d)
        mean, lo, hi, sd, n = s["mean"], s["low"], s["high"], s["sd"], s["n"]
    else:
        if pairing.startswith("paired, recovered"):
            sd = _sd(worse if worse["unit"] == "seeds" else better)
        else:
            sd = _sd(worse) + _sd(better)
        n = worse["n"] if worse["unit"] == unit else better["n"]
        mean = worse["mean"] - better["mean"]
        lo, hi = _interval(mean, sd, n)
    sd_lo, sd_hi = stats.sd_range(sd, n) if power else (float("nan"),) * 2
    return {"effect": mean, "low": lo, "high": hi, "sd": sd, "unit": unit, "n": int(n),
            "n_contexts": worse["n_contexts"], "population": population, "pairing": pairing,
            "mde": stats.mde(sd, n) if power else float("nan"), "mde_range": [stats.mde(sd_lo, n), stats.mde(sd_hi, n)]}


def health_note(arms: Sequence[dict]) -> str:
    """The training-health labels that do not withhold a verdict (under-converged, unknown,
    an old file's "trained"), as one phrase ("" when every model converged); the reasons are
    in each result's health table."""
    notes = [f"{a['label']}: {a['health']['status']}" for a in arms if a.get("health")
             and not withheld(a["health"]) and a["health"]["status"] != "converged"]
    return "; ".join(dict.fromkeys(notes))  # a learner on both sides (two noise levels) once


def verdict(eff: dict, arms: Sequence[dict] = ()) -> tuple[str, str]:
    """(verdict, reason) of a claim with effect ``eff`` whose trained models are ``arms``."""
    sick = [a for a in arms if withheld(a.get("health"))]
    if sick:
        return "not trained", "; ".join(dict.fromkeys(  # the first reason; the rest are in its health table
            f"{a['label']} failed its training-health gate ({a['health']['reason'].split('; ')[0]})" for a in sick))
    lo, hi = eff["low"], eff["high"]
    if not np.isfinite([lo, hi]).all():
        return "not resolved", "no interval (fewer than two units)"
    if lo > 0:
        return "supported", ""
    if hi < 0:
        return "contradicted", ""
    return "not resolved", "the interval contains 0"


def claim(text: str, worse: dict, better: dict, metric: str = "nmse", t: Optional[int] = None) -> dict:
    """A claim record (as stored in result files and rendered in markdown and the README)."""
    eff = effect(worse, better)
    v, reason = verdict(eff, [worse, better])
    return {"claim": text, "worse": worse["label"], "better": better["label"], "metric": metric, "t": t,
            "worse_value": _value(worse), "better_value": _value(better), **eff, "verdict": v, "reason": reason,
            "health": health_note([worse, better])}


def unresolvable(text: str, worse: str, better: str, verdict_: str, reason: str, metric: str = "nmse",
                 t: Optional[int] = None) -> dict:
    """A claim record without numbers (e.g. a variant that diverged: ``verdict_`` "not trained")."""
    if verdict_ not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict_!r}")
    nan = float("nan")
    return {"claim": text, "worse": worse, "better": better, "metric": metric, "t": t, "worse_value": "-",
            "better_value": "-", "effect": nan, "low": nan, "high": nan, "sd": nan, "unit": "seeds", "n": 0,
            "n_contexts": 0, "population": "none", "pairing": "none", "mde": nan, "mde_range": [nan, nan],
            "verdict": verdict_, "reason": reason, "health": ""}


def _value(a: dict) -> str:
    return f"{a['mean']:.3f}" + (f" [{a['low']:.3f}, {a['high']:.3f}]" if np.isfinite([a["low"], a["high"]]).all()
                                 else "")


def _f(x, nd=3) -> str:
    x = _num(x)
    return "nan" if not np.isfinite(x) else f"{x:+.{nd}f}"


def _pop(c: dict) -> str:  # records written before populations were named
    return c.get("population") or ("contexts" if c["unit"] == "contexts" else "seeds, these contexts")


def _units_text(c: dict) -> str:
    pop = _pop(c)
    if pop == "seeds x contexts":
        own = "contexts of its own" in c["pairing"]
        return f"{c['n']} seeds" + (", each on contexts of its own" if own else f" x {c['n_contexts']} contexts")
    if pop == "one seed":
        return f"1 seed x {c['n']} contexts"
    return f"{c['n']} contexts" if c["unit"] == "contexts" else f"{c['n']} seeds on {c['n_contexts']} shared contexts"


def _about(c: dict) -> str:
    return POPULATIONS.get(_pop(c), _pop(c))


def _mde(c: dict) -> str:
    m, r = _num(c["mde"]), [_num(x) for x in c.get("mde_range", [float("nan")] * 2)]
    if not np.isfinite(m):
        return "-"
    return f"{m:.3f}" + (f" ({r[0]:.3f}-{r[1]:.3f})" if np.isfinite(r).all() else "")


def short(c: dict) -> str:
    """effect [interval], units (the population): the numbers of a claim in one phrase."""
    return f"{_f(c['effect'])} [{_f(c['low'])}, {_f(c['high'])}], {_units_text(c)} (about {_about(c)})"


def line(c: dict) -> str:
    """One markdown bullet: the claim, its verdict, effect, interval, units and the population
    the interval is about, the detectable effect with its range, training-health labels, and
    why (not trained / not resolved)."""
    txt = f"- {c['claim']}: **{c['verdict']}**. {c['worse']} minus {c['better']}: {short(c)}"
    if np.isfinite(_num(c["mde"])):
        txt += f"; smallest effect detectable at 80% power {_mde(c)} (range: the sd's 95% interval)"
    if c["pairing"].startswith("bound") or "recovered" in c["pairing"]:
        txt += f" ({c['pairing']})"
    if c.get("health"):
        txt += f"; training health: {c['health']}"
    return txt + (f". {c['reason'][0].upper()}{c['reason'][1:]}." if c["reason"] else ".")


def table(claims: Sequence[dict]) -> str:
    """A markdown table of claims."""
    rows = ["| claim | worse - better [95% interval] | units (interval about) | detectable (80%), range | verdict |",
            "|---|---|---|---|---|"]
    for c in claims:
        v = c["verdict"] + (" (under-converged)" if "under-converged" in c.get("health", "")
                            and c["verdict"] != "not trained" else "")
        rows.append(f"| {c['claim']} | {_f(c['effect'])} [{_f(c['low'])}, {_f(c['high'])}] | {_units_text(c)} "
                    f"({_about(c)}) | {_mde(c)} | **{v}** |")
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
            "worse_value": _value(a), "better_value": _value(b), **eff, "margin": m, "verdict": v, "reason": reason,
            "health": health_note([a, b])}
