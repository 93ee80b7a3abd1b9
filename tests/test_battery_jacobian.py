"""The battery's Jacobian test (icalign.analysis.battery_jacobian): the implicit-function
Jacobian of the minimiser against an independent computation, planted learners, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.analysis import battery as B
from icalign.analysis import battery_jacobian as BJ
from icalign.core.losses import LOSSES
from icalign.core.metrics import prefix_mask, unit
from icalign.core.tasks import sample_contexts

D, N, C = 3, 5, 32  # 16 contexts fit, 16 are judged
TS = [2, 3, 4]
ETAS, K_MAX, STEPS = [0.25, 0.5], 3, 200


@pytest.fixture(scope="module")
def ctx():
    return sample_contexts(jax.random.PRNGKey(0), C, D, N)


def _unrolled_jacobian(u_star, ys, rewards, t, steps=800, lr=1.0):
    """d u*/d Y by forward mode through a long constant-step Riemannian descent on the sphere
    started at the minimiser (held fixed): the derivative of the iteration's fixed point, found
    by iterating, with no Hessian and no linear solve."""
    mask = prefix_mask(t, ys.shape[0])

    def solve(Y):
        grad = jax.grad(lambda v: LOSSES["cosine_pl"](v, Y, rewards, mask))
        return jax.lax.fori_loop(0, steps, lambda i, v: unit(v - lr * grad(v)), u_star)

    return jax.jacfwd(solve)(ys)


def test_implicit_jacobian_matches_unrolled_descent(ctx):
    """The implicit-function Jacobian (one linear solve at the minimiser) equals, entry by
    entry, the derivative of a long unrolled Riemannian descent (two independent computations
    of d u*/d y_j), on contexts whose curvature along the sphere is as low as 0.04 (slow to
    unroll, large Jacobians). It is tangent to the sphere and zero for unseen candidates."""
    u, J, grad_left, curv = BJ.implicit_jacobian(ctx, jnp.asarray(TS), STEPS)
    assert float(jnp.max(grad_left)) < 1e-5 and float(jnp.min(curv)) > 0
    few = slice(0, 4)
    unrolled = jax.jit(jax.vmap(lambda u_T, ys, r: jax.vmap(lambda u0, t: _unrolled_jacobian(u0, ys, r, t))(
        u_T, jnp.asarray(TS))))(u[few], ctx.ys[few], ctx.rewards[few])
    scale = float(jnp.max(jnp.abs(unrolled)))
    assert scale > 1.0  # a real dependence on the candidates, not a vacuous match
    np.testing.assert_allclose(np.asarray(J[few]), np.asarray(unrolled), atol=1e-3 * scale)
    np.testing.assert_allclose(np.einsum("btd,btdne->btne", u, J), 0.0, atol=1e-4 * float(jnp.max(jnp.abs(J))))
    for i, t in enumerate(TS):
        assert np.all(np.asarray(J[:, i, :, t:]) == 0)


@pytest.fixture(scope="module")
def learners():
    W0 = jax.random.normal(jax.random.PRNGKey(2), (D, D))
    return {"GD": B.gd_learner(W0, 0.5, 2), "minimiser": B.minimiser_learner(STEPS),
            "neither": B.random_learner(jax.random.PRNGKey(3))}


@pytest.mark.parametrize("planted", ["GD", "minimiser", "neither"])
def test_planted_learners_get_their_verdict(ctx, learners, planted):
    """2-step GD from a random W0 -> "GD" (and the fit finds its step size and count); the
    unrolled minimiser -> "minimiser"; a random predictor (zero Jacobian) -> "neither"."""
    r = BJ.jacobian_test(learners[planted], ctx, jax.random.PRNGKey(1), ETAS, K_MAX, ts=TS, minimiser_steps=STEPS)
    assert len(r["d_gd"]) == len(r["d_min"]) == C // 2 and r["t"] == TS
    assert set(r["predictions"]) == {"GD", "minimiser", "neither"} and 0 < r["margin"] < 0.5
    v = B.verdict(r["test"], r["d_gd"], r["d_min"], r["margin"], margin_rule=r["margin_rule"])
    assert v["verdict"] == planted, (v["reason"], r["margin"], np.mean(r["d_gd"]), np.mean(r["d_min"]), r["fit"])
    if planted == "GD":
        assert r["fit"]["eta"] == [0.5] * len(TS) and r["fit"]["steps"] == [2] * len(TS)
    if planted == "neither":
        assert r["d_gd"] == r["d_min"] == [1.0] * (C // 2)  # a zero Jacobian is at distance 1


@pytest.mark.parametrize("change, match", [
    (dict(etas=[0.5, -1.0]), "etas"), (dict(etas=[]), "etas"), (dict(k_max=0), "k_max"),
    (dict(min_seen=1), "min_seen"), (dict(min_seen=5), "min_seen"), (dict(ts=[1, 2]), "ts"), (dict(ts=[2, 2]), "ts"),
    (dict(ts=[2.0]), "ts"), (dict(key=3), "key"), (dict(minimiser_steps=0), "minimiser_steps"),
    (dict(learner="gd"), "learner"), (dict(learner=lambda c: c.ys[:, :2]), "learner"),
    (dict(ctx="contexts"), "ctx")])
def test_bad_input_is_refused_by_name(ctx, change, match):
    args = dict(learner=lambda c: c.ys, ctx=ctx, key=jax.random.PRNGKey(0), etas=ETAS, k_max=K_MAX, ts=TS)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        BJ.jacobian_test(**args)


def test_needs_shared_queries_and_two_halves(ctx):
    per_triplet = ctx.replace(xs=ctx.ys, ys_query=ctx.ys)  # shapes suffice: refused before any use
    with pytest.raises(ValueError, match="shared queries"):
        BJ.jacobian_test(lambda c: c.ys, per_triplet, jax.random.PRNGKey(0), ETAS, K_MAX)
    three = jax.tree_util.tree_map(lambda a: a[:3], ctx)
    with pytest.raises(ValueError, match=">= 4 contexts"):
        BJ.jacobian_test(lambda c: c.ys, three, jax.random.PRNGKey(0), ETAS, K_MAX)
