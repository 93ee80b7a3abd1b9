"""Preconditions and the error bound of the constructions (icalign.theory.bounds).

Each precondition is broken on purpose and must be refused by name, with its margin, before
anything runs; where they all hold, the bound must be finite and hold against the closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct, gd, tasks
from icalign.theory import bounds


def context(x, ys, r):
    f = lambda a: jnp.asarray(a, jnp.float64)
    return tasks.Context(x=f(x), ys=f(ys), r_true=f(r), rewards=f(r), y_star=f(np.zeros(len(x))))


def closed_form(spec, ctx, mask=None):
    W = gd.gradient_descent(jnp.asarray(spec.W0, jnp.float64), ctx.x, ctx.ys, ctx.rewards,
                            spec.eta / float(ctx.x @ ctx.x), spec.steps, "sqdist", spec.beta, mask)
    return W @ ctx.x


# The far-candidate counterexample: verify's defaults, candidates far outside the unit ball.
REPRO = dict(x=[0.5, -0.3, 0.2], ys=50 * np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]),
             r=[0.2, 0.9, 0.45, 0.7])


def test_far_candidate_counterexample_is_refused_with_its_margin(x64):
    spec = construct.spec_for(4, 3, np.eye(3))
    assert (spec.B * spec.gap, spec.M) == (50.0, 4 * spec.B + 100)
    ctx = context(**REPRO)
    with pytest.raises(ValueError, match=r"precondition 'sink margin'.*-M/2.*M = 1700.*measured margin -3\d\d "
                                         r"nats \(>= 20 required\)"):
        construct.run(spec, ctx)
    with pytest.raises(ValueError, match="sink margin"):  # no bound is claimed there either
        construct.error_bound(spec, ctx)
    # Why: run unchecked, weight leaks to the sink and the step is wrong by most of its size.
    exact = closed_form(spec, ctx)
    y0 = jnp.asarray(spec.W0) @ ctx.x
    wrong = construct.run(spec, ctx, check=False)
    assert float(jnp.linalg.norm(wrong - exact) / jnp.linalg.norm(exact - y0)) > 0.5
    # With M large enough for these logits every check passes and the answer is exact.
    big = construct.spec_for(4, 3, np.eye(3), M=4000.0)
    out = construct.run(big, ctx)
    err = float(jnp.max(jnp.abs(out - exact)))
    assert err <= construct.error_bound(big, ctx) and err < 1e-9


def test_non_finite_and_overflowing_inputs_are_refused(x64):
    spec = construct.spec_for(4, 3, np.eye(3))
    good = dict(x=[0.5, -0.3, 0.2], ys=np.eye(4, 3), r=[0.2, 0.9, 0.45, 0.7])
    construct.check_preconditions(spec, context(**good))
    for field, value in (("x", [np.nan, 0, 0]), ("ys", np.where(np.eye(4, 3) > 0, np.inf, 0.0)), ("r", [0.2, np.nan, 0.45, 0.7]),
                         ("ys", np.eye(4, 3) * 1e200)):  # ||y||^2 overflows float64
        with pytest.raises(ValueError, match="precondition 'finite'"):
            construct.run(spec, context(**{**good, field: value}))
    with pytest.raises(ValueError, match="W0 must be finite"):
        construct.spec_for(4, 3, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="needs the whole context"):
        construct.check_preconditions(spec, np.array([0.2, 0.9, 0.45, 0.7]))


def test_dead_and_empty_window_margins_are_named(x64):
    # Dead margin: the best candidate sits at y_hat_0 (PL logit ||y_hat||^2 / 2 ~ 1800) and,
    # once eliminated, still outweighs the alive ones (logits ~ 0) by more than M - 20.
    spec = construct.spec_for(4, 3, 60 * np.eye(3))
    x = np.array([1.0, 0, 0])
    ys = np.array([[60.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]])
    ctx = context(x, ys, [0.9, 0.2, 0.45, 0.7])
    with pytest.raises(ValueError, match=r"precondition 'dead margin'.*measured margin -\d+"):
        construct.run(spec, ctx)
    # Empty window (causal): after token 1's only candidate is eliminated, its logit (~882)
    # must stay below M/2 = 850 by 20, or the sink stops absorbing the window.
    spec = construct.spec_for(4, 3, 42 * np.eye(3), causal=True)
    ctx = context(x, np.array([[42.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]]), [0.9, 0.7, 0.45, 0.2])
    with pytest.raises(ValueError, match=r"precondition 'empty-window margin'.*token 1"):
        construct.run(spec, ctx)
    a = bounds.analyse(spec, ctx)
    assert not a.valid and a.margins["sink margin"] > 0 and a.margins["dead margin"] > 0
    assert np.all(np.isnan(a.bound))  # no number where a check fails


def test_bound_is_finite_where_the_checks_pass_and_sharp_selection_makes_it_small(x64):
    key = jax.random.PRNGKey(3)
    for causal in (False, True):
        spec = construct.spec_for(5, 2, np.eye(2) * 0.7, causal=causal, steps=2)
        ctx = construct.separated_contexts(key, 16, 5, 2, best_first=causal)
        a = bounds.analyse(spec, ctx)
        assert a.valid.all() and np.all(np.isfinite(a.bound))
        assert a.bound.shape == ((16, 6) if causal else (16,))
        assert np.max(a.bound) < 1e-6  # B gap = 50: leaks ~e^-50; rounding dominates
        soft = construct.spec_for(5, 2, np.eye(2) * 0.7, causal=causal, steps=2, selection=4.0, rel_tol=1.0)
        b = bounds.analyse(soft, ctx)
        rows = b.bound[:, 2:] if causal else b.bound  # rows 0, 1: no PL term, no selection
        assert b.valid.all() and np.min(rows) > 100 * np.max(a.bound)  # the selection term shows


def _ill_conditioned(cond, d=3, seed=0):
    """W0 = cond U diag(1, cond^-1/2, 1/cond) V^T and x = V e_d: ||W0 x|| = 1 while the read-in's
    sum W0 x has terms of size ||W0|| ||x|| = cond, so rounding scales with the conditioning."""
    rng = np.random.default_rng(seed)
    U, V = (np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(2))
    return cond * U @ np.diag([1.0, cond ** -0.5, 1.0 / cond]) @ V.T, V[:, -1]


def test_ill_conditioned_W0_and_degenerate_x_are_bounded_or_refused_by_name(x64):
    """Every accepted context is within its bound (the read-in and the reference round at the
    scale eps ||W0|| ||x||, not eps ||W0 x||); where that scale makes the bound exceed rel_tol
    of the step, the context is refused; x with ||x||^2 not a normal float is refused."""
    from icalign.theory import search

    n, d, batch = 4, 3, 8
    base = construct.separated_contexts(jax.random.PRNGKey(5), batch, n, d)
    runs = {}
    for cond in (1e2, 1e4, 1e8, 1e12):
        W0, x = _ill_conditioned(cond)
        spec = construct.spec_for(n, d, W0, eta=0.2)
        ctx = base.replace(x=jnp.broadcast_to(jnp.asarray(x), (batch, d)))
        runs[cond] = (spec, ctx) + tuple(search.evaluate(spec, ctx))[::-1]
    worst = {c: float(np.max(r[3][r[2]], initial=0.0)) for c, r in runs.items()}
    assert max(worst.values()) <= 1.0, worst  # no accepted context over its bound
    accepted = {c: int(r[2].sum()) for c, r in runs.items()}
    for spec, ctx, valid, _ in runs.values():
        a = bounds.analyse(spec, ctx)
        assert np.all(a.bound[valid] <= spec.rel_tol * a.step[valid])
    assert accepted[1e2] == accepted[1e4] == batch and accepted[1e12] == 0, accepted
    W0, x = _ill_conditioned(1e12)
    with pytest.raises(ValueError, match=r"precondition 'step tolerance'.*rel_tol = 0.001.*bound/step = "):
        construct.run(construct.spec_for(n, d, W0, eta=0.2), context(x, np.asarray(base.ys[0]), base.rewards[0]))
    # Degenerate queries: the W-space step eta / ||x||^2 needs a normal, nonzero ||x||^2.
    spec = construct.spec_for(n, d, np.eye(d))
    ys, r = np.asarray(base.ys[0]), np.asarray(base.rewards[0])
    for scale, shown in ((0.0, "0"), (1e-170, "0"), (1e-160, "3e-320"), (1e155, "inf")):
        with pytest.raises(ValueError, match=rf"precondition 'query norm'.*\|\|x\|\|\^2 = {shown}"):
            construct.run(spec, context(np.ones(d) * scale, ys, r))
    tiny = context(np.ones(d) * 1e-100, ys, r)  # tiny but normal: accepted, and within its bound
    ratio, valid = search.evaluate(spec, jax.tree_util.tree_map(lambda a: a[None], tiny))
    assert valid.all() and ratio.max() <= 1.0
