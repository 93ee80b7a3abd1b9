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

from icalign.io import read_json, write_text

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
    cmp, ts = full["comparison"], full["comparison"]["t"]
    late = [c for t, c in zip(ts, cmp["pred_diff"]["adam"]["cos"]["mean"]) if t >= 4]
    sens = cmp["sensitivity"]["adam"]["candidates"]["cos"]["mean"]
    parts.append(f"At full size, from t = 4 on the transformer's predicted direction has cosine >= {_f(min(late), 2)} "
                 f"with the Adam learner's; the cosine between their sensitivities to the candidates falls from "
                 f"{_f(sens[_idx(ts, 2)], 2)} at t = 2 to {_f(sens[-1], 2)} at t = {ts[-1]}.")
    return "\n\n".join(parts)


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


def _claims(res: dict) -> str:
    return "\n".join(f"- {c['claim']}: **{c['verdict']}** ({c['worse']} {c['worse_value']} vs "
                     f"{c['better']} {c['better_value']})" for c in res["claims"])


def reward_noise(root: Path) -> str:
    parts = []
    for what in ("quick", "full"):
        res = read_json(root / f"reward-noise/{what}/reward_noise.json")
        ts, tf, gd = res["ts"], res["transformer"], res["gd"]
        i2, i1 = _idx(ts, 2), len(ts) - 1
        clean = str(res["train_levels"][0])
        pair = lambda s: f"{_f(s['mean'][i2])} / {_f(s['mean'][i1])}"
        rows = []
        for lv in res["corruptions"]["replace"]["levels"]:
            lv = str(lv)
            at = tf.get(lv, {}).get("replace", {}).get(lv)
            rows.append([lv, pair(tf[clean]["replace"][lv]["nmse"]), pair(at["nmse"]) if at else "-",
                         pair(gd["adam"]["replace"][lv]["nmse"]), pair(gd["gd"]["replace"][lv]["nmse"])])
        secs = res["seconds"]["total"]
        parts.append(f"**{what}** ({res['size_note']}; {len(res['seeds'])} seeds; {_hw(res)}, "
                     f"{_f(secs / 60, 1)} min{_loaded(res)}), normalised MSE under `replace` at t = 2 / t = {ts[-1]}:\n\n"
                     + _table(["p", "TF trained clean", "TF trained at p", "GD (Adam)", "GD (plain)"], rows)
                     + f"\n\nClaims ({res['interval']}):\n\n" + _claims(res))
    return "\n\n".join(parts)


def ablations(root: Path) -> str:
    parts = []
    for what in ("full", "quick"):
        res = read_json(root / f"ablations/{what}/ablations.json")
        ts, i2 = res["ts"], _idx(res["ts"], 2)
        rows = []
        for v in res["variants"]:
            arch = res["architectures"].get(v["arch"], {})
            s = arch.get("nmse") if arch.get("status") == "ok" else None
            cell = lambda i: "diverged" if s is None else (
                f"{_f(s['mean'][i])} [{_f(s['low'][i])}, {_f(s['high'][i])}]")
            rows.append([v["factor"], f"{v['field']}={v['value']}" + (" (base)" if v["is_base"] else ""),
                         cell(i2), cell(-1)])
        g = res["gd"]["adam"]["nmse"]
        rows.append(["GD learner", "adam", _f(g["mean"][i2]), _f(g["mean"][-1])])
        parts.append(f"**{what}** ({res['size_note']}; {len(res['seeds'])} seeds; {_hw(res)}, "
                     f"{_f(res['seconds'] / 60, 1)} min), normalised MSE, mean [95% interval over seeds]:\n\n"
                     + _table(["factor", "variant", "t = 2", f"t = {ts[-1]}"], rows)
                     + "\n\nClaims:\n\n" + _claims(res))
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
    sci = lambda x: f"{float(x):.1e}"
    rows = [[r["claim"], r["N"], sci(r["max_abs_error"]), sci(r["bound"]), sci(r["worst_ratio"]),
             "-" if found.get((r["claim"], r["N"])) is None else _floor4(found[(r["claim"], r["N"])])]
            for r in quick["claims"]]
    passed = sum(r["pass"] for r in quick["claims"])
    hunts = wide["search"]["claims"].values()
    return (_table(["claim", "N", "max abs error", "bound", "worst ratio", "worst ratio found by search"], rows)
            + f"\n\n{passed}/{len(rows)} claims pass on {quick['contexts']} random float64 contexts each "
              f"({_f(quick['seconds'], 0)} s on a {_hw(quick)}, including a short hunt per construction). The "
              f"wide hunt (`--search`) tried {sum(h['tried'] for h in hunts):,} contexts, of which "
              f"{sum(h['valid'] for h in hunts):,} passed the checks, in {_f(wide['seconds'] / 60, 1)} min; "
              f"{sum(r['pass'] for r in wide['claims'])}/{len(wide['claims'])} claims pass there.")


def self_correction(root: Path) -> str:
    res = read_json(root / "self-correction/quick/self_correction.json")
    rows = []
    for name, L in res["learners"].items():
        c = L["correlation"]["critic_accuracy"]
        g = {k: L["settings"][k]["gain_T"] for k in ("exact", "flip 0.5", "bias 1 (adversarial)")}
        rows.append([L["label"]] + [f"{_f(x['mean'])} [{_f(x['low'])}, {_f(x['high'])}]" for x in g.values()]
                    + [f"{_f(c['r'], 2)} (p = {float(c['p']):.2g})"])
    ent = res["learners"]["adam"]["settings"]["exact"]["entropy"]["mean"]
    n0 = res["n0"]
    return (f"Gain after {res['rounds']} rounds (normalised MSE at round 0 minus round {res['rounds']}; mean [95% "
            f"interval over {res['sizes']['contexts']} contexts]) and its correlation with the critic's pairwise "
            f"accuracy over {len(res['critic_names'])} critic settings:\n\n"
            + _table(["learner", "exact critic", "flip 0.5", "bias 1 (adversarial)", "Pearson r"], rows)
            + f"\n\nThe Adam learner's PL choice entropy with the exact critic goes {_f(ent[0], 2)} -> {_f(ent[-1], 2)} "
              f"nats over the rounds (maximum ln {n0} = {_log(n0)}).")


def _log(n) -> str:
    import math

    return f"{math.log(n):.3f}"


SECTIONS: dict[str, Callable[[Path], str]] = {
    "gd-baseline": gd_baseline, "gd-sweep-bench": gd_sweep_bench, "tf-vs-gd": tf_vs_gd,
    "train-step-bench": train_step_bench, "reward-noise": reward_noise, "ablations": ablations,
    "sweep-bench": sweep_bench, "verify": verify, "necessity": necessity, "self-correction": self_correction,
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
