"""The GD baseline of the published protocol (THEORY.md section 4).

256 mixed-linear contexts (d = 5, N = 20); shown rewards corrupted by random replacement at
p in {0, 0.25, 0.5, 0.75, 1}; for every t = 2..15 a linear policy is fitted on cosine PL over
the first t candidates, by Adam (the published baseline: lr 0.1, 50 steps, always 50) and by
plain GD (same loss, init and steps); scored by normalised MSE against y*. Every
(learner, level, context, t) problem runs in one compiled call per learner.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from icalign import gd, plots, results, stats, tasks

DESCRIPTION = "published GD baseline: Adam and plain GD, normalised MSE vs t per reward-noise p"
NAME = "gd_baseline"


def add_arguments(p):
    p.add_argument("--contexts", type=int, default=256, help="evaluation contexts (default 256)")
    p.add_argument("--corruption", default="replace", choices=sorted(tasks.CORRUPTIONS),
                   help="corruption model of the shown rewards (default: replace, the published one)")


def run(args) -> int:
    out = results.claim_output(args.out / f"{NAME}.json", args.force)
    d, n, steps = 5, 20, 50
    levels = tasks.DEFAULT_LEVELS[args.corruption]
    ts = np.arange(2, 16)
    # The published sweep is already CPU-sized, so --quick and --full are the same size.
    key = jax.random.PRNGKey(args.seed)
    ctx = tasks.sample_contexts(jax.random.fold_in(key, 0), args.contexts, d, n)
    learners = {}
    for name, label in (("adam", "Adam, lr 0.1, 50 steps (published)"), ("gd", "plain GD, lr 1.0, 50 steps")):
        t0 = time.perf_counter()
        nmse, _ = gd.baseline_sweep(jax.random.fold_in(key, 1), ctx, levels, ts, args.corruption, name, steps)
        nmse = np.asarray(nmse)  # (L, B, T)
        secs = time.perf_counter() - t0
        print(f"[{NAME}] {name}: {nmse.size} fits of {steps} steps in {secs:.2f} s (incl. compile)")
        curves = {}
        for i, level in enumerate(levels):
            mean, low, high = stats.mean_ci(nmse[i], axis=0)
            curves[f"{level:g}"] = {"mean": mean, "low": low, "high": high}
        learners[name] = {"label": label, "lr": gd.LEARNERS[name][1], "steps": steps, "levels": curves,
                          "seconds_incl_compile": secs}
    res = {
        "experiment": NAME,
        "protocol": {"d": d, "n": n, "contexts": args.contexts, "reward": "cosine", "loss": "PL over first t",
                     "init": "U(-1/sqrt(d), 1/sqrt(d))", "seed": args.seed, "size": "published (quick = full)"},
        "corruption": args.corruption,
        "level_name": tasks.LEVEL_NAMES[args.corruption],
        "levels": list(levels),
        "ts": ts,
        "metric": "normalised MSE = 1 - cos(y_hat, y*), mean over contexts with 95% t-interval",
        "learners": learners,
        "hardware": results.hardware(),
    }
    results.write_json(out, res)
    stem = out.with_suffix("")
    figs = plots.curves_by_level(
        results.read_json(out), stem,
        f"GD baseline: {args.contexts} contexts, d={d}, N={n}, {args.corruption} corruption",
    )
    print(f"[{NAME}] wrote {out} and {', '.join(map(str, figs))}")
    for name in learners:
        for level, c in learners[name]["levels"].items():
            print(f"  {name:4s} {res['level_name']}={level:<5s} t=2: {c['mean'][0]:.3f}  t=15: {c['mean'][-1]:.3f}")
    return 0
