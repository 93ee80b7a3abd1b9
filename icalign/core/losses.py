"""Reward models and ranking losses (docs/theory.md section 1).

Shapes: a prediction ``y_hat`` is (..., D); candidates ``ys`` are (..., N, D); scores and
rewards are (..., N). Inputs are checked before anything is traced: lists become arrays, integers become floats,
and None, text, booleans, complex numbers, NaN and inf are refused by name. Everything is
vectorised: a ranking loss sorts the scores by the shown
reward (descending; ties broken by candidate index, lower first) and takes a reverse
log-cumsum-exp, with no Python loop over contexts or positions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.registry import Registry
from icalign.core.validate import (check_bool_array, check_choice, check_finite, check_int_values, check_last_axis,
                                   check_positive, check_real_array)

__all__ = [
    "REWARDS",
    "sqdist_reward",
    "cosine_reward",
    "reward_scores",
    "bradley_terry",
    "plackett_luce",
    "prefix_plackett_luce",
    "ranking_order",
    "Loss",
    "LOSSES",
    "DEFAULT_LOSS",
    "register_loss",
    "unregister_loss",
    "online_rows",
    "learner_loss",
]

REWARDS = ("sqdist", "cosine")
COSINE_EPS = 1e-8


def sqdist_reward(y_hat: jax.Array, ys: jax.Array, beta=1.0) -> jax.Array:
    """s_j = -beta/2 * ||y_hat - y_j||^2 (the theory's reward)."""
    y_hat, ys = _check_prediction(y_hat, ys)
    check_positive("beta", beta)
    diff = y_hat[..., None, :] - ys
    return -0.5 * beta * jnp.sum(diff * diff, axis=-1)


def smooth_norm(v: jax.Array, eps=COSINE_EPS) -> jax.Array:
    """sqrt(||v||^2 + eps^2): equals ||v|| up to eps^2/(2||v||), and is smooth at v = 0, so a
    zero vector gives cosine 0 with a finite gradient instead of NaN."""
    return jnp.sqrt(jnp.sum(v * v, axis=-1) + eps * eps)


def cosine_reward(y_hat: jax.Array, ys: jax.Array, eps=COSINE_EPS) -> jax.Array:
    """s_j = cos(y_hat, y_j), eps-safe (the published experiments' reward)."""
    y_hat, ys = _check_prediction(y_hat, ys)
    num = jnp.einsum("...d,...nd->...n", y_hat, ys)
    return num / (smooth_norm(y_hat, eps)[..., None] * smooth_norm(ys, eps))


def _check_prediction(y_hat, ys):
    y_hat, ys = check_real_array("y_hat", y_hat, integers=True), check_real_array("ys", ys, integers=True)
    y_shape, c_shape = jnp.shape(y_hat), jnp.shape(ys)
    if len(y_shape) < 1 or len(c_shape) < 2 or y_shape[-1] != c_shape[-1]:
        raise ValueError(f"y_hat (..., D) and ys (..., N, D) must share D, got shapes {y_shape} and {c_shape}")
    return y_hat, ys


def reward_scores(y_hat: jax.Array, ys: jax.Array, reward: str = "sqdist", beta=1.0) -> jax.Array:
    """Model reward of every candidate under the named reward model ('sqdist' or 'cosine')."""
    check_choice("reward", reward, REWARDS)
    if reward == "sqdist":
        return sqdist_reward(y_hat, ys, beta)
    return cosine_reward(y_hat, ys)


def bradley_terry(score_preferred: jax.Array, score_other: jax.Array) -> jax.Array:
    """L_BT = -log sigmoid(s_w - s_l), computed as softplus(s_l - s_w) (stable for |s| ~ 1e4)."""
    score_preferred = check_real_array("score_preferred", score_preferred, integers=True)
    score_other = check_real_array("score_other", score_other, integers=True)
    if jnp.shape(score_preferred) != jnp.shape(score_other):
        raise ValueError(
            "score_preferred and score_other must have the same shape, got "
            f"{jnp.shape(score_preferred)} and {jnp.shape(score_other)}"
        )
    return jax.nn.softplus(score_other - score_preferred)


def ranking_order(rewards: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Indices tau that sort candidates best-first by reward. Ties keep index order, and
    masked-out candidates go last, so the order is deterministic."""
    key = rewards if mask is None else jnp.where(mask, rewards, -jnp.inf)
    return jnp.argsort(key, axis=-1, descending=True, stable=True)


def _check_scores_rewards(scores, rewards):
    scores = check_real_array("scores", scores, integers=True)
    rewards = check_real_array("rewards", rewards, integers=True)
    n = jnp.shape(scores)[-1] if jnp.ndim(scores) else 0
    if jnp.ndim(scores) == 0 or n < 2:
        raise ValueError(
            f"scores must have a last axis of N >= 2 candidates, got shape {jnp.shape(scores)}"
        )
    check_last_axis("rewards", rewards, n, "scores")
    return scores, rewards


def plackett_luce(scores: jax.Array, rewards: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Negative log-likelihood of the ranking that ``rewards`` induce (descending).

        L_PL = sum_{i=1..N} [ -s_tau(i) + log sum_{j >= i} exp(s_tau(j)) ]

    summed over all N terms (the last is identically 0). Shapes (..., N) -> (...).
    ``mask`` (..., N), optional: only candidates with mask True take part, ranked among
    themselves (this is how a variable context length is expressed).
    """
    scores, rewards = _check_scores_rewards(scores, rewards)
    if mask is None:
        mask = jnp.ones(jnp.shape(scores), dtype=bool)
    else:
        mask = mask if hasattr(mask, "dtype") else np.asarray(mask)
        check_last_axis("mask", mask, jnp.shape(scores)[-1], "scores")
        check_bool_array("mask", mask)
    scores, rewards, mask = jnp.broadcast_arrays(scores, rewards, mask)
    order = ranking_order(rewards, mask)
    s = jnp.take_along_axis(scores, order, axis=-1)
    m = jnp.take_along_axis(mask, order, axis=-1)
    # Masked candidates sort last and get a huge negative (finite, so no inf - inf in the
    # backward pass) score: they add exp(-huge) = 0 to every remaining-set sum.
    neg = jnp.asarray(jnp.finfo(s.dtype).min / 4, s.dtype)
    s = jnp.where(m, s, neg)
    lse = jax.lax.cumlogsumexp(s, axis=s.ndim - 1, reverse=True)
    terms = jnp.where(m, lse - s, 0.0)
    return jnp.sum(terms, axis=-1)


def prefix_plackett_luce(scores: jax.Array, rewards: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Online (prefix) PL, the training loss of the published experiments.

    ``scores`` (..., T, N): row t holds the model rewards that prediction t assigns to every
    candidate. Prediction t is scored by PL over candidates 0..lengths[t]-1 only, ranked among
    themselves. The default ``lengths = arange(T)`` is the interleaved layout: the prediction
    read at the t-th query token has seen t complete (query, response, reward) triplets.
    ``rewards`` (..., N). Returns (..., T); rows with fewer than 2 candidates give 0.
    """
    scores = check_real_array("scores", scores, integers=True)
    rewards = check_real_array("rewards", rewards, integers=True)
    if jnp.ndim(scores) < 2:
        raise ValueError(f"scores must have shape (..., T, N), got {jnp.shape(scores)}")
    t, n = jnp.shape(scores)[-2:]
    if n < 2:
        raise ValueError(f"scores must have N >= 2 candidates on the last axis, got {n}")
    check_last_axis("rewards", rewards, n, "scores")
    if lengths is None:
        lengths = jnp.arange(t)
    elif jnp.shape(lengths) != (t,):
        raise ValueError(f"lengths must have shape ({t},) to match scores, got {jnp.shape(lengths)}")
    else:
        check_int_values("lengths", lengths, 0, n)
    mask = jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]  # (T, N)
    return plackett_luce(scores, rewards[..., None, :], mask)


# ---------------------------------------------------------------------------------------------
# The training objective's ranking loss, by name (``TrainConfig.loss``): one definition used by
# training, the health gate, the loss-minimiser reference and the GD learners.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loss:
    """A ranking loss of one prediction: ``fn(y_hat (..., D), ys (..., N, D), rewards (..., N),
    mask (..., N) bool) -> (...)``, broadcasting over the leading axes; only candidates with
    mask True take part, ranked by ``rewards`` (descending). ``pl_reward``: the loss is
    Plackett-Luce with this reward model (``REWARDS``), so the GD learners use its closed-form
    gradient (``gd.pl_gradient``), else autodiff; ``scale_invariant``: it depends on the
    direction of y_hat only (the minimiser reference then searches the unit sphere)."""

    fn: Callable
    pl_reward: str | None = None
    scale_invariant: bool = False
    fingerprint: str | None = dataclasses.field(default=None, compare=False)

    def __call__(self, y_hat, ys, rewards, mask):
        return self.fn(y_hat, ys, rewards, mask)


LOSSES = Registry("loss", "train.loss")
DEFAULT_LOSS = "cosine_pl"  #: the published objective


def register_loss(name: str, fn: Callable, *, pl_reward: str | None = None, scale_invariant: bool = False,
                  _builtin: bool = False) -> None:
    """Add a ranking loss (see :class:`Loss` for ``fn``'s shapes) under ``name``:
    ``train.loss=NAME`` then trains with it, and the health gate, the minimiser reference and
    the GD learners use it. Registering a name again replaces it (a built-in name is refused)."""
    if pl_reward is not None:
        check_choice("pl_reward", pl_reward, REWARDS)
    if not isinstance(scale_invariant, bool):
        raise ValueError(f"scale_invariant must be True or False, got {scale_invariant!r}")
    LOSSES.add(name, Loss(fn, pl_reward, scale_invariant), builtin=_builtin)


def unregister_loss(name: str) -> None:
    """Remove a user-registered loss (built-in ones stay)."""
    LOSSES.remove(name)


def _cosine_pl(y_hat, ys, rewards, mask):
    return plackett_luce(cosine_reward(y_hat, ys), rewards, mask)


def _sqdist_pl(y_hat, ys, rewards, mask):
    return plackett_luce(sqdist_reward(y_hat, ys), rewards, mask)


def _cosine_bt(y_hat, ys, rewards, mask):
    """Bradley-Terry on every pair (w, l) of live candidates with r_w > r_l (ties carry no
    preference), averaged over those pairs; 0 with none. Cosine reward."""
    s = cosine_reward(y_hat, ys)
    s, rewards, mask = jnp.broadcast_arrays(s, rewards, mask)
    pair = mask[..., :, None] & mask[..., None, :] & (rewards[..., :, None] > rewards[..., None, :])
    terms = jnp.where(pair, jax.nn.softplus(s[..., None, :] - s[..., :, None]), 0.0)
    return jnp.sum(terms, axis=(-2, -1)) / jnp.maximum(jnp.sum(pair, axis=(-2, -1)), 1)


register_loss("cosine_pl", _cosine_pl, pl_reward="cosine", scale_invariant=True, _builtin=True)
register_loss("sqdist_pl", _sqdist_pl, pl_reward="sqdist", _builtin=True)
register_loss("cosine_bt", _cosine_bt, scale_invariant=True, _builtin=True)


def online_rows(loss: str, y_hat: jax.Array, ys: jax.Array, rewards: jax.Array) -> jax.Array:
    """The online objective's rows (docs/theory.md section 4): ``y_hat`` (..., T, D), row t the
    prediction after t seen triplets, scored by the named loss over candidates 0..t-1 of
    ``ys`` (..., N, D) ranked by ``rewards`` (..., N). Returns (..., T); rows with fewer than 2
    candidates give 0 for the built-in losses. For ``cosine_pl`` this is
    ``prefix_plackett_luce`` of the cosine scores."""
    entry = LOSSES.get_checked(loss)
    t, n = jnp.shape(y_hat)[-2], jnp.shape(ys)[-2]
    mask = jnp.arange(n)[None, :] < jnp.arange(t)[:, None]  # (T, N)
    return entry(y_hat, ys[..., None, :, :], rewards[..., None, :], mask)


def learner_loss(loss: str | None, reward: str, per_triplet: bool = False) -> Loss | None:
    """The registered loss a GD learner fits instead of PL with ``reward`` (None: that PL)."""
    if loss is None:
        return None
    entry = LOSSES.get_checked(loss, "loss")
    if reward != "cosine" and reward != entry.pl_reward:
        raise ValueError(f"give loss or reward, not both: loss={loss!r} with reward={reward!r}")
    if per_triplet and entry.pl_reward is None:
        raise ValueError(f"loss {loss!r} scores one prediction; per-triplet queries need a PL loss "
                         f"({[k for k, v in LOSSES.items() if v.pl_reward]})")
    return entry
