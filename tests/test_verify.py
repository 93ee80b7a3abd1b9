"""The adversarial verifier (icalign.theory.search) and the verify table.

The hunt must find the far-candidate counterexample against the first version's precondition set (kept
here as a fixture), and find nothing beyond the documented bound against the current one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct, gd
from icalign.theory import bounds, search

OLD_BOUND = 1e-9  # what the first verify table claimed for every construction row


def old_preconditions(spec, ctx):
    """The first version's checks, as they were: rewards in [0, r_cap], distinct with gap >=
    spec.gap, best-first when causal; nothing about x, the candidates or the logits."""
    r = np.asarray(ctx.rewards, float)
    ok = (r.min(-1) >= 0) & (r.max(-1) <= spec.r_cap)
    ok &= np.diff(np.sort(r, -1), axis=-1).min(-1) >= spec.gap
    if spec.causal:
        ok &= np.all(np.diff(r, axis=-1) < 0, -1)
    return ok & (spec.M > 2 * spec.B * spec.r_cap), OLD_BOUND


def test_hunt_finds_the_far_candidate_counterexample_against_the_old_preconditions():
    res = search.hunt(search.CLAIMS["PL"], seed=0, shapes=((4, 3),), specs=2, batch=32, rounds=0,
                      checker=old_preconditions, defaults=True, families=("extreme",))
    assert res["worst_ratio"] > 1e6  # an error above 1e-3 where the old checks passed
    spec, ctx = res["example"]
    assert (spec.B * spec.gap, spec.M) == (50.0, 4 * spec.B + 100)  # verify's own defaults, as in the issue
    assert old_preconditions(spec, ctx)[0]
    with jax.enable_x64(True):
        # The same failure as the reproduction: PL logits far below the sink's -M/2.
        with pytest.raises(ValueError, match="precondition 'sink margin'"):
            construct.check_preconditions(spec, ctx)
        x = jnp.asarray(ctx.x)
        W = gd.gradient_descent(jnp.asarray(spec.W0), x, ctx.ys, ctx.rewards, spec.eta / float(x @ x), 1,
                                "sqdist", spec.beta)
        y0, exact = jnp.asarray(spec.W0) @ x, W @ x
        wrong = construct.run(spec, ctx, check=False)
        assert float(jnp.linalg.norm(wrong - exact) / jnp.linalg.norm(exact - y0)) > 0.1


@pytest.mark.parametrize("name", ["PL", "causal any order"])
def test_hunt_inside_the_documented_preconditions_stays_within_the_bound_and_the_tolerance(name):
    res = search.hunt(search.CLAIMS[name], seed=1, shapes=((5, 2),), specs=1, batch=12, rounds=1)
    assert res["valid"] > 0 and 0 < res["worst_ratio"] <= 1.0, res["worst"]
    assert res["over_bound"] == res["over_tolerance"] == 0 and res["worst_tolerance"] <= 1.0
    assert set(res["families"]) == set(search.FAMILIES)
    assert sum(f["tried"] for f in res["families"].values()) == res["tried"]
    assert all(f["tried"] > 0 and f["valid"] <= f["tried"] for f in res["families"].values())


def test_evaluate_reports_the_relative_error_against_the_step():
    """The tolerance is a real check: the relative error is ||out - ref|| / ||ref - y_hat_0||,
    which soft selection (B gap = 4) makes visibly non-zero and sharp selection ~ 1e-15."""
    with jax.enable_x64(True):
        ctx = construct.separated_contexts(jax.random.PRNGKey(0), 8, 4, 2)
        soft = construct.spec_for(4, 2, np.eye(2), selection=4.0, rel_tol=0.5)
        sharp = construct.spec_for(4, 2, np.eye(2))
        rel_soft, rel_sharp = (search._evaluate(s, ctx)[2] for s in (soft, sharp))
        assert rel_soft.max() > 1e-4 and rel_sharp.max() < 1e-12
        a = bounds.analyse(soft, ctx)
        assert np.all(rel_soft * a.step <= a.bound * (1 + 1e-9))  # the bound covers the relative error
        with pytest.raises(ValueError, match="precondition 'step tolerance'"):
            construct.run(dataclasses.replace(soft, rel_tol=1e-6), ctx)


def test_evaluate_reports_a_ratio_above_one_when_the_bound_is_wrong():
    """The ratio is a real check: a checker that claims a bound 1e6 times too small fails."""
    with jax.enable_x64(True):
        spec = construct.spec_for(4, 2, np.eye(2), selection=6.0, rel_tol=0.1)
        ctx = construct.separated_contexts(jax.random.PRNGKey(0), 8, 4, 2)
        ratio, valid = search.evaluate(spec, ctx)
        assert valid.all() and 0 < ratio.max() <= 1
        tight = lambda s, c: (bounds.analyse(s, c).valid, bounds.analyse(s, c).bound * 1e-6)
        assert search.evaluate(spec, ctx, tight)[0].max() > 1
