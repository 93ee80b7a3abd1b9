"""Markdown summaries of sweep results, and the verdict on each claim of docs/theory.md section 3.

Reads result dicts (as written to JSON); computes nothing but comparisons of stored means and
95% intervals. A claim "A is worse than B" at the largest t is:

* **supported** when A's mean is higher and the two intervals do not overlap;
* **contradicted** when A's mean is lower and the intervals do not overlap;
* **not resolved** when the intervals overlap (more seeds or contexts would be needed).

Non-overlap of two 95% intervals is a conservative test (roughly p < 0.01 for equal
widths); with three seeds the intervals are wide, so "not resolved" is the honest common case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from icalign.analysis.ablations import FACTORS
from icalign.io import read_json, write_json, write_text

__all__ = ["verdict", "ablation_claims", "ablation_markdown", "noise_claims", "noise_markdown", "publish"]


#: How the sweeps' intervals are formed (stored in their results JSON and shown in the markdown).
INTERVAL_NOTE = ("mean and 95% Student-t interval over seeds (each seed: mean over the evaluation contexts); "
                 "GD learners: over contexts")


def publish(out: Path, res: dict, markdown: Callable[[dict], str],
            figures: Sequence[Callable[[dict], list[Path]]]) -> tuple[dict, Path, list[Path]]:
    """Write the results JSON ``out``, then the markdown summary next to it and the figures,
    both made from the file as written (so they show exactly what a reader of the JSON sees).
    Returns (the results as read back, the markdown path, the figure paths)."""
    write_json(out, res)
    loaded = read_json(out)
    md = write_text(Path(out).with_suffix(".md"), markdown(loaded))
    return loaded, md, [p for draw in figures for p in draw(loaded)]


def _num(x) -> float:
    return float(x) if x is not None else float("nan")


def _at(summary: dict, i: int):
    return _num(summary["mean"][i]), _num(summary["low"][i]), _num(summary["high"][i])


def fmt(summary: dict | None, i: int) -> str:
    if summary is None:
        return "diverged"
    m, lo, hi = _at(summary, i)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"


def verdict(worse: dict | None, better: dict | None, i: int = -1) -> str:
    """Is ``worse`` (predicted to have the higher error) really higher than ``better`` at t
    index i? See the module docstring."""
    if worse is None or better is None:
        return "not comparable (a variant diverged in training)"
    m_a, lo_a, hi_a = _at(worse, i)
    m_b, lo_b, hi_b = _at(better, i)
    if not all(np.isfinite([lo_a, hi_a, lo_b, hi_b])):
        return "not resolved (no interval)"
    if lo_a > hi_b:
        return "supported"
    if hi_a < lo_b:
        return "contradicted"
    return "not resolved (intervals overlap)"


def _hardware(hw: dict) -> str:
    return (f"{hw.get('device', '?')} ({hw.get('backend', '?')}, {hw.get('device_count', '?')} device(s), "
            f"{hw.get('cpu_count', '?')} CPU cores)")


def _header(title: str, res: dict) -> str:
    return (f"# {title} ({res.get('name') or res.get('size') or 'in memory'})\n\n{res['size_note']}. Seeds {res['seeds']}; "
            f"{res['n_eval_contexts']} evaluation contexts. {res['interval']}. "
            f"Hardware: {_hardware(res.get('hardware') or {})}.\n")


def _claims_table(claims: list[dict], heading: str) -> str:
    rows = [[c["claim"], f"{c['worse']}: {c['worse_value']}", f"{c['better']}: {c['better_value']}",
             f"**{c['verdict']}**"] for c in claims]
    return f"\n## {heading}\n\n" + _table(["claim", "worse (predicted)", "better (predicted)", "verdict"], rows)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Ablations
# ---------------------------------------------------------------------------------------------


def _variant_summary(res: dict, name: str, metric: str = "nmse"):
    for v in res["variants"]:
        if v["name"] == name:
            arch = res["architectures"].get(v["arch"])
            if arch is None or arch.get("status") != "ok":
                return None
            return arch[metric]
    raise KeyError(name)


def _base_name(res: dict, factor: str):
    for v in res["variants"]:
        if v["factor"] == factor and v["is_base"]:
            return v["name"]
    return None


def ablation_claims(res: dict) -> list[dict]:
    """Verdicts on docs/theory.md section 3 at the largest t (normalised MSE)."""
    factors = {v["factor"] for v in res["variants"]}
    values = lambda f: [v["value"] for v in res["variants"] if v["factor"] == f]
    claims = []

    def add(claim, worse, better):
        w, b = _variant_summary(res, worse), _variant_summary(res, better)
        claims.append({"claim": claim, "worse": worse, "better": better, "worse_value": fmt(w, -1),
                       "better_value": fmt(b, -1), "verdict": verdict(w, b)})

    if "attention" in factors:
        add("softmax attention does the ranking: linear attention is worse", "attention=linear", "attention=softmax")
    for fam, label in (("heads_fixed_width", "at fixed width"), ("heads_fixed_head_dim", "at fixed head dim")):
        if fam in factors and 1 in values(fam) and _base_name(res, fam):
            add(f"multi-head attention discriminates tokens: one head is worse than the base ({label})",
                f"{fam}=1", _base_name(res, fam))
    if "ffn" in factors:
        add("the FFN transforms the selected token: no FFN is worse", "ffn=False", "ffn=True")
    if "depth" in factors:
        depths = sorted(values("depth"))
        add("depth handles many responses: the shallowest model is worse than the deepest",
            f"depth={depths[0]}", f"depth={depths[-1]}")
    if "layer_norm" in factors:
        add("(not a claim of the theory; reported for completeness) no LayerNorm is worse",
            "layer_norm=False", "layer_norm=True")
    return claims


def _document(title: str, res: dict, claims: list[dict], claims_heading: str, body) -> str:
    """A sweep's markdown: header and ``body()`` parts (both skipped if ``body`` is None),
    then the claims table."""
    parts = [] if body is None else [_header(title, res), *body()]
    parts.append(_claims_table(claims, claims_heading))
    return "\n".join(parts) + "\n"


def _t2(ts: list) -> int:
    """Index of t = 2 in ``ts`` (the first column of the tables), or 0."""
    return ts.index(2) if 2 in ts else 0


def ablation_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    i2 = _t2(ts)

    def body():
        ran = list(dict.fromkeys(v["factor"] for v in res["variants"]))
        missing = [f for f in FACTORS if f not in ran]
        factors = (f"Factors run: {', '.join(ran)}." + (f" Not run here: {', '.join(missing)}." if missing else "")
                   + "\n")
        rows = []
        for v in res["variants"]:
            arch = res["architectures"].get(v["arch"], {})
            s = arch.get("nmse") if arch.get("status") == "ok" else None
            rows.append([v["factor"], f"{v['field']}={v['value']}" + (" (base)" if v["is_base"] else ""),
                         fmt(s, i2), fmt(s, -1), arch.get("status", "missing")])
        for name, g in res.get("gd", {}).items():
            rows.append(["GD learner", name, fmt(g["nmse"], i2), fmt(g["nmse"], -1), "reference"])
        return [factors, _table(["factor", "variant", "nmse t=2", f"nmse t={ts[-1]}", "status"], rows)]

    return _document("Ablations", res, res.get("claims") or ablation_claims(res),
                     f"Claims of docs/theory.md section 3 (normalised MSE at t = {ts[-1]}, mean [95% interval])",
                     None if claims_only else body)


# ---------------------------------------------------------------------------------------------
# Reward noise
# ---------------------------------------------------------------------------------------------


def noise_claims(res: dict) -> list[dict]:
    """Verdicts at the largest t (normalised MSE), published corruption model ``replace``."""
    kind = "replace"
    levels = [str(lv) for lv in res["corruptions"][kind]["levels"]]
    clean_tf = res["transformer"][str(res["train_levels"][0])][kind]
    adam = res["gd"]["adam"][kind]
    claims = []

    def add(claim, worse_label, worse, better_label, better):
        claims.append({"claim": claim, "worse": worse_label, "better": better_label,
                       "worse_value": fmt(worse, -1), "better_value": fmt(better, -1),
                       "verdict": verdict(worse, better)})

    lo, hi = levels[0], levels[-1]
    add("corrupted rewards degrade the transformer's in-context update",
        f"TF(clean-trained) at p={hi}", clean_tf[hi]["nmse"], f"TF(clean-trained) at p={lo}", clean_tf[lo]["nmse"])
    add("corrupted rewards degrade the GD learner",
        f"GD adam at p={hi}", adam[hi]["nmse"], f"GD adam at p={lo}", adam[lo]["nmse"])
    for lv in levels[1:-1]:
        noisy_tf = res["transformer"].get(lv, {}).get(kind)
        if noisy_tf is None:
            continue
        add(f"at p={lv}, a transformer trained on that noisy critic beats GD (adam)",
            f"GD adam at p={lv}", adam[lv]["nmse"], f"TF(trained at p={lv})", noisy_tf[lv]["nmse"])
        add(f"at p={lv}, training on the noisy critic beats training on the clean one",
            f"TF(clean-trained) at p={lv}", clean_tf[lv]["nmse"], f"TF(trained at p={lv})", noisy_tf[lv]["nmse"])
    return claims


def noise_markdown(res: dict, claims_only: bool = False) -> str:
    ts = res["ts"]
    i2 = _t2(ts)

    def body():
        parts = []
        clean = str(res["train_levels"][0])
        for kind, spec in res["corruptions"].items():
            rows = []
            for lv in spec["levels"]:
                lv = str(lv)
                row = [f"{spec['level_name']}={lv}"]
                noisy = res["transformer"].get(lv, {}).get(kind) if kind == "replace" else None
                for s in (res["transformer"][clean][kind][lv]["nmse"], noisy[lv]["nmse"] if noisy else None,
                          res["gd"]["adam"][kind][lv]["nmse"], res["gd"]["gd"][kind][lv]["nmse"]):
                    row += ["-", "-"] if s is None else [fmt(s, i2), fmt(s, -1)]
                rows.append(row)
            heads = ["level"]
            for who in ("TF clean-trained", "TF trained at level", "GD adam", "GD plain"):
                heads += [f"{who} t=2", f"{who} t={ts[-1]}"]
            parts.append(f"\n## Corruption model `{kind}` (normalised MSE)\n")
            parts.append(_table(heads, rows))
        return parts

    return _document("Reward noise", res, res.get("claims") or noise_claims(res),
                     f"Claims (normalised MSE at t = {ts[-1]}, corruption `replace`, mean [95% interval])",
                     None if claims_only else body)
