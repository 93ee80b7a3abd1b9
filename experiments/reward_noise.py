"""`icalign run reward-noise`: how reward corruption degrades the transformer and GD.

Transformers are trained (seeds x training noise levels, all runs in one vmapped program)
with the published critic corruption ``replace`` at p = 0 (clean) and at every other level
(the "trained on a noisy critic" family). Every run, and both GD learners, is then evaluated
on the same evaluation contexts with the shown rewards corrupted by every corruption model of
icalign.tasks at every level of its range: one compiled call for all runs x levels x
contexts (icalign.evaluate). Metrics per t: normalised MSE and the PL loss on the true
ranking; mean and 95% interval over seeds (transformers) or contexts (GD).

Outputs (``--out``, default figures/): reward_noise.json, reward_noise.md (tables and which
claims the data supports), reward_noise.png/pdf (curves against t: transformer solid, GD
dashed) and reward_noise_summary.png/pdf (error at the largest t against the level).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp

from icalign import evaluate as E
from icalign import model as M
from icalign import plots_sweeps, report, results
from icalign import train as T
from icalign.sharding import describe, sweep_mesh
from icalign.tasks import CORRUPTIONS, DEFAULT_LEVELS, LEVEL_NAMES, sample_contexts

DESCRIPTION = "reward corruption: trained transformer (clean and noisy critics) vs GD, every corruption model"
NAME = "reward-noise"
STEM = "reward_noise"
TRAIN_CORRUPTION = "replace"  # the published corruption model (TrainConfig's default)

# quick: the same reduced architecture and training as the quick ablation grid.
SIZES = {
    "quick": dict(model=M.ModelConfig(n_layers=2, n_heads=3, d_model=24, token_layout="stacked"),
                  train=T.TrainConfig(lr=3e-3, batch=64, steps=400, chunk=100, checkpoint_every=200)),
    "full": dict(model=M.BASE, train=T.TrainConfig()),
}
EVAL_STREAM = 3


def add_arguments(p) -> None:
    p.add_argument("--seeds", type=int, default=3, help="seeds per training level (default 3)")
    p.add_argument("--eval-contexts", type=int, default=256, help="evaluation contexts (default 256)")
    p.add_argument("--run-root", type=Path, default=Path("runs"), help="training checkpoints (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    size = "quick" if args.quick else "full"
    model_cfg, train_cfg = SIZES[size]["model"], SIZES[size]["train"]
    n_seeds = int(getattr(args, "seeds", 3))
    if n_seeds < 2:
        raise ValueError(f"--seeds must be >= 2 (a 95% interval needs two), got {n_seeds}")
    n_eval = int(getattr(args, "eval_contexts", 256))
    if n_eval < 2:
        raise ValueError(f"--eval-contexts must be >= 2, got {n_eval}")
    out = results.claim_output(Path(args.out) / f"{STEM}.json", args.force)
    assert train_cfg.corruption == TRAIN_CORRUPTION
    train_levels = DEFAULT_LEVELS[TRAIN_CORRUPTION]
    seeds = [args.seed + i for i in range(n_seeds)]
    run_seeds = [s for _ in train_levels for s in seeds]
    run_levels = [lv for lv in train_levels for _ in seeds]

    t0 = time.perf_counter()
    trained = T.train_or_load(model_cfg, train_cfg,
                              seeds=run_seeds, noise_levels=run_levels,
                              run_root=getattr(args, "run_root", "runs"),
                              progress=not getattr(args, "no_progress", False))
    t_train = time.perf_counter() - t0

    k_eval = jax.random.fold_in(jax.random.PRNGKey(args.seed), EVAL_STREAM)
    k_ctx, k_corrupt, k_gd = jax.random.split(k_eval, 3)
    ctx = sample_contexts(k_ctx, n_eval, model_cfg.d, model_cfg.n)
    kinds = list(CORRUPTIONS)
    # Every (corruption model, level) is one column of the shown rewards (B, L_total, N).
    cols = [(kind, lv) for kind in kinds for lv in DEFAULT_LEVELS[kind]]
    rewards = jnp.concatenate(
        [E.corrupted_rewards(jax.random.fold_in(k_corrupt, i), ctx, kind, DEFAULT_LEVELS[kind])
         for i, kind in enumerate(kinds)], axis=1)

    t1 = time.perf_counter()
    nmse, pl = E.transformer_curves(trained.params, model_cfg, ctx, rewards)  # (R, L, B, T)
    transformer = {}
    for j, tl in enumerate(train_levels):
        runs = slice(j * n_seeds, (j + 1) * n_seeds)
        per_kind = {kind: {} for kind in kinds}
        for c, (kind, lv) in enumerate(cols):
            per_kind[kind][str(lv)] = {"nmse": E.summarise(nmse[runs, c], "seeds"),
                                       "pl": E.summarise(pl[runs, c], "seeds")}
        transformer[str(tl)] = per_kind
    gd = {}
    for learner in ("adam", "gd"):
        g_nmse, g_pl = E.gd_curves(k_gd, ctx, rewards, learner)  # (L, B, T)
        per_kind = {kind: {} for kind in kinds}
        for c, (kind, lv) in enumerate(cols):
            per_kind[kind][str(lv)] = {"nmse": E.summarise(g_nmse[c], "contexts"),
                                       "pl": E.summarise(g_pl[c], "contexts")}
        gd[learner] = per_kind
    t_eval = time.perf_counter() - t1

    res = {
        "experiment": NAME,
        "size": size,
        "size_note": ("quick: width 24, 2 layers, stacked tokens, batch 64, 400 steps, lr 3e-3"
                      if size == "quick" else report.FULL_SIZE_NOTE),
        "seed": args.seed,
        "seeds": seeds,
        "interval": report.INTERVAL_NOTE,
        "model_config": model_cfg.to_dict(),
        "train_config": {**train_cfg.to_dict(), "corruption": TRAIN_CORRUPTION},
        "train_levels": list(train_levels),
        "corruptions": {kind: {"level_name": LEVEL_NAMES[kind], "levels": list(DEFAULT_LEVELS[kind])}
                        for kind in kinds},
        "n_eval_contexts": n_eval,
        "ts": list(range(1, model_cfg.n)),
        "metrics": {"nmse": "1 - cos(y_hat_t, y*)",
                    "pl": "PL loss of y_hat_t on all N candidates ranked by their true rewards (cosine reward)"},
        "transformer": transformer,
        "gd": gd,
        "train_loss_last50": trained.losses[:, -50:].mean(axis=1),
        "devices": describe(sweep_mesh(len(run_seeds))),
        "seconds": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t0},
        "hardware": results.hardware(),
    }
    res["claims"] = report.noise_claims(res)
    loaded, md, figs = report.publish(out, res, report.noise_markdown, [
        lambda r: plots_sweeps.noise_curves(r, out.with_suffix("")),
        lambda r: plots_sweeps.noise_summary(r, out.with_name(f"{STEM}_summary"))])
    print(f"[{NAME}] wrote {out}, {md} and {', '.join(map(str, figs))} in {res['seconds']['total']:.0f} s")
    print(report.noise_markdown(loaded, claims_only=True))
    return 0
