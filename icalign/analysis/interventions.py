"""Interventions that separate mechanisms (docs/theory.md section 7): each turns a context and a
number of seen triplets t into a changed context and the position t' at which the same
question is asked again; every learner answers both, and the change is 1 - cos between its
two answers.

The PL loss depends on the shown rewards only through their ranking, so a learner that runs
PL-GD (or minimises PL) cannot change its answer under a strictly increasing reward map, nor
under a permutation of the seen triplets (PL sums over the ranking, not the order shown); the
cosine reward makes it blind to a common rescaling of the candidates too. An estimator that
reads reward *values* (exact recovery) changes under the maps; a reader of positions changes
under permutations. Duplicates and lowest-reward distractors change the PL loss itself, so no
learner here is invariant to them: they show how strongly each one weighs extra candidates.

* ``affine``, ``square``, ``sigmoid``: the strictly increasing maps 0.5 r + 0.25, r^2 and
  sigmoid(20 (r - 1/2)) of every shown reward (all keep rewards in [0, 1], the training range);
* ``reverse``: 1 - r, a control that reverses the ranking (every learner should change);
* ``permute``: the first t triplets in a random order;
* ``duplicate``: each of the first t triplets twice in a row, asked at t' = 2t;
* ``distractors``: three random responses (Gaussian at the candidates' scale) with reward 0,
  below every shown one, appended after the first t; asked at t' = t + 3;
* ``scale``: every shown response times 2;
* ``redraw`` (in ``KINDS``, not in ``INTERVENTIONS``, so the mechanism study is unchanged): the
  first t shown rewards replaced by t fresh U(0, 1) draws, sorted and handed out by the original
  rewards' ranks. Ranking and reward distribution are kept (ties have probability 0); only the
  values change, so any PL learner is invariant and a reader of values is not.

Items with t' > N - 1 (duplicates and distractors at large t) are marked invalid.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from icalign.core.tasks import Context
from icalign.core.validate import check_choice

__all__ = ["INTERVENTIONS", "KINDS", "MONOTONE", "N_DISTRACTORS", "intervene", "flatten"]

MONOTONE = ("affine", "square", "sigmoid")
INTERVENTIONS = MONOTONE + ("reverse", "permute", "duplicate", "distractors", "scale")
KINDS = INTERVENTIONS + ("redraw",)  #: every kind :func:`intervene` accepts
N_DISTRACTORS = 3

_MAPS = {
    "affine": lambda r: 0.5 * r + 0.25,
    "square": lambda r: r * r,
    "sigmoid": lambda r: jax.nn.sigmoid(20.0 * (r - 0.5)),
    "reverse": lambda r: 1.0 - r,
}


def _take(c: Context, idx) -> Context:
    """The context with its triplets reordered by ``idx`` (answer and test query kept)."""
    pick = lambda a: None if a is None else a[idx]
    return c.replace(ys=c.ys[idx], rewards=c.rewards[idx], r_true=c.r_true[idx], xs=pick(c.xs),
                     ys_query=pick(c.ys_query))


def _one(kind: str, key, c: Context, t):
    n = c.ys.shape[0]
    j = jnp.arange(n)
    if kind in _MAPS:
        return c.replace(rewards=_MAPS[kind](c.rewards)), t
    if kind == "redraw":
        # n draws with the unseen ones pushed past 1: the first t sorted values are the order
        # statistics of t fresh U(0, 1) draws; rank_j is r_j's rank among the first t
        seen = j < t
        fresh = jnp.sort(jnp.where(seen, jax.random.uniform(key, (n,), c.rewards.dtype), 2.0))
        rank = jnp.argsort(jnp.argsort(jnp.where(seen, c.rewards, jnp.inf), stable=True), stable=True)
        return c.replace(rewards=jnp.where(seen, fresh[rank], c.rewards)), t
    if kind == "permute":
        # a random order of positions 0..t-1; later positions stay where they are
        u = jnp.where(j < t, jax.random.uniform(key, (n,)), 2.0 + j)
        return _take(c, jnp.argsort(u)), t
    if kind == "duplicate":
        return _take(c, jnp.where(j < 2 * t, j // 2, j)), 2 * t
    if kind == "distractors":
        k_y, k_x = jax.random.split(key)
        new = (j >= t) & (j < t + N_DISTRACTORS)
        scale = jnp.sqrt(jnp.mean(c.ys * c.ys))
        ys = jnp.where(new[:, None], scale * jax.random.normal(k_y, c.ys.shape, c.ys.dtype), c.ys)
        zero = jnp.zeros_like(c.rewards)
        xs = None if c.xs is None else jnp.where(new[:, None], jax.random.normal(k_x, c.xs.shape, c.xs.dtype), c.xs)
        return c.replace(ys=ys, rewards=jnp.where(new, zero, c.rewards), r_true=jnp.where(new, zero, c.r_true),
                         xs=xs), t + N_DISTRACTORS
    return c.replace(ys=2.0 * c.ys), t  # scale


def flatten(ctx: Context, ts):
    """Every (context, t) pair as one item: (contexts (B*T,), t (B*T,)), context-major."""
    B, T = ctx.x.shape[0], ts.shape[0]
    rep = jax.tree_util.tree_map(lambda a: jnp.repeat(a, T, axis=0), ctx)
    return rep, jnp.tile(ts, B)


@partial(jax.jit, static_argnames="kind")
def _intervene(kind, key, ctx_flat: Context, t_flat):
    keys = jax.random.split(key, t_flat.shape[0])
    return jax.vmap(lambda k, c, t: _one(kind, k, c, t))(keys, ctx_flat, t_flat)


def intervene(kind: str, key, ctx: Context, ts):
    """The changed contexts of every (context, t) pair: (contexts (B*T,), t' (B*T,),
    valid (B*T,)), items in the order of :func:`flatten`."""
    check_choice("intervention", kind, KINDS)
    ts = jnp.asarray(ts)
    flat, t_flat = flatten(ctx, ts)
    changed, t_new = _intervene(kind, key, flat, t_flat)
    return changed, t_new, t_new <= ctx.ys.shape[-2] - 1
