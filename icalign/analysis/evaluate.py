"""Evaluating trained transformers and the GD learners under reward corruption, as one
compiled, vmapped call per learner.

The shown rewards of every (context, level) are drawn once (:func:`corrupted_rewards`) and fed
to every learner, so the transformer and GD see exactly the same corrupted contexts. One key
per context is shared by all levels (common random numbers): the curves of different levels
differ by the level, not by a new draw. Level 0 leaves every corruption model's rewards
untouched, bit for bit, so a level-0 evaluation is the clean evaluation.

Metrics, for every t = 1..N-1 (the prediction after t seen triplets):

* normalised MSE 1 - cos(y_hat_t, y*) (the published metric);
* the PL loss of y_hat_t on all N candidates, ranked by their *true* rewards (cosine
  reward): how well the prediction orders the candidates, whatever the critic showed.

Contexts are the independent axis: they are placed across all visible devices
(``icalign.sharding``), and the same code runs on one CPU or a TPU slice.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.core.metrics import normalised_mse, ranking_loss
from icalign.core.sharding import shard_leading, sweep_mesh, to_host
from icalign.core.stats import summarise
from icalign.core.tasks import CORRUPTIONS, Context, check_corruption_levels, scored_candidates
from icalign.core.validate import check_choice, check_finite, check_int, check_key, check_positive
from icalign.theory import gd

__all__ = ["Curves", "corrupted_rewards", "transformer_curves", "gd_curves", "by_level"]


class Curves(NamedTuple):
    """Metrics per context length: ``nmse`` and ``pl`` (..., T) with their last axis aligned
    with ``t`` (t = 1..N-1: the prediction after t seen triplets), so nothing is indexed by
    t - 1 by hand."""

    t: np.ndarray
    nmse: np.ndarray
    pl: np.ndarray


@partial(jax.jit, static_argnames="corruption")
def _corrupt_all(key, r_true_BxN, levels_L, corruption: str):
    keys_B = jax.random.split(key, r_true_BxN.shape[0])
    per_ctx = lambda k, r: jax.vmap(lambda lv: CORRUPTIONS[corruption](k, r, lv))(levels_L)
    return jax.vmap(per_ctx)(keys_B, r_true_BxN)  # (B, L, N)


def corrupted_rewards(key, ctx: Context, corruption: str, levels: Sequence[float]) -> jax.Array:
    """Shown rewards (B, L, N): ``ctx.r_true`` corrupted by ``corruption`` at each level."""
    check_key("key", key)
    gd.check_batched_contexts(ctx)
    check_corruption_levels(corruption, levels)
    levels = np.atleast_1d(np.asarray(levels, dtype=float))
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D list of numbers, got {levels.tolist()}")
    return _corrupt_all(key, ctx.r_true, jnp.asarray(levels, ctx.ys.dtype), corruption)


def _metrics(y_BxTxD, ctx: Context):
    """nmse and PL loss (true rewards, all N candidates), (B, T) each."""
    nmse = normalised_mse(y_BxTxD, ctx.y_star[:, None, :])
    pl = ranking_loss(y_BxTxD, scored_candidates(ctx)[:, None], ctx.r_true[:, None])
    return nmse, pl


@partial(jax.jit, static_argnames="config")
def _tf_curves(params_R, ctx: Context, rewards_BxLxN, config: M.ModelConfig):
    def one(params, rewards_BxN):
        y = M.predict(params, ctx.replace(rewards=rewards_BxN), config)[:, 1:]  # rows t = 1..N-1
        return _metrics(y, ctx)

    per_level = lambda params: jax.vmap(lambda r: one(params, r), in_axes=1)(rewards_BxLxN)
    return jax.vmap(per_level)(params_R)  # (R, L, B, T) each


def _check(ctx: Context, rewards_BxLxN, n: int | None = None):
    gd.check_batched_contexts(ctx, n)
    check_finite("rewards", rewards_BxLxN)
    B, N = ctx.r_true.shape
    if rewards_BxLxN.ndim != 3 or rewards_BxLxN.shape[0] != B or rewards_BxLxN.shape[2] != N:
        raise ValueError(f"rewards must have shape (B={B}, L, N={N}) (see corrupted_rewards), "
                         f"got {tuple(rewards_BxLxN.shape)}")
    if n is not None and n != N:
        raise ValueError(f"contexts have N={N} candidates; the model expects n={n}")


def transformer_curves(params_R: M.Params, config: M.ModelConfig, ctx: Context, rewards_BxLxN) -> Curves:
    """Curves with nmse and pl (R, L, B, N-1): every run of ``params_R`` (leading run axis R) on every
    context at every corruption level, t = 1..N-1. One compiled call; contexts sharded."""
    if not isinstance(config, M.ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    _check(ctx, rewards_BxLxN, config.n)
    mesh = sweep_mesh(ctx.x.shape[0])
    ctx, rewards_BxLxN = shard_leading((ctx, rewards_BxLxN), mesh)
    return Curves(np.arange(1, config.n), *to_host(_tf_curves(params_R, ctx, rewards_BxLxN, config)))


@partial(jax.jit, static_argnames=("learner", "steps", "loss"))
def _gd_curves(keys_B, ctx: Context, rewards_BxLxN, learner: str, steps: int, lr, loss=None):
    ts = jnp.arange(1, ctx.ys.shape[1])

    def per_level(rewards_BxN):
        y = gd.fit_contexts(keys_B, ctx.x, ctx.ys, rewards_BxN, ts, learner, steps, lr, ctx.xs, loss=loss)  # (B, T, D)
        return _metrics(y, ctx)

    return jax.vmap(per_level, in_axes=1)(rewards_BxLxN)  # (L, B, T) each


def gd_curves(key, ctx: Context, rewards_BxLxN, learner: str = "adam", steps: int = 50, lr=None,
              loss: str | None = None) -> Curves:
    """Curves with nmse and pl (L, B, N-1) of a GD learner (``gd.LEARNERS``) fitted on the first t
    candidates with the same shown rewards, on the ranking loss ``loss`` (default: the published
    cosine PL). One init key per context, shared by all levels and t. One compiled call;
    contexts sharded."""
    check_choice("learner", learner, gd.LEARNERS)
    check_key("key", key)
    steps = check_int("steps", steps, minimum=0)
    _check(ctx, rewards_BxLxN)
    lr = gd.LEARNERS[learner][1] if lr is None else lr
    check_positive("lr", lr)  # checked here: inside the compiled sweep lr is traced
    B = ctx.x.shape[0]
    keys = jax.random.split(key, B)
    mesh = sweep_mesh(B)
    keys, ctx, rewards_BxLxN = shard_leading((keys, ctx, rewards_BxLxN), mesh)
    out = to_host(_gd_curves(keys, ctx, rewards_BxLxN, learner, steps, jnp.asarray(lr, ctx.ys.dtype), loss))
    return Curves(np.arange(1, ctx.ys.shape[1]), *out)


def by_level(curves: Curves, columns: Sequence[tuple[str, float]], unit: str) -> dict:
    """``{kind: {str(level): {"nmse": summary, "pl": summary}}}`` from curves whose level axis
    holds ``columns`` = [(corruption, level), ...] in order: the level axis is second to last
    but two (R, L, B, T) for ``unit="seeds"`` and first (L, B, T) for ``unit="contexts"``
    (:func:`icalign.core.stats.summarise`). The nmse summaries keep their units (per-seed
    curves, or every context at the last t), which the claims pair."""
    out: dict = {}
    for c, (kind, level) in enumerate(columns):
        pick = (lambda a: a[:, c]) if unit == "seeds" else (lambda a: a[c])
        out.setdefault(kind, {})[str(level)] = {"nmse": summarise(pick(curves.nmse), unit, keep=True),
                                                "pl": summarise(pick(curves.pl), unit)}
    return out
