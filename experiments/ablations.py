"""`icalign run ablations`: the component-ablation grid (THEORY.md section 3).

Every variant changes one ModelConfig field of the base (icalign.ablations) and keeps the
causal mask; each distinct architecture trains its seeds together (vmap over the params,
sharded over devices), then all are evaluated on the same clean contexts: normalised MSE and
PL loss per t, mean and 95% interval over seeds. The GD learners on the same contexts are the
reference. Progress is saved after every architecture, so a killed run resumes (same size
and seed) without retraining what finished.

Outputs (``--out``, default figures/): ablations.json, ablations.md (tables and which claims
the data supports), ablations.png/pdf (one panel per factor), ablations_bars.png/pdf.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

from icalign import ablations as A
from icalign import evaluate as E
from icalign import model as M
from icalign import plots_sweeps, report, results
from icalign import train as T
from icalign.sharding import describe, sweep_mesh
from icalign.tasks import sample_contexts

DESCRIPTION = "one-factor ablations (depth, heads x2, softmax, FFN, LayerNorm), >= 3 seeds each"
NAME = "ablations"

# quick: reduced width, depth grid, batch and steps (a 2-core CPU in < 15 min: with depth 8
# as well it took 14.8 min, too close, and 8 layers were undertrained at 400 steps); the theory's
# stacked layout, since small interleaved models stay on the initial plateau for this budget
# (see experiments/tf_vs_gd.py). d_model 24 is divisible by every head count in the grid.
SIZES = {
    "quick": dict(base=M.ModelConfig(n_layers=2, n_heads=3, d_model=24, token_layout="stacked"),
                  depths=(1, 2, 4), heads=A.HEADS,
                  train=T.TrainConfig(lr=3e-3, batch=64, steps=400, chunk=100, checkpoint_every=200)),
    "full": dict(base=M.BASE, depths=A.DEPTHS, heads=A.HEADS, train=T.TrainConfig()),
}
EVAL_STREAM = 3  # fold_in index of the evaluation contexts (0, 1, 2: init, data, corruption)


def add_arguments(p) -> None:
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant, trained together (default 3)")
    p.add_argument("--factors", default=None,
                   help=f"comma-separated subset of {','.join(A.FACTORS)} (default: all)")
    p.add_argument("--eval-contexts", type=int, default=256, help="evaluation contexts (default 256)")
    p.add_argument("--run-root", type=Path, default=Path("runs"), help="training checkpoints (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args) -> int:
    size = "quick" if args.quick else "full"
    spec = SIZES[size]
    n_seeds = int(getattr(args, "seeds", 3))
    if n_seeds < 2:
        raise ValueError(f"--seeds must be >= 2 (a 95% interval needs two), got {n_seeds}")
    factors = getattr(args, "factors", None)
    factors = None if factors is None else [f.strip() for f in factors.split(",") if f.strip()]
    variants = A.grid(spec["base"], factors, spec["depths"], spec["heads"])  # validates first
    n_eval = int(getattr(args, "eval_contexts", 256))
    if n_eval < 2:
        raise ValueError(f"--eval-contexts must be >= 2, got {n_eval}")
    out = results.claim_output(Path(args.out) / f"{NAME}.json", args.force)
    seeds = tuple(args.seed + i for i in range(n_seeds))
    train_cfg = spec["train"]
    base = spec["base"]

    k_eval = jax.random.fold_in(jax.random.PRNGKey(args.seed), EVAL_STREAM)
    k_ctx, k_gd = jax.random.split(k_eval)
    ctx = sample_contexts(k_ctx, n_eval, base.d, base.n)
    clean = ctx.r_true[:, None, :]  # (B, 1, N): the clean critic, one "level"

    # Keyed by everything that changes a stored entry (size, seeds, evaluation contexts), so
    # a resume never mixes results of different settings.
    partial = out.with_name(f".{NAME}.{size}.seed{args.seed}x{n_seeds}.ctx{n_eval}.partial.json")
    archs = results.read_json(partial)["architectures"] if partial.exists() and not args.force else {}
    t0 = time.perf_counter()
    groups = A.unique_configs(variants)
    for i, (cfg, members) in enumerate(groups.items()):
        key = M.config_hash(cfg)
        names = ", ".join(v.name for v in members)
        if key in archs:
            print(f"[{NAME}] {i + 1}/{len(groups)} {names}: resumed from {partial.name}")
            continue
        t1 = time.perf_counter()
        entry = {"config": cfg.to_dict(), "variants": [v.name for v in members]}
        try:
            res = T.train_or_load(cfg, train_cfg, seeds=seeds, run_root=getattr(args, "run_root", "runs"),
                                  progress=not getattr(args, "no_progress", False))
        except T.NonFiniteLossError as e:  # a diverged architecture is a result, not a crash
            entry.update(status="diverged", message=str(e))
        else:
            nmse, pl = E.transformer_curves(res.params, cfg, ctx, clean)  # (R, 1, B, T)
            entry.update(status="ok", nmse=E.summarise(nmse[:, 0], "seeds"), pl=E.summarise(pl[:, 0], "seeds"),
                         nmse_per_seed=nmse[:, 0].mean(axis=1), n_params=M.param_count(res.params_of(0)),
                         train_loss_last50=res.losses[:, -50:].mean(axis=1))
        entry["seconds"] = time.perf_counter() - t1
        archs[key] = entry
        results.write_json(partial, {"architectures": archs})
        last = f"nmse(t={base.n - 1}) {entry['nmse']['mean'][-1]:.3f}" if entry["status"] == "ok" else entry["status"]
        print(f"[{NAME}] {i + 1}/{len(groups)} {names}: {last} ({entry['seconds']:.0f} s)", flush=True)

    gd = {}
    for learner in ("adam", "gd"):
        nmse, pl = E.gd_curves(k_gd, ctx, clean, learner)
        gd[learner] = {"nmse": E.summarise(nmse[0], "contexts"), "pl": E.summarise(pl[0], "contexts")}

    res = {
        "experiment": NAME,
        "size": size,
        "size_note": ("quick: width 24, stacked tokens, depths 1/2/4, batch 64, 400 steps, lr 3e-3"
                      if size == "quick" else report.FULL_SIZE_NOTE),
        "seed": args.seed,
        "seeds": list(seeds),
        "interval": report.INTERVAL_NOTE,
        "base_config": base.to_dict(),
        "train_config": train_cfg.to_dict(),
        "n_eval_contexts": n_eval,
        "ts": list(range(1, base.n)),
        "variants": [{"name": v.name, "factor": v.factor, "field": v.field, "value": v.value,
                      "is_base": v.is_base, "arch": M.config_hash(A.canonical(v.config)),
                      "changed_fields": A.changed_fields(v.reference, v.config)} for v in variants],
        "architectures": archs,
        "gd": gd,
        "devices": describe(sweep_mesh(len(seeds))),
        "seconds": time.perf_counter() - t0,
        "hardware": results.hardware(),
    }
    res["claims"] = report.ablation_claims(res)
    loaded, md, figs = report.publish(out, res, report.ablation_markdown, [
        lambda r: plots_sweeps.ablation_panels(r, out.with_suffix("")),
        lambda r: plots_sweeps.ablation_bars(r, out.with_name(f"{NAME}_bars"))])
    partial.unlink(missing_ok=True)
    print(f"[{NAME}] wrote {out}, {md} and {', '.join(map(str, figs))} in {res['seconds']:.0f} s")
    print(report.ablation_markdown(loaded, claims_only=True))
    return 0
