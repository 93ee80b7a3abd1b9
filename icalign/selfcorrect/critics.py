"""Critics of the self-correction loop and the true reward of a free response
(docs/theory.md section 5).

Critic (parameters are arrays, so a sweep over settings is a vmap):

    s = 1 - |r - (1 - bias)|          bias 0: s = r (exact); bias 1: s = 1 - r (prefers the
                                      wrong answer eps); in between it prefers the response with
                                      mixing weight 1 - bias.
    s -> 1 - s with probability flip  (mirrors the score, as ``tasks.reverse_random``: a good
                                      answer is then ranked as a bad one)
    s -> u ~ U(0, 1) with probability random  (a fresh draw independent of the answer, as
                                      ``tasks.replace_random``)
    s -> s + sigma * N(0, 1)          (Gaussian noise on the score)

The **null critic** (random = 1) scores independently of the answer: whatever the loop gains
with it comes from the loop itself (appending the learner's own answers), not from any
information about y*. Its gain is measured and subtracted (``NULL_CRITIC``). A flip-0.5 critic
is *not* a null: |s - 1/2| = |r - 1/2| still carries the answer's distance from the middle.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign.core.losses import smooth_norm
from icalign.core.metrics import unit
from icalign.core.tasks import Context
from icalign.core.validate import check_level

__all__ = ["Critic", "CRITIC_SETTINGS", "NULL_CRITIC", "make_critics", "critic_score", "true_reward", "R_FLOOR",
           "wrong_answer", "pairwise_accuracy"]


@struct.dataclass
class Critic:
    """Critic parameters; each field a scalar or an array with a leading settings axis (S,).

    sigma: std of Gaussian noise added to the score (>= 0).
    flip:  probability that a score is reversed, s -> 1 - s (in [0, 1]).
    bias:  in [0, 1]; the critic's ideal response has mixing weight 1 - bias (0: exact,
           1: it prefers the wrong answer eps).
    random: probability that a score is replaced by an independent U(0, 1) draw (1: the null
           critic).
    """

    sigma: jax.Array
    flip: jax.Array
    bias: jax.Array
    random: jax.Array = 0.0


NULL_CRITIC = "null (random scores)"

#: The default sweep: name -> (sigma, flip, bias[, random]).
CRITIC_SETTINGS: dict[str, tuple[float, ...]] = {
    NULL_CRITIC: (0.0, 0.0, 0.0, 1.0),
    "exact": (0.0, 0.0, 0.0),
    "noise 0.1": (0.1, 0.0, 0.0),
    "noise 0.3": (0.3, 0.0, 0.0),
    "noise 1": (1.0, 0.0, 0.0),
    "flip 0.1": (0.0, 0.1, 0.0),
    "flip 0.25": (0.0, 0.25, 0.0),
    "flip 0.5": (0.0, 0.5, 0.0),
    "flip 0.75": (0.0, 0.75, 0.0),
    "bias 0.25": (0.0, 0.0, 0.25),
    "bias 0.5": (0.0, 0.0, 0.5),
    "bias 1 (adversarial)": (0.0, 0.0, 1.0),
}


def make_critics(settings: Mapping[str, tuple[float, ...]] | None = None, dtype=jnp.float32):
    """(names, Critic with (S,) fields) from ``{name: (sigma, flip, bias[, random])}``
    (default: ``CRITIC_SETTINGS``; random defaults to 0). Ranges are checked here, before
    anything is traced."""
    settings = CRITIC_SETTINGS if settings is None else dict(settings)
    if not settings:
        raise ValueError("settings must name at least one critic, got an empty mapping")
    names, rows = [], []
    for name, row in settings.items():
        if len(tuple(row)) not in (3, 4):
            raise ValueError(f"critic {name!r} must be (sigma, flip, bias) or (sigma, flip, bias, random), got {row!r}")
        sigma, flip, bias, rand = (*(float(v) for v in row), 0.0)[:4]
        check_level(f"critic {name!r} sigma", sigma, 0.0, None)
        check_level(f"critic {name!r} flip", flip, 0.0, 1.0)
        check_level(f"critic {name!r} bias", bias, 0.0, 1.0)
        check_level(f"critic {name!r} random", rand, 0.0, 1.0)
        names.append(str(name))
        rows.append((sigma, flip, bias, rand))
    arr = np.asarray(rows, dtype=float)
    return names, Critic(*(jnp.asarray(arr[:, i], dtype) for i in range(4)))


def critic_score(key: jax.Array, r: jax.Array, critic: Critic) -> jax.Array:
    """The critic's scores of responses with true rewards ``r`` (any shape): see the module
    docstring. Critic fields must be scalars here (vmap over a settings axis outside)."""
    k_flip, k_noise = jax.random.split(key)  # the random draws use a third, folded key, so
    k_rep, k_u = jax.random.split(jax.random.fold_in(key, 2))  # the other draws are unchanged
    s = 1.0 - jnp.abs(r - (1.0 - critic.bias))
    hit = jax.random.bernoulli(k_flip, critic.flip, jnp.shape(r))
    s = jnp.where(hit, 1.0 - s, s)
    fresh = jax.random.bernoulli(k_rep, critic.random, jnp.shape(r))
    s = jnp.where(fresh, jax.random.uniform(k_u, jnp.shape(r), s.dtype), s)
    return s + critic.sigma * jax.random.normal(k_noise, jnp.shape(r), s.dtype)


R_FLOOR = -1.0  # lowest true reward: answers worse than 2 eps - y* all get it (see true_reward)
_BISECTIONS = 40  # halves [-1, 1] down to 2^-39: below float32 resolution of r


def true_reward(y: jax.Array, y_star: jax.Array, y_wrong: jax.Array) -> jax.Array:
    """The true reward of any response: the mixing weight of the candidate that is exactly
    as close to y* in direction,

        r(y) in [-1, 1]  with  cos(v(r), y*) = cos(y, y*),   v(r) = eps + r (y* - eps),

    so r(y) ranks responses exactly like the metric 1 - cos(y, y*) and gives back r_j for
    every candidate y_j = v(r_j) (answers and candidates are scored on one scale; the
    critic's true judgement is the evaluation metric). It is scale-free in y.

    Why not the nearest point of the segment: cosine-PL learners answer along the ranking
    direction y* - eps, which lies beyond y* as seen from eps; projecting it onto the segment
    would score it r = 1 (as good as y*) although cos(y* - eps, y*) < 1, and an exact critic
    would then reward drifting past y*.

    cos(v(r), y*) increases monotonically on (-inf, 1] (v(r) turns towards y* through an
    angle below pi), so r is found by bisection on [R_FLOOR, 1] = [-1, 1]; responses further
    from y* than v(-1) = 2 eps - y* (rare) are clipped to r = -1. (..., D) -> (...).
    """
    shape = jnp.broadcast_shapes(jnp.shape(y), jnp.shape(y_star), jnp.shape(y_wrong))
    y, y_star, y_wrong = (jnp.broadcast_to(v, shape) for v in (y, y_star, y_wrong))
    # Compare angles, not cosines: cos is flat near y* (1 - cos ~ angle^2 / 2), which would
    # cost half the float32 digits of r there; atan2(|rejection|, projection) is not.
    e = unit(y_star)

    def angle(v):
        along = jnp.sum(v * e, axis=-1)
        across = smooth_norm(v - along[..., None] * e)
        return jnp.arctan2(across, along)

    g = y_star - y_wrong
    theta = angle(y)

    def cos_v(r):  # decreasing angle <=> increasing cosine
        return -angle(y_wrong + r[..., None] * g)

    c_target = -theta
    lo = jnp.full(jnp.shape(c_target), R_FLOOR, c_target.dtype)
    hi = jnp.ones_like(lo)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = cos_v(mid) < c_target
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, step, (lo, hi))
    return 0.5 * (lo + hi)


def wrong_answer(ctx: Context) -> jax.Array:
    """Recover eps of a mixed-linear context, eps = (y_j - r_j y*) / (1 - r_j), from the
    candidate with the smallest true reward (the best-conditioned division). (..., D)."""
    j = jnp.argmin(ctx.r_true, axis=-1)
    y_j = jnp.take_along_axis(ctx.ys, j[..., None, None], axis=-2)[..., 0, :]
    r_j = jnp.take_along_axis(ctx.r_true, j[..., None], axis=-1)
    return (y_j - r_j * ctx.y_star) / (1.0 - r_j)


def pairwise_accuracy(shown: jax.Array, true: jax.Array, include: jax.Array | None = None) -> jax.Array:
    """Fraction of pairs (i < j, true_i != true_j) that the critic orders like the truth
    (a tie in ``shown`` counts 1/2). ``include`` (..., N) bool: only pairs with at least one
    included item count. (..., N) -> (...); NaN where no pair counts."""
    ds = shown[..., :, None] - shown[..., None, :]
    dt = true[..., :, None] - true[..., None, :]
    n = shown.shape[-1]
    upper = (jnp.arange(n)[:, None] < jnp.arange(n)[None, :]).reshape((1,) * (dt.ndim - 2) + (n, n))
    valid = upper & (dt != 0)
    if include is not None:
        valid = valid & (include[..., :, None] | include[..., None, :])
    score = jnp.where(ds == 0, 0.5, (jnp.sign(ds) == jnp.sign(dt)).astype(shown.dtype))
    total = jnp.sum(valid, axis=(-2, -1))
    return jnp.sum(jnp.where(valid, score, 0.0), axis=(-2, -1)) / jnp.where(total > 0, total, jnp.nan)
