"""README sections for the benchmarks (figures/bench/*.json): the GD sweep, the training
step at both matmul precisions, and the figure-1 grid with its H200 estimate."""

from __future__ import annotations

from pathlib import Path

from icalign.analysis.report import machine as _hw, num as _f, table as _table
from icalign.io import read_json

__all__ = ["gd_sweep_bench", "train_step_bench", "figure1_bench", "precision"]


def gd_sweep_bench(root: Path) -> str:
    b = read_json(root / "bench/gd_sweep_cpu.json")
    b2 = read_json(root / "bench/gd_sweep_cpu2.json")
    c = b["counts"]
    return (f"{c['fits']:,} fits ({c['contexts']} contexts x {c['levels']} levels x {c['context_lengths']} context "
            f"lengths, {c['optimiser_steps']} steps each) take {_f(b['adam']['seconds'], 2)} s after compilation "
            f"(median; Adam; plain GD {_f(b['gd']['seconds'], 2)} s) and compile in "
            f"{_f(b['adam']['compile_seconds'], 1)} s on a {_hw(b)} as one device. With each core a device "
            f"(`XLA_FLAGS=--xla_force_host_platform_device_count={b2['devices']}`; the sweep spreads its contexts "
            f"over the devices, and its numbers differ from one device's only in the last bits) they take "
            f"{_f(b2['adam']['seconds'], 2)} s (plain GD {_f(b2['gd']['seconds'], 2)} s; bench/gd_sweep_cpu2.json). "
            f"The published PyTorch code needs about 0.5 s per context per level, about "
            f"{b['published_reference_seconds']:.0f} s in all.")


def train_step_bench(root: Path) -> str:
    pub = read_json(root / "bench/published_step_cpu.json")
    rows = []
    for name in ("bench/train_step_cpu.json", "bench/train_step_h200.json"):
        b = read_json(root / name)
        # older files hold float32 only, at the top level, and no microbatched step
        per = [(p, 1, b[p]) for p in ("float32", "bfloat16") if p in b] or [("float32", 1, b)]
        mb = b.get("microbatched", {})
        per += [(p, mb["microbatches"], mb[p]) for p in ("float32", "bfloat16") if p in mb]
        cpu = b["hardware"]["backend"] == "cpu"
        for precision, k, r in sorted(per, key=lambda row: row[0] != "float32"):
            sec = r["seconds_per_step_median"]
            floor = mb["dense_matmul_floor_seconds"] if k > 1 else b["dense_matmul_floor_seconds"]
            rows.append([_hw(b), "icalign", precision, str(k), f"{sec:.4g}",
                         f"{pub['seconds_per_step_median'] / sec:.2f}x" if cpu else "not measured",
                         _f(r["compile_seconds"], 1), f"{r['achieved_gflops']:,.0f}", f"{r['peak_matmul_gflops']:,.0f}",
                         f"{100 * r['fraction_of_peak']:.1f}%", f"{floor:.4g}"])
        if cpu:
            rows.append([_hw(b), f"published (torch {pub['torch'].split('+')[0]}, {pub['threads']} threads)", "float32",
                         "1", f"{pub['seconds_per_step_median']:.4g}", "1.00x", "", "", "", "", ""])
    steps = f"{b['steps_per_call']} steps per compiled call" if "steps_per_call" in b else "one step per call"
    return _table(["machine", "code", "matmuls", "microbatches", "s / step (median)", "speed vs published",
                   "compile s", "GFLOP/s", "matmul peak GFLOP/s (same run, same operand type)", "fraction",
                   "float32 dense-matmul floor s (same shapes)"], rows) + \
        (f"\n\n{_f(b['model_gflop_per_step'], 0)} GFLOP of model matmuls per step. CPU: "
         f"{read_json(root / 'bench/train_step_cpu.json').get('steps_per_call', 1)} steps per compiled call; "
         f"H200: {steps}. The published step (bench/published_step_cpu.json) was timed on the same CPU, "
         "data sampling included, as its train.py runs it.")


def figure1_bench(root: Path) -> str:
    parts = []
    # an accelerator run (bench figure1 --size full on an H200), once committed, joins them
    for name in ("bench/figure1_cpu.json", "bench/figure1_cpu8.json", "bench/figure1_h200.json"):
        if name.endswith("h200.json") and not (root / name).exists():
            continue
        b = read_json(root / name)
        g, base = b["grouped"], b["base_config"]
        size = "reduced" if b["size"] == "cpu" else "published"
        line = (f"On a {_hw(b)} with {b['devices']} device(s), at the {size} size (base {base['n_layers']} layers, "
                f"width {base['d_model']}, batch {b['batch']}): {b['models']} models ({b['architectures']} "
                f"architectures x {b['seeds']} seeds, and the base at 4 noisy levels) in {g['programs']} programs, "
                f"estimated {_f(g['estimated_wall_minutes'], 1)} min for {b['steps']} steps "
                f"({g['models_per_hour']:,.0f} models per hour; median step {_f(g['median_seconds_per_step'], 3)} s; "
                f"{100 * g['fraction_of_matmul_peak']:.1f}% of the {b['matmul_peak_gflops']:,.0f} GFLOP/s matmul peak "
                f"measured in the same run)")
        if "one_program_per_architecture" in b:
            u = b["one_program_per_architecture"]
            r = b["grouping_speedup"]
            # a ratio below 1 is reported as a slowdown: padded variants execute the super
            # architecture's FLOPs, which a CPU pays for in full
            line += (f"; one program per architecture: {u['programs']} programs, "
                     f"{_f(u['estimated_wall_minutes'], 1)} min, so grouping is "
                     + (f"{_f(r, 2)}x faster" if r >= 1 else f"{_f(1 / r, 2)}x slower") + " here")
        parts.append(line + ".")
    h = read_json(root / "bench/train_step_h200.json")
    rate = h["achieved_gflops"] / 1e3 if "achieved_gflops" in h else h["float32"]["achieved_gflops"] / 1e3
    peak = h["peak_matmul_gflops"] / 1e3 if "peak_matmul_gflops" in h else h["float32"]["peak_matmul_gflops"] / 1e3
    p = b["published_grid"]
    parts.append(f"H200 estimate for the published grid ({p['models']} models, batch {p['batch']}, {p['steps']} "
                 f"steps): {p['model_tflop']:,.0f} TFLOP of model matmuls. At the single-model rate measured on the "
                 f"H200 ({rate:,.1f} TFLOP/s, bench/train_step_h200.json) that is {p['model_tflop'] / rate / 60:,.0f} "
                 f"min; at its measured TF32 matmul peak ({peak:,.0f} TFLOP/s) the floor is "
                 f"{p['model_tflop'] / peak / 60:,.1f} min. Grouping is meant to lift the rate above the single-model "
                 f"one on a GPU, where one small model leaves the matmul units idle; that is not measured here, and "
                 f"where in that range the grid lands needs an H200 run.")
    return "\n\n".join(parts)


def precision(root: Path) -> str:
    from icalign.analysis.claims import line

    res = read_json(root / "precision/quick/precision.json")
    m, tr = res["model_config"], res["train_config"]
    rows = [[p, _f(float(sum(res[p]["final_train_loss"])) / len(res[p]["final_train_loss"])),
             ", ".join(_f(v) for v in res[p]["final_nmse"]), _f(res[p]["nmse"]["mean"][-1]),
             res[p]["health"]["status"], "loaded" if res[p]["train_loaded"] else _f(res[p]["train_seconds"], 0)]
            for p in ("float32", "bfloat16")]
    return (f"quick ({m['n_layers']} layers, {m['n_heads']} heads, width {m['d_model']}, {tr['steps']} steps, "
            f"batch {tr['batch']}; {len(res['seeds'])} seeds, the same in both; {res['eval_contexts']} held-out "
            f"contexts; {_hw(res)}):\n\n"
            + _table(["matmuls", f"final training loss (mean of last {res['window']} steps, seed mean)",
                      f"normalised MSE at t = {res['t'][-1]}, per seed", "seed mean", "health",
                      "training s (incl. compile)"], rows)
            + "\n\n" + "\n".join(line(c) for c in res["claims"]))
