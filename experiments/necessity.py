"""`icalign run necessity`: is each component needed to compute one PL gradient step?

For N in {4, 8, 16}, the construction's architecture and each reduced one (linear attention,
one head, no FFN, half the blocks) are trained directly on the one-step PL target (several seeds
at once); the error floor is the best held-out relative error over seeds. The hand-built
construction's own error (float64) is the reference. See icalign.necessity.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from icalign import construct, necessity, plots, results

DESCRIPTION = "error floor of reduced architectures (linear attn, 1 head, no FFN, fewer blocks) vs N"
NAME = "necessity"
SIZES = {  # (Ns, seeds, Adam steps, batch)
    "quick": ((4, 8, 16), 2, 800, 64),
    "full": ((4, 8, 16), 3, 2000, 64),
}


def run(args) -> int:
    out = results.claim_output(args.out / f"{NAME}.json", args.force)
    size = "quick" if args.quick else "full"
    ns, seeds, steps, batch = SIZES[size]
    d, eta, beta = 3, 0.2, 1.0
    key = jax.random.PRNGKey(args.seed)
    # Progress is saved after every (N, variant): a killed run resumes where it stopped
    # (same size and seed), and nothing finished is recomputed.
    partial = out.with_name(f".{NAME}.{size}.seed{args.seed}.partial.json")
    table = results.read_json(partial)["results"] if partial.exists() and not args.force else {}
    t_start = time.perf_counter()
    for n in ns:
        k_w, k_fit, k_eval = jax.random.split(jax.random.fold_in(key, n), 3)
        W0 = np.asarray(jax.random.normal(k_w, (d, d))) / np.sqrt(d)
        gap = 0.5 / n
        spec = construct.PLConstruction(d=d, n=n, W0=W0, eta=eta, beta=beta, gap=gap,
                                        B=50.0 / gap, M=200.0 / gap + 100.0)
        with jax.enable_x64(True):
            ctx = construct.separated_contexts(k_eval, 256, n, d)
            y0, yp = necessity.target(spec, ctx)
            built = float(necessity.relative_error(construct.run(spec, ctx), y0, yp))
        row = table.get(str(n), {"variants": {}})
        row["construction_rel_error_float64"] = built
        for name, cfg in necessity.variant_configs(spec).items():
            if name in row["variants"]:
                print(f"[{NAME}] N={n:2d} {name:16s} resumed from {partial.name}")
                continue
            t0 = time.perf_counter()
            rel, curves = necessity.fit_variant(k_fit, spec, cfg, seeds, steps, batch)
            finite = rel[np.isfinite(rel)]  # a diverged seed (NaN) is reported, not hidden
            row["variants"][name] = {
                "rel_error_per_seed": rel, "diverged_seeds": int(rel.size - finite.size),
                "floor": float(finite.min()) if finite.size else float("nan"),
                "median": float(np.median(finite)) if finite.size else float("nan"),
                "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "head_dim": cfg.head_size,
                "attention": cfg.attention, "ffn": cfg.ffn,
                "final_train_loss": curves[:, -20:].mean(axis=1),
                "seconds": time.perf_counter() - t0,
            }
            print(f"[{NAME}] N={n:2d} {name:16s} floor {np.min(rel):.3e}  median {np.median(rel):.3e}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            table[str(n)] = row
            results.write_json(partial, {"results": table})
    res = {
        "experiment": NAME,
        "size": size,
        "protocol": {"d": d, "eta": eta, "beta": beta, "seeds": seeds, "adam_steps": steps, "batch": batch,
                     "lr": 3e-3, "metric": "held-out E||f - y+||^2 / E||y+ - y0||^2 (256 contexts)",
                     "floor": "min over seeds", "target": "one PL GD step, sqdist reward",
                     "seed": args.seed},
        "results": table,
        "seconds": time.perf_counter() - t_start,
        "hardware": results.hardware(),
    }
    results.write_json(out, res)
    partial.unlink(missing_ok=True)
    figs = plots.necessity(results.read_json(out), out.with_suffix(""))
    print(f"[{NAME}] wrote {out} and {', '.join(map(str, figs))} in {res['seconds']:.0f} s")
    return 0
