"""Ranking losses and reward models: identities of docs/theory.md sections 1-2, stability, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icalign import losses

# x64 is meant to stay on across the generated examples of one test.
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def draw(seed, *shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale)


def pl_bruteforce(s, r):
    """PL NLL written term by term from its definition, in plain numpy (an independent reference)."""
    s, r = np.asarray(s, float), np.asarray(r, float)
    tau = sorted(range(len(r)), key=lambda j: (-r[j], j))
    total = 0.0
    for i in range(len(tau)):
        rest = [s[j] for j in tau[i:]]
        m = max(rest)
        total += -s[tau[i]] + m + np.log(sum(np.exp(v - m) for v in rest))
    return total


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.sampled_from([2, 3, 6, 10]))
def test_plackett_luce_matches_definition(x64, seed, n):
    s, r = draw(seed, n, scale=3.0), draw(seed + 1, n)
    assert abs(float(losses.plackett_luce(s, r)) - pl_bruteforce(s, r)) < 1e-10


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_pl_with_two_candidates_is_bradley_terry(x64, seed):
    s, r = draw(seed, 2, scale=5.0), draw(seed + 1, 2)
    w, l = (0, 1) if r[0] > r[1] else (1, 0)
    np.testing.assert_allclose(losses.plackett_luce(s, r), losses.bradley_terry(s[w], s[l]), atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.sampled_from([2, 3, 7, 12]))
def test_pl_invariant_to_joint_permutation(x64, seed, n):
    s, r = draw(seed, n), draw(seed + 1, n)
    perm = np.random.default_rng(seed).permutation(n)
    np.testing.assert_allclose(losses.plackett_luce(s, r), losses.plackett_luce(s[perm], r[perm]), atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.sampled_from([2, 3, 7, 12]), c=st.floats(-1e3, 1e3))
def test_pl_invariant_to_score_shift(x64, seed, n, c):
    s, r = draw(seed, n), draw(seed + 1, n)
    np.testing.assert_allclose(losses.plackett_luce(s, r), losses.plackett_luce(s + c, r), atol=1e-9)


def test_pl_changes_when_ranking_changes(x64):
    # The invariances above must not hold trivially: reversing the ranking changes the loss.
    s = jnp.array([3.0, 1.0, -2.0])
    assert losses.plackett_luce(s, jnp.array([3.0, 2.0, 1.0])) < losses.plackett_luce(s, jnp.array([1.0, 2.0, 3.0]))


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.sampled_from([2, 3, 6, 10]), beta=st.floats(0.05, 5.0))
def test_softmax_identity(x64, seed, n, beta):
    """softmax(-beta/2 ||y_hat - y_j||^2) = softmax(beta y_hat.y_j - beta/2 ||y_j||^2)."""
    y_hat, ys = draw(seed, 4), draw(seed + 1, n, 4)
    lhs = jax.nn.softmax(losses.sqdist_reward(y_hat, ys, beta))
    rhs = jax.nn.softmax(beta * ys @ y_hat - 0.5 * beta * jnp.sum(ys**2, -1))
    np.testing.assert_allclose(lhs, rhs, atol=1e-12, rtol=0)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.sampled_from([3, 7, 12]))
def test_prefix_pl_equals_full_pl_on_prefix(x64, seed, n):
    scores, r = draw(seed, n, n), draw(seed + 1, n)
    prefix = losses.prefix_plackett_luce(scores, r)
    assert prefix.shape == (n,)
    for t in range(n):
        want = losses.plackett_luce(scores[t, :t], r[:t]) if t >= 2 else 0.0
        np.testing.assert_allclose(prefix[t], want, atol=1e-12)


def test_prefix_pl_custom_lengths_and_batch(x64):
    b, t, n = 3, 4, 6
    scores, r = draw(0, b, t, n), draw(1, b, n)
    lengths = jnp.array([2, 6, 3, 5])
    out = losses.prefix_plackett_luce(scores, r, lengths)
    assert out.shape == (b, t)
    for i, j in itertools.product(range(b), range(t)):
        want = losses.plackett_luce(scores[i, j, : int(lengths[j])], r[i, : int(lengths[j])])
        np.testing.assert_allclose(out[i, j], want, atol=1e-12)


def test_mask_equals_subset(x64):
    s, r = draw(3, 8), draw(4, 8)
    mask = jnp.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
    idx = np.flatnonzero(mask)
    np.testing.assert_allclose(losses.plackett_luce(s, r, mask), losses.plackett_luce(s[idx], r[idx]), atol=1e-12)


def test_ties_break_by_index_deterministically(x64):
    s = draw(5, 5)
    tied = jnp.array([0.5, 0.9, 0.5, 0.1, 0.9])
    # Lower index first among ties: equivalent to nudging later indices down.
    nudged = tied - 1e-9 * jnp.arange(5)
    np.testing.assert_allclose(losses.plackett_luce(s, tied), losses.plackett_luce(s, nudged), atol=1e-12)
    assert float(losses.plackett_luce(s, tied)) == float(losses.plackett_luce(s, tied))


@pytest.mark.parametrize("reward", losses.REWARDS)
def test_no_nan_on_extreme_inputs(reward):
    big = jnp.array([1e4, -1e4, 0.0, 1e4])
    r = jnp.array([0.3, 0.3, 0.9, 0.1])  # with a tie
    for f in (lambda s: losses.plackett_luce(s, r), lambda s: losses.bradley_terry(s[0], s[1])):
        v, g = jax.value_and_grad(f)(big)
        assert np.isfinite(v) and np.all(np.isfinite(g))
    # Zero vectors under the cosine reward (and sqdist): finite scores, loss and gradient.
    ys = jnp.zeros((4, 3)).at[1].set(1.0)
    loss = lambda y: losses.plackett_luce(losses.reward_scores(y, ys, reward), r)
    v, g = jax.value_and_grad(loss)(jnp.zeros(3))
    assert np.isfinite(v) and np.all(np.isfinite(g))


def test_cosine_reward_values():
    y = jnp.array([1.0, 0.0])
    ys = jnp.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    np.testing.assert_allclose(losses.cosine_reward(y, ys), [1.0, 0.0, -1.0], atol=1e-6)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: losses.plackett_luce(jnp.ones(1), jnp.ones(1)), "N >= 2"),
        (lambda: losses.plackett_luce(jnp.ones(3), jnp.ones(4)), "rewards must have last axis of length 3"),
        (lambda: losses.bradley_terry(jnp.ones(2), jnp.ones(3)), "same shape"),
        (lambda: losses.reward_scores(jnp.ones(2), jnp.ones((3, 2)), "l2"), "reward must be one of ['sqdist', 'cosine']"),
        (lambda: losses.sqdist_reward(jnp.ones(2), jnp.ones((3, 2)), beta=-1.0), "beta must be a finite number > 0"),
        (lambda: losses.prefix_plackett_luce(jnp.ones((4, 5)), jnp.ones(5), jnp.arange(3)), "lengths must have shape (4,)"),
    ],
)
def test_bad_input_raises_clear_error(call, fragment):
    with pytest.raises(ValueError) as err:
        call()
    assert fragment in str(err.value)
