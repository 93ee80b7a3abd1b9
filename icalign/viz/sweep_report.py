"""The markdown file each sweep (reward noise, ablations) writes beside its result JSON.

Reads result dicts (as written to JSON). The claims and health gates it shows are those of
:mod:`icalign.analysis.sweep_claims`, recomputed from the stored values whenever a summary is
drawn, so an old result file is judged by the current rules; the claims stored in a file are
the ones its run printed. The results document's sections are :mod:`icalign.viz.sweeps` and
:mod:`icalign.viz.ablations`.
"""

from __future__ import annotations

from icalign.viz import md

from typing import Optional

import numpy as np

from icalign.analysis import claims as CL
from icalign.analysis import health as H
from icalign.analysis.ablations import FACTORS
from icalign.analysis.sweep_claims import (INTERVAL_NOTE, ablation_claims, ablation_health, noise_claims,
                                           noise_health)
from icalign.viz.md import table

__all__ = ["fmt", "noise_markdown", "ablation_markdown"]


def _num(x) -> float:
    return float(x) if x is not None else float("nan")


def fmt(summary: Optional[dict], i: int) -> str:
    if summary is None:
        return "diverged"
    m, lo, hi = (_num(summary[k][i]) for k in ("mean", "low", "high"))
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"


def _hardware(hw: dict) -> str:
    return (f"{hw.get('device', '?')} ({hw.get('backend', '?')}, {hw.get('device_count', '?')} device(s), "
            f"{hw.get('cpu_count', '?')} CPU cores)")


def _header(title: str, res: dict) -> str:
    return (f"# {title} ({res.get('name') or res.get('size') or 'in memory'})\n\n{md.size_note(res)}. Seeds {res['seeds']}; "
            f"{res['n_eval_contexts']} evaluation contexts. {INTERVAL_NOTE}. "
            f"Hardware: {_hardware(res.get('hardware') or {})}.\n")


def _health_table(health: dict, label) -> str:
    """Every trained model's health label and reason, its gap closed and its error at the largest
    t beside both trivial predictors' (from the gate; "-" for a file stored before it)."""
    rows = []
    for k, g in ((k, H.legacy(g)) for k, g in health.items()):
        ref, gap = g.get("references") or {}, (g.get("gap_closed") or {}).get("mean")
        rows.append([label(k), f"**{g['status']}**", g.get("reason", ""),
                     "-" if gap is None else f"{gap:.2f} [{g['gap_closed']['low']:.2f}, {g['gap_closed']['high']:.2f}]"]
                    + [f"{ref[p]:.3f}" if p in ref else "-" for p in ("model",) + H.PREDICTORS])
    t = next((f"t={H.legacy(g)['references']['t']}" for g in health.values() if H.legacy(g).get("references")),
             "(largest t)")
    return ("\n## Training health (icalign.analysis.health)\n\n"
            + table(["trained model", "status", "reason", "gap closed", f"model nmse {t}"]
                    + [f"{p} {t}" for p in H.PREDICTORS], rows) + "\n")


def _claims_section(cl: list[dict], t: int, stored: bool) -> str:
    note = "" if stored else ("\n(Per-unit values are missing from this file where a claim says so; "
                              "such claims use the conservative bound of icalign.analysis.claims.)\n")
    return (f"\n## Claims (normalised MSE at t = {t}; worse - better > 0 is the prediction)\n\n"
            + CL.table(cl) + "\n\n" + "\n".join(CL.line(c) for c in cl) + "\n" + note)


# ---------------------------------------------------------------------------------------------
# Reward noise
# ---------------------------------------------------------------------------------------------


def noise_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    cl = noise_claims(res)
    clean = str(res["train_levels"][0])
    stored = "per_seed" in res["transformer"][clean]["replace"][clean]["nmse"]
    health = _health_table(noise_health(res), lambda k: f"TF trained at p = {k}" if float(k) else "TF clean-trained")
    if claims_only:  # what a run prints: its models' health, then its claims
        return health + _claims_section(cl, ts[-1], stored)
    parts = [_header("Reward noise", res), health]
    i2 = ts.index(2) if 2 in ts else 0
    ref = res.get("reference", {})
    for kind, spec in res["corruptions"].items():
        rows = []
        for lv in (str(x) for x in spec["levels"]):
            noisy = res["transformer"].get(lv, {}).get(kind) if kind == "replace" else None
            row = [f"{spec['level_name']}={lv}"]
            for s in (res["transformer"][clean][kind][lv]["nmse"], noisy[lv]["nmse"] if noisy else None,
                      res["gd"]["adam"][kind][lv]["nmse"], res["gd"]["gd"][kind][lv]["nmse"]):
                row += ["-", "-"] if s is None else [fmt(s, i2), fmt(s, -1)]
            row += [f"{ref[p][kind][lv][-1]:.3f}" if ref else "not stored" for p in H.PREDICTORS]
            rows.append(row)
        heads = ["level"] + [f"{w} t={t}" for w in ("TF clean-trained", "TF trained at level", "GD adam", "GD plain")
                             for t in (ts[i2], ts[-1])] + [f"{p} t={ts[-1]}" for p in H.PREDICTORS]
        parts += [f"\n## Corruption model `{kind}` (normalised MSE)\n", table(heads, rows)]
    parts.append(_claims_section(cl, ts[-1], stored))
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Ablations
# ---------------------------------------------------------------------------------------------


def ablation_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    cl = ablation_claims(res)
    health = ablation_health(res)
    names = {v["arch"]: ", ".join(x["name"] for x in res["variants"] if x["arch"] == v["arch"]) for v in res["variants"]}
    if claims_only:  # what a run prints: its models' health, then its claims
        return _health_table(health, lambda k: names[k]) + _claims_section(cl, ts[-1], True)
    i2 = ts.index(2) if 2 in ts else 0
    ran = list(dict.fromkeys(v["factor"] for v in res["variants"]))
    missing = [f for f in FACTORS if f not in ran]
    rows = []
    for v in res["variants"]:
        a = res["architectures"].get(v["arch"], {})
        s = a.get("nmse") if a.get("status") == "ok" else None
        rows.append([v["factor"], v["name"] + (" (base)" if v["is_base"] else ""), fmt(s, i2), fmt(s, -1),
                     health[v["arch"]]["status"] if v["arch"] in health else a.get("status", "missing")])
    for name, g in res.get("gd", {}).items():
        rows.append(["GD learner", name, fmt(g["nmse"], i2), fmt(g["nmse"], -1), "reference"])
    for name, curve in res.get("reference", {}).items():
        rows.append(["trivial predictor", name, f"{curve[i2]:.3f}", f"{curve[-1]:.3f}", "reference"])
    parts = [_header("Ablations", res),
             f"Factors run: {', '.join(ran)}." + (f" Not run here: {', '.join(missing)}." if missing else "") + "\n",
             table(["factor", "variant", f"nmse t={ts[i2]}", f"nmse t={ts[-1]}", "health"], rows),
             _health_table(health, lambda k: names[k]),
             _claims_section(cl, ts[-1], True)]
    return "\n".join(parts) + "\n"
