"""Battery tests on the answers (icalign.analysis.battery_outputs): planted learners come out
as planted under battery.verdict, and bad input is refused before any compilation.

Tiny contexts (d = 3, N = 6, 64 contexts) where GD from the query x with at most 3 steps is
still far from the PL minimiser, so the hypotheses separate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.analysis import battery as B
from icalign.analysis import battery_invariance as INV
from icalign.analysis import battery_outputs as O
from icalign.core.tasks import sample_contexts

D, N, CONTEXTS, ETA = 3, 6, 64, 0.3
ETAS = (0.1, 0.3, 1.0)
DEPTHS = (1, 2, 3)
STEPS = 150  # minimiser iterations: converged far below these tests' margins at N = 6


@pytest.fixture(scope="module")
def ctx():
    return sample_contexts(jax.random.PRNGKey(0), CONTEXTS, D, N)


@pytest.fixture(scope="module")
def minimiser_answers(ctx):
    return B.minimiser_learner(STEPS)(ctx)


def _planted(kind, minimiser_answers, depth=2):
    """A planted learner: k-step GD from W0 = I (k = depth), the minimiser, or random."""
    if kind == "GD":
        return B.gd_learner(jnp.eye(D), ETA, depth)
    if kind == "minimiser":  # answers computed once (the same contexts every call)
        return lambda c: minimiser_answers
    return B.random_learner(jax.random.PRNGKey(10 + depth))


@pytest.mark.parametrize("kind, expected", [("GD", "GD"), ("minimiser", "minimiser"), ("random", "neither")])
def test_depth_sweep_planted(ctx, minimiser_answers, kind, expected):
    learners = {dep: _planted(kind, minimiser_answers, dep) for dep in DEPTHS}
    r = O.depth_sweep(learners, ctx, jax.random.PRNGKey(1), ETAS, minimiser_steps=STEPS)
    v = B.verdict("depth sweep", r["d_gd"], r["d_min"], r["margin"], margin_rule=r["margin_rule"])
    assert v["verdict"] == expected, (v["reason"], r["margin"], np.mean(r["d_gd"]), np.mean(r["d_min"]))
    assert len(r["d_gd"]) == len(r["d_min"]) == CONTEXTS - CONTEXTS // 2
    assert r["t"] == list(range(2, N)) and set(r["predictions"]) == {"GD", "minimiser", "neither"}
    if kind == "GD":  # the planted trajectory itself is what the fitting half finds
        assert r["fit"]["eta"] == ETA and r["fit"]["k"] == {str(d): d for d in DEPTHS}
        assert r["k_monotone_in_depth"] and r["per_depth"]["3"]["k_cap"] == 3 and max(r["d_gd"]) < 1e-5
    if kind == "minimiser":  # every depth is at the minimiser, GD within its cap is not
        for row in r["per_depth"].values():
            assert max(row["distance_to_minimiser"]["mean"]) < 1e-3 < min(row["distance_to_gd"]["mean"])


def test_depth_sweep_cap_limits_the_fit(ctx, minimiser_answers):
    """Caps 3, 2, 1 at depths 1, 2, 3: the 3-step planted learner at depth 3 cannot be matched,
    and the shared step size cannot serve every depth any more (the cap is part of the
    hypothesis, so the test can fail; with the default caps d_gd is 0)."""
    learners = {dep: _planted("GD", minimiser_answers, dep) for dep in DEPTHS}
    r = O.depth_sweep(learners, ctx, jax.random.PRNGKey(1), ETAS, k_cap=lambda d: 4 - d, minimiser_steps=STEPS)
    assert r["fit"]["k_cap"] == {"1": 3, "2": 2, "3": 1} and r["fit"]["k"]["3"] <= 1
    assert r["per_depth"]["3"]["distance_to_gd"]["mean"][-1] > 5e-3 and np.mean(r["d_gd"]) > 5e-3


@pytest.mark.parametrize("kind, expected", [("GD", "GD"), ("minimiser", "minimiser"), ("random", "neither")])
def test_initial_point_planted(ctx, minimiser_answers, kind, expected):
    learner = B.minimiser_learner(STEPS) if kind == "minimiser" else _planted(kind, minimiser_answers)
    key = jax.random.PRNGKey(2)
    r = O.initial_point(learner, ctx, key, ETAS, k_max=3)
    v = B.verdict("initial point", r["d_gd"], r["d_min"], r["margin"], margin_rule=r["margin_rule"])
    assert v["verdict"] == expected, (v["reason"], r["margin"], np.mean(r["d_gd"]), np.mean(r["d_min"]))
    if kind == "minimiser":
        # the planted minimiser answers x only at t = 0; from t = 1 on a fresh x' leaves it unmoved
        moved = O.fresh_query(key, ctx)
        a, b = np.asarray(learner(ctx)), np.asarray(learner(moved))
        np.testing.assert_array_equal(a[:, 1:], b[:, 1:])
        assert np.min(np.abs(a[:, 0] - b[:, 0])) > 0
        assert max(r["per_t"]["movement"]["mean"]) == 0.0
    if kind == "GD":  # GD from the learner's own start at x' is the planted learner at x'
        assert r["fit"]["k"] == [2] * (N - 2) and r["fit"]["eta"] == [ETA] * (N - 2)
        assert min(r["per_t"]["gd_movement"]["mean"]) > 0.1 and r["fit"]["gd_fit_distance"] < 1e-5


def test_fresh_query_keeps_the_triplets(ctx):
    moved = O.fresh_query(jax.random.PRNGKey(3), ctx)
    for f in ("ys", "rewards", "r_true"):
        np.testing.assert_array_equal(getattr(moved, f), getattr(ctx, f))
    assert not np.allclose(moved.x, ctx.x)


def test_refuses_bad_input(ctx):
    key, gd = jax.random.PRNGKey(0), B.gd_learner(jnp.eye(D), ETA, 1)
    cases = [
        (lambda: O.depth_sweep({}, ctx, key, ETAS), "learners"),
        (lambda: O.depth_sweep({0: gd}, ctx, key, ETAS), "depth"),
        (lambda: O.depth_sweep({1: "gd"}, ctx, key, ETAS), r"learners\[1\]"),
        (lambda: O.depth_sweep({1: gd}, ctx, key, ETAS, k_cap=lambda d: -1), r"k_cap\(1\)"),
        (lambda: O.depth_sweep({1: gd}, ctx, key, ETAS, k_cap=3), "k_cap"),
        (lambda: O.depth_sweep({1: gd}, ctx, key, (0.1, -1.0)), "etas"),
        (lambda: O.depth_sweep({1: gd}, ctx, 7, ETAS), "key"),
        (lambda: O.depth_sweep({1: gd}, ctx, key, ETAS, min_seen=N), "min_seen"),
        (lambda: O.depth_sweep({1: lambda c: c.ys[:, :2]}, ctx, key, ETAS), "learners"),
        (lambda: O.initial_point(gd, ctx, key, ETAS, k_max=0), "k_max"),
        (lambda: O.initial_point(None, ctx, key, ETAS, k_max=2), "learner"),
        (lambda: O.initial_point(gd, ctx.replace(xs=ctx.ys), key, ETAS, k_max=2), "shared-query"),
        (lambda: O.initial_point(gd, jax.tree_util.tree_map(lambda a: a[:3], ctx), key, ETAS, k_max=2), ">= 4"),
        (lambda: O.initial_point(lambda c: c.ys * jnp.nan, ctx, key, ETAS, k_max=2), "NaN"),
        (lambda: O.distance_test(gd, ctx, key, ETAS, k_cap=-1), "k_cap"),
        (lambda: INV.rank_redraw(gd, ctx, key, ETAS, k_max=0), "k_max"),
        (lambda: INV.permutation(gd, ctx, key, ETAS, k_max=2, draws=0), "draws"),
        (lambda: O.slow_contexts(key, 2, D, N, ETAS, k_cap=3), "pool"),
        (lambda: O.slow_contexts(key, 8, D, N, "0.1", k_cap=3), "etas"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kind, expected", [("GD", "GD"), ("minimiser", "minimiser"), ("random", "neither")])
def test_distance_test_planted(ctx, minimiser_answers, kind, expected):
    r = O.distance_test(_planted(kind, minimiser_answers), ctx, jax.random.PRNGKey(1), ETAS, k_cap=3,
                        minimiser_steps=STEPS)
    v = B.verdict("distance", r["d_gd"], r["d_min"], r["margin"])
    assert v["verdict"] == expected, (v["reason"], r["margin"], np.mean(r["d_gd"]), np.mean(r["d_min"]))


def test_slow_contexts_keep_the_slowest_quarter(ctx):
    """The same draws as the module's contexts (same key and sizes); the kept quarter is where
    capped GD gets least close to the minimiser, and the contexts are the pool's own."""
    slow, rec = O.slow_contexts(jax.random.PRNGKey(0), CONTEXTS, D, N, ETAS, k_cap=3, minimiser_steps=STEPS)
    assert rec["kept"] == slow.x.shape[0] == CONTEXTS // 4
    assert rec["separation_kept"]["mean"] > 1.5 * rec["separation_pool"]["mean"]
    pool_x = np.asarray(ctx.x)
    picked = [int(np.flatnonzero(np.all(pool_x == x, -1))[0]) for x in np.asarray(slow.x)]
    assert picked == sorted(picked)  # pool order: the halves stay a random split
    with pytest.raises(ValueError, match="fraction"):
        O.slow_contexts(jax.random.PRNGKey(0), CONTEXTS, D, N, ETAS, k_cap=3, fraction=0.01)


def test_redraw_keeps_ranks_and_changes_values(ctx):
    from icalign.analysis import interventions as I
    ts = jnp.arange(2, N)
    changed, t_new, valid = I.intervene("redraw", jax.random.PRNGKey(4), ctx, ts)
    flat, t_flat = I.flatten(ctx, ts)
    assert np.all(np.asarray(valid)) and np.array_equal(np.asarray(t_new), np.asarray(t_flat))
    new, old = np.asarray(changed.rewards), np.asarray(flat.rewards)
    for r_new, r_old, t in zip(new, old, np.asarray(t_flat)):
        assert np.array_equal(np.argsort(r_new[:t]), np.argsort(r_old[:t]))  # same ranking of the seen
        assert np.all(r_new[:t] != r_old[:t]) and np.all((0 < r_new[:t]) & (r_new[:t] < 1))
        np.testing.assert_array_equal(r_new[t:], r_old[t:])  # unseen rewards untouched
    assert "redraw" not in I.INTERVENTIONS  # the mechanism study's set is unchanged


def test_invariances_planted(ctx):
    """PL-GD moves under neither a rank-keeping reward redraw nor a reordering ("not resolved":
    within the margin of both hypotheses), while a reader of reward values and a reader of
    positions surely move ("neither"). Each reader is constant in t, so 0-step GD matches it
    on the unchanged contexts: its approximation error, hence the margin, is ~0."""
    key, gd = jax.random.PRNGKey(5), B.gd_learner(jnp.eye(D), ETA, 2)
    values = lambda c: jnp.broadcast_to(jnp.einsum("bn,bnd->bd", c.rewards ** 2, c.ys)[:, None], c.ys.shape)
    first = lambda c: jnp.broadcast_to(c.ys[:, :1], c.ys.shape)
    for fn, reader, kw in ((INV.rank_redraw, values, {}), (INV.permutation, first, {"draws": 1})):
        r = fn(gd, ctx, key, ETAS, k_max=3, minimiser_steps=STEPS, **kw)
        v = B.verdict(r["test"], r["d_gd"], r["d_min"], r["margin"])
        assert v["verdict"] == "not resolved" and "both" in v["reason"] and max(r["d_gd"]) < 1e-5, v
        if fn is INV.rank_redraw:  # the positive control moves GD
            assert min(r["control"]["gd_movement"]["mean"]) > 0.01
        r = fn(reader, ctx, key, ETAS, k_max=3, minimiser_steps=STEPS, **kw)
        v = B.verdict(r["test"], r["d_gd"], r["d_min"], r["margin"])
        assert v["verdict"] == "neither" and r["fit"]["approximation_error"] < 1e-4, (v, r["margin"])
