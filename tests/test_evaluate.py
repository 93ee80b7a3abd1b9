"""Evaluation under corruption: level 0 is the clean evaluation, bit for bit; transformer and
GD see the same shown rewards; intervals are right on known distributions; verdicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.analysis import evaluate as E
from icalign.core.stats import summarise
from icalign import model as M
from icalign.analysis import claims as CL
from icalign.analysis.compare import gd_predictions
from icalign.core.metrics import normalised_mse
from icalign.core.stats import mean_ci
from icalign.tasks import CORRUPTIONS, DEFAULT_LEVELS, sample_contexts

CFG = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=6)


@pytest.fixture(scope="module")
def setup():
    ctx = sample_contexts(jax.random.PRNGKey(1), 8, CFG.d, CFG.n)
    params = jax.vmap(lambda k: M.init(k, CFG))(jax.random.split(jax.random.PRNGKey(2), 2))
    return ctx, params


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_level_zero_reproduces_the_clean_evaluation_exactly(setup, kind):
    ctx, params = setup
    shown = E.corrupted_rewards(jax.random.PRNGKey(3), ctx, kind, DEFAULT_LEVELS[kind])
    assert shown.shape == (8, len(DEFAULT_LEVELS[kind]), CFG.n)
    assert DEFAULT_LEVELS[kind][0] == 0.0
    np.testing.assert_array_equal(shown[:, 0], ctx.r_true)
    # The clean evaluation through the same compiled sweep (same shapes: XLA may round a
    # differently-sized batch differently in the last bit, which is not what is tested here).
    clean = jnp.repeat(ctx.r_true[:, None, :], len(DEFAULT_LEVELS[kind]), axis=1)
    tf_noisy, tf_clean = E.transformer_curves(params, CFG, ctx, shown), E.transformer_curves(params, CFG, ctx, clean)
    for noisy, ref in zip(tf_noisy[1:], tf_clean[1:]):  # nmse, pl (field 0 is t)
        np.testing.assert_array_equal(noisy[:, 0], ref[:, 0])
    gd_noisy, gd_clean = E.gd_curves(jax.random.PRNGKey(4), ctx, shown), E.gd_curves(jax.random.PRNGKey(4), ctx, clean)
    for noisy, ref in zip(gd_noisy[1:], gd_clean[1:]):
        np.testing.assert_array_equal(noisy[0], ref[0])
    # The highest level really changes the rewards (the test above is not vacuous).
    assert not np.array_equal(shown[:, -1], ctx.r_true)


def test_curves_match_independent_computations(setup):
    ctx, params = setup
    shown = E.corrupted_rewards(jax.random.PRNGKey(3), ctx, "replace", [0.0, 0.5])
    t, nmse, pl = E.transformer_curves(params, CFG, ctx, shown)
    np.testing.assert_array_equal(t, np.arange(1, CFG.n))
    assert nmse.shape == pl.shape == (2, 2, 8, CFG.n - 1)
    # Transformer: run 1 at level 0.5 through predict directly.
    p1 = jax.tree_util.tree_map(lambda a: a[1], params)
    y = M.predict(p1, ctx.replace(rewards=shown[:, 1]), CFG)[:, 1:]
    np.testing.assert_allclose(nmse[1, 1], normalised_mse(y, ctx.y_star[:, None]), rtol=1e-5, atol=1e-6)
    # GD: the same fits as compare.gd_predictions on contexts carrying those rewards.
    _, g_nmse, _ = E.gd_curves(jax.random.PRNGKey(5), ctx, shown, "adam")
    y_gd = gd_predictions(jax.random.PRNGKey(5), ctx.replace(rewards=shown[:, 1]), np.arange(1, CFG.n), "adam")
    np.testing.assert_allclose(g_nmse[1], normalised_mse(y_gd, ctx.y_star[:, None]), rtol=1e-5, atol=1e-6)


def test_bad_inputs_fail_clearly(setup):
    ctx, params = setup
    with pytest.raises(ValueError, match="corruption"):
        E.corrupted_rewards(jax.random.PRNGKey(0), ctx, "flip", [0.0])
    with pytest.raises(ValueError, match="p"):
        E.corrupted_rewards(jax.random.PRNGKey(0), ctx, "replace", [0.0, 1.5])
    with pytest.raises(ValueError, match=r"rewards must have shape \(B=8, L, N=6\)"):
        E.transformer_curves(params, CFG, ctx, ctx.r_true)
    with pytest.raises(ValueError, match="learner"):
        E.gd_curves(jax.random.PRNGKey(0), ctx, ctx.r_true[:, None], "sgd2")
    with pytest.raises(ValueError, match="unit"):
        summarise(np.zeros((2, 3)), "runs")


def test_interval_matches_the_t_table_by_hand():
    # Samples {0, 2}: mean 1, s = sqrt(2), sem = 1; t_{0.975, 1} = 12.706 (printed t tables).
    m, lo, hi = mean_ci(np.array([0.0, 2.0]))
    assert m == 1.0
    np.testing.assert_allclose([lo, hi], [1 - 12.706, 1 + 12.706], atol=1e-3)
    # Samples {1, 2, 3}: sem = 1/sqrt(3); t_{0.975, 2} = 4.303.
    m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(hi - m, 4.303 / np.sqrt(3), atol=1e-3)


@pytest.mark.parametrize("n", [3, 10])
def test_interval_covers_the_true_mean_95_percent_of_the_time(n):
    # Normal samples: the t interval is exact, so coverage is 0.95 up to Monte Carlo error
    # (4000 trials: standard error 0.0034). Exponential samples (skewed) still cover the
    # mean in most trials; n = 3 covers less (known t-interval behaviour), so only a floor.
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4000, n))
    _, lo, hi = mean_ci(x, axis=1)
    cover = np.mean((lo <= 3.0) & (3.0 <= hi))
    assert abs(cover - 0.95) < 0.015, cover
    e = rng.exponential(1.0, size=(4000, n))
    _, lo, hi = mean_ci(e, axis=1)
    assert np.mean((lo <= 1.0) & (1.0 <= hi)) > 0.85


def test_summarise_uses_seeds_as_the_unit():
    v = np.zeros((3, 5, 2))
    v[:, :, 0] = np.array([1.0, 2.0, 3.0])[:, None]  # seed means 1, 2, 3
    s = summarise(v, "seeds")
    assert s["n"] == 3 and s["mean"][0] == 2.0
    np.testing.assert_allclose(s["high"][0] - 2.0, 4.303 / np.sqrt(3), atol=1e-3)
    assert s["low"][1] == s["high"][1] == 0.0


def test_verdicts_of_summaries_without_units_are_conservative():
    """Old result files stored only mean and interval: the engine bounds the sd of the
    difference and still gives the three verdicts (tests/test_claims.py tests the engine)."""
    s = lambda m, lo, hi: CL.arm("x", {"mean": [m], "low": [lo], "high": [hi], "n": 3, "unit": "seeds"}, n_contexts=8)
    assert CL.claim("c", s(0.8, 0.7, 0.9), s(0.3, 0.2, 0.4))["verdict"] == "supported"
    assert CL.claim("c", s(0.3, 0.2, 0.4), s(0.8, 0.7, 0.9))["verdict"] == "contradicted"
    assert CL.claim("c", s(0.5, 0.3, 0.7), s(0.4, 0.2, 0.6))["verdict"] == "not resolved"
    assert CL.unresolvable("c", "a", "b", "not trained", "diverged")["verdict"] == "not trained"
