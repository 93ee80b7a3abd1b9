"""Null controls of the self-correction claims: a critic whose scores are independent of the
answer (its gain is measured and subtracted, not assumed 0), and an uncertainty measure that
can fall (the beta = 1 choice entropy cannot, and the claims say so)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import selfcorrect as sc, tasks
from icalign.analysis.selfcorrect_claims import loop_claims, saturation
from icalign.selfcorrect.metrics import choice_entropies, combine_seeds, critic_sweep


def test_null_critic_scores_ignore_the_answer_and_other_critics_are_unchanged():
    r = jnp.linspace(0.0, 1.0, 4001)
    names, c = sc.make_critics({"null": (0, 0, 0, 1.0), "noisy flip": (0.3, 0.25, 0.5)})
    key = jax.random.PRNGKey(4)
    null = sc.critic_score(key, r, jax.tree_util.tree_map(lambda a: a[0], c))
    assert abs(np.corrcoef(r, null)[0, 1]) < 0.05 and 0 <= null.min() and null.max() <= 1
    assert abs(float(null.mean()) - 0.5) < 0.02
    # random = 0 reproduces the three-parameter critic bit for bit (same keys, same draws)
    one = jax.tree_util.tree_map(lambda a: a[1], c)
    k_flip, k_noise = jax.random.split(key)
    s = 1.0 - jnp.abs(r - (1.0 - one.bias))
    s = jnp.where(jax.random.bernoulli(k_flip, one.flip, r.shape), 1.0 - s, s)
    s = s + one.sigma * jax.random.normal(k_noise, r.shape, s.dtype)
    np.testing.assert_array_equal(sc.critic_score(key, r, one), s)


@pytest.fixture(scope="module")
def sweep_result():
    ctx = tasks.sample_contexts(jax.random.PRNGKey(11), 8, 5, 5)
    names, critics = sc.make_critics({sc.NULL_CRITIC: (0, 0, 0, 1.0), "exact": (0, 0, 0),
                                      "bias 1 (adversarial)": (0, 0, 1)})
    return critic_sweep(jax.random.PRNGKey(2), sc.gd_learner("gd", 5), ctx, critics, names, rounds=3, draws=2,
                        tol=1e-3, null=sc.NULL_CRITIC, betas=(10.0,)), names


def test_the_null_critics_gain_is_measured_and_subtracted(sweep_result):
    res, names = sweep_result
    s, u = res["settings"], res["units"]
    null_gain = np.asarray(u["nmse"][f"{sc.NULL_CRITIC}@0"]) - np.asarray(u["nmse"][f"{sc.NULL_CRITIC}@-1"])
    assert np.abs(null_gain).max() > 1e-3  # the loop alone moves the answer: nothing assumes it is 0
    assert s[sc.NULL_CRITIC]["excess_gain_T"]["mean"] == 0.0
    exact_gain = np.asarray(u["nmse"]["exact@0"]) - np.asarray(u["nmse"]["exact@-1"])
    assert s["exact"]["excess_gain_T"]["mean"] == pytest.approx((exact_gain - null_gain).mean(), abs=1e-6)
    # every setting starts from the same answer (round 0 precedes any score)
    np.testing.assert_array_equal(u["nmse"]["exact@0"], u["nmse"][f"{sc.NULL_CRITIC}@0"])
    claims = {c["claim"].split(": ", 1)[1]: c for c in loop_claims(res, "adam", 10.0, 5, 8)}
    alone = claims["the loop alone (null critic) improves the answer"]
    assert alone["effect"] == pytest.approx(null_gain.mean(), abs=1e-6) and alone["unit"] == "contexts"
    helps = claims["the exact critic helps beyond the loop's own effect"]
    assert helps["effect"] == pytest.approx((exact_gain - null_gain).mean(), abs=1e-6)
    with pytest.raises(ValueError, match="null must be one of"):
        critic_sweep(None, None, None, None, names, 1, 1, 1e-3, null="nobody")


def test_seeds_are_the_unit_for_a_trained_learner(sweep_result):
    res, _ = sweep_result
    both = combine_seeds([res, res])
    assert both["units"]["unit"] == "seeds" and len(both["units"]["nmse"]["exact@-1"]) == 2
    c = loop_claims(both, "tf", 10.0, 5, 8, health={"status": "not trained", "reason": "r"})
    assert all(x["verdict"] == "not trained" for x in c) and all(x["unit"] == "seeds" for x in c)


def test_the_uncertainty_measure_can_fall_and_beta_1_cannot():
    rng = np.random.default_rng(5)  # mixed-linear candidates y_j = r_j y* + (1 - r_j) eps, in numpy
    r, y_star, eps = rng.uniform(size=(64, 9, 1)), rng.normal(size=(64, 1, 5)), rng.normal(size=(64, 1, 5))
    ys = jnp.asarray(r * y_star + (1 - r) * eps, jnp.float32)
    mean, best = ys.mean(axis=1), ys[jnp.arange(64), np.argmax(r[..., 0], axis=1)]
    path = jnp.stack([mean + a * (best - mean) for a in np.linspace(0, 1, 6)], axis=1)  # (B, 6, D)
    y_hat = path[None, :, None]  # (S=1, B, M=1, T+1=6, D): answers moving onto one candidate
    h10 = np.asarray(choice_entropies(y_hat, ys, 10.0)).mean(axis=(0, 1, 2))
    h1 = np.asarray(choice_entropies(y_hat, ys, 1.0)).mean(axis=(0, 1, 2))
    assert np.all(np.diff(h10) < 0) and h10[0] - h10[-1] > 0.3  # it falls, monotonically and clearly
    assert saturation(h1.max(), 9) < 0.1 and h1.max() - h1.min() < 0.1  # beta = 1: pinned near log 9
    # any direction at all: beta = 1 stays within a few percent of its maximum
    rand = jax.random.normal(jax.random.PRNGKey(6), (1, 64, 1, 20, 5))
    assert saturation(float(np.asarray(choice_entropies(rand, ys, 1.0)).min()), 9) < 0.2


def test_a_saturated_entropy_is_not_evidence(sweep_result):
    res, _ = sweep_result
    flat = {**res, "units": {**res["units"], "entropy_b1": {k: [np.log(5) * 0.99] * 8 for k in
                                                            res["units"]["entropy_b10"]}}}
    c = [x for x in loop_claims(flat, "adam", 1.0, 5, 8) if "uncertainty" in x["claim"]]
    assert c and all(x["verdict"] == "not resolved" and "saturated" in x["reason"] for x in c)
