"""The mechanism battery's Jacobian test (docs/theory.md section 7): how the learner's
answer direction moves when the shown candidates move, against how k-step GD's and the loss
minimiser's would move.

For every context and asked t (>= ``min_seen``) the test takes J = d unit(answer_t) / d(y_1..y_t),
a (D, t, D) array, of

* the learner (forward mode through it, :func:`learner_jacobian`);
* k-step PL-GD from the learner's own t = 0 answer (``references.init_weights``) at the
  (eta, k) fitted per t to the learner's answers on the fitting half (``references.select``,
  as ``mechanism._references`` fits them), by forward mode through the unrolled path
  (:func:`gd_jacobian`);
* the minimiser of the row-t cosine-PL loss, by the implicit function theorem
  (:func:`implicit_jacobian`, derived there).

Distances are 1 - cos between the flattened Jacobians (0: the same direction; a zero Jacobian,
e.g. of a learner that ignores the candidates, counts as 1), pooled over the asked t as a
per-context mean. The margin is half the two hypotheses' mean separation on the fitting half
(``battery.half_separation``), so it is fixed before the learner is compared with anything.

Jacobians of directions are compared by direction, not size: GD's Jacobian grows with its step
size and count, and the comparison asks *which way* the answer moves under each shift of the
candidates, the fingerprint of the computation, not how far.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icalign.analysis import battery as BT
from icalign.analysis import references as R
from icalign.analysis.mechanism import halves
from icalign.core.losses import DEFAULT_LOSS, LOSSES
from icalign.core.metrics import normalised_mse, prefix_mask, unit
from icalign.core.stats import summarise
from icalign.core.tasks import Context, check_batched_contexts
from icalign.core.validate import check_int, check_int_values, check_key

__all__ = ["TEST", "PREDICTIONS", "learner_jacobian", "gd_jacobian", "implicit_jacobian", "jacobian_distance",
           "jacobian_test", "check_etas", "default_ts",
           "check_shared_contexts", "check_learner"]

TEST = "jacobian"
PREDICTIONS = {
    "GD": "The learner's answer direction moves with the shown candidates the way k-step PL-GD's does from the "
          "learner's own t = 0 answer at the (eta, k) fitted on the fitting half: its Jacobian is within the "
          "margin of GD's and beyond it from the minimiser's.",
    "minimiser": "It moves the way the row-t loss minimiser does (the implicit-function Jacobian): within the margin "
                 "of the minimiser's Jacobian and beyond it from fitted GD's.",
    "neither": "It moves in some other way, beyond the margin from both (a learner that ignores the candidates has a "
               "zero Jacobian, distance 1 from both).",
}
MARGIN_RULE = "half the mean distance between fitted GD's and the minimiser's Jacobians on the fitting half"


# -------------------------------------------------------------------------------- validation
def check_etas(etas, name: str = "etas") -> np.ndarray:
    """A non-empty 1-D grid of finite step sizes (or dampings) > 0, refused by ``name``."""
    try:
        e = np.asarray(etas, float)
    except (TypeError, ValueError):
        e = np.asarray([np.nan])
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e) & (e > 0)):
        raise ValueError(f"{name} must be a non-empty 1-D list of finite numbers > 0, got {etas!r}")
    return e


def default_ts(n: int, min_seen: int, count: int = 4) -> np.ndarray:
    """A few t spread over [min_seen, n - 1] (the Jacobian costs grow with t and the count)."""
    return np.unique(np.round(np.linspace(min_seen, n - 1, count)).astype(int))


def check_shared_contexts(ctx: Context, min_seen: int, ts) -> np.ndarray:
    """Shared-query batched contexts, >= 4 of them (two per half), and the asked t: integers in
    [min_seen, N - 1], distinct. Returns the t as numpy."""
    check_batched_contexts(ctx)
    if ctx.xs is not None:
        raise ValueError("ctx must have shared queries (ctx.xs is None): the GD start W0 x = y0 and the minimiser "
                         "of the shown candidates are defined for them")
    B, N = ctx.ys.shape[:2]
    if B < 4:
        raise ValueError(f"ctx must hold >= 4 contexts (two halves of >= 2), got {B}")
    check_int("min_seen", min_seen, minimum=2)  # at t = 1 the loss is constant: no minimiser
    if min_seen > N - 1:
        raise ValueError(f"min_seen must be <= N - 1 = {N - 1} (the last asked t), got {min_seen}")
    if ts is None:
        return default_ts(N, min_seen)
    t = check_int_values("ts", ts, min_seen, N - 1)
    if t.ndim != 1 or t.size == 0 or len(set(t.tolist())) != t.size:
        raise ValueError(f"ts must be a non-empty 1-D list of distinct t in [{min_seen}, {N - 1}], got {t.tolist()}")
    return t


def check_learner(learner, ctx: Context) -> None:
    """The learner is callable and answers (B, N, D) (checked by abstract evaluation: nothing
    is compiled)."""
    if not callable(learner):
        raise ValueError(f"learner must be a function ctx -> answers (B, N, D), got {type(learner).__name__}")
    shape = jax.eval_shape(learner, ctx).shape
    if tuple(shape) != tuple(ctx.ys.shape):
        raise ValueError(f"learner must answer (B, N, D) = {tuple(ctx.ys.shape)}, got {tuple(shape)}")


# --------------------------------------------------------------------------------- Jacobians
def learner_jacobian(learner: Callable, ctx: Context):
    """The learner's raw answers (B, N, D) and J (B, N_out, D, N_in, D) = d unit(answer_t) / d y_j
    for every t and j, by forward mode: one tangent per (j, coordinate), the same in every
    context, all N D of them at once (vmapped: a jitted learner's differentiated program is then
    compiled once and reused). That gives each context's own Jacobian because a learner answers
    each context from that context alone (contexts do not interact). Memory grows with
    N D B forward passes: keep the contexts modest."""
    N, D = ctx.ys.shape[1:]
    basis = jnp.broadcast_to(jnp.eye(N * D, dtype=ctx.ys.dtype).reshape(N * D, 1, N, D), (N * D,) + ctx.ys.shape)
    answers = lambda ys: learner(ctx.replace(ys=ys))
    y, dy = jax.vmap(lambda v: jax.jvp(answers, (ctx.ys,), (v,)), out_axes=(None, 0))(basis)
    du = jax.vmap(lambda d: jax.jvp(unit, (y,), (d,))[1])(dy)  # d unit(y) = (I - u u^T) dy / |y|
    return y, jnp.moveaxis(du.reshape(N, D, *y.shape), (0, 1), (3, 4))


@partial(jax.jit, static_argnames=("k_max", "reward"))
def gd_jacobian(W0_B, ctx: Context, ts, eta_T, k_T, k_max: int, reward: str = "cosine"):
    """(B, T, D, N, D): d unit(W_k x) / d y_j after k = k_T[t] PL-GD steps of size eta_T[t] on the
    first t triplets from W0 (held fixed: it is the learner's answer before any triplet), by
    forward mode through the unrolled path (``references.gd_point``)."""
    def one(W0, c, t, eta, k):
        answer = lambda ys: unit(R.gd_point(W0, c.replace(ys=ys), t, eta, k, k_max, reward)[1])
        return jax.jacfwd(answer)(c.ys)

    per_ctx = lambda W0, c: jax.vmap(lambda t, e, k: one(W0, c, t, e, k))(ts, eta_T, k_T)
    return jax.vmap(per_ctx)(W0_B, ctx)


def _tangent_basis(u):
    """(D, D - 1) an orthonormal basis of the tangent space of the sphere at unit u."""
    q, _ = jnp.linalg.qr(jnp.concatenate([u[:, None], jnp.eye(u.shape[0], dtype=u.dtype)], 1))
    return q[:, 1:]


def _implicit_one(u0, ys, rewards, t, polish: int, loss: str):
    """One context and t: the polished minimiser u, its Jacobian (D, N, D), the gradient norm
    left and the smallest curvature along the sphere (derivation: implicit_jacobian)."""
    mask = prefix_mask(t, ys.shape[0])
    f = lambda u, Y: LOSSES[loss](u, Y, rewards, mask)
    grad = jax.grad(f, 0)
    # G = grad f + (|u|^2 - 1) u vanishes exactly at unit stationary points; dG/du there is
    # H + 2 u u^T, invertible at a strict minimum on the sphere (see implicit_jacobian)
    G = lambda u: grad(u, ys) + (u @ u - 1.0) * u

    def newton(i, carry):
        # one loop both polishes (polish Newton steps) and, on its last pass, evaluates dG/du at
        # the final u without stepping: one differentiated copy of the loss, not two
        u, _ = carry
        A = jax.jacfwd(G)(u)
        new = unit(u - jnp.linalg.solve(A, G(u)))
        # a Newton step can head for a saddle if u is not yet near the minimum: keep descents only
        keep = (i < polish) & (f(new, ys) <= f(u, ys) + 1e-7)
        return jnp.where(keep, new, u), A

    u0 = unit(u0)
    u, A = jax.lax.fori_loop(0, polish + 1, newton, (u0, jnp.zeros((u0.shape[0],) * 2, u0.dtype)))
    cross = jax.jacfwd(grad, 1)(u, ys)  # (D, N, D): d grad / d y_j
    D, N = u.shape[0], ys.shape[0]
    J = -jnp.linalg.solve(A, cross.reshape(D, N * D)).reshape(D, N, D)
    Q = _tangent_basis(u)
    curv = jnp.min(jnp.linalg.eigvalsh(Q.T @ A @ Q))  # u u^T vanishes across the tangent space
    return u, J, jnp.linalg.norm(grad(u, ys)), curv


@partial(jax.jit, static_argnames=("polish", "loss"))
def _implicit(u0_BxTxD, ys_B, rewards_B, ts, polish: int, loss: str):
    per = lambda u0_T, ys, r: jax.vmap(lambda u0, t: _implicit_one(u0, ys, r, t, polish, loss))(u0_T, ts)
    return jax.vmap(per)(u0_BxTxD, ys_B, rewards_B)


def implicit_jacobian(ctx: Context, ts, steps: int = 300, polish: int = 3, loss: str = DEFAULT_LOSS):
    """The minimiser of the row-t loss and its Jacobian by the implicit function theorem.

    Let f(u; Y) be the row-t loss of direction u over the first t candidates Y (scale-invariant:
    f(cu) = f(u) for c > 0). Euler's identity gives u . grad f(u) = 0 for every u and Y, so on the
    unit sphere the minimiser u* is a zero of the gradient itself, and differentiating
    grad f(cu) = grad f(u) / c at c = 1 gives H u = -grad f(u) = 0 there: the Hessian H is
    singular along u*, and the plain system grad f = 0 cannot be solved for du/dY. Adding the
    radial term (the sphere constraint) makes it regular:

        G(u, Y) = grad_u f(u; Y) + (|u|^2 - 1) u = 0,   dG/du = H + 2 u u^T  at |u| = 1.

    H is symmetric with H u = 0, so H + 2 u u^T has eigenvalue 2 along u and H's tangent
    eigenvalues across it: it is invertible exactly when u* is a strict minimum along the sphere.
    Then

        du*/dY = -(H + 2 u u^T)^{-1} d(grad_u f)/dY.

    It is tangent, as it must be: u^T (H + 2 u u^T)^{-1} = u^T / 2, and u^T d(grad f)/dY =
    d(u . grad f)/dY = 0 by Euler's identity (u held fixed). The minimiser is found by
    ``references.minimiser`` (Riemannian descent from several starts) and polished by ``polish``
    Newton steps on G (each kept only if the loss does not rise) so that the theorem is applied
    at the stationary point, not near it.

    Returns u (B, T, D), J (B, T, D, N, D) (zero for candidates after t), the gradient norm left
    (B, T) and the smallest curvature along the sphere (B, T) (<= 0: the minimum is not strict
    and the Jacobian is not defined there)."""
    u0, _ = R.minimiser(ctx, ts, steps, loss=loss)
    return _implicit(u0, ctx.ys, ctx.rewards, jnp.asarray(ts), polish, loss)


def jacobian_distance(Ja, Jb, ts):
    """1 - cos between flattened Jacobians (..., T, D, N, D) -> (..., T), over the first t
    candidates of each t only (a zero Jacobian is at distance 1 from everything)."""
    keep = prefix_mask(jnp.asarray(ts), Ja.shape[-2])[:, None, :, None]  # (T, 1, N, 1)
    flat = lambda J: jnp.where(keep, J, 0.0).reshape(*J.shape[:-3], -1)
    return normalised_mse(flat(Ja), flat(Jb))


# ----------------------------------------------------------------------------------- the test
def jacobian_test(learner: Callable, ctx: Context, key, etas, k_max: int, min_seen: int = 2, ts=None,
                  minimiser_steps: int = 300) -> dict:
    """The Jacobian test (module docstring) on one learner and a batch of shared-query contexts
    (first half fits GD's (eta, k) per t, second half is judged). ``etas``: GD's step-size grid;
    ``k_max``: its largest step count; ``ts``: the asked t (default a few in [min_seen, N - 1]).
    ``key`` is taken for the battery's common signature; this test draws nothing. The learner
    must be JAX code (it is differentiated in forward mode) that answers each context alone.

    Returns the battery's dict (test, predictions, t, per_t, fit, d_gd, d_min, margin,
    margin_rule) plus the minimiser's convergence record; d_gd / d_min are the test half's
    per-context distances, the mean over the asked t."""
    check_key("key", key)
    ts = check_shared_contexts(ctx, min_seen, ts)
    etas = check_etas(etas)
    check_int("k_max", k_max, minimum=1)
    check_int("minimiser_steps", minimiser_steps, minimum=1)
    check_learner(learner, ctx)
    B, half = ctx.x.shape[0], ctx.x.shape[0] // 2
    tj = jnp.asarray(ts)

    y, J_all = learner_jacobian(learner, ctx)
    J_learner = J_all[:, tj]  # (B, T, D, N, D)
    W0 = R.init_weights(ctx, y[:, 0])  # GD starts where the learner answers before any triplet
    eta_grid = jnp.asarray(etas, ctx.ys.dtype)
    grid = R.gd_grid(W0, ctx, tj, eta_grid, k_max, "cosine")
    e_T, k_T, _ = R.select(y[:half, tj], grid[:, :, :half])
    J_gd = gd_jacobian(W0, ctx, tj, eta_grid[e_T], k_T, k_max)
    _, J_min, grad_left, curv = implicit_jacobian(ctx, tj, minimiser_steps)

    dist = lambda a, b: np.maximum(np.asarray(jacobian_distance(a, b, tj), np.float64), 0.0)  # (B, T); >= 0
    d_gd, d_min, sep = dist(J_learner, J_gd), dist(J_learner, J_min), dist(J_gd, J_min)
    margin = BT.half_separation(J_gd[:half], J_min[:half], lambda a, b: dist(a, b).mean(1))
    test = slice(half, None)
    return {"test": TEST, "predictions": dict(PREDICTIONS), "t": ts.tolist(),
            "per_t": {"d_gd": summarise(d_gd[test], "contexts"), "d_min": summarise(d_min[test], "contexts"),
                      "gd_vs_minimiser": summarise(sep[test], "contexts")},
            "fit": {"eta": etas[np.asarray(e_T)].tolist(), "steps": np.asarray(k_T).tolist(), "chosen_on": "fit",
                    "k_max": k_max, "etas": etas.tolist(), "halves": halves(B)},
            "d_gd": d_gd[test].mean(1).tolist(), "d_min": d_min[test].mean(1).tolist(),
            "margin": float(margin), "margin_rule": MARGIN_RULE,
            "minimiser": {"gradient_left_max": float(jnp.max(grad_left)),
                          "curvature_min": float(jnp.min(curv)),
                          "not_strict": int(jnp.sum(curv <= 0)),
                          "not_strict_test_contexts": np.flatnonzero(np.any(np.asarray(curv[test]) <= 0, 1)).tolist(),
                          "note": "the implicit Jacobian is defined only at strict minima (curvature > 0)"}}
