"""Linear read-outs and probes of the residual stream, layer by layer (docs/theory.md section 7).

A probe is ridge regression on standardised features, in closed form (the width is small).
Every probe is fitted on one set of contexts and scored on another (held out), by R^2 =
1 - SSE / SST with SST around the fitting set's mean: 0 is no better than a constant, and a
probe that learned nothing scores about 0 or below. The shuffled control fits the same probe
on targets permuted across the fitting examples, which keeps their distribution and breaks
their pairing with the residuals; it must score about 0 wherever the real probe's R^2 means
anything.

The quantities probed are those the hand-built construction writes into its residual stream
(docs/theory.md 3.2), for the first t candidates and the prediction y_hat_0 before any:
the best shown candidate y_tau(1) (head A's selection), the PL-weighted mean ybar_1 (head B),
the accumulated squared-distance PL gradient sum_i (y_tau(i) - ybar_i) (the G slot), and also
the cosine-PL gradient (the trained model's loss), the plain mean of the candidates (a
control that needs no ranking) and the answer y* itself. The last, "PL-weighted mean minus
plain mean", is the PL-weighted mean residualised on that control: the plain mean needs no
ranking and any learner computes it, so a probe that reads the PL mean only through the plain
mean scores about 0 on this one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign.core.losses import ranking_order, reward_scores, smooth_norm
from icalign.core.metrics import prefix_mask
from icalign.core.tasks import Context
from icalign.theory import gd

__all__ = ["Ridge", "fit_ridge", "predict_ridge", "r2_interval", "probe_layers", "QUANTITIES", "quantities"]

QUANTITIES = ("top candidate", "PL-weighted mean", "PL gradient (sqdist)", "PL gradient (cosine)",
              "mean candidate", "answer y*", "PL-weighted mean minus plain mean")


@struct.dataclass
class Ridge:
    """y = ((h - mu) / sd) @ w + b."""

    w: jax.Array
    b: jax.Array
    mu: jax.Array
    sd: jax.Array


def fit_ridge(h_MxF, y_MxK, l2: float = 1e-3) -> Ridge:
    """Ridge regression of y on standardised h; ``l2`` is the penalty per example (the
    intercept is not penalised: it is the targets' mean)."""
    if h_MxF.ndim != 2 or y_MxK.ndim != 2 or h_MxF.shape[0] != y_MxK.shape[0]:
        raise ValueError(f"h must be (M, F) and y (M, K) with the same M, got {h_MxF.shape} and {y_MxK.shape}")
    mu, sd = jnp.mean(h_MxF, 0), jnp.std(h_MxF, 0) + 1e-6
    z = (h_MxF - mu[None]) / sd[None]
    y_mean = jnp.mean(y_MxK, 0)
    m, f = z.shape
    w = jnp.linalg.solve(z.T @ z / m + l2 * jnp.eye(f, dtype=z.dtype), z.T @ (y_MxK - y_mean[None]) / m)
    return Ridge(w=w, b=y_mean, mu=mu, sd=sd)


def predict_ridge(p: Ridge, h) -> jax.Array:
    lead = (1,) * (h.ndim - 1)
    return ((h - p.mu.reshape(lead + p.mu.shape)) / p.sd.reshape(lead + p.sd.shape)) @ p.w + p.b.reshape(lead + p.b.shape)


def r2_interval(sse_LxBxT, sst_LxBxT, key: int = 0, draws: int = 1000) -> dict:
    """Held-out R^2 per layer, 1 - sum(sse) / sum(sst) (SST around the fitting set's mean, so
    the score is not flattered by the held-out mean), with a 95% percentile bootstrap interval
    over contexts (axis 1; the examples of one context are not independent)."""
    sse, sst = np.asarray(sse_LxBxT, np.float64).sum(-1), np.asarray(sst_LxBxT, np.float64).sum(-1)
    idx = np.random.default_rng(key).integers(0, sse.shape[1], (draws, sse.shape[1]))
    boot = 1.0 - sse[:, idx].sum(-1) / sst[:, idx].sum(-1)  # (L, draws)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=1)
    return {"mean": (1.0 - sse.sum(1) / sst.sum(1)).tolist(), "low": lo.tolist(), "high": hi.tolist(),
            "unit": "contexts (bootstrap)"}


@jax.jit
def probe_layers(key, h_fit_LxMxF, y_fit_MxK, h_eval_LxMxF, y_eval_MxK, l2=1e-3):
    """One probe per layer and its shuffled control, scored on held-out examples: per layer and
    example, the squared errors of the probe and of the control and the squared deviation
    from the fitting mean, ((L, M), (L, M), (L, M)); R^2 = 1 - sum(sse) / sum(sst), so
    intervals can resample examples (or their contexts) without refitting."""
    perm = jax.random.permutation(key, y_fit_MxK.shape[0])
    sq = lambda a: jnp.sum(a * a, axis=-1)

    def one(h_fit, h_eval):
        real = fit_ridge(h_fit, y_fit_MxK, l2)
        ctrl = fit_ridge(h_fit, y_fit_MxK[perm], l2)
        return (sq(y_eval_MxK - predict_ridge(real, h_eval)), sq(y_eval_MxK - predict_ridge(ctrl, h_eval)),
                sq(y_eval_MxK - real.b[None]))

    return jax.vmap(one)(h_fit_LxMxF, h_eval_LxMxF)


def _quantities_one(ys, rewards, y_star, y0, t):
    n = ys.shape[0]
    mask = prefix_mask(t, n)
    order = ranking_order(rewards, mask)
    alive = mask.astype(ys.dtype)
    p = jax.nn.softmax(jnp.where(mask, reward_scores(y0, ys, "sqdist"), -jnp.inf))  # head B at y_hat_0
    grad = lambda reward: gd.pl_gradient(y0[:, None], jnp.ones(1, ys.dtype), ys, rewards, reward, mask=mask)[:, 0]
    plain = alive @ ys / jnp.sum(alive)
    return jnp.stack([
        ys[order[0]],
        p @ ys,
        -grad("sqdist"),
        -grad("cosine") * smooth_norm(y0),  # the gradient of the direction (scale-free)
        plain,
        y_star,
        p @ ys - plain,
    ])


@jax.jit
def quantities(ctx: Context, y0_BxD, ts) -> jax.Array:
    """(B, T, Q, D): every quantity of ``QUANTITIES`` for every context and t in ``ts``, with
    the PL weights and gradients taken at y0 (the transformer's prediction before any triplet,
    y_hat_0; shared queries)."""
    return jax.vmap(lambda ys, r, ystar, y0: jax.vmap(lambda t: _quantities_one(ys, r, ystar, y0, t))(ts))(
        ctx.ys, ctx.rewards, ctx.y_star, y0_BxD)
