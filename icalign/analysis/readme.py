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
from icalign.io import read_json, write_text
from icalign.selfcorrect.critic_study import loop_claims, saturation

__all__ = ["SECTIONS", "render", "update", "check"]


def _f(x, nd=3) -> str:
    return "nan" if x is None or (isinstance(x, str) and x.lower() == "nan") else f"{float(x):.{nd}f}"


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _idx(ts, t) -> int:
    return list(ts).index(t)


def _hw(res: dict) -> str:
    hw = res.get("hardware") or {}
    if hw.get("backend") == "cpu":
        return f"{hw.get('cpu_count')}-core CPU (jax {hw.get('jax')})"
    return f"{hw.get('device')} (jax {hw.get('jax')})"


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


def gd_sweep_bench(root: Path) -> str:
    b = read_json(root / "bench/gd_sweep_cpu.json")
    c = b["counts"]
    return (f"{c['fits']:,} fits ({c['contexts']} contexts x {c['levels']} levels x {c['context_lengths']} context "
            f"lengths, {c['optimiser_steps']} steps each) take {_f(b['adam']['seconds'], 2)} s after compilation "
            f"(median; Adam; plain GD {_f(b['gd']['seconds'], 2)} s) and compile in "
            f"{_f(b['adam']['compile_seconds'], 1)} s on a {_hw(b)}. The published PyTorch code needs about 0.5 s "
            f"per context per level, about {b['published_reference_seconds']:.0f} s in all.")


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
        g = health.variant_gate([res["train_loss_first_last"][1]], res["train_config"], res["model_config"],
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


def train_step_bench(root: Path) -> str:
    rows = []
    for name in ("bench/train_step_cpu.json", "bench/train_step_h200.json"):
        b = read_json(root / name)
        rows.append([_hw(b), f"{b['seconds_per_step_median']:.4g}", _f(b["compile_seconds"], 1),
                     f"{b['achieved_gflops']:,.0f}", f"{b['peak_matmul_gflops']:,.0f}",
                     f"{100 * b['fraction_of_peak']:.1f}%", f"{b['dense_matmul_floor_seconds']:.4g}"])
    return _table(["machine", "s / step (median)", "compile s", "GFLOP/s", "matmul peak GFLOP/s (same run)",
                   "fraction", "dense-matmul floor s"], rows) + \
        f"\n\n{_f(b['model_gflop_per_step'], 0)} GFLOP of model matmuls per step."


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


def sweep_bench(root: Path) -> str:
    b = read_json(root / "bench/sweep_cpu.json")
    sp = "; ".join(f"{s['n_layers']} layers {_f(s['speedup'], 2)}x ({_f(s['vmapped_seconds'], 1)} s vs "
                   f"{_f(s['sequential_seconds'], 1)} s)" for s in b["vmapped_vs_sequential"])
    return (f"{b['models_trained']} models ({b['architectures']} architectures x {b['seeds_per_architecture']} "
            f"seeds) in {_f(b['wall_seconds'], 0)} s wall on a {_hw(b)} ({_f(b['models_per_minute'], 1)} models per "
            f"minute, compilation included). Vmapped seeds against one after another, both after compilation: {sp}.")


def necessity(root: Path) -> str:
    res = read_json(root / "necessity/quick/necessity.json")
    table, p = res["results"], res["protocol"]
    ns = sorted(table, key=int)
    variants = list(table[ns[0]]["variants"])
    cell = lambda v: "diverged" if v["diverged_seeds"] == len(v["rel_error_per_seed"]) else (
        f"{_f(v['floor'])} / {_f(v['median'])}")
    rows = [[name] + [cell(table[n]["variants"][name]) for n in ns] for name in variants]
    rows.append(["hand-built construction (float64)"] + [f"{float(table[n]['construction_rel_error_float64']):.0e}"
                                                        for n in ns])
    return (f"Relative error, best / median over {p['seeds']} seeds ({p['adam_steps']} Adam steps, batch {p['batch']}, "
            f"lr {p['lr']:g}; {p['metric']}; {_hw(res)}):\n\n" + _table(["architecture"] + [f"N = {n}" for n in ns], rows))


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


SECTIONS: dict[str, Callable[[Path], str]] = {
    "gd-baseline": gd_baseline, "gd-sweep-bench": gd_sweep_bench, "tf-vs-gd": tf_vs_gd,
    "train-step-bench": train_step_bench, "reward-noise": reward_noise, "ablations": ablations,
    "sweep-bench": sweep_bench, "necessity": necessity, "self-correction": self_correction,
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
