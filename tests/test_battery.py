"""The battery's verdict rule and planted learners (icalign.analysis.battery)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.analysis import battery as B
from icalign.core.tasks import sample_contexts


def _planted(value, seed, shape, scale=0.01):
    """Distances scattered around ``value`` (kept >= 0)."""
    return np.abs(value + np.random.default_rng(seed).normal(0, scale, shape))


@pytest.mark.parametrize("gd, mn, expected", [
    (0.0, 1.0, "GD"), (1.0, 0.0, "minimiser"), (1.0, 1.0, "neither"), (0.0, 0.0, "not resolved"),
    (0.5, 1.0, "not resolved")])
def test_verdict_rule(gd, mn, expected):
    """Distances planted at 0 (as predicted), 1 (far) or 0.5 (at the margin) give the rule's verdict,
    for one learner over contexts and for three seeds."""
    for shape in ((60,), (3, 60)):
        v = B.verdict("planted", _planted(gd, 0, shape), _planted(mn, 1, shape), margin=0.5)
        assert v["verdict"] == expected, v


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError, match="margin"):
        B.verdict("t", np.ones(5), np.ones(5), margin=0.0)
    with pytest.raises(ValueError, match="same"):
        B.verdict("t", np.ones(5), np.ones(6), margin=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        B.verdict("t", -np.ones(5), np.ones(5), margin=0.1)


def test_verdict_not_trained():
    v = B.verdict("t", np.zeros(10), np.ones(10), 0.5, health={"status": "failed", "reason": "loss rose"})
    assert v["verdict"] == "not trained"


def test_planted_learners_shapes_and_hypotheses():
    """The planted GD learner reaches the minimiser only with many steps; with one step it is
    far from it (so the hypotheses differ on these contexts); the random learner moves every call."""
    ctx = sample_contexts(jax.random.PRNGKey(0), 8, 3, 5)
    W0 = jnp.eye(3)
    one = B.gd_learner(W0, 0.5, 1)(ctx)
    many = B.gd_learner(W0, 0.5, 400)(ctx)
    mn = B.minimiser_learner(200)(ctx)
    assert one.shape == many.shape == mn.shape == ctx.ys.shape
    cos = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert np.mean(1 - cos(many[:, 2:], mn[:, 2:])) < 0.2 * np.mean(1 - cos(one[:, 2:], mn[:, 2:]))
    np.testing.assert_allclose(B.gd_learner(W0, 0.5, 0)(ctx)[:, 0], ctx.x @ W0.T, rtol=1e-6)
    r = B.random_learner(jax.random.PRNGKey(1))
    assert not np.allclose(r(ctx), r(ctx))


def test_combine_stacks_seeds_and_keeps_the_predictions():
    """Three seeds' records of a learner that sits at GD: "GD" with the seeds x contexts interval."""
    pred = {"GD": "g", "minimiser": "m", "neither": "n"}
    per = [{"d_gd": _planted(0.0, s, (30,)).tolist(), "d_min": _planted(1.0, 10 + s, (30,)).tolist(), "margin": 0.4 + 0.1 * s,
            "margin_rule": "r", "predictions": pred} for s in range(3)]
    out = B.combine("planted", per)
    assert out["verdict"] == "GD" and out["seeds"] == 3 and out["predictions"] == pred
    assert abs(out["margin"] - 0.5) < 1e-12 and out["distance_to_gd"]["population"] == "seeds x contexts"
    with pytest.raises(ValueError, match="no seed"):
        B.combine("planted", [])
