"""`icalign run reward-noise`: how reward corruption degrades the transformer and GD.

Transformers are trained (seeds x training noise levels, all runs in one vmapped program)
with the training corruption (the published ``replace``) at its first level (clean) and at
every other level ("trained on a noisy critic"). Every run, and both GD learners, is then
evaluated on the same contexts with the shown rewards corrupted by every corruption model
of icalign.core.tasks at every level of its range: one compiled call for all runs x levels x
contexts (icalign.analysis.evaluate). Markdown with tables and verdicts
(icalign.viz.sweep_report) and figures (icalign.viz.sweeps) are drawn from the JSON.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from icalign import model as M
from icalign import training as T
from icalign.analysis import evaluate as E
from icalign.analysis import health as H
from icalign.analysis import sweep_claims
from icalign.core import keys
from icalign.core.sharding import describe, sweep_mesh
from icalign.core.tasks import CORRUPTIONS, DEFAULT_LEVELS, LEVEL_NAMES, check_corruption_levels, sample_contexts
from icalign.experiment import (EvalConfig, check_seed, check_seeds, config_record, publish, result_path,
                                runner, train_or_load)
from icalign.io import hardware
from icalign.viz import sweep_report, sweeps

NAME = "reward-noise"
DESCRIPTION = "reward corruption: trained transformer (clean and noisy critics) vs GD, every corruption model"
STEM = "reward_noise"


@dataclasses.dataclass(frozen=True)
class Config:
    model: M.ModelConfig = M.BASE
    train: T.TrainConfig = T.TrainConfig()
    eval: EvalConfig = EvalConfig(contexts=256)
    train_levels: tuple[float, ...] = DEFAULT_LEVELS["replace"]
    seeds: int = 3
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        check_seeds(self.seeds)
        check_corruption_levels(self.train.corruption, self.train_levels)
        if not self.train_levels or self.train_levels[0] != 0:
            raise ValueError(f"train_levels must start with 0 (the clean critic), got {self.train_levels}")


# quick: the reduced architecture and training of the quick ablation grid.
# Under the fair protocol (docs/theory.md, "Training protocol"): learning rates a factor of 3
# apart up to the 3e-3 that trained this model before (1e-2 risks a diverging run, which stops
# the whole program), chosen per training level on validation contexts; 5 seeds.
QUICK = Config(model=M.ModelConfig(n_layers=2, n_heads=3, d_model=24, token_layout="stacked"),
               train=T.TrainConfig(lr=3e-3, batch=64, steps=400, chunk=100, checkpoint_every=200,
                                   lr_grid=(3e-4, 1e-3, 3e-3), stop="plateau"), seeds=5)
FULL = Config()


def figures(res: dict) -> dict:
    return {"": sweeps.noise_curves(res), "summary": sweeps.noise_summary(res)}


markdown = sweep_report.noise_markdown


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, STEM, force)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    run_seeds = [s for _ in cfg.train_levels for s in seeds]
    run_levels = [lv for lv in cfg.train_levels for _ in seeds]
    t0 = time.perf_counter()
    trained = train_or_load(cfg.model, cfg.train, seeds=run_seeds, noise_levels=run_levels, run_root=run_root,
                            progress=progress)
    t_train = time.perf_counter() - t0

    k_ctx, k_corrupt, k_gd = keys.eval_keys(cfg.seed, 3)
    ctx = sample_contexts(k_ctx, cfg.eval.contexts, cfg.model.d, cfg.model.n, cfg.train.queries,
                          cfg.train.query_corr)
    kinds = list(CORRUPTIONS)
    # Every (corruption model, level) is one column of the shown rewards (B, L_total, N).
    cols = [(kind, lv) for kind in kinds for lv in DEFAULT_LEVELS[kind]]
    rewards = jnp.concatenate([E.corrupted_rewards(jax.random.fold_in(k_corrupt, i), ctx, kind, DEFAULT_LEVELS[kind])
                               for i, kind in enumerate(kinds)], axis=1)
    t1 = time.perf_counter()
    curves = E.transformer_curves(trained.params, cfg.model, ctx, rewards)  # (R, L, B, T)
    n = cfg.seeds
    transformer = {str(tl): E.by_level(E.Curves(curves.t, curves.nmse[j * n:(j + 1) * n], curves.pl[j * n:(j + 1) * n]),
                                       cols, "seeds") for j, tl in enumerate(cfg.train_levels)}
    gd = {learner: E.by_level(E.gd_curves(k_gd, ctx, rewards, learner, cfg.eval.gd_steps, loss=cfg.train.loss),
                              cols, "contexts") for learner in ("adam", "gd")}
    t_eval = time.perf_counter() - t1

    res = {
        "experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
        "size_note": _size_note(cfg), "seed": cfg.seed, "seeds": seeds, "interval": sweep_claims.INTERVAL_NOTE,
        "model_config": cfg.model.to_dict(), "train_config": cfg.train.to_dict(),
        "train_levels": list(cfg.train_levels),
        "corruptions": {kind: {"level_name": LEVEL_NAMES[kind], "levels": list(DEFAULT_LEVELS[kind])} for kind in kinds},
        "n_eval_contexts": cfg.eval.contexts, "ts": curves.t.tolist(),
        "metrics": {"nmse": "1 - cos(y_hat_t, y*)",
                    "pl": "PL loss of y_hat_t on all N candidates ranked by their true rewards (cosine reward)"},
        "transformer": transformer, "gd": gd, "reference": H.reference_nmse(ctx, rewards, cols),
        "run_folder": None if trained.run_dir is None else trained.run_dir.name,
        "final_train_loss": trained.losses[:, -H.WINDOW:].mean(axis=1),
        "devices": describe(sweep_mesh(len(run_seeds))),
        "train_loaded": trained.loaded,  # True: training time is a load, not a training run
        "seconds": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t0},
        "hardware": hardware(),
    }
    # each training level's seeds judged on the clean evaluation contexts (health.run_gate)
    res["health"] = {str(tl): H.run_gate(H.runs_slice(trained, j * n, (j + 1) * n), ctx)
                     for j, tl in enumerate(cfg.train_levels)}
    res["claims"] = sweep_claims.noise_claims(res)
    res = publish(path, res, figures=figures, markdown=sweep_report.noise_markdown)
    print(sweep_report.noise_markdown(res, claims_only=True))
    return res


def _size_note(cfg: Config) -> str:
    m, t = cfg.model, cfg.train
    return (f"{m.n_layers} layers, {m.n_heads} heads, width {m.d_model}, {m.token_layout} tokens, "
            f"batch {t.batch}, {t.steps} steps, lr {t.lr:g}")
