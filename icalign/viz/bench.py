"""The benchmarks (figures/bench/*.json) drawn as markdown: the GD sweep, the training step at
both matmul precisions, and the figure-1 grid with its H200 estimate. They have no figures."""

from __future__ import annotations

from icalign.viz.md import machine, num, table

__all__ = ["gd_sweep", "train_step", "figure1"]


def gd_sweep(b: dict, b2: dict) -> str:
    """`icalign bench gd-sweep` on one device (``b``) and with each core a device (``b2``)."""
    c = b["counts"]
    return (f"{c['fits']:,} fits ({c['contexts']} contexts x {c['levels']} levels x {c['context_lengths']} context "
            f"lengths, {c['optimiser_steps']} steps each) take {num(b['adam']['seconds'], 2)} s after compilation "
            f"(median; Adam; plain GD {num(b['gd']['seconds'], 2)} s) and compile in "
            f"{num(b['adam']['compile_seconds'], 1)} s on a {machine(b)} as one device. With each core a device "
            f"(`XLA_FLAGS=--xla_force_host_platform_device_count={b2['devices']}`; the sweep spreads its contexts "
            f"over the devices, and its numbers differ from one device's only in the last bits) they take "
            f"{num(b2['adam']['seconds'], 2)} s (plain GD {num(b2['gd']['seconds'], 2)} s; bench/gd_sweep_cpu2.json). "
            f"The published PyTorch code needs about 0.5 s per context per level, about "
            f"{b['published_reference_seconds']:.0f} s in all.")


def train_step(pub: dict, *runs: dict) -> str:
    """`icalign bench train-step` runs (CPU first), against the published step ``pub`` timed on the CPU."""
    rows = []
    for b in runs:
        # older files hold float32 only, at the top level, and no microbatched step
        per = [(p, 1, b[p]) for p in ("float32", "bfloat16") if p in b] or [("float32", 1, b)]
        mb = b.get("microbatched", {})
        per += [(p, mb["microbatches"], mb[p]) for p in ("float32", "bfloat16") if p in mb]
        cpu = b["hardware"]["backend"] == "cpu"
        for precision, k, r in sorted(per, key=lambda row: row[0] != "float32"):
            sec = r["seconds_per_step_median"]
            floor = mb["dense_matmul_floor_seconds"] if k > 1 else b["dense_matmul_floor_seconds"]
            rows.append([machine(b), "icalign", precision, str(k), f"{sec:.4g}",
                         f"{pub['seconds_per_step_median'] / sec:.2f}x" if cpu else "not measured",
                         num(r["compile_seconds"], 1), f"{r['achieved_gflops']:,.0f}",
                         f"{r['peak_matmul_gflops']:,.0f}",
                         f"{100 * r['fraction_of_peak']:.1f}%", f"{floor:.4g}"])
        if cpu:
            rows.append([machine(b), f"published (torch {pub['torch'].split('+')[0]}, {pub['threads']} threads)",
                         "float32",
                         "1", f"{pub['seconds_per_step_median']:.4g}", "1.00x", "", "", "", "", ""])
    steps = f"{b['steps_per_call']} steps per compiled call" if "steps_per_call" in b else "one step per call"
    return table(["machine", "code", "matmuls", "microbatches", "s / step (median)", "speed vs published",
                   "compile s", "GFLOP/s", "matmul peak GFLOP/s (same run, same operand type)", "fraction",
                   "float32 dense-matmul floor s (same shapes)"], rows) + \
        (f"\n\n{num(b['model_gflop_per_step'], 0)} GFLOP of model matmuls per step. CPU: "
         f"{runs[0].get('steps_per_call', 1)} steps per compiled call; "
         f"H200: {steps}. The published step (bench/published_step_cpu.json) was timed on the same CPU, "
         "data sampling included, as its train.py runs it.")


def figure1(runs: list, h: dict) -> str:
    """`icalign bench figure1` runs, and the published grid's estimate from the H200 training step ``h``."""
    parts = []
    for b in runs:
        g, base = b["grouped"], b["base_config"]
        size = "reduced" if b["size"] == "cpu" else "published"
        line = (f"On a {machine(b)} with {b['devices']} device(s), at the {size} size (base {base['n_layers']} layers, "
                f"width {base['d_model']}, batch {b['batch']}): {b['models']} models ({b['architectures']} "
                f"architectures x {b['seeds']} seeds, and the base at 4 noisy levels) in {g['programs']} programs, "
                f"estimated {num(g['estimated_wall_minutes'], 1)} min for {b['steps']} steps "
                f"({g['models_per_hour']:,.0f} models per hour; median step {num(g['median_seconds_per_step'], 3)} s; "
                f"{100 * g['fraction_of_matmul_peak']:.1f}% of the {b['matmul_peak_gflops']:,.0f} GFLOP/s matmul peak "
                f"measured in the same run)")
        if "one_program_per_architecture" in b:
            u = b["one_program_per_architecture"]
            r = b["grouping_speedup"]
            # a ratio below 1 is reported as a slowdown: padded variants execute the super
            # architecture's FLOPs, which a CPU pays for in full
            line += (f"; one program per architecture: {u['programs']} programs, "
                     f"{num(u['estimated_wall_minutes'], 1)} min, so grouping is "
                     + (f"{num(r, 2)}x faster" if r >= 1 else f"{num(1 / r, 2)}x slower") + " here")
        parts.append(line + ".")
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


def verdict(pub: dict, cpu: dict, h200: dict) -> str:
    """One line for the README: the published base config's training step on each machine."""
    f32 = lambda b: b["float32"] if "float32" in b else b
    s = f32(cpu)["seconds_per_step_median"]
    return (f"One training step of the published base config (batch 256) takes {s:.4g} s on a {machine(cpu)}, "
            f"{pub['seconds_per_step_median'] / s:.2f}x faster than the published code on the same CPU, and "
            f"{f32(h200)['seconds_per_step_median']:.4g} s on an {machine(h200)}.")
