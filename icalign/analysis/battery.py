"""The mechanism battery's common ground (docs/theory.md section 7): what a learner is, the
planted learners every test is checked on, and the one rule that turns a test's per-context
distances into a verdict "GD", "minimiser", "neither" or "not resolved".

A **learner** is a function ``ctx -> answers (B, N, D)``: its answer to the query after
t = 0..N-1 triplets of each context (the transformer's read-out positions). Each test of the
battery computes, per context, how far the learner's behaviour is from what "runs k-step GD"
predicts (``d_gd``) and from what "computes the loss minimiser" predicts (``d_min``), in the
test's own units (0 = exactly as predicted). Tests fit and choose on the fitting half of the
contexts and hand :func:`verdict` the test half only.

**The rule** (fixed before any model is read): with ``margin`` the test's resolution,

* "GD": the learner is surely within the margin of GD's prediction and surely beyond it from
  the minimiser's; "minimiser": the reverse;
* "neither": surely beyond the margin from both;
* "not resolved": anything else, with the reason (both predictions within the margin: the
  test cannot separate them on these contexts; or an interval reaching the margin);
* "not trained": a model in the test failed its training-health gate.

"Surely" is the claim engine's equivalence claim (:func:`icalign.analysis.claims.agreement`)
of the distance against 0, so with several seeds the interval covers new seeds and new
contexts (context c judged on seed c mod S). The default margin, where both hypotheses make a
prediction, is half their mean separation on the fitting half (:func:`half_separation`): it
is computed from the two hypotheses alone, never from the learner, and a learner within it of
one hypothesis is closer to that one than to the other.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.analysis import claims as CL
from icalign.analysis import references as R
from icalign.core.tasks import Context
from icalign.core.validate import check_int

__all__ = ["VERDICTS", "Learner", "verdict", "combine", "half_separation", "transformer_learner", "gd_learner",
           "minimiser_learner", "random_learner", "as_cells"]

VERDICTS = ("GD", "minimiser", "neither", "not resolved", "not trained")
Learner = Callable[[Context], jax.Array]


def as_cells(values) -> np.ndarray:
    """(S, C) per-(seed, context) values from (C,) (one learner, no seeds) or (S, C)."""
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"distances must be a (contexts,) or (seeds, contexts) array, got shape {v.shape}")
    return v


def half_separation(pred_gd, pred_min, distance) -> float:
    """Half the mean distance between the two hypotheses' predictions (fitting half only):
    ``distance(pred_gd, pred_min)`` gives one value per context."""
    sep = float(np.mean(np.asarray(distance(pred_gd, pred_min), np.float64)))
    return 0.5 * sep


def verdict(test: str, d_gd, d_min, margin: float, *, health: Optional[dict] = None, units: str = "",
            margin_rule: str = "half the hypotheses' separation") -> dict:
    """The battery's verdict on one test (module docstring) from the test half's distances to
    GD's and to the minimiser's predictions, (C,) or (S, C) each (same seeds, same contexts),
    and the test's ``margin`` (> 0, in the distances' units). ``health``: the trained model's
    gate record (its claims become "not trained" when it failed). Returns the verdict, its
    reason, the margin and the two equivalence claims it rests on."""
    g, m = as_cells(d_gd), as_cells(d_min)
    if g.shape != m.shape:
        raise ValueError(f"d_gd and d_min must be the same (seeds, contexts) shape, got {g.shape} and {m.shape}")
    if np.any(g < 0) or np.any(m < 0):
        raise ValueError("distances must be >= 0 (0 = exactly as the hypothesis predicts)")
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"{test}: margin must be a finite number > 0, got {margin!r} (both hypotheses predict the "
                         "same here: give the test its own margin)")
    arm = lambda lab, v: CL.cells(lab, v if v.shape[0] > 1 else v[0], health=health)
    zero = CL.cells("exact agreement", np.zeros(g.shape[1]))
    near = {h: CL.agreement(f"{test}: the learner is within {margin:.3g} of {h}'s prediction", arm(f"distance to {h}", v),
                            zero, margin, margin_rule) for h, v in (("GD", g), ("the minimiser", m))}
    a, b = near["GD"]["verdict"], near["the minimiser"]["verdict"]
    if "not trained" in (a, b):
        v, why = "not trained", near["GD"]["reason"] or near["the minimiser"]["reason"]
    elif a == "supported" and b == "contradicted":
        v, why = "GD", "within the margin of GD, beyond it from the minimiser"
    elif a == "contradicted" and b == "supported":
        v, why = "minimiser", "within the margin of the minimiser, beyond it from GD"
    elif a == "contradicted" and b == "contradicted":
        v, why = "neither", "beyond the margin from both"
    elif a == "supported" and b == "supported":
        v, why = "not resolved", "within the margin of both: the test cannot separate them on these contexts"
    else:
        v, why = "not resolved", "an interval reaches the margin"
    return {"test": test, "verdict": v, "reason": why, "margin": float(margin), "margin_rule": margin_rule,
            "units": units, "distance_to_gd": near["GD"], "distance_to_minimiser": near["the minimiser"]}


def combine(test: str, per_seed: list, *, health: Optional[dict] = None) -> dict:
    """One test's verdict over trained models: each seed's record (the test function's dict,
    run on the same contexts) gives its test-half ``d_gd`` and ``d_min``, stacked to (S, C) so
    that the engine judges each seed on its own block of contexts; the margin is the mean of
    the seeds' margins (each fixed from its own fitting half's hypotheses). The record keeps
    the predictions written before the run and every seed's own record."""
    if not per_seed:
        raise ValueError(f"{test}: no seed's record to combine")
    stack = lambda k: np.asarray([r[k] for r in per_seed], np.float64)
    first = per_seed[0]
    out = verdict(test, stack("d_gd"), stack("d_min"), float(np.mean([r["margin"] for r in per_seed])), health=health,
                  units=first.get("units", ""), margin_rule=first.get("margin_rule", "half the hypotheses' separation"))
    return {**out, "predictions": first["predictions"], "seeds": len(per_seed), "per_seed": per_seed}


# ------------------------------------------------------------------------------------ learners
def transformer_learner(params, config: M.ModelConfig) -> Learner:
    """The model's answers at its read-out positions, (B, N, D)."""
    pos = jnp.asarray(M.readout_positions(config))

    @jax.jit
    def answers(ctx: Context):
        return M.apply(params, M.tokenize(ctx, config), config)[..., pos, :]
    return answers


@partial(jax.jit, static_argnames=("k", "reward"))
def _gd_answers(W0, ctx: Context, eta, k: int, reward: str):
    ts = jnp.arange(ctx.ys.shape[-2])
    one = lambda c: jax.vmap(lambda t: R.gd_path(W0, c, t, eta, k, reward)[-1])(ts)
    return jax.vmap(one)(ctx)


def gd_learner(W0, eta: float, k: int, reward: str = "cosine") -> Learner:
    """Planted: exactly ``k`` PL-GD steps of size ``eta`` on the first t triplets from the
    fixed weights ``W0`` (D, D), so its answer at t = 0 is W0 x (the GD hypothesis made true)."""
    check_int("k", k, minimum=0)
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite step size > 0, got {eta!r}")
    if k == 0:
        return lambda ctx: jnp.broadcast_to((ctx.x @ W0.T)[:, None], ctx.ys.shape)
    return lambda ctx: _gd_answers(jnp.asarray(W0), ctx, eta, k, reward)


def minimiser_learner(steps: int = 300) -> Learner:
    """Planted: the converged minimiser of the row-t loss (``references.minimiser``) at every
    t >= 1 (the minimiser hypothesis made true); at t = 0 nothing is ranked and it answers the
    query x itself."""
    def answers(ctx: Context):
        ts = jnp.arange(1, ctx.ys.shape[-2])
        return jnp.concatenate([ctx.x[:, None], R.minimiser(ctx, ts, steps)[0]], axis=1)
    return answers


def random_learner(key) -> Learner:
    """Planted: a fresh Gaussian answer on every call, for every context and t (neither
    hypothesis: its answers depend on nothing in the context)."""
    calls = iter(range(1 << 30))
    return lambda ctx: jax.random.normal(jax.random.fold_in(key, next(calls)), ctx.ys.shape, ctx.ys.dtype)
