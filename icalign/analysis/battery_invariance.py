"""The battery's invariance tests (docs/theory.md 7.1): a rank-preserving reward redraw and a
permutation of the seen triplets leave every PL learner unmoved, GD and minimiser alike, so
these tests tell a PL learner from a reader of reward values or positions, not GD from the
minimiser. Shared ground (checks, fitted GD, the record) is :mod:`icalign.analysis.battery_outputs`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign.analysis import interventions as I
from icalign.analysis.battery_outputs import (FLOAT_FLOOR, _answers, _check_common, _check_learner, _dist, _fitted_gd,
                                              _minimiser, _record)
from icalign.analysis.mechanism import _gd_items, _minimiser_items
from icalign.core.stats import summarise
from icalign.core.tasks import Context
from icalign.core.validate import check_int

__all__ = ["rank_redraw", "permutation"]


def _invariance(test: str, learner, ctx: Context, keys, kind: str, etas, k_max: int, min_seen: int,
                minimiser_steps: int, control: Optional[str]) -> dict:
    """Both hypotheses predict that ``kind`` (one call per key) leaves the answer unmoved.
    Movement per (context, t): 1 - cos(answer, answer after the change), mean over the keys.
    The margin is what the test can resolve: the learner's own approximation error (its mean
    distance on the fitting half to the closer of fitted GD and the minimiser: a learner only
    approximately PL may move that much for that reason) or the references' own movement
    (float rounding, the minimiser's convergence), whichever is larger, and at least
    ``FLOAT_FLOOR``. d_gd = d_min = the movement, so the verdict is "not resolved" (within both:
    the PL learners' outcome) or "neither" (surely moves beyond the margin)."""
    B, N = ctx.ys.shape[:2]
    half = B // 2
    ts = jnp.arange(min_seen, N)
    T = ts.shape[0]
    y = _answers("learner", learner, ctx)
    pred_gd, W0, e_T, k_T = _fitted_gd(y, ctx, jnp.asarray(etas, ctx.ys.dtype), k_max, min_seen, half)
    pred_min, _ = _minimiser(ctx, min_seen, minimiser_steps)
    approx = min(float(np.mean(_dist(y[:half, min_seen:], pred_gd[:half]))),
                 float(np.mean(_dist(y[:half, min_seen:], pred_min[:half]))))
    flat_base = {"learner": y[:, min_seen:], "gd": pred_gd, "minimiser": pred_min}
    rows = jnp.arange(B * T)
    eta_flat, k_flat = jnp.tile(jnp.asarray(etas, ctx.ys.dtype)[e_T], B), jnp.tile(k_T, B)
    W0_flat = jnp.repeat(W0, T, axis=0)

    def movement(kind_, key):
        changed, t_new, _ = I.intervene(kind_, key, ctx, ts)  # redraw, reverse, permute keep t
        after = {"learner": _answers("learner (changed contexts)", learner, changed)[rows, t_new],
                 "gd": _gd_items(W0_flat, changed, t_new, eta_flat, k_flat, k_max, "cosine")[1],
                 "minimiser": _minimiser_items(changed, t_new, minimiser_steps)}
        return {h: _dist(flat_base[h], a.reshape(B, T, -1)) for h, a in after.items()}  # (B, T) each

    moves = [movement(kind, k) for k in keys]
    move = {h: np.mean([m[h] for m in moves], axis=0) for h in flat_base}
    ref_move = max(float(np.mean(move["gd"][:half])), float(np.mean(move["minimiser"][:half])))
    margin = max(approx, ref_move, FLOAT_FLOOR)
    extra = {}
    if control is not None:
        ctl = movement(control, keys[0])
        extra["control"] = {"kind": control, "movement": summarise(ctl["learner"][half:], "contexts"),
                            "gd_movement": summarise(ctl["gd"][half:], "contexts")}
    d = move["learner"].mean(1)[half:]
    return _record(test, ts, {"movement": summarise(move["learner"][half:], "contexts"),
                              "gd_movement": summarise(move["gd"][half:], "contexts"),
                              "minimiser_movement": summarise(move["minimiser"][half:], "contexts")},
                   {"eta": np.asarray(etas)[np.asarray(e_T)].tolist(), "k": np.asarray(k_T).tolist(), "k_max": k_max,
                    "chosen_on": "fit", "approximation_error": approx, "reference_movement": ref_move}, d, d, margin,
                   "the larger of the learner's approximation error (fitting half, closer of fitted GD and the "
                   f"minimiser) and the references' own movement, at least {FLOAT_FLOOR:g}", B, **extra)


def _check_invariance(learner, ctx, key, etas, k_max, min_seen, minimiser_steps):
    e_arr, min_seen = _check_common(ctx, key, etas, min_seen)
    _check_learner("learner", learner)
    check_int("k_max", k_max, minimum=1)
    check_int("minimiser_steps", minimiser_steps, minimum=1)
    return e_arr, min_seen


def rank_redraw(learner, ctx: Context, key, etas, k_max: int, min_seen: int = 2, minimiser_steps: int = 300) -> dict:
    """Rank-preserving, distribution-preserving reward redraw (``interventions`` kind
    "redraw"): any PL learner, GD or minimiser, cannot move. d_gd = d_min = the learner's
    movement, judged against its own approximation error (``_invariance``), so
    ``battery.verdict`` says "not resolved" (within the margin of both: a PL learner, which this
    test cannot split into GD or minimiser) or "neither" (it surely moves beyond its
    approximation error: it reads reward values). The movement under reversal ("reverse") is
    reported as the positive control (``control``): every learner should move under it."""
    e_arr, min_seen = _check_invariance(learner, ctx, key, etas, k_max, min_seen, minimiser_steps)
    return _invariance("rank_redraw", learner, ctx, [key], "redraw", e_arr, k_max, min_seen, minimiser_steps,
                       control="reverse")


def permutation(learner, ctx: Context, key, etas, k_max: int, draws: int = 4, min_seen: int = 2,
                minimiser_steps: int = 300) -> dict:
    """The spread of the answer over ``draws`` random orders of the first t triplets (mean 1 - cos
    to the answer in the shown order). PL-GD is exactly invariant; the fitted GD's own float
    spread is reported (``per_t.gd_movement``). Verdict form as :func:`rank_redraw`: "not
    resolved" for a PL learner, "neither" for one that surely reads positions."""
    e_arr, min_seen = _check_invariance(learner, ctx, key, etas, k_max, min_seen, minimiser_steps)
    check_int("draws", draws, minimum=1)
    keys = [jax.random.fold_in(key, i) for i in range(draws)]
    return _invariance("permutation", learner, ctx, keys, "permute", e_arr, k_max, min_seen, minimiser_steps,
                       control=None)
