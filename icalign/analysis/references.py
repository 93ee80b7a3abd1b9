"""Reference learners for the mechanism study, on the same contexts and shown rewards as the
transformer (docs/theory.md section 7). Each answers the query x after the first t triplets:

* ``minimiser``: the converged minimiser of the training objective's row t, the cosine-PL loss
  (or another scale-invariant ``losses.LOSSES`` entry) of a direction over the first t scored candidates (``tasks.scored_candidates``: the shown
  ones, or the unshown candidates at the test query for per-triplet tasks), found by
  Riemannian gradient descent on the unit sphere from several starts (the best is kept);
* ``gd_path`` / ``gd_grid``: plain GD on the linear policy (W-space, ``gd.pl_gradient_triplets``,
  which is ``gd.pl_gradient`` for shared queries) from W0, every step count 0..K, for a grid of
  step sizes: one compiled call; :func:`select` then fits (eta, steps) per t to the transformer;
* ``recover``: the exact-recovery estimator. For shared queries every candidate lies on the
  line eps + r (y* - eps) in its true reward r, so two candidates with distinct clean rewards
  give y* exactly. Under corruption it keeps the pair hypothesis that most other candidates
  agree with exactly (a consensus, RANSAC-like, estimator): when at least three shown rewards
  are uncorrupted only the true line is agreed on by three points (any other agreement has
  probability 0), so it returns y*, the Bayes posterior's point mass, under ``replace``
  corruption; with fewer it is an approximation (the first best pair, largest reward gap).
  Per-triplet queries: y_j = [W*, W_eps] [r_j x_j; (1 - r_j) x_j], solved by least squares
  (exact from t >= 2D clean triplets; the minimum-norm solution before), then W* x.

Everything is a pure function of one context and one t, vmapped over both.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.losses import DEFAULT_LOSS, LOSSES, smooth_norm
from icalign.core.metrics import normalised_mse, prefix_mask, unit
from icalign.core.tasks import Context, scored_candidates, triplet_queries
from icalign.theory import gd

__all__ = ["minimiser", "gd_path", "gd_grid", "gd_point", "select", "recover", "init_weights", "recover_weights",
           "CONSENSUS_TOL"]

#: Relative tolerance for "a candidate agrees exactly with a pair's line": float32 rounding of a
#: well-conditioned pair's solution is ~1e-7, while a looser tolerance lets a wrong pair collect
#: a chance third agreement (1e-3: 48 wrong answers in 3563 context-t items with three or more
#: clean rewards under replace p = 0.5; 1e-5: none).
CONSENSUS_TOL = 1e-5


def _starts(ys, rewards, mask):
    """Start directions: the best shown candidate, the reward-weighted sum of centred-reward
    candidates, the mean, and best minus worst (cheap guesses; the best end point is kept)."""
    w = jnp.where(mask, 1.0, 0.0)
    order = jnp.argsort(jnp.where(mask, -rewards, jnp.inf), stable=True)
    worst = order[jnp.maximum(jnp.sum(mask) - 1, 0)]
    r_c = (rewards - jnp.sum(w * rewards) / jnp.maximum(jnp.sum(w), 1.0)) * w
    return jnp.stack([ys[order[0]], r_c @ ys, w @ ys, ys[order[0]] - ys[worst]])


def _minimise_one(ys, rewards, t, steps: int, lr, loss: str):
    mask = prefix_mask(t, ys.shape[0])
    entry = LOSSES[loss]
    objective = lambda u: entry(u, ys, rewards, mask)
    if entry.pl_reward is None:
        grad = jax.grad(objective)
    else:  # a PL loss: its reward's closed-form gradient
        grad = lambda u: gd.pl_gradient(u[:, None], jnp.ones(1, ys.dtype), ys, rewards, entry.pl_reward,
                                        mask=mask)[:, 0]

    def descend(u0):
        # Riemannian GD on the sphere with a step that decays to lr / 100: the gradient of a
        # scale-invariant loss at |u| = 1 is tangent (docs/theory.md 2.5), so a step then a
        # renormalisation.
        def body(u, i):
            return unit(u - lr * (0.01 ** (i / steps)) * grad(u)), None
        return jax.lax.scan(body, unit(u0), jnp.arange(steps))[0]

    ends = jax.vmap(descend)(_starts(ys, rewards, mask))
    losses = jax.vmap(objective)(ends)
    return ends[jnp.argmin(losses)], jnp.linalg.norm(grad(ends[jnp.argmin(losses)]))


@partial(jax.jit, static_argnames=("steps", "loss"))
def _minimiser(ys_B, rewards_B, ts, steps, lr, loss):
    per = lambda ys, r: jax.vmap(lambda t: _minimise_one(ys, r, t, steps, lr, loss))(ts)
    return jax.vmap(per)(ys_B, rewards_B)


def minimiser(ctx: Context, ts, steps: int = 300, lr: float = 3.0, loss: str = DEFAULT_LOSS):
    """(B, T, D) unit minimisers of the row-t training loss (``loss`` of ``losses.LOSSES``, a
    scale-invariant one), and (B, T) the norm of the gradient left at them (the convergence
    check reported with the results). At t = 1 the loss is identically 0 and the start, the
    only candidate, is returned."""
    if not LOSSES.get_checked(loss, "loss").scale_invariant:
        raise ValueError(f"the minimiser reference searches directions: loss {loss!r} depends on the scale of the "
                         "prediction (a PL loss of sqdist scores keeps falling as |y| grows along the ranking); "
                         f"scale-invariant losses: {[k for k, v in LOSSES.items() if v.scale_invariant]}")
    return _minimiser(scored_candidates(ctx), ctx.rewards, jnp.asarray(ts), steps, lr, loss)


def init_weights(ctx: Context, y0) -> jax.Array:
    """(B, D, D) weights W0 with W0 x = y0 for shared queries (the minimum-norm one,
    y0 x^T / |x|^2: GD's path at x does not depend on which W0 is chosen, docs/theory.md 2.2)."""
    return y0[..., :, None] * ctx.x[..., None, :] / jnp.sum(ctx.x * ctx.x, -1)[..., None, None]


def _path(W0, x, xs, ys, rewards, t, eta, k_max: int, reward: str, until=None):
    mask = prefix_mask(t, ys.shape[0])

    def body(W, i):
        step = eta * gd.pl_gradient_triplets(W, xs, ys, rewards, reward, 1.0, mask)
        W = W - (step if until is None else jnp.where(i < until, step, 0.0))
        return W, W @ x

    W, path = jax.lax.scan(body, W0, jnp.arange(k_max))
    return W, jnp.concatenate([(W0 @ x)[None], path])


def gd_path(W0, ctx1: Context, t, eta, k_max: int, reward: str = "cosine"):
    """Predictions W_k x after k = 0..k_max GD steps of size ``eta`` on the PL loss of the first
    t triplets, from W0 (one unbatched context): (k_max + 1, D)."""
    return _path(W0, ctx1.x, triplet_queries(ctx1), ctx1.ys, ctx1.rewards, t, eta, k_max, reward)[1]


@partial(jax.jit, static_argnames=("k_max", "reward"))
def gd_grid(W0_B, ctx: Context, ts, etas, k_max: int, reward: str = "cosine"):
    """Every (step size, step count 0..k_max, context, t) in one compiled call:
    (E, k_max + 1, B, T, D) predictions."""
    def one(W0, c, eta):
        return jax.vmap(lambda t: gd_path(W0, c, t, eta, k_max, reward))(ts)  # (T, K+1, D)

    per_eta = lambda eta: jax.vmap(lambda W0, c: one(W0, c, eta))(W0_B, ctx)  # (B, T, K+1, D)
    return jnp.moveaxis(jax.vmap(per_eta)(etas), 3, 1)


def gd_point(W0, ctx1: Context, t, eta, k, k_max: int, reward: str = "cosine"):
    """(W_k, W_k x) after k <= k_max steps (k may be traced: one compiled call serves a
    different fitted step count per item)."""
    W, _ = _path(W0, ctx1.x, triplet_queries(ctx1), ctx1.ys, ctx1.rewards, t, eta, k_max, reward, until=k)
    return W, W @ ctx1.x


def select(y_target_BxTxD, grid_ExKxBxTxD):
    """Fit (step size index, step count) per t: the grid point whose predictions are closest in
    direction to ``y_target`` on average over the contexts given (the fitting half). Returns
    (e (T,), k (T,), mean distance (E, K, T))."""
    dist = jnp.mean(normalised_mse(grid_ExKxBxTxD, y_target_BxTxD[None, None]), axis=2)  # (E, K, T)
    dist = jnp.nan_to_num(dist, nan=jnp.inf)  # a step size that diverged never fits
    E, K, T = dist.shape
    flat = jnp.argmin(dist.reshape(E * K, T), axis=0)
    return flat // K, flat % K, dist


def _recover_shared(ys, rewards, ts, tol):
    """(T, D): the pair work is shared by every t (agreement counts are prefix sums)."""
    n = ys.shape[0]
    J, K = (jnp.asarray(a) for a in np.triu_indices(n, 1))  # every pair j < k
    gap = rewards[J] - rewards[K]
    distinct = jnp.abs(gap) > 1e-6
    d = (ys[J] - ys[K]) / jnp.where(distinct, gap, 1.0)[:, None]  # y* - eps if both are clean
    eps = ys[J] - rewards[J][:, None] * d
    miss = jnp.linalg.norm(eps[:, None] + rewards[None, :, None] * d[:, None] - ys[None], axis=-1)
    agree = jnp.cumsum(miss <= tol * (smooth_norm(d) + smooth_norm(eps))[:, None], axis=-1)  # (P, N)

    def at(t):
        valid = distinct & (K < t)
        # the count decides; |gap| < 1 only breaks ties (the best-conditioned pair)
        best = jnp.argmax(jnp.where(valid, agree[:, jnp.maximum(t - 1, 0)] + jnp.abs(gap), -1.0))
        return jnp.where(jnp.any(valid), eps[best] + d[best], ys[0])  # t = 1: the only candidate

    return jax.vmap(at)(ts)


def _recover_triplets(xs, ys, rewards, t):
    """W* by least squares on the first t triplets: y_j = [W*, W_eps] [r_j x_j; (1 - r_j) x_j]."""
    keep = (jnp.arange(ys.shape[0]) < t)[:, None]
    feats = jnp.concatenate([rewards[:, None] * xs, (1.0 - rewards[:, None]) * xs], -1) * keep
    coef = jnp.linalg.lstsq(feats, ys * keep)[0]  # (2D, D): [W*, W_eps]^T, minimum norm
    return coef[: xs.shape[1]].T


def _recover_ts(ctx1: Context, ts, tol):
    if ctx1.xs is None:
        return _recover_shared(ctx1.ys, ctx1.rewards, ts, tol)
    return jax.vmap(lambda t: _recover_triplets(ctx1.xs, ctx1.ys, ctx1.rewards, t) @ ctx1.x)(ts)


def recover_one(ctx1: Context, t, tol: float = CONSENSUS_TOL):
    """The exact-recovery answer for one unbatched context after t triplets (module docstring)."""
    return _recover_ts(ctx1, jnp.asarray(t)[None], tol)[0]


@jax.jit
def recover(ctx: Context, ts, tol: float = CONSENSUS_TOL):
    """(B, T, D) exact-recovery answers (module docstring) for every context and t."""
    return jax.vmap(lambda c: _recover_ts(c, ts, tol))(ctx)


@jax.jit
def recover_weights(ctx: Context, ts):
    """(B, T, D, D) the least-squares W* of per-triplet contexts (the exact-recovery weights)."""
    return jax.vmap(lambda c: jax.vmap(lambda t: _recover_triplets(c.xs, c.ys, c.rewards, t))(ts))(ctx)
