"""The claims of the sweeps (reward noise, ablations) and their markdown summaries.

Reads result dicts (as written to JSON). Every claim goes through the one claim engine
(:mod:`icalign.analysis.claims`: paired differences, seeds as the unit for trained models,
power) and every trained model through its training-health gate
(:mod:`icalign.analysis.health`). Claims are recomputed from the stored values whenever a
summary is drawn, so an old result file is judged by the current rules; the claims stored
in a file are the ones its run printed.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from icalign.analysis import claims as CL
from icalign.analysis import health as H
from icalign.analysis.ablations import FACTORS

__all__ = ["INTERVAL_NOTE", "fmt", "noise_health", "noise_claims", "noise_markdown", "ablation_health",
           "ablation_claims", "ablation_markdown", "table", "num", "machine"]

#: How the sweeps' intervals are formed (stored in their results JSON and shown in the markdown).
INTERVAL_NOTE = ("95% Student-t intervals: over seeds for trained models (each seed averaged over the evaluation "
                 "contexts), over contexts for GD learners; claims use paired differences")


def _num(x) -> float:
    return float(x) if x is not None else float("nan")


def fmt(summary: Optional[dict], i: int) -> str:
    if summary is None:
        return "diverged"
    m, lo, hi = (_num(summary[k][i]) for k in ("mean", "low", "high"))
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"


def num(x, nd=3) -> str:
    """A stored number with ``nd`` decimals; None and the string "nan" (JSON's stand-in) read "nan"."""
    return "nan" if x is None or (isinstance(x, str) and x.lower() == "nan") else f"{float(x):.{nd}f}"


def machine(res: dict) -> str:
    """The machine a result file was made on, in a few words (its ``hardware`` record)."""
    hw = res.get("hardware") or {}
    if hw.get("backend") == "cpu":
        return f"{hw.get('cpu_count')}-core CPU (jax {hw.get('jax')})"
    return f"{hw.get('device')} (jax {hw.get('jax')})"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _hardware(hw: dict) -> str:
    return (f"{hw.get('device', '?')} ({hw.get('backend', '?')}, {hw.get('device_count', '?')} device(s), "
            f"{hw.get('cpu_count', '?')} CPU cores)")


def _header(title: str, res: dict) -> str:
    return (f"# {title} ({res.get('name') or res.get('size') or 'in memory'})\n\n{res['size_note']}. Seeds {res['seeds']}; "
            f"{res['n_eval_contexts']} evaluation contexts. {INTERVAL_NOTE}. "
            f"Hardware: {_hardware(res.get('hardware') or {})}.\n")


def _health_table(health: dict, label) -> str:
    rows = [[label(k), f"**{g['status']}**", g["reason"] or "beats both trivial predictors and its own t = 1 error"]
            for k, g in health.items()]
    return ("\n## Training health (icalign.analysis.health)\n\n"
            + table(["trained model", "status", "reason"], rows) + "\n")


def _claims_section(cl: list[dict], t: int, stored: bool) -> str:
    note = "" if stored else ("\n(Per-unit values are missing from this file where a claim says so; "
                              "such claims use the conservative bound of icalign.analysis.claims.)\n")
    return (f"\n## Claims (normalised MSE at t = {t}; worse - better > 0 is the prediction)\n\n"
            + CL.table(cl) + "\n\n" + "\n".join(CL.line(c) for c in cl) + "\n" + note)


# ---------------------------------------------------------------------------------------------
# Reward noise
# ---------------------------------------------------------------------------------------------


def noise_health(res: dict) -> dict:
    """{train level: gate} of every trained transformer (stored, or computed for old files)."""
    if "health" in res:
        return res["health"]
    S, out = len(res["seeds"]), {}
    loss = np.asarray(res["train_loss_last50"], float)
    for j, tl in enumerate(res["train_levels"]):
        s = res["transformer"][str(tl)]["replace"][str(tl)]["nmse"]
        out[str(tl)] = H.variant_gate(loss[j * S:(j + 1) * S], res["train_config"], res["model_config"], float(tl),
                                      nmse_per_seed=s.get("per_seed"), nmse_mean=s["mean"])
    return out


def noise_claims(res: dict) -> list[dict]:
    """Claims at the largest t (normalised MSE): see the README's reward-noise section."""
    C, t = res["n_eval_contexts"], res["ts"][-1]
    health = noise_health(res)
    clean = str(res["train_levels"][0])
    tf = lambda tl, kind, lv: CL.arm(f"TF(trained at p={tl})" if tl != clean else "TF(clean-trained)",
                                     res["transformer"][tl][kind][lv]["nmse"], n_contexts=C, health=health[tl])
    gd = lambda kind, lv: CL.arm("GD (adam)", res["gd"]["adam"][kind][lv]["nmse"], n_contexts=C)
    levels = [str(lv) for lv in res["corruptions"]["replace"]["levels"]]
    lo, hi = levels[0], levels[-1]
    out = [CL.claim("corrupted rewards (replace, p = 1 vs 0) degrade the clean-trained transformer",
                    tf(clean, "replace", hi), tf(clean, "replace", lo), t=t),
           CL.claim("corrupted rewards (replace, p = 1 vs 0) degrade GD (adam)", gd("replace", hi), gd("replace", lo),
                    t=t),
           CL.claim("on clean rewards the clean-trained transformer beats GD (adam)", gd("replace", lo),
                    tf(clean, "replace", lo), t=t)]
    for kind, spec in res["corruptions"].items():
        top = str(spec["levels"][-1])
        out.append(CL.claim(f"under {kind} at {spec['level_name']} = {top} the clean-trained transformer beats GD "
                            f"(adam)", gd(kind, top), tf(clean, kind, top), t=t))
    for lv in levels[1:-1]:
        if lv not in res["transformer"]:
            continue
        out.append(CL.claim(f"at p = {lv}, the transformer trained on that noisy critic beats GD (adam)",
                            gd("replace", lv), tf(lv, "replace", lv), t=t))
        out.append(CL.claim(f"at p = {lv}, training on the noisy critic beats training on the clean one",
                            tf(clean, "replace", lv), tf(lv, "replace", lv), t=t))
    return out


def noise_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    cl = noise_claims(res)
    clean = str(res["train_levels"][0])
    stored = "per_seed" in res["transformer"][clean]["replace"][clean]["nmse"]
    if claims_only:
        return _claims_section(cl, ts[-1], stored)
    parts = [_header("Reward noise", res),
             _health_table(noise_health(res), lambda k: f"TF trained at p = {k}" if float(k) else "TF clean-trained")]
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


def _arch_summary(arch: dict) -> dict:
    """The architecture's nmse summary with its per-seed curves (stored next to it)."""
    return {**arch["nmse"], "unit": "seeds", "per_seed": arch["nmse_per_seed"]}


def ablation_health(res: dict) -> dict:
    """{architecture hash: gate} of every architecture that finished training."""
    out = {}
    for key, a in res["architectures"].items():
        if a.get("status") != "ok":
            continue
        out[key] = a.get("health") or H.variant_gate(a["train_loss_last50"], a.get("train_config", res["train_config"]),
                                                     a["config"], nmse_per_seed=a["nmse_per_seed"])
    return out


def _variant(res: dict, name: str) -> Optional[dict]:
    return next((v for v in res["variants"] if v["name"] == name), None)


def ablation_claims(res: dict) -> list[dict]:
    """Claims of docs/theory.md section 3 at the largest t (normalised MSE)."""
    C, t = res["n_eval_contexts"], res["ts"][-1]
    health = ablation_health(res)
    out = []

    def add(text, worse, better):
        w, b = _variant(res, worse), _variant(res, better)
        if w is None or b is None:
            return
        aw, ab = res["architectures"].get(w["arch"], {}), res["architectures"].get(b["arch"], {})
        if aw.get("status") != "ok" or ab.get("status") != "ok":
            out.append(CL.unresolvable(text, worse, better, "not trained", "a variant diverged in training"))
            return
        out.append(CL.claim(text, CL.arm(worse, _arch_summary(aw), n_contexts=C, health=health[w["arch"]]),
                            CL.arm(better, _arch_summary(ab), n_contexts=C, health=health[b["arch"]]), t=t))

    factors = {v["factor"]: [x for x in res["variants"] if x["factor"] == v["factor"]] for v in res["variants"]}
    for factor, vs in factors.items():
        base = next((v["name"] for v in vs if v["is_base"]), None)
        lr = f" (lr {vs[0]['lr']:g})" if vs[0].get("lr") is not None else ""
        if factor.startswith("attention"):
            for kind in ("linear", "linear_mean"):
                add(f"softmax attention does the ranking: {kind} attention is worse{lr}",
                    next((v["name"] for v in vs if v["value"] == kind), ""), next(v["name"] for v in vs
                                                                                 if v["value"] == "softmax"))
        elif factor.startswith("heads") and base:
            one = next((v["name"] for v in vs if v["value"] == 1), None)
            if one:
                add(f"multi-head attention discriminates tokens: one head is worse than the base "
                    f"({FACTORS[factor][1].split(' (')[0]})", one, base)
        elif factor == "ffn":
            add("the FFN transforms the selected token: no FFN is worse", "ffn=False", "ffn=True")
        elif factor == "depth":
            depths = sorted(vs, key=lambda v: v["value"])
            add("depth handles many responses: the shallowest model is worse than the deepest", depths[0]["name"],
                depths[-1]["name"])
        elif factor == "layer_norm":
            add("(not a claim of the theory) no LayerNorm is worse", "layer_norm=False", "layer_norm=True")
    return out


def ablation_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    cl = ablation_claims(res)
    if claims_only:
        return _claims_section(cl, ts[-1], True)
    health = ablation_health(res)
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
    names = {v["arch"]: ", ".join(x["name"] for x in res["variants"] if x["arch"] == v["arch"]) for v in res["variants"]}
    parts = [_header("Ablations", res),
             f"Factors run: {', '.join(ran)}." + (f" Not run here: {', '.join(missing)}." if missing else "") + "\n",
             table(["factor", "variant", f"nmse t={ts[i2]}", f"nmse t={ts[-1]}", "health"], rows),
             _health_table({k: g for k, g in health.items() if g["status"] != "trained"} or health, lambda k: names[k]),
             _claims_section(cl, ts[-1], True)]
    return "\n".join(parts) + "\n"
