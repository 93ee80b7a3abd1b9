"""The README's result sections, generated from the committed result files.

Every number in a result section of README.md sits between the markers
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` and is written here from the
JSON under ``figures/`` (``icalign readme`` rewrites them; ``icalign readme --check`` and
the test suite fail when README and JSON disagree). Prose outside the markers carries no
numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from icalign.analysis import claims as CL
from icalign.analysis import health
from icalign.analysis import report
from icalign.analysis.readme_bench import figure1_bench, gd_sweep_bench, precision, train_step_bench
from icalign.analysis.report import machine as _hw, num as _f, table as _table
from icalign.io import read_json, write_text
from icalign.analysis.selfcorrect_claims import loop_claims, saturation

__all__ = ["SECTIONS", "render", "update", "check"]


def _idx(ts, t) -> int:
    return list(ts).index(t)


def gd_baseline(root: Path) -> str:
    res = read_json(root / "gd-baseline/quick/gd_baseline.json")
    ts, L = res["ts"], res["learners"]
    i0, i1 = 0, len(ts) - 1
    rows = [[lv] + [f"{_f(L['adam']['levels'][lv]['mean'][i])} / {_f(L['gd']['levels'][lv]['mean'][i])}"
                    for i in (i0, i1)] for lv in L["adam"]["levels"]]
    secs = " and ".join(f"{_f(L[k]['seconds_incl_compile'], 1)} s ({k})" for k in ("adam", "gd"))
    return (f"Normalised MSE, mean over {res['protocol']['contexts']} contexts (seed {res['protocol']['seed']}), "
            f"Adam baseline / plain GD:\n\n"
            + _table(["p", f"t = {ts[i0]}", f"t = {ts[i1]}"], rows)
            + f"\n\nEach learner's whole sweep is one compiled call: {secs} on a {_hw(res)}, compilation included.")


def _tf_rows(res: dict) -> list:
    nm, ts = res["comparison"]["nmse"], res["comparison"]["t"]
    labels = {"transformer": "transformer", "adam": "Adam baseline", "gd": "plain GD"}
    return [[labels[k]] + [_f(nm[k]["mean"][_idx(ts, t)]) for t in (1, 2, 5, 10, 15)] for k in labels]


def tf_vs_gd(root: Path) -> str:
    quick = read_json(root / "tf-vs-gd/quick/tf_vs_gd.json")
    full = read_json(root / "tf-vs-gd/full/tf_vs_gd.json")
    head = ["t", "1", "2", "5", "10", "15"]
    parts = []
    for res, what in ((quick, "quick"), (full, "full")):
        m, tr = res["model_config"], res["train_config"]
        parts.append(f"**{what}** ({m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, "
                     f"{m['token_layout']} tokens, batch {tr['batch']}, {tr['steps']} steps, lr {tr['lr']:g}; "
                     f"{_hw(res)}, {_f(res['seconds']['total'], 0)} s including the evaluation"
                     f"{_loaded(res)}):\n\n"
                     + _table(head, _tf_rows(res)))
    for res, what in ((quick, "quick"), (full, "full")):
        g = health.variant_gate(health.final_train_loss(res), res["train_config"], res["model_config"],
                                nmse_mean=res["comparison"]["nmse"]["transformer"]["mean"])
        parts.append(_tf_diff(res, what) + f" Training health: **{g['status']}**" + (f" ({g['reason']})." if g["reason"]
                                                                                    else "."))
    cmp, ts = full["comparison"], full["comparison"]["t"]
    late = [c for t, c in zip(ts, cmp["pred_diff"]["adam"]["cos"]["mean"]) if t >= 4]
    sens = cmp["sensitivity"]["adam"]["candidates"]["cos"]["mean"]
    parts.append(f"At full size, from t = 4 on the transformer's predicted direction has cosine >= {_f(min(late), 2)} "
                 f"with the Adam learner's; the cosine between their sensitivities to the candidates falls from "
                 f"{_f(sens[_idx(ts, 2)], 2)} at t = 2 to {_f(sens[-1], 2)} at t = {ts[-1]}.")
    return "\n\n".join(parts)


def _tf_diff(res: dict, what: str) -> str:
    cmp, ts = res["comparison"], res["comparison"]["t"]
    t = 15 if 15 in ts else ts[-1]
    if "nmse_diff" not in cmp:
        return (f"{what.capitalize()}: per-context values are not stored in this file, so the paired difference "
                f"transformer - GD is not available (the table's means are).")
    d, i = cmp["nmse_diff"], _idx(ts, t)
    cells = "; ".join(f"{k} {_f(v['mean'][i])} [{_f(v['low'][i])}, {_f(v['high'][i])}]" for k, v in d.items())
    return (f"{what.capitalize()}, transformer minus GD learner at t = {t}, paired over {cmp['n_contexts']} contexts "
            f"(95% interval; one trained model, so it says nothing about other seeds): {cells}.")


def _loaded(res: dict) -> str:
    return "; training loaded from its finished run folder, not timed" if res.get("train_loaded") else ""


def _health(health: dict, label) -> str:
    bad = {k: g for k, g in health.items() if g["status"] != "trained"}
    if not bad:
        return "Training health: every trained model beats both trivial predictors and its own t = 1 error."
    return "Not trained (no evidence either way): " + "; ".join(f"{label(k)} ({g['reason']})" for k, g in bad.items()) + "."


def reward_noise(root: Path) -> str:
    parts = []
    for what in ("quick", "full"):
        res = read_json(root / f"reward-noise/{what}/reward_noise.json")
        ts, tf, gd = res["ts"], res["transformer"], res["gd"]
        i2, i1 = _idx(ts, 2), len(ts) - 1
        clean = str(res["train_levels"][0])
        pair = lambda s: f"{_f(s['mean'][i2])} / {_f(s['mean'][i1])}"
        ref = res.get("reference")
        rows = []
        for lv in res["corruptions"]["replace"]["levels"]:
            lv = str(lv)
            at = tf.get(lv, {}).get("replace", {}).get(lv)
            rows.append([lv, pair(tf[clean]["replace"][lv]["nmse"]), pair(at["nmse"]) if at else "-",
                         pair(gd["adam"]["replace"][lv]["nmse"]), pair(gd["gd"]["replace"][lv]["nmse"])]
                        + ([_f(ref[k]["replace"][lv][-1]) for k in ref] if ref else []))
        secs = res["seconds"]["total"]
        extra = [f"{k} t = {ts[-1]}" for k in ref] if ref else []
        parts.append(f"**{what}** ({res['size_note']}; {len(res['seeds'])} seeds; {_hw(res)}, "
                     f"{_f(secs / 60, 1)} min{_loaded(res)}), normalised MSE under `replace` at t = 2 / t = {ts[-1]}"
                     + ("" if ref else " (this file stores no trivial-predictor reference)") + ":\n\n"
                     + _table(["p", "TF trained clean", "TF trained at p", "GD (Adam)", "GD (plain)"] + extra, rows)
                     + "\n\n" + _health(report.noise_health(res), lambda k: f"TF trained at p = {k}")
                     + f"\n\nClaims (normalised MSE at t = {ts[-1]}; effect = worse - better, 95% interval):\n\n"
                     + CL.table(report.noise_claims(res)))
    return "\n\n".join(parts)


def ablations(root: Path) -> str:
    parts = []
    for what in ("full", "quick"):
        res = read_json(root / f"ablations/{what}/ablations.json")
        ts, i2 = res["ts"], _idx(res["ts"], 2)
        health = report.ablation_health(res)
        rows = []
        for v in res["variants"]:
            arch = res["architectures"].get(v["arch"], {})
            s = arch.get("nmse") if arch.get("status") == "ok" else None
            cell = lambda i: "diverged" if s is None else (
                f"{_f(s['mean'][i])} [{_f(s['low'][i])}, {_f(s['high'][i])}]")
            rows.append([v["name"] + (" (base)" if v["is_base"] else ""), cell(i2), cell(-1),
                         health[v["arch"]]["status"] if v["arch"] in health else arch.get("status", "missing")])
        g = res["gd"]["adam"]["nmse"]
        rows.append(["GD learner (adam)", _f(g["mean"][i2]), _f(g["mean"][-1]), "reference"])
        for k, curve in res.get("reference", {}).items():
            rows.append([f"{k} (trivial predictor)", _f(curve[i2]), _f(curve[-1]), "reference"])
        names = {v["arch"]: v["name"] for v in res["variants"]}
        parts.append(f"**{what}** ({res['size_note']}; {len(res['seeds'])} seeds; {_hw(res)}, "
                     f"{_f(res['seconds'] / 60, 1)} min), normalised MSE, mean [95% interval over seeds]:\n\n"
                     + _table(["variant", "t = 2", f"t = {ts[-1]}", "training health"], rows)
                     + "\n\n" + _health(health, lambda k: names[k])
                     + f"\n\nClaims (normalised MSE at t = {ts[-1]}; effect = worse - better, paired by seed):\n\n"
                     + CL.table(report.ablation_claims(res)))
    return "\n\n".join(parts)


def necessity(root: Path) -> str:
    res = read_json(root / "necessity/quick/necessity.json")
    table, p = res["results"], res["protocol"]
    ns = sorted(table, key=int)
    variants = list(table[ns[0]]["variants"])
    cell = lambda v: "diverged" if v["diverged_seeds"] == len(v["rel_error_per_seed"]) else (
        f"{_f(v['best'])} / {_f(v['median'])}" + (f" ({v['diverged_seeds']} diverged)" if v["diverged_seeds"] else ""))
    rows = [[name] + [cell(table[n]["variants"][name]) for n in ns] for name in variants]
    rows.append(["hand-built construction (float64)"] + [f"{float(table[n]['construction_rel_error_float64']):.0e}"
                                                        for n in ns])
    med = lambda n, name: "diverged" if table[str(n)]["variants"][name]["diverged_seeds"] == len(
        table[str(n)]["variants"][name]["rel_error_per_seed"]) else _f(table[str(n)]["variants"][name]["median"])
    test = lambda c: ("no test: a diverged seed is a training failure, not evidence" if c["p_worse"] is None else
                      f"one-sided p = {c['p_worse']:.3g} that it is worse, {c['p_better']:.3g} that it is better")
    claims = "\n".join(
        f"- N = {c['n']}, {c['variant']}: {c['claim']}: **{c['verdict']}** (median {med(c['n'], c['variant'])} vs "
        f"full {med(c['n'], 'full')}{_diverged(table[str(c['n'])]['variants'][c['variant']])}; {test(c)})"
        for c in res["claims"])
    return (f"Relative error, best / median over {p['seeds']} seeds ({p['adam_steps']} Adam steps, batch {p['batch']}, "
            f"lr {p['lr']:g}; {p['metric']}; {_hw(res)}, {_f(res['seconds'] / 60, 1)} min):\n\n"
            + _table(["architecture"] + [f"N = {n}" for n in ns], rows)
            + f"\n\nClaims ({res['claims'][0]['statistic']}):\n\n" + claims)


def _floor4(x) -> str:
    """Four decimals, rounded down: a ratio of 0.99996 must not print as 1.0000."""
    import math

    return f"{math.floor(float(x) * 1e4) / 1e4:.4f}"


def _diverged(entry: dict) -> str:
    k, n = entry["diverged_seeds"], len(entry["rel_error_per_seed"])
    return "" if not k else f"; {'every seed' if k == n else f'{k} of {n} seeds'} diverged at this learning rate"


def verify(root: Path) -> str:
    quick = read_json(root / "verify/quick/verify.json")
    wide = read_json(root / "verify/search/verify.json")
    found = {(r["claim"], r["N"]): r["search_worst_ratio"] for r in wide["claims"]}
    sci = lambda x: "-" if x is None else f"{float(x):.1e}"
    rows = [[r["claim"], r["N"], sci(r["max_abs_error"]), sci(r["bound"]), sci(r["worst_ratio"]),
             sci(r["rel_error"]), "-" if r["bound_step"] is None else f"{sci(r['bound_step'])} ({r['rel_tol']:g})",
             "-" if found.get((r["claim"], r["N"])) is None else _floor4(found[(r["claim"], r["N"])])]
            for r in quick["claims"]]
    passed = sum(r["pass"] for r in quick["claims"])
    hunts = wide["search"]["claims"].values()
    fams = [[f, f"{o['tried']:,}", f"{o['valid']:,}", _f(o["accepted_fraction"], 2), o["over_bound"],
             o["over_tolerance"], _floor4(o["worst_ratio"]), sci(o["worst_tolerance"]), sci(o["worst_bound_step"])]
            for f, o in wide["search"]["families"].items()]
    return (_table(["claim", "N", "max abs error", "bound", "worst ratio", "worst relative error",
                    "worst bound/step (rel_tol)", "worst ratio found by search"], rows)
            + f"\n\n{passed}/{len(rows)} claims pass on {quick['contexts']} random float64 contexts each "
              f"({_f(quick['seconds'], 0)} s on a {_hw(quick)}, including a short hunt per construction). A claim "
              f"passes when every error is within its bound (ratio <= 1) and the bound is within rel_tol of the "
              f"step (relative error = ||error|| / ||step||). The wide hunt (`--search`) tried "
              f"{sum(h['tried'] for h in hunts):,} contexts, of which {sum(h['valid'] for h in hunts):,} passed the "
              f"checks, in {_f(wide['seconds'] / 60, 1)} min; {sum(r['pass'] for r in wide['claims'])}/"
              f"{len(wide['claims'])} claims pass there. Per family of the hunt (summed over the construction "
              f"claims):\n\n"
              + _table(["family", "tried", "accepted", "fraction accepted", "over bound", "over tolerance",
                        "worst ratio", "worst relative error / rel_tol", "worst bound/step"], fams))


def self_correction(root: Path) -> str:
    res = read_json(root / "self-correction/quick/self_correction.json")
    n0, beta, C = res["n0"], res["entropy_beta"], res["sizes"]["contexts"]
    claims, rows = [], []
    for name, L in res["learners"].items():
        h = L.get("train", {}).get("health")
        claims += loop_claims(L, name, beta, n0, C, h)
        e1 = L["settings"]["exact"]["entropy"]["mean"]
        eb = L["settings"]["exact"][f"entropy_b{beta:g}"]["mean"]
        c = L["correlation"]["critic_accuracy"]
        rows.append([L["label"], _f(L["settings"][res["null_critic"]]["gain_T"]["mean"]),
                     f"{_f(e1[0], 2)} -> {_f(e1[-1], 2)} ({_f(100 * saturation(e1[0], n0), 1)}%)",
                     f"{_f(eb[0], 2)} -> {_f(eb[-1], 2)} ({_f(100 * saturation(eb[0], n0), 1)}%)",
                     f"{_f(c['r'], 2)} (p = {float(c['p']):.2g})"])
    tf = res["learners"].get("transformer", {}).get("train", {})
    return (f"{res['rounds']} rounds, N0 = {n0} candidates, {C} contexts x {res['sizes']['draws']} critic draws; "
            f"{len(res['critic_names'])} critic settings including the null critic (scores independent of the "
            f"answer); {_hw(res)}, {_f(res['wall_seconds'] / 60, 1)} min.\n\n"
            + _table(["learner", "gain with the null critic", "entropy beta = 1, exact critic (headroom)",
                      f"entropy beta = {beta:g}, exact critic (headroom)", "Pearson r(accuracy, gain)"], rows)
            + (f"\n\nTransformer training health: **{tf['health']['status']}**"
               + (f" ({tf['health']['reason']})" if tf["health"]["reason"] else "") + "." if tf else "")
            + f"\n\nClaims (effect = worse - better, 95% interval; contexts are the unit for GD, seeds for the "
              f"transformer; headroom: how far the round-0 entropy lies below its maximum ln {n0} = {_log(n0)}):\n\n"
            + CL.table(claims))


def _log(n) -> str:
    import math

    return f"{math.log(n):.3f}"


def _ci(s: dict, i: int | None = None) -> str:
    pick = (lambda k: s[k]) if i is None else (lambda k: s[k][i])
    return f"{_f(pick('mean'))} [{_f(pick('low'))}, {_f(pick('high'))}]"


_REFS = {"minimiser": "minimiser of the training loss", "gd_cosine": "fitted GD, cosine PL",
         "gd_sqdist": "fitted GD, squared-distance PL", "exact": "exact recovery"}


def _distance_table(study: dict, t_values) -> str:
    ts = study["t"]
    idx = [_idx(ts, t) for t in t_values if t in ts]
    rows = [[_REFS[r]] + [_ci(study["distance"][r], i) for i in idx] for r in _REFS]
    rows.append(["(transformer's own error 1 - cos(y, y*))"] + [_ci(study["nmse"]["transformer"], i) for i in idx])
    fit = study["fitted_gd"]["cosine"]
    rows.append(["(fitted cosine GD: steps / eta)"] + [f"{fit['steps'][i]} / {fit['eta'][i]:.3g}" for i in idx])
    return _table(["distance of the transformer to"] + [f"t = {ts[i]}" for i in idx], rows)


def mechanism(root: Path) -> str:
    res = read_json(root / "mechanism/quick/mechanism.json")
    m, sh, tr = res["model_config"], res["shared"], res["shared"]["train_config"]
    parts = [f"**quick** ({m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, {m['token_layout']} "
             f"tokens, batch {tr['batch']}, {tr['steps']} steps, lr {tr['lr']:g}; {_hw(res)}, "
             f"{_f(res['seconds']['total'] / 60, 1)} min in all). Mean [95% interval over "
             f"{res['config']['eval']['contexts'] // 2} held-out contexts, one trained model]; distance = 1 - cos "
             "between the two answers:\n\n" + _distance_table(sh, (1, 2, 5, 10, sh["t"][-1]))]
    rows = [[r["layer"], f"{r['own']['steps']} / {r['own']['eta']:.3g}", _ci(r["own"]["distance_to_gd"]),
             _ci(r["own"]["distance_to_minimiser"]), _ci(r["own"]["nmse"]), _ci(r["fitted"]["nmse"])]
            for r in sh["layers"]]
    parts.append(f"Layers (pooled over t >= 2): the model's own read-out applied to each layer, matched to cosine-PL "
                 f"GD from the transformer's answer at t = 0 (at most {sh['k_max']} steps), and the error of a read-out "
                 "fitted to y* on other contexts:\n\n" + _table(
                     ["layer", "best GD steps / eta", "own read-out to GD", "own read-out to minimiser",
                      "own read-out error vs y*", "fitted read-out error vs y*"], rows))
    rows = []
    for name, v in sh["probes"].items():
        best = max(range(len(v["r2"]["mean"])), key=lambda l: v["r2"]["mean"][l])
        rows.append([name, _ci(v["r2"], 0), f"{_ci(v['r2'], best)} (layer {best})",
                     _ci(v["r2_shuffled"], best)])
    parts.append("Probes (held-out R^2, 95% bootstrap interval over contexts):\n\n" + _table(
        ["quantity", "layer 0 (tokens)", "best layer", "shuffled control at that layer"], rows))
    iv = sh["interventions"]
    names = ["transformer"] + list(_REFS)
    rows = [[k] + [_ci(iv[k][n]) for n in names] for k in iv]
    parts.append("Change of the answer (1 - cos, mean over t) under each intervention:\n\n" + _table(
        ["intervention", "transformer"] + [_REFS[n] for n in _REFS], rows))
    if "triplet" in res:
        pt, tt = res["triplet"], res["triplet"]["train_config"]
        w, ts = pt["weights"], pt["t"]
        idx = [_idx(ts, t) for t in (2, 10, ts[-1])]
        rows = [[lab] + [_ci(w[k], i) for i in idx] for k, lab in (
            ("cos_imp_gd", "cos(W_imp, W_GD)"), ("cos_update_imp_gd", "cos(W_imp - W_0, W_GD - W_0)"),
            ("cos_imp_ls", "cos(W_imp, least-squares W*)"), ("cos_gd_ls", "cos(W_GD, least-squares W*)"),
            ("imp_fit_r2", "R^2 of the affine fit"),
            ("imp_query_share", "share of the answer that moves with the query"))]
        parts.append(f"Per-triplet queries (correlation {tt['query_corr']:g} with the test query; {tt['steps']} steps; "
                     "the minimiser here is an oracle: it ranks the unshown candidates at the test query):"
                     "\n\n" + _distance_table(pt, (2, 5, 10, ts[-1])) + "\n\nImplicit weights:\n\n"
                     + _table(["", *(f"t = {ts[i]}" for i in idx)], rows))
    parts.append("Claims (effect = worse - better, 95% interval over contexts; per-context values are not "
                 "stored, so the sd of each paired difference is bounded by the sum of the two sds, "
                 "which is conservative):\n\n" + CL.table(res["claims"]))
    return "\n\n".join(parts)


SECTIONS: dict[str, Callable[[Path], str]] = {
    "gd-baseline": gd_baseline, "gd-sweep-bench": gd_sweep_bench, "tf-vs-gd": tf_vs_gd,
    "train-step-bench": train_step_bench, "precision": precision, "reward-noise": reward_noise, "ablations": ablations,
    "figure1-bench": figure1_bench, "verify": verify, "necessity": necessity, "self-correction": self_correction,
    "mechanism": mechanism,
}
_BLOCK = re.compile(r"(<!-- generated:([\w-]+) -->)(.*?)(<!-- /generated:\2 -->)", re.S)


def render(root: Path = Path("figures")) -> dict[str, str]:
    return {name: fn(Path(root)) for name, fn in SECTIONS.items()}


def update(readme: Path = Path("README.md"), root: Path = Path("figures"), write: bool = True) -> str:
    """README text with every generated block rewritten from the result files."""
    text = Path(readme).read_text()
    blocks = render(root)
    found = {m.group(2) for m in _BLOCK.finditer(text)}
    missing = set(SECTIONS) - found
    if missing:
        raise ValueError(f"{readme} has no generated block for {sorted(missing)}; add "
                         "<!-- generated:NAME --> ... <!-- /generated:NAME --> markers")
    new = _BLOCK.sub(lambda m: m.group(1) + "\n" + blocks[m.group(2)] + "\n" + m.group(4), text)
    if write and new != text:
        write_text(readme, new)
    return new


def check(readme: Path = Path("README.md"), root: Path = Path("figures")) -> list[str]:
    """Names of the generated blocks whose text differs from what the result files give."""
    text = Path(readme).read_text()
    blocks = render(root)
    return [m.group(2) for m in _BLOCK.finditer(text) if m.group(3) != "\n" + blocks[m.group(2)] + "\n"]
