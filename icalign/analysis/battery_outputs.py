"""Battery tests on the learner's answers (docs/theory.md section 7; the verdict rule is
:func:`icalign.analysis.battery.verdict`): what the answers themselves, across depths and under
interventions on the context, say about "runs k-step GD on the PL loss" (GD) against "computes
the loss minimiser".

* :func:`depth_sweep` (1): learners of several depths against one GD trajectory;
* :func:`initial_point` (2): a fresh query x moves GD's answer (its start and step) and not the
  minimiser's;
* :func:`slow_contexts` and :func:`distance_test` (3): the answers themselves, on contexts where
  capped GD stays far from the minimiser;
* ``battery_invariance.rank_redraw`` (4) and ``permutation`` (5): invariances every PL learner has; they
  tell a PL learner from a reader of reward values or positions, not GD from the minimiser.

Every test here

* states its predictions before running (``PREDICTIONS``: fixed sentences, not computed);
* answers at t = min_seen..N-1 only (t = 0 and 1 rank nothing);
* fits and chooses (GD's step size and step count) on the fitting half of the contexts
  (``mechanism.halves``) and reports the test half: ``d_gd`` and ``d_min``, per test-half
  context (mean over the t reported), the distances :func:`battery.verdict` judges;
* fixes its margin from the hypotheses on the fitting half, never from the learner (except the
  invariance tests, whose two hypotheses predict the same and whose margin is the learner's own
  approximation error: see there).

Distances between answers are 1 - cos (``metrics.normalised_mse``). Only shared-query contexts
are supported: the tests rely on the answer depending on the query x only through GD's start
and step (docs/theory.md 2.2), which per-triplet queries break.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign.analysis import battery as BT
from icalign.analysis import references as R
from icalign.analysis.mechanism import _at_fit, halves
from icalign.core.metrics import normalised_mse
from icalign.core.stats import summarise, t_interval
from icalign.core.tasks import Context, check_batched_contexts, sample_contexts
from icalign.core.validate import check_int, check_key

__all__ = ["PREDICTIONS", "FLOAT_FLOOR", "depth_sweep", "initial_point", "one_step_per_layer", "fresh_query",
           "slow_contexts", "distance_test"]

#: The smallest margin an invariance test uses: float32 rounding of 1 - cos between two answers
#: that agree exactly in exact arithmetic is ~1e-7, far below it.
FLOAT_FLOOR = 1e-5

PREDICTIONS = {
    "depth_sweep": {
        "GD": "as depth grows the answers move along one GD trajectory (one step size for every depth), each depth "
              "at the step count its depth allows, so the fitted step count grows with depth",
        "minimiser": "every depth deep enough answers the minimiser of the PL loss, whatever its depth",
        "neither": "at some depths the answers are far from both the fitted GD trajectory and the minimiser"},
    "initial_point": {
        "GD": "a fresh query x' moves the answer exactly as much as GD started from the learner's own t = 0 answer "
              "at x' moves (GD's start is W0 x and its step scales with |x|^2)",
        "minimiser": "a fresh query x' does not move the answer at t >= 1 (the PL loss sees the answers only, so its "
                     "minimiser does not depend on x)",
        "neither": "the answer moves, but not as GD from the learner's own start predicts"},
    "distance": {
        "GD": "on contexts where capped GD stays far from the minimiser the answers sit on the fitted GD "
              "trajectory, far from the minimiser",
        "minimiser": "on those contexts the answers sit at the minimiser, beyond the reach of capped GD",
        "neither": "the answers are far from both"},
    "rank_redraw": {
        "GD": "no movement: PL-GD sees the shown rewards only through their ranking, which the redraw keeps",
        "minimiser": "no movement: the PL minimiser depends on the ranking only",
        "neither": "a learner that reads reward values moves beyond its own approximation error"},
    "permutation": {
        "GD": "no spread: the PL loss, hence its gradient, is a sum over the ranking, not over the order shown",
        "minimiser": "no spread: the PL minimiser does not depend on the order shown",
        "neither": "a learner that reads positions spreads beyond its own approximation error"},
}


def one_step_per_layer(depth: int) -> int:
    """The default step-count cap: one GD step per layer, as in von Oswald et al.'s linear
    construction. The theory's own construction is slower: it needs N - 1 blocks (2(N - 1)
    one-head layers) per PL-GD step (docs/theory.md 3.2, 3.7); pass its cap for that reading."""
    return depth


# ------------------------------------------------------------------------------ common ground
def _check_settings(n: int, key, etas, min_seen) -> tuple[np.ndarray, int]:
    """The settings every test shares; bad input fails here, naming the argument, before
    anything is traced."""
    check_key("key", key)
    e = np.asarray(etas, float) if not isinstance(etas, (str, bytes)) and etas is not None else np.array([])
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e) & (e > 0)):
        raise ValueError(f"etas must be a non-empty 1-D list of finite step sizes > 0, got {etas!r}")
    if check_int("min_seen", min_seen, minimum=1) > n - 1:
        raise ValueError(f"min_seen must be <= N - 1 = {n - 1} (the last t the contexts reach), got {min_seen}")
    return e, min_seen


def _check_common(ctx: Context, key, etas, min_seen) -> tuple[np.ndarray, int]:
    """The contexts (a batch of >= 4 shared-query ones) and the shared settings."""
    check_batched_contexts(ctx)
    if ctx.xs is not None:
        raise ValueError("ctx must hold shared-query contexts (ctx.xs is None): these tests read how the answer "
                         "depends on the shared query x")
    if ctx.x.shape[0] < 4:
        raise ValueError(f"ctx must hold >= 4 contexts (two per half), got {ctx.x.shape[0]}")
    return _check_settings(ctx.ys.shape[1], key, etas, min_seen)


def _check_learner(name: str, learner) -> None:
    if not callable(learner):
        raise ValueError(f"{name} must be a learner (a callable ctx -> answers (B, N, D)), got {type(learner).__name__}")


def _answers(name: str, learner, ctx: Context) -> jax.Array:
    """The learner's answers, checked: (B, N, D) and finite (a diverged learner is refused by
    name rather than averaged into a verdict)."""
    y = learner(ctx)
    if jnp.shape(y) != ctx.ys.shape:
        raise ValueError(f"{name} must answer (B, N, D) = {ctx.ys.shape} (t = 0..N-1), got shape {jnp.shape(y)}")
    if not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError(f"{name} answered NaN or inf")
    return jnp.asarray(y, ctx.ys.dtype)


def _dist(a, b) -> np.ndarray:
    """1 - cos(a, b) over the last axis as float64, clipped at 0: it is >= 0 exactly, and float32
    rounding of two equal directions gives -1e-7, which the verdict would refuse."""
    return np.maximum(np.asarray(normalised_mse(a, b), np.float64), 0.0)


def _minimiser(ctx: Context, min_seen: int, steps: int):
    """``references.minimiser`` at t = min_seen..N-1 and its gradient left. Computed for every
    t >= 1 and sliced: one compiled program serves every min_seen (and battery.minimiser_learner,
    which asks for the same t)."""
    ans, grad_left = R.minimiser(ctx, jnp.arange(1, ctx.ys.shape[1]), steps)
    return ans[:, min_seen - 1:], grad_left[:, min_seen - 1:]


def _record(test: str, ts, per_t: dict, fit: dict, d_gd, d_min, margin: float, margin_rule: str,
            B: int, **extra) -> dict:
    """The contract's JSON-able result of one test (CONTRACT: d values are the test half's)."""
    return {"test": test, "predictions": PREDICTIONS[test], "t": np.asarray(ts).tolist(), "halves": halves(B),
            "per_t": per_t, "fit": fit, "d_gd": np.asarray(d_gd, np.float64).tolist(),
            "d_min": np.asarray(d_min, np.float64).tolist(), "margin": float(margin), "margin_rule": margin_rule,
            **extra}


# ------------------------------------------------------------------------------ 1. depth sweep
def _fit_shared_eta(dist_PxExK, caps) -> tuple[int, list[int]]:
    """One step size for every depth and one step count per depth (<= its cap): for each step
    size every depth takes its own best count; the step size with the lowest total wins."""
    d = np.nan_to_num(np.asarray(dist_PxExK, np.float64), nan=np.inf)  # a diverged step size never fits
    K1 = d.shape[2]
    allowed = np.arange(K1)[None, None, :] <= np.asarray(caps)[:, None, None]
    d = np.where(allowed, d, np.inf)
    best_k = np.argmin(d, axis=2)  # (P, E)
    total = np.take_along_axis(d, best_k[..., None], 2)[..., 0].sum(0)  # (E,)
    e = int(np.argmin(total))
    return e, [int(k) for k in best_k[:, e]]


def depth_sweep(learners: dict, ctx: Context, key, etas, k_cap: Optional[Callable[[int], int]] = None,
                min_seen: int = 2, minimiser_steps: int = 300) -> dict:
    """Depth sweep: learners of several depths ({depth: learner}) against ONE GD trajectory.

    For each depth GD starts from that learner's own t = 0 answer (``references.init_weights``).
    On the fitting half one step size eta is fitted for all depths and t together, and one step
    count k(depth) <= ``k_cap(depth)`` per depth, shared across t (default
    :func:`one_step_per_layer`). GD's prediction at a depth is that trajectory point; the
    minimiser's is ``references.minimiser``. ``d_gd`` / ``d_min``: per test context, the mean over
    depths and t >= ``min_seen`` of 1 - cos to each prediction. Margin: half the hypotheses'
    separation on the fitting half (``battery.half_separation``). ``key`` is checked but unused
    (nothing is random here; the battery's tests share one signature).

    Also reported per depth: the cap and fitted k, the learner's distance to GD and to the
    minimiser (test half), and whether the fitted k is non-decreasing in depth. Where k-step GD
    within the caps already reaches the minimiser the margin is small and the verdict is
    correctly "not resolved": choose contexts where it does not."""
    e_arr, min_seen = _check_common(ctx, key, etas, min_seen)
    if not isinstance(learners, dict) or not learners:
        raise ValueError(f"learners must be a non-empty dict {{depth: learner}}, got {type(learners).__name__}")
    k_cap = one_step_per_layer if k_cap is None else k_cap
    if not callable(k_cap):
        raise ValueError(f"k_cap must be a callable depth -> maximum step count, got {type(k_cap).__name__}")
    depths = sorted(check_int("learners' depth", dep, minimum=1) for dep in learners)
    for dep in depths:
        _check_learner(f"learners[{dep}]", learners[dep])
    caps = [check_int(f"k_cap({dep})", k_cap(dep), minimum=0) for dep in depths]
    check_int("minimiser_steps", minimiser_steps, minimum=1)

    B, N = ctx.ys.shape[:2]
    half = B // 2
    ts = jnp.arange(min_seen, N)
    etas_j = jnp.asarray(e_arr, ctx.ys.dtype)
    ys = jnp.stack([_answers(f"learners[{dep}]", learners[dep], ctx) for dep in depths])  # (P, B, N, D)
    grids = jnp.stack([R.gd_grid(R.init_weights(ctx, y[:, 0]), ctx, ts, etas_j, max(caps)) for y in ys])
    y_t = ys[:, :, min_seen:]  # (P, B, T, D)
    # fitting half: mean over contexts and t of each grid point's distance, (P, E, K + 1)
    fit_dist = jnp.mean(normalised_mse(grids[:, :, :, :half], y_t[:, None, None, :half]), axis=(3, 4))
    e, ks = _fit_shared_eta(fit_dist, caps)
    pred_gd = grids[jnp.arange(len(depths)), e, jnp.asarray(ks)]  # (P, B, T, D)
    pred_min, grad_left = _minimiser(ctx, min_seen, minimiser_steps)

    dg = _dist(y_t, pred_gd)  # (P, B, T)
    dm = _dist(y_t, pred_min)
    pooled = lambda a, b: jnp.mean(normalised_mse(a, b), axis=(0, 2))  # per context: over depths and t
    margin = BT.half_separation(pred_gd[:, :half], pred_min[:half], pooled)
    per_depth = {str(dep): {"k_cap": cap, "k": k, "distance_to_gd": summarise(dg[i, half:], "contexts"),
                            "distance_to_minimiser": summarise(dm[i, half:], "contexts")}
                 for i, (dep, cap, k) in enumerate(zip(depths, caps, ks))}
    monotone = bool(np.all(np.diff(ks) >= 0))
    return _record(
        "depth_sweep", ts, {"distance_to_gd": summarise(dg.mean(0)[half:], "contexts"),
                            "distance_to_minimiser": summarise(dm.mean(0)[half:], "contexts")},
        {"eta": float(e_arr[e]), "k": {str(dep): k for dep, k in zip(depths, ks)}, "k_cap": dict(zip(map(str, depths), caps)),
         "k_monotone_in_depth": monotone, "chosen_on": "fit"},
        dg.mean((0, 2))[half:], dm.mean((0, 2))[half:], margin,
        "half the mean separation of fitted GD and the minimiser (fitting half, over depths and t)", B,
        depths=depths, per_depth=per_depth, k_monotone_in_depth=monotone,
        minimiser_gradient_left=float(jnp.max(grad_left)))


# ------------------------------------------------------------------------------ 2. initial point
def fresh_query(key, ctx: Context) -> Context:
    """The same triplets asked at a fresh query x' ~ N(0, I) (the task's query law). y* is left
    as it was: no learner reads it, and these tests compare answers, never errors."""
    return ctx.replace(x=jax.random.normal(key, ctx.x.shape, ctx.x.dtype))


def initial_point(learner, ctx: Context, key, etas, k_max: int, min_seen: int = 2) -> dict:
    """Initial point: does the answer depend on the query x the way GD's start and step do?

    The PL loss sees the answers only, so the minimiser's answer at t >= 1 does not depend on x;
    GD's path starts from the learner's own t = 0 answer y0 = W0 x and its step scales with
    |x|^2. Intervention: x -> a fresh draw x' (``fresh_query``, same triplets). Statistic per
    context and t: the movement 1 - cos(answer(x), answer(x')). GD's prediction: the movement of
    GD started from the learner's own t = 0 answers at x and at x', with (eta, k <= k_max)
    fitted per t on the fitting half to the unintervened answers (as ``mechanism._references``);
    the minimiser's prediction: 0. ``d_gd`` = |movement - GD's movement|, ``d_min`` = movement,
    each the mean over t >= ``min_seen`` per test context. Margin: half GD's mean predicted
    movement on the fitting half.

    Caveat: the statistic is one number per (context, t), so a learner whose answers ignore the
    context can match GD's movement by chance, the more so in high dimension where 1 - cos of
    unrelated directions concentrates at 1 (a random learner: d_gd 0.43 against a margin of 0.37
    at d = 16, N = 20; 0.75 against 0.26 at d = 5). ``fit.gd_fit_distance`` says how well fitted
    GD describes the unintervened answers; the depth sweep and the distance test judge the
    answers themselves."""
    e_arr, min_seen = _check_common(ctx, key, etas, min_seen)
    _check_learner("learner", learner)
    check_int("k_max", k_max, minimum=1)
    B, N = ctx.ys.shape[:2]
    half = B // 2
    ts = jnp.arange(min_seen, N)
    etas_j = jnp.asarray(e_arr, ctx.ys.dtype)
    moved = fresh_query(key, ctx)
    y, y_new = _answers("learner", learner, ctx), _answers("learner (at x')", learner, moved)

    grid = R.gd_grid(R.init_weights(ctx, y[:, 0]), ctx, ts, etas_j, k_max)
    e_T, k_T, _ = R.select(y[:half, min_seen:], grid[:, :, :half])
    grid_new = R.gd_grid(R.init_weights(moved, y_new[:, 0]), moved, ts, etas_j, k_max)
    gd_x, gd_new = _at_fit(grid, e_T, k_T), _at_fit(grid_new, e_T, k_T)  # same fitted (eta, k) at x'

    move = _dist(y[:, min_seen:], y_new[:, min_seen:])  # (B, T)
    gd_move = _dist(gd_x, gd_new)
    gap = np.abs(move - gd_move)
    margin = 0.5 * float(np.mean(gd_move[:half]))
    return _record(
        "initial_point", ts, {"movement": summarise(move[half:], "contexts"),
                              "gd_movement": summarise(gd_move[half:], "contexts"),
                              "movement_minus_gd": summarise(gap[half:], "contexts")},
        {"eta": e_arr[np.asarray(e_T)].tolist(), "k": np.asarray(k_T).tolist(), "k_max": k_max, "chosen_on": "fit",
         # how well fitted GD describes the unintervened answers: its movement means little if badly
         "gd_fit_distance": float(np.mean(_dist(y[:half, min_seen:], gd_x[:half])))},
        gap.mean(1)[half:], move.mean(1)[half:], margin,
        "half GD's mean predicted movement (fitting half)", B,
        t0_movement=summarise(_dist(y[:, :1], y_new[:, :1])[half:], "contexts"))


# ------------------------------------------------------------------------------ 3. slow contexts
def slow_contexts(key, pool: int, d: int, n: int, etas, k_cap: int, fraction: float = 0.25, min_seen: int = 2,
                  minimiser_steps: int = 300) -> tuple[Context, dict]:
    """Standard contexts where capped GD stays far from the minimiser, chosen from the
    hypotheses alone (never a learner): draw ``pool`` contexts of the training distribution
    (``tasks.sample_contexts``), score each by the closest any GD point gets to the minimiser
    (min over ``etas`` and k <= ``k_cap`` of the mean over t >= ``min_seen`` of 1 - cos), and
    keep the ``fraction`` with the largest score, in pool order (so the halves stay a random
    split). Selecting from standard draws keeps the contexts in the training distribution, unlike
    hand-built small-beta or wide-spread contexts (not built here).

    GD starts at y0 = x (W0 = I): the learner's own start is unknown before reading it. A
    learner that starts elsewhere may converge faster or slower; the distance test reports the
    separation it actually meets. Returns (contexts, record of the selection)."""
    check_int("d", d, minimum=1)
    e_arr, min_seen = _check_settings(check_int("n", n, minimum=2), key, etas, min_seen)
    check_int("pool", pool, minimum=4)
    check_int("k_cap", k_cap, minimum=0)
    check_int("minimiser_steps", minimiser_steps, minimum=1)
    f = float(fraction) if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else np.nan
    keep = int(np.ceil(f * pool)) if np.isfinite(f) else 0
    if not (0 < f <= 1) or keep < 4:
        raise ValueError(f"fraction must lie in (0, 1] and keep >= 4 of the {pool} pool contexts, got {fraction!r}")
    ctx = sample_contexts(key, pool, d, n)
    ts = jnp.arange(min_seen, n)
    grid = R.gd_grid(R.init_weights(ctx, ctx.x), ctx, ts, jnp.asarray(e_arr, ctx.ys.dtype), k_cap)
    pred_min, _ = _minimiser(ctx, min_seen, minimiser_steps)
    sep = np.nan_to_num(_dist(grid, pred_min).mean(-1), nan=np.inf).min(axis=(0, 1))  # (pool,)
    chosen = np.sort(np.argsort(-sep, kind="stable")[:keep])
    record = {"rule": f"top {keep} of {pool} standard contexts by the closest capped GD (k <= {k_cap}) gets to the "
                      "minimiser, GD from y0 = x; chosen from the hypotheses only", "pool": pool, "kept": keep,
              "k_cap": k_cap, "etas": e_arr.tolist(), "threshold": float(sep[chosen].min()),
              "separation_pool": t_interval(sep), "separation_kept": t_interval(sep[chosen])}
    return jax.tree_util.tree_map(lambda a: a[chosen], ctx), record


def _fitted_gd(y, ctx: Context, etas_j, k_max: int, min_seen: int, half: int):
    """GD from the learner's own t = 0 answer, (eta, k <= k_max) fitted per t on the fitting
    half (as ``mechanism._references``): predictions (B, T, D), W0 and the fitted indices."""
    W0 = R.init_weights(ctx, y[:, 0])
    grid = R.gd_grid(W0, ctx, jnp.arange(min_seen, ctx.ys.shape[1]), etas_j, k_max)
    e_T, k_T, _ = R.select(y[:half, min_seen:], grid[:, :, :half])
    return _at_fit(grid, e_T, k_T), W0, e_T, k_T


def distance_test(learner, ctx: Context, key, etas, k_cap: int, min_seen: int = 2, minimiser_steps: int = 300) -> dict:
    """The answers themselves against fitted GD (k <= ``k_cap``, per t on the fitting half) and
    the minimiser, on contexts where the two differ (``slow_contexts``). ``d_gd`` / ``d_min``:
    per test context, the mean over t >= ``min_seen`` of 1 - cos. Margin: half the hypotheses'
    separation on the fitting half. ``key`` is checked but unused (nothing is random)."""
    e_arr, min_seen = _check_common(ctx, key, etas, min_seen)
    _check_learner("learner", learner)
    check_int("k_cap", k_cap, minimum=0)
    check_int("minimiser_steps", minimiser_steps, minimum=1)
    B, half = ctx.x.shape[0], ctx.x.shape[0] // 2
    y = _answers("learner", learner, ctx)
    pred_gd, _, e_T, k_T = _fitted_gd(y, ctx, jnp.asarray(e_arr, ctx.ys.dtype), k_cap, min_seen, half)
    pred_min, grad_left = _minimiser(ctx, min_seen, minimiser_steps)
    dg, dm = _dist(y[:, min_seen:], pred_gd), _dist(y[:, min_seen:], pred_min)
    margin = BT.half_separation(pred_gd[:half], pred_min[:half], lambda a, b: jnp.mean(normalised_mse(a, b), -1))
    return _record("distance", np.arange(min_seen, ctx.ys.shape[1]),
                   {"distance_to_gd": summarise(dg[half:], "contexts"),
                    "distance_to_minimiser": summarise(dm[half:], "contexts")},
                   {"eta": e_arr[np.asarray(e_T)].tolist(), "k": np.asarray(k_T).tolist(), "k_cap": k_cap,
                    "chosen_on": "fit"},
                   dg.mean(1)[half:], dm.mean(1)[half:], margin,
                   "half the mean separation of fitted GD and the minimiser (fitting half)", B,
                   minimiser_gradient_left=float(jnp.max(grad_left)))
