"""What the training-health gate measures (:mod:`icalign.analysis.health`): per run and per
evaluation context, on CLEAN shown rewards (``ctx.r_true``, whatever the training noise),

* the training objective of the model (``icalign.training.context_objective``, the function
  the training loss averages, so a new loss cannot leave the gate on an old one);
* the same objective of the **reward-blind** reference (the mean of the seen candidates at the
  test query: it never reads a reward);
* the per-context **optimum** of the objective: each row n >= min_seen has its own
  prediction, so the optimum is the mean over rows of each row's minimum. For a
  scale-invariant loss (the published cosine PL) each row's minimiser is searched on the unit
  sphere (``references.minimiser``: Riemannian GD from four starts, the best kept). A loss
  that depends on the scale of the prediction (a PL loss of sqdist scores) may have no
  minimum (it keeps falling as |y| grows along the ranking); its "optimum" is what
  ``OPT_STEPS`` Adam steps reach (``gd.fit_contexts``), an upper bound on the infimum, so a
  model can close more than all of that gap;
* the normalised MSE at the largest t of the model, of the model with each context's clean
  rewards permuted (:func:`shuffled`: a model that reads the rewards gets worse), and of both
  trivial predictors (mean of the seen candidates; the best shown candidate).
"""

from __future__ import annotations

import hashlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.core.losses import LOSSES
from icalign.core.metrics import normalised_mse
from icalign.core.tasks import Context, check_batched_contexts, scored_candidates
from icalign.core.validate import check_int
from icalign.theory import gd
from icalign.training import context_objective

__all__ = ["OPT_STEPS", "predictions", "blind_predictions", "clean", "optimum", "optimum_method", "shuffled", "measure",
           "model_predictions"]

OPT_STEPS = 2000  #: Adam steps of the fitted optimum of a loss that is not scale-invariant
_OPTIMA: dict = {}  #: fingerprint -> optimum (see :func:`optimum`)
_SHUFFLE_SEED = 16  #: key of the in-context-use test's permutations (an evaluation-only stream)


def clean(ctx: Context) -> Context:
    """``ctx`` with its shown rewards replaced by the true ones."""
    return ctx.replace(rewards=ctx.r_true)


def predictions(ctx: Context) -> dict[str, jax.Array]:
    """{trivial predictor: (..., N, D)}: row n is the prediction after n seen triplets (row 0
    is 0): the mean of the seen responses (it ignores the rewards), and the seen response with
    the highest shown reward."""
    lead, (n, d) = ctx.ys.shape[:-2], ctx.ys.shape[-2:]
    ys, r = ctx.ys.reshape(-1, n, d), ctx.rewards.reshape(-1, n)
    seen = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # (row, candidate): candidate < row
    count = jnp.maximum(seen.sum(-1), 1).astype(ys.dtype)
    mean = jnp.einsum("rn,bnd->brd", seen.astype(ys.dtype), ys) / count[None, :, None]
    masked = jnp.where(seen[None], r[:, None, :], -jnp.inf)  # (B, row, N)
    best = jnp.take_along_axis(ys, jnp.argmax(masked, axis=-1)[..., None], axis=-2)
    best = jnp.where(jnp.any(seen, -1)[None, :, None], best, 0.0)
    return {"mean of candidates": mean.reshape(*lead, n, d), "best shown candidate": best.reshape(*lead, n, d)}


def blind_predictions(ctx: Context) -> dict[str, jax.Array]:
    """{trivial predictor: (B, N, D)} at the test query: :func:`predictions` of the scored
    candidates (the shown ones for shared queries)."""
    return predictions(ctx.replace(ys=scored_candidates(ctx)))


def optimum_method(loss: str) -> str:
    """How :func:`optimum` finds the per-row optimum of ``loss`` (stored with the gate)."""
    if LOSSES.get_checked(loss, "loss").scale_invariant:
        return "per-row minimiser on the unit sphere (references.minimiser, Riemannian GD, 4 starts, 300 steps)"
    return f"per-row Adam fit of a linear policy ({OPT_STEPS} steps, lr 0.1; an upper bound on the infimum)"


def _fingerprint(ctx: Context, min_seen: int, loss: str) -> str:
    """A digest of everything the optimum depends on (the contexts' values, the rows, the
    loss and, for a user-registered loss, its function's source)."""
    h = hashlib.sha1(repr((min_seen, loss, LOSSES.identity(loss))).encode())
    for leaf in jax.tree_util.tree_leaves(ctx):
        a = np.asarray(leaf)
        h.update(repr((a.shape, a.dtype.str)).encode() + a.tobytes())
    return h.hexdigest()


def optimum(ctx: Context, min_seen: int, loss: str) -> jax.Array:
    """(B, N, D): row n >= min_seen minimises the objective's row n on ``ctx``'s shown rewards
    (rows below min_seen are 0: the objective does not read them). See the module docstring.
    The last few answers are kept: a sweep judges every variant on the same contexts."""
    key = _fingerprint(ctx, min_seen, loss)
    if key not in _OPTIMA:
        _OPTIMA[key] = _optimum(ctx, min_seen, loss)
        while len(_OPTIMA) > 4:
            _OPTIMA.pop(next(iter(_OPTIMA)))
    return _OPTIMA[key]


def _optimum(ctx: Context, min_seen: int, loss: str) -> jax.Array:
    from icalign.analysis.references import minimiser

    B, N, D = ctx.ys.shape
    ts = jnp.arange(min_seen, N)
    if LOSSES.get_checked(loss, "loss").scale_invariant:
        rows, _ = minimiser(ctx, ts, loss=loss)
    else:
        keys = jax.random.split(jax.random.PRNGKey(0), B)
        rows = jax.jit(gd.fit_contexts, static_argnames=("learner", "steps", "loss"))(
            keys, ctx.x, ctx.ys, ctx.rewards, ts, "adam", OPT_STEPS, 0.1, ctx.xs, loss=loss)
    return jnp.concatenate([jnp.zeros((B, min_seen, D), rows.dtype), rows], axis=1)


@partial(jax.jit, static_argnames="config")
def _predict_runs(params_R, ctx: Context, config: M.ModelConfig):
    return jax.vmap(lambda p: M.predict(p, ctx, config))(params_R)


def model_predictions(params_R, config: M.ModelConfig):
    """``predict(ctx) -> (R, B, N, D)``: every run's predictions (one compiled call each)."""
    return lambda ctx: _predict_runs(params_R, ctx, config)


def shuffled(ctx: Context, key=None) -> Context:
    """``ctx`` with each context's shown rewards permuted at random (a fixed key: the same
    permutation for every learner judged on ``ctx``)."""
    key = jax.random.PRNGKey(_SHUFFLE_SEED) if key is None else key
    keys = jax.random.split(key, ctx.rewards.shape[0])
    return ctx.replace(rewards=jax.vmap(jax.random.permutation)(keys, ctx.rewards))


def measure(predict, ctx: Context, min_seen: int, loss: str) -> dict:
    """The gate's per-context values (numpy) of a learner, ``predict(ctx) -> (R, B, N, D)``
    (R runs; row n the prediction after n seen triplets), on ``ctx`` with CLEAN rewards:
    {"model" (R, B), "blind" (B,), "optimum" (B,)} objective values; "nmse" {"model" (R, B),
    "shuffled" (R, B) (the model with each context's clean rewards permuted), predictor (B,)}
    at the largest t; "finite" (R,) whether a run's predictions are finite (a run that is not
    is measured as the 0 prediction); "t", "loss", "min_seen", "method"."""
    check_batched_contexts(ctx)
    LOSSES.get_checked(loss, "loss")
    B, N, D = ctx.ys.shape
    check_int("min_seen", min_seen, minimum=1)
    if min_seen > N - 1:
        raise ValueError(f"min_seen={min_seen} must be <= N - 1 = {N - 1} (the contexts have N={N} candidates)")
    c = clean(ctx)
    y, y_shuffled = jnp.asarray(predict(c)), jnp.asarray(predict(shuffled(c)))
    if y.ndim != 4 or y.shape[1:] != (B, N, D) or y_shuffled.shape != y.shape:
        raise ValueError(f"predict(ctx) must return shape (R, B={B}, N={N}, D={D}), got {tuple(y.shape)}")
    finite = jnp.all(jnp.isfinite(y), axis=(1, 2, 3)) & jnp.all(jnp.isfinite(y_shuffled), axis=(1, 2, 3))
    y, y_shuffled = (jnp.where(finite[:, None, None, None], a, 0.0) for a in (y, y_shuffled))
    objective = lambda pred: np.asarray(context_objective(pred, c, min_seen, loss), float)
    runs = lambda f, pred_R: np.stack([f(p) for p in pred_R])  # one run at a time: no broadcasting over runs
    blind = blind_predictions(c)
    last = lambda pred: np.asarray(normalised_mse(pred[:, -1, :], ctx.y_star), float)
    return {"model": runs(objective, y), "blind": objective(blind["mean of candidates"]),
            "optimum": objective(optimum(c, min_seen, loss)),
            "nmse": {"model": runs(last, y), "shuffled": runs(last, y_shuffled),
                     **{k: last(v) for k, v in blind.items()}},
            "finite": np.asarray(finite), "t": N - 1, "loss": loss, "min_seen": int(min_seen),
            "method": optimum_method(loss)}
