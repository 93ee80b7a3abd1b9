"""Analytic learners on the linear policy y_hat = W x (docs/theory.md section 2).

Closed-form gradients of Bradley-Terry and Plackett-Luce for both reward models, plain
gradient descent, and the published baseline (Adam, lr 0.1, 50 steps). The closed forms are
written from the derivation, not from autodiff: tests compare them with ``jax.grad`` of
``icalign.losses``, which computes PL a different way (sort + reverse log-cumsum-exp).

Derivation (PL). Sort candidates best-first by shown reward, tau. Term i of
L_PL = sum_i [-s_tau(i) + log sum_{j>=i} exp s_tau(j)] has d/ds_tau(j) = -[j = i] + p_ij, where
p_ij = softmax over the remaining set {tau(i..N)} of s. Hence, by the chain rule through
y_hat = W x, dL/dW = (sum_j dL/ds_j * ds_j/dy_hat) x^T, with

* squared distance, s_j = -beta/2 ||y_hat - y_j||^2, ds_j/dy_hat = -beta (y_hat - y_j):
      dL_PL/dW = -beta * sum_{i=1..N-1} (y_tau(i) - ybar_i) x^T,  ybar_i = sum_{j>=i} p_ij y_tau(j)
  (the y_hat terms cancel because each row of p sums to one; the i = N term is zero);
* cosine, s_j = cos(y_hat, y_j), ds_j/dy_hat = y_j / (|y_hat| |y_j|) - s_j y_hat / |y_hat|^2
  (with the eps-smoothed norms of ``losses.smooth_norm``, so it is the exact derivative of
  the implemented reward).

BT is PL with N = 2: dL_BT/dW = -beta * sigmoid(s_l - s_w) (y_w - y_l) x^T for sqdist.

Per-triplet queries (candidate j scored at its own query, s_j = r(W x_j, y_j); docs/theory.md
section 7): dL/dW = sum_j dL/ds_j * ds_j/dy_hat_j x_j^T, a sum of rank-one terms along the seen
queries rather than one term along x (``pl_gradient_triplets``; ``fit_linear(..., xs=...)``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icalign.core.losses import REWARDS, learner_loss, ranking_order, reward_scores, smooth_norm
from icalign.core.metrics import normalised_mse, prefix_mask, unit
from icalign.core.sharding import shard_contexts
from icalign.core.tasks import CORRUPTIONS, Context, check_batched_contexts, check_corruption_levels
from icalign.core.validate import (check_bool_array, check_choice, check_int, check_int_values, check_key,
                                   check_positive, check_real_array)

__all__ = ["remaining_softmax", "pl_score_gradient", "pl_gradient", "pl_gradient_triplets", "bt_gradient", "gd_step",
           "gradient_descent", "init_linear", "fit_linear", "baseline_sweep", "fit_contexts", "check_batched_contexts",
           "LEARNERS"]

# name: (optimiser, default learning rate); both run 50 full-batch steps on cosine PL (or ``loss``):
# Adam at lr 0.1 is the published baseline, plain GD has the same loss and init.
LEARNERS = {"adam": ("adam", 0.1), "gd": ("sgd", 1.0)}


def _check_policy_args(W, x, ys, rewards, reward, mask=None, has_w: bool = True):
    """Checks a policy-gradient function's arguments; returns (W, x, ys, rewards, mask) as finite
    real arrays (lists converted, integers made floats; None, text, bools, complex refused by name)."""
    check_choice("reward", reward, REWARDS)
    W = check_real_array("W", W, integers=True) if has_w else None
    x, ys = check_real_array("x", x, integers=True), check_real_array("ys", ys, integers=True)
    rewards = check_real_array("rewards", rewards, integers=True)
    ys_shape, x_shape = jnp.shape(ys), jnp.shape(x)
    w_shape = None if W is None else jnp.shape(W)
    if len(ys_shape) != 2 or ys_shape[0] < 2:
        raise ValueError(f"ys must have shape (N, D) with N >= 2, got {ys_shape}")
    n, d_out = ys_shape
    if len(x_shape) != 1:
        raise ValueError(f"x must have shape (D,), got {x_shape}")
    if W is not None and w_shape != (d_out, x_shape[0]):
        raise ValueError(
            f"W must have shape (D_out, D_in) = ({d_out}, {x_shape[0]}) to match ys and x, got {w_shape}"
        )
    if jnp.shape(rewards) != (n,):
        raise ValueError(f"rewards must have shape ({n},) to match ys, got {jnp.shape(rewards)}")
    if mask is not None and jnp.shape(mask) != (n,):
        raise ValueError(f"mask must have shape ({n},) to match ys, got {jnp.shape(mask)}")
    if mask is not None:
        check_bool_array("mask", mask)
    return W, x, ys, rewards, (None if mask is None else jnp.asarray(mask))


def remaining_softmax(scores_sorted: jax.Array, mask_sorted: jax.Array) -> jax.Array:
    """p_ij = softmax over the remaining set {j >= i, alive} of s_j, for best-first sorted
    scores. Built from an explicit (N, N) mask; rows of dead candidates are 0."""
    n = scores_sorted.shape[-1]
    upper = jnp.arange(n)[None, :] >= jnp.arange(n)[:, None]
    keep = upper & mask_sorted[..., None, :] & mask_sorted[..., :, None]
    logits = jnp.where(keep, scores_sorted[..., None, :], -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    e = jnp.where(keep, jnp.exp(logits - row_max), 0.0)
    z = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(z > 0, z, 1.0)


def _sort(rewards, mask, *arrays):
    order = ranking_order(rewards, mask)
    return order, [jnp.take(a, order, axis=0) for a in arrays]


def _score_gradient_sorted(s: jax.Array, m: jax.Array) -> jax.Array:
    """dL_PL/ds for best-first sorted scores: -alive_j + sum_{i <= j} p_ij."""
    return jnp.sum(remaining_softmax(s, m), axis=0) - m


def _bounded_score_gradient_sorted(s: jax.Array, m: jax.Array) -> jax.Array:
    """The same as ``_score_gradient_sorted`` in O(N) for scores in [-1, 1] (the cosine
    reward), where exp(s) needs no shift: with Z_i = sum_{k >= i, alive} e^{s_k},
    sum_{i <= j} p_ij = e^{s_j} sum_{i <= j, alive} 1/Z_i. Three times faster than the
    (N, N) form on CPU; it would overflow for unbounded scores, so sqdist never uses it."""
    e = jnp.where(m, jnp.exp(s), 0.0)
    z = jnp.flip(jnp.cumsum(jnp.flip(e, -1), -1), -1)
    inv_z = jnp.where(m, 1.0 / jnp.where(m, z, 1.0), 0.0)
    g = jnp.where(m, e * jnp.cumsum(inv_z, -1) - 1.0, 0.0)
    # With one candidate the PL loss is identically 0; the formula leaves ~1e-8 of rounding,
    # which Adam (eps 1e-8) would turn into lr-sized steps. Make the zero exact.
    return jnp.where(jnp.sum(m, -1, keepdims=True) >= 2, g, 0.0)


def pl_score_gradient(scores: jax.Array, rewards: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """dL_PL/ds_j in closed form: -alive_j + sum_{i <= rank(j)} p_ij (unsorted order)."""
    n = scores.shape[-1]
    mask = jnp.ones(n, bool) if mask is None else mask
    order, (s, m) = _sort(rewards, mask, scores, mask)
    return jnp.zeros_like(scores).at[order].set(_score_gradient_sorted(s, m))


def _cosine_jacobian(y_hat, ys, s):
    """ds_j/dy_hat for the eps-smoothed cosine: y_j/(|y_hat||y_j|) - s_j y_hat/|y_hat|^2."""
    na = smooth_norm(y_hat)
    return ys / (na * smooth_norm(ys))[:, None] - s[:, None] * y_hat[None, :] / (na * na)


def _cosine_yhat_gradient(y_hat, units_s, m):
    """dL_PL/dy_hat for the cosine reward, candidates sorted best-first and given as unit
    vectors u_j = y_j/|y_j|: with s_j = u_j . y_hat / |y_hat| and g = dL/ds,
    sum_j g_j ds_j/dy_hat = (g . U)/|y_hat| - (g . s) y_hat/|y_hat|^2 (the (N, D) Jacobian
    of ``_cosine_jacobian`` contracted without being built: this loop runs 50 steps for
    every context, level and t of a sweep)."""
    na = smooth_norm(y_hat)
    s = units_s @ y_hat / na
    g = _bounded_score_gradient_sorted(s, m)
    return (g @ units_s) / na - (g @ s) * y_hat / (na * na)


def _yhat_gradient_sorted(y_hat, ys_s, m, reward, beta):
    """dL_PL/dy_hat in closed form for candidates already sorted best-first (``m``: alive)."""
    if reward == "sqdist":
        s = reward_scores(y_hat, ys_s, reward, beta)
        ybar = remaining_softmax(s, m) @ ys_s  # (N, D): ybar_i
        return -beta * jnp.sum(jnp.where(m[:, None], ys_s - ybar, 0.0), axis=0)
    return _cosine_yhat_gradient(y_hat, unit(ys_s), m)


def _yhat_gradient(y_hat, ys, rewards, mask, reward, beta):
    """dL_PL/dy_hat in closed form (see module docstring)."""
    mask = jnp.ones(ys.shape[0], bool) if mask is None else mask
    _, (ys_s, m) = _sort(rewards, mask, ys, mask)
    return _yhat_gradient_sorted(y_hat, ys_s, m, reward, beta)


def pl_gradient(W, x, ys, rewards, reward: str = "sqdist", beta=1.0, mask=None) -> jax.Array:
    """dL_PL/dW for the linear policy y_hat = W x, in closed form (not autodiff).

    ``W`` (D_out, D_in), ``x`` (D_in,), ``ys`` (N, D_out), ``rewards`` (N,); ``mask`` (N,)
    optionally restricts the ranking to a subset (e.g. the first t candidates).
    """
    W, x, ys, rewards, mask = _check_policy_args(W, x, ys, rewards, reward, mask)
    check_positive("beta", beta)
    return jnp.outer(_yhat_gradient(W @ x, ys, rewards, mask, reward, beta), x)


def _triplet_w_gradient(W, xs_s, ys_s, m, reward, beta):
    """dL_PL/dW when candidate j (sorted best-first, ``m``: alive) is scored at its own query
    x_j: the rows dL/ds_j * ds_j/dy_hat_j, contracted with the queries."""
    yh = xs_s @ W.T  # (N, D_out): y_hat_j = W x_j
    if reward == "sqdist":
        s = -0.5 * beta * jnp.sum((yh - ys_s) ** 2, axis=-1)
        dy = _score_gradient_sorted(s, m)[:, None] * (-beta) * (yh - ys_s)
    else:
        u, na = unit(ys_s), smooth_norm(yh)
        s = jnp.sum(u * yh, axis=-1) / na
        dy = _bounded_score_gradient_sorted(s, m)[:, None] * (u / na[:, None] - s[:, None] * yh / (na * na)[:, None])
    return dy.T @ xs_s


def pl_gradient_triplets(W, xs, ys, rewards, reward: str = "sqdist", beta=1.0, mask=None) -> jax.Array:
    """dL_PL/dW in closed form when candidate j is scored at its own query x_j,
    s_j = r(W x_j, y_j). ``xs`` (N, D_in); with every x_j = x it equals :func:`pl_gradient`."""
    xs = check_real_array("xs", xs, integers=True)
    if jnp.ndim(xs) != 2:
        raise ValueError(f"xs must have shape (N, D_in), got {jnp.shape(xs)}")
    W, _, ys, rewards, mask = _check_policy_args(W, xs[0], ys, rewards, reward, mask)
    if jnp.shape(xs)[0] != jnp.shape(ys)[0]:
        raise ValueError(f"xs must have one query per candidate ({jnp.shape(ys)[0]}), got {jnp.shape(xs)}")
    check_positive("beta", beta)
    mask = jnp.ones(ys.shape[0], bool) if mask is None else mask
    _, (xs_s, ys_s, m) = _sort(rewards, mask, xs, ys, mask)
    return _triplet_w_gradient(W, xs_s, ys_s, m, reward, beta)


def bt_gradient(W, x, y_preferred, y_other, reward: str = "sqdist", beta=1.0) -> jax.Array:
    """dL_BT/dW in closed form: sigmoid(s_l - s_w) (ds_l/dy_hat - ds_w/dy_hat) x^T;
    for sqdist this is -beta sigmoid(s_l - s_w) (y_w - y_l) x^T."""
    y_preferred = check_real_array("y_preferred", y_preferred, integers=True)
    y_other = check_real_array("y_other", y_other, integers=True)
    if jnp.shape(y_preferred) != jnp.shape(y_other) or jnp.ndim(y_preferred) != 1:
        raise ValueError(f"y_preferred and y_other must be vectors of the same shape (D,), got "
                         f"{jnp.shape(y_preferred)} and {jnp.shape(y_other)}")
    ys = jnp.stack([y_preferred, y_other])
    W, x, ys, _, _ = _check_policy_args(W, x, ys, np.zeros(2), reward)
    check_positive("beta", beta)
    y_hat = W @ x
    s = reward_scores(y_hat, ys, reward, beta)
    sig = jax.nn.sigmoid(s[1] - s[0])
    if reward == "sqdist":
        g = -beta * sig * (y_preferred - y_other)
    else:
        ds = _cosine_jacobian(y_hat, ys, s)
        g = sig * (ds[1] - ds[0])
    return jnp.outer(g, x)


def gd_step(W, x, ys, rewards, eta, reward: str = "sqdist", beta=1.0, mask=None) -> jax.Array:
    """One gradient step W - eta dL_PL/dW. Seen at the query (sqdist):
    y_hat+ = y_hat + eta beta ||x||^2 sum_i (y_tau(i) - ybar_i)."""
    check_positive("eta", eta)
    W = check_real_array("W", W, integers=True)
    return W - eta * pl_gradient(W, x, ys, rewards, reward, beta, mask)


def gradient_descent(W0, x, ys, rewards, eta, steps: int, reward: str = "sqdist", beta=1.0, mask=None):
    """``steps`` plain GD steps on L_PL from W0 (a ``lax.scan``; eta may be traced)."""
    steps = check_int("steps", steps, minimum=0)
    W0, x, ys, rewards, mask = _check_policy_args(W0, x, ys, rewards, reward, mask)
    check_positive("eta", eta)

    def body(W, _):
        return W - eta * jnp.outer(_yhat_gradient(W @ x, ys, rewards, mask, reward, beta), x), None

    return jax.lax.scan(body, W0, None, length=steps)[0]


def init_linear(key: jax.Array, d_out: int, d_in: int, dtype=jnp.float32) -> jax.Array:
    """PyTorch's default nn.Linear init, as the published baseline: U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    bound = 1.0 / jnp.sqrt(d_in)
    return jax.random.uniform(key, (d_out, d_in), dtype, -bound, bound)


def fit_linear(key, x, ys, rewards, t, learner: str = "adam", steps: int = 50, lr=None,
               reward: str = "cosine", xs=None, loss: str | None = None) -> jax.Array:
    """Fit a linear policy on the PL loss over the first ``t`` candidates; return y_hat = W x.

    The published baseline is ``learner='adam'``: lr 0.1, 50 full-batch steps, cosine reward,
    PyTorch's default init. It always runs ``steps`` steps, whatever the corruption level
    (the published code silently ran 50 - 25p). ``t`` may be a traced array (vmapped).
    ``xs`` (N, D_in): per-triplet queries (candidate j scored at x_j); x is then the test query.
    ``loss``: a name of ``losses.LOSSES`` fitted instead of PL with ``reward``: a PL loss by its
    reward's closed-form gradient, any other by ``jax.grad`` (shared queries only).
    """
    check_choice("learner", learner, LEARNERS)
    check_key("key", key)
    steps = check_int("steps", steps, minimum=0)
    _, x, ys, rewards, _ = _check_policy_args(None, x, ys, rewards, reward, has_w=False)
    if xs is not None:
        xs = check_real_array("xs", xs, integers=True)
    check_int_values("t", t, 1, jnp.shape(ys)[0])  # t candidates of N (traced t: the caller checks ts)
    entry = learner_loss(loss, reward, xs is not None)
    reward = reward if entry is None or entry.pl_reward is None else entry.pl_reward
    opt_name, default_lr = LEARNERS[learner]
    lr = default_lr if lr is None else lr
    check_positive("lr", lr)
    opt = getattr(optax, opt_name)(lr)
    mask = prefix_mask(t, ys.shape[0])
    # The ranking never changes during the fit: sort once, outside the step loop.
    order = ranking_order(rewards, mask)
    ys_s, m_s = ys[order], mask[order]
    if entry is not None and entry.pl_reward is None:
        grad_w = jax.grad(lambda W: entry(W @ x, ys, rewards, mask))
    elif xs is not None:
        xs_s = xs[order]
        grad_w = lambda W: _triplet_w_gradient(W, xs_s, ys_s, m_s, reward, 1.0)
    elif reward == "cosine":
        units_s = unit(ys_s)  # constant over the fit: normalise once
        grad_w = lambda W: jnp.outer(_cosine_yhat_gradient(W @ x, units_s, m_s), x)
    else:
        grad_w = lambda W: jnp.outer(_yhat_gradient_sorted(W @ x, ys_s, m_s, reward, 1.0), x)
    W0 = init_linear(key, ys.shape[1], x.shape[0], ys.dtype)

    def body(carry, _):
        W, state = carry
        grad = grad_w(W)
        updates, state = opt.update(grad, state, W)
        return (optax.apply_updates(W, updates), state), None

    (W, _), _ = jax.lax.scan(body, (W0, opt.init(W0)), None, length=steps)
    return W @ x


def fit_contexts(keys_B, x_BxD, ys_BxNxD, rewards_BxN, ts, learner: str = "adam", steps: int = 50, lr=None,
                 xs_BxNxD=None, loss: str | None = None):
    """``fit_linear`` for every context (leading axis B, one init key each) and every t of
    ``ts``: (B, T, D). The one vmapped wrapper that every GD sweep (the baseline sweep, the
    TF-vs-GD comparison, the corruption curves) calls; traceable, so callers jit it.
    ``xs_BxNxD``: per-triplet queries (``Context.xs``), or None for shared ones."""

    def one(key, x, ys, rewards, xs):
        return jax.vmap(lambda t: fit_linear(key, x, ys, rewards, t, learner, steps, lr, xs=xs, loss=loss))(ts)

    return jax.vmap(one)(keys_B, x_BxD, ys_BxNxD, rewards_BxN, xs_BxNxD)


@partial(jax.jit, static_argnames=("corruption", "learner", "steps", "n_used", "loss"))
def _sweep(key, ctx, levels, ts, lr, corruption, learner, steps, n_used, loss):
    k_corrupt, k_init = jax.random.split(key)
    b = ctx.x.shape[0]
    # Common random numbers: every level and every t of one context share its corruption
    # draw and its init, so differences between curves are not sampling noise.
    corrupt_keys = jax.random.split(k_corrupt, b)
    init_keys = jax.random.split(k_init, b)
    corrupt_fn = CORRUPTIONS[corruption]

    def per_level(level):
        # Corrupt all N rewards (so the draws do not depend on the sweep's ts), then keep
        # only the first max(ts) candidates: a fit on t candidates never reads the rest.
        shown = jax.vmap(lambda k, r: corrupt_fn(k, r, level))(corrupt_keys, ctx.r_true)[:, :n_used]
        xs = None if ctx.xs is None else ctx.xs[:, :n_used]
        y_hat = fit_contexts(init_keys, ctx.x, ctx.ys[:, :n_used], shown, ts, learner, steps, lr, xs, loss)  # (B, T, D)
        return normalised_mse(y_hat, ctx.y_star[:, None, :]), y_hat

    return jax.vmap(per_level)(levels)  # (L, B, T), (L, B, T, D)


def baseline_sweep(key, ctx: Context, levels, ts, corruption: str = "replace", learner: str = "adam",
                   steps: int = 50, lr=None, loss: str | None = None):
    """The GD baseline of the published protocol, every (level, context, t) in one compiled call.

    ``ctx``: a batch of contexts (leading axis B) whose ``r_true`` are corrupted at each level
    of ``corruption``; ``ts``: context lengths, each in [2, N] (a fit needs two candidates to
    rank). Half-precision contexts (float16, bfloat16) are computed in float32, where they are
    exact: in half precision the fits overflow to NaN. ``loss``: see :func:`fit_linear` (default:
    cosine PL). Returns (nmse (L, B, T), y_hat (L, B, T, D)).
    """
    check_key("key", key)
    check_corruption_levels(corruption, levels)
    check_choice("learner", learner, LEARNERS)
    steps = check_int("steps", steps, minimum=0)
    check_batched_contexts(ctx)
    if jnp.finfo(ctx.ys.dtype).bits < 32:
        # half precision overflows in the cosine norms and Adam's moments (NaN): upcast, exactly
        ctx = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), ctx)
    learner_loss(loss, "cosine", ctx.xs is not None)
    levels_np, ts_np = np.asarray(levels, dtype=float), np.asarray(ts)
    if levels_np.ndim != 1 or levels_np.size == 0 or ts_np.ndim != 1 or ts_np.size == 0:
        raise ValueError(f"levels and ts must be non-empty 1-D lists, got shapes {levels_np.shape} and {ts_np.shape}")
    # t = 1 would fit on one candidate: nothing to rank (the PL loss is 0, the fit its init)
    check_int_values("ts", ts_np, 2, ctx.ys.shape[-2])
    lr = LEARNERS[learner][1] if lr is None else lr
    check_positive("lr", lr)
    ctx = shard_contexts(ctx, ctx.x.shape[0])  # contexts are independent: one slice per device
    return _sweep(key, ctx, jnp.asarray(levels_np, ctx.ys.dtype), jnp.asarray(ts_np), jnp.asarray(lr, ctx.ys.dtype),
                  corruption, learner, steps, int(ts_np.max()), loss)
