"""Task generators and reward-corruption models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import tasks

ALL = sorted(tasks.CORRUPTIONS)


def test_mixed_linear_structure():
    ctx = tasks.mixed_linear(jax.random.PRNGKey(0), d=4, n=7)
    assert ctx.ys.shape == (7, 4) and ctx.x.shape == (4,) and ctx.y_star.shape == (4,)
    np.testing.assert_array_equal(ctx.rewards, ctx.r_true)
    # y_j = r_j y* + (1 - r_j) eps for one common eps: solve for eps from two candidates.
    r, ys = np.asarray(ctx.r_true), np.asarray(ctx.ys)
    eps = (ys - r[:, None] * np.asarray(ctx.y_star)) / (1 - r[:, None])
    np.testing.assert_allclose(eps, np.broadcast_to(eps[0], eps.shape), rtol=1e-4, atol=1e-4)
    assert np.all((r >= 0) & (r <= 1))


def test_generators_work_under_jit_and_vmap():
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batched = jax.jit(jax.vmap(lambda k: tasks.mixed_linear(k, 3, 5)))(keys)
    one = tasks.mixed_linear(keys[2], 3, 5)
    np.testing.assert_allclose(batched.ys[2], one.ys, rtol=1e-6)
    ctx = tasks.sample_contexts(jax.random.PRNGKey(1), 6, 3, 5)
    assert ctx.ys.shape == (6, 5, 3)


@pytest.mark.parametrize("kind", ALL)
def test_level_zero_is_identity_and_same_key_same_output(kind):
    r = jax.random.uniform(jax.random.PRNGKey(2), (64, 20))
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(tasks.corrupt(kind, key, r, 0.0), r)
    hi = tasks.DEFAULT_LEVELS[kind][-1]
    np.testing.assert_array_equal(tasks.corrupt(kind, key, r, hi), tasks.corrupt(kind, key, r, hi))
    assert not np.array_equal(tasks.corrupt(kind, key, r, hi), r)


@pytest.mark.parametrize("kind", ALL)
def test_levels_vmap(kind):
    r = jax.random.uniform(jax.random.PRNGKey(2), (20,))
    levels = jnp.asarray(tasks.DEFAULT_LEVELS[kind])
    out = jax.jit(jax.vmap(lambda lv: tasks.corrupt(kind, jax.random.PRNGKey(0), r, lv)))(levels)
    for i, lv in enumerate(tasks.DEFAULT_LEVELS[kind]):
        np.testing.assert_allclose(out[i], tasks.corrupt(kind, jax.random.PRNGKey(0), r, lv), rtol=1e-6)


def test_full_replacement_is_independent_of_truth():
    r = jax.random.uniform(jax.random.PRNGKey(4), (200_000,))
    shown = tasks.replace_random(jax.random.PRNGKey(5), r, 1.0)
    assert abs(np.corrcoef(r, shown)[0, 1]) < 0.01
    half = tasks.replace_random(jax.random.PRNGKey(5), r, 0.5)
    assert 0.45 < np.mean(np.asarray(half) != np.asarray(r)) < 0.55
    assert np.corrcoef(r, half)[0, 1] > 0.4


def test_reverse_and_gaussian():
    r = jax.random.uniform(jax.random.PRNGKey(6), (1000,))
    np.testing.assert_allclose(tasks.reverse_random(jax.random.PRNGKey(7), r, 1.0), 1 - r)
    noisy = tasks.gaussian_noise(jax.random.PRNGKey(8), r, 0.5)
    assert 0.45 < float(jnp.std(noisy - r)) < 0.55


def discordant_fraction(a, b):
    a, b = np.asarray(a), np.asarray(b)
    da, db = a[:, None] - a[None, :], b[:, None] - b[None, :]
    iu = np.triu_indices(len(a), 1)
    return np.mean((da * db)[iu] < 0)


def test_subset_reversal_is_a_ranking_corruption():
    r = jax.random.uniform(jax.random.PRNGKey(9), (20,))
    full = tasks.subset_reversal(jax.random.PRNGKey(10), r, 1.0)
    assert discordant_fraction(r, full) == 1.0
    fracs = []
    for p in (0.25, 0.5, 0.75):
        keys = jax.random.split(jax.random.PRNGKey(11), 300)
        outs = jax.vmap(lambda k: tasks.subset_reversal(k, r, p))(keys)
        np.testing.assert_allclose(np.sort(outs, axis=1), np.broadcast_to(np.sort(r), outs.shape))  # values kept
        fracs.append(np.mean([discordant_fraction(r, o) for o in outs]))
        assert fracs[-1] >= p**2 - 0.02
    assert fracs[0] < fracs[1] < fracs[2] < 1.0


@pytest.mark.parametrize(
    "kind, level, fragment",
    [("replace", 1.5, "lie in [0, 1]"), ("reverse", -0.1, "lie in [0, 1]"),
     ("gaussian", -1.0, "lie in [0, 1000]"), ("subset_reversal", float("nan"), "finite")],
)
def test_bad_levels_raise(kind, level, fragment):
    with pytest.raises(ValueError) as err:
        tasks.corrupt(kind, jax.random.PRNGKey(0), jnp.ones(3), level)
    assert fragment in str(err.value)


def test_bad_sizes_and_names_raise():
    with pytest.raises(ValueError, match="n must be >= 2"):
        tasks.mixed_linear(jax.random.PRNGKey(0), d=3, n=1)
    with pytest.raises(ValueError, match="corruption must be one of"):
        tasks.corrupt("flip", jax.random.PRNGKey(0), jnp.ones(3), 0.1)
