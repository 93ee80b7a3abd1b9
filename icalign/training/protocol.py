"""The training protocol: how a model is trained before it counts as evidence (docs/theory.md,
"Training protocol").

* **published** (``TrainConfig.lr_grid=()``, ``stop="budget"``): one learning rate
  (``train.lr``) for every architecture, exactly ``train.steps`` steps. A variant that does not
  train at that rate says something about the rate, not about the architecture.
* **fair** (a non-empty ``lr_grid``): every seed trains at every learning rate of the grid, all
  in one vmapped program (seeds x learning rates x noise levels). Each architecture keeps, per
  training-noise level, the learning rate whose models have the lowest mean (over seeds) clean
  objective on validation contexts: ``valid_contexts`` fresh contexts of each seed's own
  validation stream (``keys.VALID``), which no evaluation reads. The criterion is the
  objective training minimises, on the clean rewards, so the choice never looks at y* or at
  an evaluation context. With ``stop="plateau"`` training also ends once every run's loss is
  flat (``config.plateau_stop``), ``train.steps`` being the budget.

:func:`train_or_load` is the one way an experiment gets trained models under either protocol;
the result holds only the chosen runs, and ``TrainResult.selection`` records the protocol: the
grid, each learning rate's validation objective per seed, the one chosen, the budget and why
training stopped. A grid learning rate whose loss becomes NaN or inf is marked diverged (a
warning; the run folder's meta lists it under ``diverged``), is never chosen, and does not stop
the other runs (vmapped runs are independent); only a grid whose every run diverges stops
(``NonFiniteLossError``).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.core import keys
from icalign.core.tasks import sample_contexts
from icalign.training.config import TrainConfig, run_settings
from icalign.training.ica import TrainResult, context_objective
from icalign.training.ica import train_or_load as _train_or_load

__all__ = ["CRITERION", "train_or_load", "validation_contexts", "validation_objective", "choose", "run_label"]

CRITERION = ("lowest mean over seeds of the clean objective (the training loss on clean rewards) on each seed's "
             "validation contexts (keys.VALID stream; never evaluated on)")


def run_label(run: dict, swept: Sequence[str] = ("seed", "lr", "noise")) -> str:
    """"seed 0, lr 0.001, noise 0.25": a run named by what was swept."""
    names = {"seed": ("seed", "{}"), "lr": ("lr", "{:g}"), "noise": ("noise", "{:g}")}
    return ", ".join(f"{names[k][0]} {names[k][1].format(run[k])}" for k in swept if k in run)


def validation_contexts(seed: int, model_cfg: M.ModelConfig, train_cfg: TrainConfig):
    """The validation contexts of ``seed`` (clean rewards): its own ``keys.VALID`` stream."""
    return sample_contexts(keys.stream(seed, keys.VALID), train_cfg.valid_contexts, model_cfg.d, model_cfg.n,
                           train_cfg.queries, train_cfg.query_corr)


@partial(jax.jit, static_argnums=(2, 3, 4))
def _objective(params, ctx, model_cfg, min_seen, loss):
    return jnp.mean(context_objective(M.predict(params, ctx, model_cfg), ctx, min_seen, loss))


def validation_objective(trained: TrainResult) -> np.ndarray:
    """(R,) each run's clean objective, averaged over its seed's validation contexts."""
    tc = trained.train_config
    out = []
    for i, run in enumerate(trained.runs):
        ctx = validation_contexts(run["seed"], trained.model_config, tc)
        ctx = ctx.replace(rewards=ctx.r_true)  # clean: the criterion never depends on the training noise draw
        out.append(float(_objective(trained.params_of(i), ctx, trained.model_config, tc.min_seen, tc.loss)))
    return np.asarray(out)


def choose(runs: list, scores: np.ndarray) -> dict:
    """{noise level: learning rate}: per level, the rate with the lowest mean validation score
    over its seeds; a rate with any non-finite score is never chosen (None if none is finite)."""
    out = {}
    for level in dict.fromkeys(r["noise"] for r in runs):
        means = {}
        for lr in dict.fromkeys(r["lr"] for r in runs):
            s = [scores[i] for i, r in enumerate(runs) if r["noise"] == level and r["lr"] == lr]
            if s and np.all(np.isfinite(s)):
                means[lr] = float(np.mean(s))
        out[level] = min(means, key=means.get) if means else None
    return out


def _published(trained: TrainResult, train_cfg: TrainConfig) -> dict:
    return {"protocol": train_cfg.protocol, "lr": train_cfg.lr, "budget": train_cfg.steps,
            "steps_done": int(np.shape(trained.losses)[-1]), "stopped": trained.stopped,
            "runs": [run_label(r, ("seed", "noise") if len({x["noise"] for x in trained.runs}) > 1 else ("seed",))
                     for r in trained.runs]}


def train_or_load(model_cfg: M.ModelConfig, train_cfg: TrainConfig, seeds: Sequence[int] = (0,), noise_levels=None,
                  *, run_root="runs", force: bool = False, progress: bool = True) -> TrainResult:
    """Trained models of ``model_cfg`` for every seed (paired with ``noise_levels`` as in
    :func:`icalign.training.train`) under ``train_cfg``'s protocol (module docstring), loaded
    from their run folder when finished. ``run_root=None`` trains in memory."""
    if not train_cfg.lr_grid:
        trained = _train_or_load(model_cfg, train_cfg, seeds, None, noise_levels, run_root=run_root, force=force,
                                 progress=progress)
        return dataclasses.replace(trained, selection=_published(trained, train_cfg))
    runs = run_settings(seeds, None, noise_levels, train_cfg)  # the (seed, level) pairs asked for, validated
    grid = list(train_cfg.lr_grid)
    rows = [(r, lr) for lr in grid for r in runs]
    trained = _train_or_load(model_cfg, train_cfg, [r["seed"] for r, _ in rows], [lr for _, lr in rows],
                             [r["noise"] for r, _ in rows], run_root=run_root, force=force, progress=progress)
    scores = validation_objective(trained)
    chosen = choose(trained.runs, scores)
    keep = []
    for r in runs:
        lr = chosen[r["noise"]]
        if lr is None:
            raise FloatingPointError(f"no learning rate of train.lr_grid={grid} gave finite validation objectives at "
                                     f"noise {r['noise']:g}: nothing to choose")
        keep.append(next(i for i, (rr, x) in enumerate(rows) if rr == r and x == lr))
    levels = list(chosen)
    swept = ("seed", "lr", "noise") if len(levels) > 1 else ("seed", "lr")
    selection = {
        "protocol": "fair", "grid": grid, "criterion": CRITERION, "valid_contexts": train_cfg.valid_contexts,
        "chosen": {f"{lv:g}": lr for lv, lr in chosen.items()},
        "validation": {f"{lv:g}": {f"{lr:g}": [float(scores[i]) for i, (r, x) in enumerate(rows)
                                               if r["noise"] == lv and x == lr] for lr in grid} for lv in levels},
        "budget": train_cfg.steps, "steps_done": int(np.shape(trained.losses)[-1]), "stopped": trained.stopped,
        "runs": [run_label(r, swept) for r in trained.runs], "kept": [run_label(trained.runs[i], swept) for i in keep],
    }
    idx = np.asarray(keep)
    return dataclasses.replace(trained, params=jax.tree_util.tree_map(lambda a: a[idx], trained.params),
                               losses=np.asarray(trained.losses)[idx], runs=[trained.runs[i] for i in keep],
                               selection=selection)
