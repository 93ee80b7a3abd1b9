"""The claims of the sweeps (reward noise, ablations) and the health of their trained models.

Reads result dicts (as written to JSON). Every claim goes through the one claim engine
(:mod:`icalign.analysis.claims`: paired differences, seeds as the unit for trained models,
power) and every trained model through its training-health gate
(:mod:`icalign.analysis.health`).
"""

from __future__ import annotations

from typing import Optional


from icalign.analysis import claims as CL
from icalign.analysis import health as H
from icalign.analysis.ablations import FACTORS

__all__ = ["INTERVAL_NOTE", "arch_summary", "noise_health", "noise_claims", "ablation_health", "ablation_claims"]

#: How the sweeps' intervals are formed (stored in their results JSON and shown in the markdown).
INTERVAL_NOTE = ("Curves: 95% Student-t bands over seeds for trained models (each seed averaged over the same "
                 "evaluation contexts, so a band is about new seeds on these contexts), over contexts for GD learners. "
                 "Claims: paired differences, each seed judged on its own block of the contexts where every seed's "
                 "per-context values are stored (about new seeds and new contexts; each claim names its population)")



def noise_health(res: dict) -> dict:
    """{train level: health} of every trained transformer, as stored (:func:`health.run_gate`
    at run time); a file stored before the gate measured training reads "unknown"
    (:func:`health.legacy`), with what its old gate said."""
    stored = res.get("health") or {}
    return {str(tl): H.legacy(stored.get(str(tl))) if str(tl) in stored else H.variant_gate(None, {}, {})
            for tl in res["train_levels"]}


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


def arch_summary(arch: dict) -> dict:
    """The architecture's nmse summary with its per-seed curves (stored next to it)."""
    return {**arch["nmse"], "unit": "seeds", "per_seed": arch["nmse_per_seed"]}


def ablation_health(res: dict) -> dict:
    """{architecture hash: health} of every architecture that finished training, as stored
    (old files: "unknown", see :func:`noise_health`)."""
    return {key: H.legacy(a["health"]) if a.get("health") else H.variant_gate(
        None, a.get("train_config", res["train_config"]), a["config"], nmse_per_seed=a.get("nmse_per_seed"))
            for key, a in res["architectures"].items() if a.get("status") == "ok"}


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
        out.append(CL.claim(text, CL.arm(worse, arch_summary(aw), n_contexts=C, health=health[w["arch"]]),
                            CL.arm(better, arch_summary(ab), n_contexts=C, health=health[b["arch"]]), t=t))

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
