"""Evaluation metrics (docs/theory.md, "The published protocol").

Normalised MSE = 1 - cos(y_hat, y*): 0 is the right direction, about 1 a random one, 2 the
opposite. It is the published metric; it ignores scale because the cosine reward does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icalign.core.losses import plackett_luce, reward_scores, smooth_norm

__all__ = ["unit", "normalised_mse", "ranking_loss", "prefix_mask"]


def unit(v: jax.Array) -> jax.Array:
    """v / |v| over the last axis, with the eps-smoothed norm of the cosine reward, so it is
    finite and differentiable at v = 0. The one unit-vector helper: directions are what the
    cosine reward and the metric see (GD learners, TF-vs-GD comparisons, loop answers)."""
    return v / smooth_norm(v)[..., None]


def normalised_mse(y_hat: jax.Array, y_star: jax.Array) -> jax.Array:
    """1 - cos(y_hat, y*) over the last axis; (..., D) -> (...). eps-safe at y_hat = 0.
    ``y_star`` may lack leading axes of ``y_hat`` (one answer, many predictions)."""
    shape = jnp.broadcast_shapes(jnp.shape(y_hat), jnp.shape(y_star))
    y_hat, y_star = jnp.broadcast_to(y_hat, shape), jnp.broadcast_to(y_star, shape)
    cos = jnp.sum(y_hat * y_star, axis=-1) / (smooth_norm(y_hat) * smooth_norm(y_star))
    return 1.0 - cos


def prefix_mask(t: jax.Array, n: int) -> jax.Array:
    """Mask (..., N) that keeps the first t candidates; t may be a (vmapped) array."""
    t = jnp.asarray(t)
    return jnp.arange(n).reshape((1,) * t.ndim + (n,)) < t[..., None]


def ranking_loss(y_hat, ys, rewards, t=None, reward: str = "cosine", beta=1.0) -> jax.Array:
    """PL loss of prediction y_hat (..., D) on the first t candidates (all if t is None),
    ranked by the shown rewards. The in-context objective the learners minimise."""
    scores = reward_scores(y_hat, ys, reward, beta)
    mask = None if t is None else prefix_mask(t, ys.shape[-2])
    return plackett_luce(scores, rewards, mask)
