"""Higher-order comparators for the mechanism battery (docs/theory.md section 7): is
the learner closer to a few steps of a second-order method than to (many more steps of) GD?
Fu et al. 2024 found that transformers trained on in-context linear regression match a few
iterations of Newton's method (Iterative Newton), where GD needs exponentially more steps.

Both comparators run on the linear policy (W-space) and the same cosine-PL loss of the first t
triplets as ``references.gd_grid``, from the same W0, and return the same
(E, k_max + 1, B, T, D) predictions W_k x, so ``references.select`` fits them alike:

* :func:`newton_grid`: damped Newton (Levenberg-Marquardt), W <- W - (|H_T| + lambda I)^{-1} g.
  The loss is scale-invariant (L(cW) = L(W)), so its Hessian H is singular along W, and, away
  from a stationary point, indefinite in the plane of W and g (w^T H w = 0 and w^T H g = -|g|^2,
  from differentiating Euler's identity w . g = 0): plain Newton is undefined there and heads
  for saddles. The step therefore uses the Hessian across W only, H_T = P H P with
  P = I - w w^T / |w|^2 (the Riemannian Hessian of the loss on the sphere of W, since w . g = 0),
  with its eigenvalues made positive (|H_T|, "saddle-free" Newton, Dauphin et al. 2014), and a
  grid of dampings lambda in place of GD's step-size grid (a large lambda is a GD step of size
  1 / lambda, a small one is nearly Newton's step). On row-t losses it comes within 0.005 of the
  minimiser's direction (1 - cos) in 2 steps from W0 = x x^T / |x|^2 at lambda = 0.001, where
  GD at the best of step sizes 0.5, 1, 2 is still 0.026 away after 8 steps (16 contexts,
  d = 5, t = 2..11, measured while writing this). For shared queries and
  ``references.init_weights``'s W0 (rank one along x) the step at x is the prediction-space
  step y - |x|^2 (|x|^2 |P_y H_y P_y| + lambda I)^{-1} g_y (checked in the tests).
* :func:`precond_grid`: GD with Newton's matrix frozen at W0 as a fixed preconditioner,
  W <- W - eta (|H_T(W0)| + lambda I)^{-1} g (positive definite for lambda > 0). For linear
  regression, Fu et al.'s setting, the Hessian is constant, this preconditioner is exact
  Newton and Iterative Newton converges to it; here it is the "second-order information from
  the start only" baseline between GD and Newton.

The gradient is ``gd.pl_gradient_triplets`` (GD's own); the Hessian is ``jax.hessian`` of the
same loss written as a function of W (:func:`pl_loss`; the tests check that its autodiff
gradient is the closed form).

:func:`comparator_test` fits each method's (step size or damping, step count) per t on the
fitting half to the learner's answers and reports the test half's per-context distances, and
each method's best fitting-half distance at every step count (what "closer with fewer steps"
is read from).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icalign.analysis import battery as BT
from icalign.analysis import references as R
from icalign.analysis.battery_jacobian import check_learner, check_shared_contexts, check_etas
from icalign.analysis.mechanism import halves
from icalign.core.losses import plackett_luce, smooth_norm
from icalign.core.metrics import normalised_mse, prefix_mask
from icalign.core.stats import summarise
from icalign.core.tasks import Context, triplet_queries
from icalign.core.validate import check_int, check_key
from icalign.theory import gd

__all__ = ["pl_loss", "curvature", "damped_newton_step", "newton_path", "precond_path", "newton_grid", "precond_grid",
           "comparator_test", "METHODS", "PREDICTIONS"]

METHODS = ("gd", "newton", "precond")
TEST = "comparators"
PREDICTIONS = {
    "GD": "Its answers are closest to plain GD at the fitted step size and count; damped Newton and preconditioned GD "
          "fit it no better at any step count.",
    "minimiser": "Its answers match the row-t minimiser, which every comparator approaches only with enough steps: "
                 "each fits at its largest step counts.",
    "neither": "No comparator within k_max steps comes within the margin of its answers.",
}
NEWTON_PREDICTION = ("Fu et al. 2024's second-order learner: closer to damped Newton at a small step count than to GD "
                     "at any step count up to k_max.")


def pl_loss(W, xs, ys, rewards, mask):
    """The cosine-PL loss of the linear policy: candidate j scored by cos(W x_j, y_j) (x_j = x
    for shared queries, where this is ``losses.LOSSES["cosine_pl"]`` of W x), ranked by the
    shown rewards over the candidates with ``mask``; the eps-smoothed norms of
    ``losses.cosine_reward``, so ``gd.pl_gradient_triplets`` is its exact gradient."""
    yh = xs @ W.T
    s = jnp.sum(yh * ys, -1) / (smooth_norm(yh) * smooth_norm(ys))
    return plackett_luce(s, rewards, mask)


def curvature(loss: Callable, w, tangent: bool = False):
    """The matrix a Newton step divides by: the Hessian of ``loss`` at the flat vector w, or
    (``tangent``, for a scale-invariant loss) the saddle-free Hessian on the sphere of w,
    |P H P| with P = I - w w^T / |w|^2 and the eigenvalues made positive (module docstring)."""
    H = jax.hessian(loss)(w)
    if not tangent:
        return H
    P = jnp.eye(w.shape[0], dtype=w.dtype) - jnp.outer(w, w) / (w @ w)
    ev, V = jnp.linalg.eigh(P @ H @ P)
    return (V * jnp.abs(ev)[None, :]) @ V.T


def damped_newton_step(loss: Callable, w, damping, grad=None, tangent: bool = False):
    """One Levenberg-Marquardt step w - (C + damping I)^{-1} g on a loss of a flat vector w, C the
    :func:`curvature` (``grad``: the gradient, when it is known in closed form; else autodiff).
    damping = 0 without ``tangent`` is Newton's step (defined where H is invertible)."""
    g = jax.grad(loss)(w) if grad is None else grad(w)
    C = curvature(loss, w, tangent)
    return w - jnp.linalg.solve(C + damping * jnp.eye(w.shape[0], dtype=w.dtype), g)


def _pieces(W0, ctx1: Context, t):
    """The row-t loss and its closed-form gradient as functions of the flat weights."""
    xs, mask, shape = triplet_queries(ctx1), prefix_mask(t, ctx1.ys.shape[0]), W0.shape
    loss = lambda w: pl_loss(w.reshape(shape), xs, ctx1.ys, ctx1.rewards, mask)
    grad = lambda w: gd.pl_gradient_triplets(w.reshape(shape), xs, ctx1.ys, ctx1.rewards, "cosine", 1.0,
                                             mask).reshape(-1)
    return loss, grad


def _run(W0, x, k_max: int, update):
    """Predictions W_k x, k = 0..k_max, of the iteration w <- update(w)."""
    def body(w, _):
        w = update(w)
        return w, w.reshape(W0.shape) @ x

    path = jax.lax.scan(body, W0.reshape(-1), None, length=k_max)[1]
    return jnp.concatenate([(W0 @ x)[None], path])


def newton_path(W0, ctx1: Context, t, damping, k_max: int, tangent: bool = True):
    """(k_max + 1, D) predictions of damped (by default saddle-free, tangent) Newton on the row-t
    loss from W0 (one context)."""
    loss, grad = _pieces(W0, ctx1, t)
    return _run(W0, ctx1.x, k_max, lambda w: damped_newton_step(loss, w, damping, grad, tangent))


def precond_path(W0, ctx1: Context, t, eta, k_max: int, damping):
    """(k_max + 1, D) predictions of GD preconditioned by Newton's matrix frozen at W0,
    (|H_T(W0)| + damping I)^{-1} (positive definite for damping > 0)."""
    loss, grad = _pieces(W0, ctx1, t)
    w0 = W0.reshape(-1)
    P = jnp.linalg.inv(curvature(loss, w0, tangent=True) + damping * jnp.eye(w0.shape[0], dtype=w0.dtype))
    return _run(W0, ctx1.x, k_max, lambda w: w - eta * P @ grad(w))


def _grid(path, W0_B, ctx: Context, ts, values):
    """(E, K + 1, B, T, D) from path(W0, ctx1, t, value) -> (K + 1, D), like references.gd_grid."""
    per_value = lambda v: jax.vmap(lambda W0, c: jax.vmap(lambda t: path(W0, c, t, v))(ts))(W0_B, ctx)
    return jnp.moveaxis(jax.vmap(per_value)(values), 3, 1)


@partial(jax.jit, static_argnames=("k_max", "tangent"))
def newton_grid(W0_B, ctx: Context, ts, dampings, k_max: int, tangent: bool = True):
    """Damped Newton's predictions for every (damping, step count 0..k_max, context, t):
    (E, k_max + 1, B, T, D), E = len(dampings). ``tangent=False``: plain Levenberg-Marquardt on
    the full Hessian (kept to show why it is not the default: it stalls or climbs far from the
    minimum)."""
    return _grid(lambda W0, c, t, lam: newton_path(W0, c, t, lam, k_max, tangent), W0_B, ctx, ts, dampings)


@partial(jax.jit, static_argnames="k_max")
def precond_grid(W0_B, ctx: Context, ts, etas, k_max: int, damping=0.1):
    """Preconditioned GD's predictions for every (step size, step count 0..k_max, context, t):
    (E, k_max + 1, B, T, D); ``damping`` > 0 is lambda in the fixed preconditioner."""
    return _grid(lambda W0, c, t, eta: precond_path(W0, c, t, eta, k_max, damping), W0_B, ctx, ts, etas)


def comparator_test(learner: Callable, ctx: Context, key, etas, dampings, k_max: int, min_seen: int = 2,
                    precond_damping: float = 0.1, minimiser_steps: int = 300) -> dict:
    """GD (``etas``), damped Newton (``dampings``) and preconditioned GD (``etas``, fixed
    ``precond_damping``), each with (value, step count <= k_max) fitted per t on the fitting
    half to the learner's answers (``references.select``), from the learner's own t = 0 answer;
    judged on the test half at every t in [min_seen, N - 1]. ``key`` is taken for the battery's
    common signature; this test draws nothing.

    Returns the battery's dict: d_gd / d_min (distances to fitted GD and to the row-t minimiser,
    per test context, mean over t) with the margin half their separation on the fitting half,
    plus ``distances`` (every method's per-context test distances) and, per method in ``fit``,
    the fitted values and step counts per t and ``profile``: the best fitting-half distance
    (over values) at each step count 0..k_max, mean over t."""
    check_key("key", key)
    check_int("min_seen", min_seen, minimum=2)
    n = ctx.ys.shape[1] if isinstance(ctx, Context) and np.ndim(ctx.ys) == 3 else min_seen + 1
    ts = check_shared_contexts(ctx, min_seen, np.arange(min_seen, max(n, min_seen + 1)))
    grids_of = {"gd": check_etas(etas), "newton": check_etas(dampings, "dampings"), "precond": check_etas(etas)}
    check_int("k_max", k_max, minimum=1)
    check_int("minimiser_steps", minimiser_steps, minimum=1)
    if isinstance(precond_damping, bool) or not isinstance(precond_damping, (int, float)) or not (
            np.isfinite(precond_damping) and precond_damping > 0):
        raise ValueError(f"precond_damping must be a finite number > 0, got {precond_damping!r}")
    check_learner(learner, ctx)
    B, half, tj = ctx.x.shape[0], ctx.x.shape[0] // 2, jnp.asarray(ts)

    y_all = learner(ctx)
    y = y_all[:, tj]
    W0 = R.init_weights(ctx, y_all[:, 0])
    vals = {m: jnp.asarray(v, ctx.ys.dtype) for m, v in grids_of.items()}
    grids = {"gd": R.gd_grid(W0, ctx, tj, vals["gd"], k_max, "cosine"),
             "newton": newton_grid(W0, ctx, tj, vals["newton"], k_max),
             "precond": precond_grid(W0, ctx, tj, vals["precond"], k_max, precond_damping)}
    fit, dist, preds = {}, {}, {}
    for m, grid in grids.items():
        e_T, k_T, fit_dist = R.select(y[:half], grid[:, :, :half])  # fit_dist (E, K + 1, T)
        preds[m] = jnp.moveaxis(grid[e_T, k_T, :, jnp.arange(len(ts))], 0, 1)  # (B, T, D)
        dist[m] = np.maximum(np.asarray(normalised_mse(y, preds[m]), np.float64), 0.0)
        fit[m] = {"parameter": "damping" if m == "newton" else "eta",
                  "values": grids_of[m][np.asarray(e_T)].tolist(), "steps": np.asarray(k_T).tolist(),
                  "profile": np.asarray(jnp.mean(jnp.min(fit_dist, 0), -1)).tolist(), "chosen_on": "fit"}
    fit["precond"]["damping"] = float(precond_damping)
    u_min, _ = R.minimiser(ctx, tj, minimiser_steps)
    dist["minimiser"] = np.maximum(np.asarray(normalised_mse(y, u_min), np.float64), 0.0)
    margin = BT.half_separation(preds["gd"][:half], u_min[:half], lambda a, b: np.asarray(normalised_mse(a, b)).mean(1))
    test = slice(half, None)
    return {"test": TEST, "predictions": dict(PREDICTIONS), "newton_prediction": NEWTON_PREDICTION,
            "t": ts.tolist(), "per_t": {m: summarise(d[test], "contexts") for m, d in dist.items()},
            "fit": {**fit, "k_max": k_max, "halves": halves(B)},
            "distances": {m: d[test].mean(1).tolist() for m, d in dist.items()},
            "d_gd": dist["gd"][test].mean(1).tolist(), "d_min": dist["minimiser"][test].mean(1).tolist(),
            "margin": float(margin), "margin_rule": "half the mean distance between fitted GD's and the minimiser's "
                                                    "answers on the fitting half"}
