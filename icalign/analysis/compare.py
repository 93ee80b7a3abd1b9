"""Trained transformer vs gradient-descent learners, on the same evaluation contexts.

For every context and every number of in-context examples t = 1..N-1:

* **normalised MSE** 1 - cos(y_hat_t, y*) of the transformer's prediction after t seen
  triplets and of both GD learners fitted on the first t candidates (``gd.fit_linear`` with
  learner "adam", the published baseline, and "gd", plain gradient descent);
* **prediction difference** between the transformer and each learner: cos(y_tf, y_gd) and
  || u_tf - u_gd ||, with u = y / |y| the predicted direction;
* **sensitivity similarity** (von Oswald et al. 2023, adapted to rewards): the Jacobians
  J = d u / d (candidates y_1..y_N, shown rewards r_1..r_N), from ``jax.jacobian``, compared
  by cosine and L2 distance, for the candidate block, the reward block and both jointly.

Why directions u and not y: the cosine reward and the metric ignore scale, so neither
learner's output norm is meaningful (the transformer's is set by its read-out, GD's by init
and step count); comparing raw y or raw dy would mostly compare scales.

Note on rewards: the PL loss depends on rewards only through their *ranking*, so a GD
learner's output is piecewise constant in the rewards and its reward Jacobian is exactly 0
almost everywhere. The reward block therefore measures how much the transformer uses reward
*magnitudes* (beyond the ranking): its L2 distance is the transformer's reward sensitivity,
and its cosine is 0 by construction (reported for completeness).

Everything is vmapped over contexts and t; the Jacobians of the transformer are taken for
all rows at once (one ``jacrev`` per context, ``lax.map`` over contexts to bound memory).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.core.losses import smooth_norm
from icalign.core.metrics import normalised_mse, unit
from icalign.core.stats import mean_ci, mean_sem
from icalign.core.tasks import Context
from icalign.core.validate import check_choice, check_int, check_key
from icalign.theory import gd

__all__ = [
    "transformer_predictions",
    "gd_predictions",
    "transformer_sensitivities",
    "gd_sensitivities",
    "similarity",
    "compare",
]


_predict = jax.jit(M.predict, static_argnames="config")


def transformer_predictions(params: M.Params, ctx: Context, config: M.ModelConfig) -> jax.Array:
    """(B, N, D): row t is the prediction after t seen triplets (t = 0..N-1)."""
    return _predict(params, ctx, config=config)


@partial(jax.jit, static_argnames=("learner", "steps", "loss"))
def _gd_predictions(keys_B, ctx: Context, ts, learner: str, steps: int, lr, loss=None):
    return gd.fit_contexts(keys_B, ctx.x, ctx.ys, ctx.rewards, ts, learner, steps, lr, ctx.xs, loss=loss)


def _gd_args(key, ctx: Context, ts, learner: str, steps: int, lr):
    """Validate a GD learner's arguments (before tracing) and derive one key per context."""
    check_choice("learner", learner, gd.LEARNERS)
    steps = check_int("steps", steps, minimum=0)
    ts = _check_ts(ts, ctx.n)
    lr = gd.LEARNERS[learner][1] if lr is None else lr
    return jax.random.split(key, ctx.x.shape[0]), ts, steps, lr


def gd_predictions(key, ctx: Context, ts, learner: str = "adam", steps: int = 50, lr=None,
                   loss: str | None = None) -> jax.Array:
    """(B, T, D): a linear policy fitted by ``learner`` on the first t candidates of each
    context (shown rewards), for every t in ``ts``, on the ranking loss ``loss`` (default: the
    published cosine PL; ``losses.LOSSES``). One init key per context, shared by all t and by
    every learner given the same ``key`` (common random numbers)."""
    keys, ts, steps, lr = _gd_args(key, ctx, ts, learner, steps, lr)
    return _gd_predictions(keys, ctx, ts, learner, steps, jnp.asarray(lr, ctx.ys.dtype), loss)


def _check_ts(ts, n: int):
    ts = np.asarray(ts)
    if ts.ndim != 1 or ts.size == 0 or ts.min() < 1 or ts.max() > n - 1 or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"ts must be a 1-D list of integers in [1, {n - 1}], got {ts.tolist()}")
    return jnp.asarray(ts.astype(np.int32))  # int32 on the host: no conversion compiled on the device


@partial(jax.jit, static_argnames=("config",))
def _tf_jacobians(params, ctx: Context, config: M.ModelConfig):
    def one(c: Context):
        def u_of(ys, rewards):
            return unit(M.predict(params, c.replace(ys=ys, rewards=rewards), config))  # (N, D)

        return jax.jacrev(u_of, argnums=(0, 1))(c.ys, c.rewards)  # (N,D,N,D), (N,D,N)

    return jax.lax.map(one, ctx)


def transformer_sensitivities(params: M.Params, ctx: Context, config: M.ModelConfig, ts):
    """d u_t / d ys (B, T, D, N, D) and d u_t / d rewards (B, T, D, N) of the transformer's
    direction after t seen, for t in ``ts``."""
    ts = _check_ts(ts, ctx.n)
    j_ys, j_r = _tf_jacobians(params, ctx, config)
    return j_ys[:, ts], j_r[:, ts]


@partial(jax.jit, static_argnames=("learner", "steps", "loss"))
def _gd_jacobians(keys_B, ctx: Context, ts, learner: str, steps: int, lr, loss=None):
    def one(key, x, ys, rewards, xs):
        def u_of(ys, rewards, t):
            return unit(gd.fit_linear(key, x, ys, rewards, t, learner, steps, lr, xs=xs, loss=loss))

        jac = jax.jacrev(u_of, argnums=(0, 1))
        return jax.vmap(lambda t: jac(ys, rewards, t))(ts)  # (T,D,N,D), (T,D,N)

    return jax.lax.map(lambda a: one(*a), (keys_B, ctx.x, ctx.ys, ctx.rewards, ctx.xs))


def gd_sensitivities(key, ctx: Context, ts, learner: str = "adam", steps: int = 50, lr=None,
                     loss: str | None = None):
    """Same as :func:`transformer_sensitivities` for a GD learner (keys and ``loss`` as in
    :func:`gd_predictions`, so the Jacobians belong to the same fitted predictions)."""
    keys, ts, steps, lr = _gd_args(key, ctx, ts, learner, steps, lr)
    return _gd_jacobians(keys, ctx, ts, learner, steps, jnp.asarray(lr, ctx.ys.dtype), loss)


def _in_chunks(fn, trees, bar, size: int = 8):
    """``fn(*trees)`` on slices of ``size`` contexts, concatenated: the same per-context
    computation (``lax.map`` inside), with progress shown between slices."""
    n = jax.tree_util.tree_leaves(trees[0])[0].shape[0]
    outs = []
    for s in range(0, n, size):
        outs.append(fn(*[jax.tree_util.tree_map(lambda a: a[s:s + size], t) for t in trees]))
        bar.update(min(size, n - s))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)


def similarity(a: jax.Array, b: jax.Array, n_axes: int):
    """Cosine and L2 distance between a and b over their last ``n_axes`` axes (flattened).
    Cosine uses eps-smoothed norms, so it is 0 (not NaN) when one side is exactly 0."""
    a = a.reshape(*a.shape[: a.ndim - n_axes], -1)
    b = b.reshape(*b.shape[: b.ndim - n_axes], -1)
    cos = jnp.sum(a * b, -1) / (smooth_norm(a) * smooth_norm(b))
    return cos, jnp.linalg.norm(a - b, axis=-1)


def _ci(per) -> dict:
    mean, low, high = mean_ci(np.asarray(per), axis=0)
    return {"mean": mean, "low": low, "high": high}


def compare(params: M.Params, config: M.ModelConfig, ctx: Context, key: jax.Array,
            ts: Sequence[int] | None = None, learners: Sequence[str] = ("adam", "gd"),
            gd_steps: int = 50, n_sensitivity: int = 0, progress: bool = False, loss: str | None = None) -> dict:
    """All TF-vs-GD metrics on the contexts ``ctx`` (leading batch axis B), per t in ``ts``
    (default 1..N-1). Returns plain numpy arrays in a dict:

    ``t``; ``nmse[name] = {mean, sem, low, high, per_context (B, T)}`` for "transformer" and
    each learner (low, high: 95% Student-t interval over contexts); ``nmse_diff[learner] =
    {mean, low, high}``: transformer minus learner, paired per context, with its 95% interval
    over contexts (conditional on the one trained model: no seed variation in it);
    ``pred_diff[learner] = {cos, l2}`` (mean over contexts, per t);
    ``sensitivity[learner][block] = {cos, l2}`` for block in candidates / rewards / joint,
    on the first ``n_sensitivity`` contexts (0, the default: no Jacobians, which cost far
    more than the predictions; ``progress`` shows a bar over them). The GD learners fit
    ``loss``, the model's training loss (default: the published cosine PL).
    """
    if not isinstance(config, M.ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    M.check_params(params, config)
    if (ctx.n, ctx.d) != (config.n, config.d):
        raise ValueError(f"contexts have (N, D) = ({ctx.n}, {ctx.d}); the model expects ({config.n}, {config.d})")
    gd.check_batched_contexts(ctx, config.n)
    check_key("key", key)
    for name in learners:
        check_choice("learner", name, gd.LEARNERS)
    B = ctx.x.shape[0]
    n_sens = min(check_int("n_sensitivity", n_sensitivity, minimum=0), B)
    gd_steps = check_int("gd_steps", gd_steps, minimum=0)
    ts = np.arange(1, config.n) if ts is None else np.asarray(ts)
    ts_j = _check_ts(ts, config.n)
    k_gd = key  # one init key per context, shared by every learner (common random numbers)

    y_tf = transformer_predictions(params, ctx, config)[:, ts_j]  # (B, T, D)
    y_star = ctx.y_star[:, None, :]
    preds = {"transformer": y_tf}
    for name in learners:
        preds[name] = gd_predictions(k_gd, ctx, ts_j, name, gd_steps, loss=loss)
    out = {"t": ts, "n_contexts": B, "n_sensitivity": n_sens, "gd_steps": gd_steps, "nmse": {},
           "pred_diff": {}, "sensitivity": {}}
    for name, y in preds.items():
        per = np.asarray(normalised_mse(y, y_star))
        out["nmse"][name] = {**mean_sem(per), **_ci(per), "per_context": per}
    out["nmse_diff"] = {name: _ci(out["nmse"]["transformer"]["per_context"] - out["nmse"][name]["per_context"])
                        for name in learners}
    for name in learners:
        cos, l2 = similarity(unit(y_tf), unit(preds[name]), 1)
        out["pred_diff"][name] = {"cos": mean_sem(cos), "l2": mean_sem(l2)}

    if n_sens > 0:
        from tqdm.auto import tqdm

        sub = jax.tree_util.tree_map(lambda a: a[:n_sens], ctx)
        # The same per-context init keys as the predictions above (split over the full batch,
        # then the first n_sens), so the Jacobians belong to the fitted predictions compared.
        keys_sub = jax.random.split(k_gd, B)[:n_sens]
        with tqdm(total=n_sens * (1 + len(learners)), disable=not progress, unit="ctx",
                  desc="sensitivities (Jacobians)") as bar:
            tf_ys, tf_r = _in_chunks(lambda c: _tf_jacobians(params, c, config), (sub,), bar)
            tf_ys, tf_r = tf_ys[:, ts_j], tf_r[:, ts_j]
            gd_jac = {name: _in_chunks(lambda k, c: _gd_jacobians(
                k, c, ts_j, name, gd_steps, jnp.asarray(gd.LEARNERS[name][1], ctx.ys.dtype), loss), (keys_sub, sub),
                bar)
                for name in learners}
        for name in learners:
            gd_ys, gd_r = gd_jac[name]
            blocks = {
                "candidates": similarity(tf_ys, gd_ys, 3),
                "rewards": similarity(tf_r, gd_r, 2),
                "joint": similarity(
                    jnp.concatenate([tf_ys.reshape(*tf_ys.shape[:2], -1), tf_r.reshape(*tf_r.shape[:2], -1)], -1),
                    jnp.concatenate([gd_ys.reshape(*gd_ys.shape[:2], -1), gd_r.reshape(*gd_r.shape[:2], -1)], -1), 1),
            }
            out["sensitivity"][name] = {blk: {"cos": mean_sem(c), "l2": mean_sem(d)} for blk, (c, d) in blocks.items()}
            out["sensitivity"][name]["norm"] = {
                "transformer_candidates": mean_sem(jnp.linalg.norm(tf_ys.reshape(*tf_ys.shape[:2], -1), axis=-1)),
                "transformer_rewards": mean_sem(jnp.linalg.norm(tf_r.reshape(*tf_r.shape[:2], -1), axis=-1)),
                "learner_candidates": mean_sem(jnp.linalg.norm(gd_ys.reshape(*gd_ys.shape[:2], -1), axis=-1)),
            }
    return out
