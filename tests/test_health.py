"""The training-health gate (icalign.analysis.health) is valid: it labels what it claims to.

Stand-in learners (predictors with no parameters) with given training curves exercise the
rules on the gate's real measurement (clean objective, reward-blind reference, per-context
optimum, shuffled rewards); a TrainResult of an initialised transformer exercises
``run_gate``'s wiring. Small contexts (D = 3, N = 6): one compile of the minimiser."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import model as M
from icalign import train as T
from icalign.analysis import health as H
from icalign.analysis import objective as O
from icalign.core.tasks import corrupt, sample_contexts

CTX = sample_contexts(jax.random.PRNGKey(3), 24, 3, 6)
R = 2
STEPS = np.arange(400)
RNG = np.random.default_rng(0)
NOISE = 0.05 * RNG.standard_normal((R, len(STEPS)))  # each step's loss is on fresh contexts
FLAT = 3.0 + 2.0 * np.exp(-STEPS / 20) + NOISE  # plateaued after ~100 steps
FALLING = 3.0 + 2.0 * np.exp(-STEPS / 400) + NOISE  # stopped while still descending


def _best(c):
    return O.blind_predictions(c)["best shown candidate"]


def _extrapolate(c, a=0.5):
    """best + a (best - mean): no parameters, never trained."""
    p = O.blind_predictions(c)
    return p["best shown candidate"] + a * (p["best shown candidate"] - p["mean of candidates"])


@pytest.fixture(scope="module")
def measured():
    runs = lambda f: (lambda c: jnp.broadcast_to(f(c), (R,) + c.ys.shape))
    return {name: O.measure(runs(f), CTX, 2, "cosine_pl") for name, f in
            (("best", _best), ("extrapolate", _extrapolate),
             ("blind", lambda c: O.blind_predictions(c)["mean of candidates"]))}


def test_trivial_predictors_are_what_they_say():
    ctx = sample_contexts(jax.random.PRNGKey(3), 4, 3, 5)
    p = H.predictions(ctx)
    ys, r = np.asarray(ctx.ys), np.asarray(ctx.rewards)
    for n in range(1, 5):
        np.testing.assert_allclose(p["mean of candidates"][:, n], ys[:, :n].mean(1), rtol=1e-6)
        np.testing.assert_allclose(p["best shown candidate"][:, n], ys[np.arange(4), r[:, :n].argmax(1)])


def test_the_optimum_is_below_every_learner_and_the_blind_reference(measured):
    v = measured["best"]
    assert np.all(v["optimum"] <= v["blind"] + 1e-5) and np.all(v["optimum"] <= v["model"].min(0) + 1e-4)
    assert v["method"].startswith("per-row minimiser")


def test_a_converged_learner_passes(measured):
    g = H.judge(measured["best"], FLAT)
    assert g["status"] == "converged" and all(r["status"] == "converged" for r in g["runs"])
    assert 0.2 < g["gap_closed"]["mean"] < 1.0 and g["reason"].startswith("every run on a plateau")
    ref = g["references"]
    assert ref["model"] == pytest.approx(ref["best shown candidate"]) and ref["t"] == 5


def test_a_predictor_with_no_parameters_is_not_converged(measured):
    """best + a (best - mean) beats the reward-blind reference and uses the rewards, so only the
    missing training curve keeps it from "converged": never a seed mean or a guess."""
    v = measured["extrapolate"]
    g = H.judge(v, None)
    assert g["status"] == "unknown" and "no training curve" in g["reason"]
    assert all(r["objective"]["model"] < r["objective"]["blind"] for r in g["runs"])
    assert H.judge(v, [FLAT[0], None])["status"] == "unknown"  # one run without its curve
    assert H.judge(v, [FLAT[0], FLAT[1][:10]])["status"] == "unknown"  # too short for a plateau test


def test_a_learner_stopped_early_is_under_converged(measured):
    g = H.judge(measured["best"], FALLING)
    assert g["status"] == "under-converged" and "still falls" in g["reason"]
    p = g["runs"][0]["plateau"]
    assert p["slope_upper"] < 0 and p["window_drop"] > H.PLATEAU_FRACTION * p["total_drop"]
    # the same descent run on to its plateau passes; a curve falling by a sliver of its whole drop passes too
    assert H.plateau(3.0 + 2.0 * np.exp(-np.arange(4000) / 400) + 0.05 * RNG.standard_normal(4000))["falling"] is False
    creeping = 5.0 - 2.0 * (1 - np.exp(-np.arange(400) / 20)) - 1e-4 * np.arange(400) + 0.01 * RNG.standard_normal(400)
    p = H.plateau(creeping)
    assert p["slope_upper"] < 0 and not p["falling"]


def test_a_reward_blind_predictor_fails(measured):
    g = H.judge(measured["blind"], FLAT)
    assert g["status"] == "failed"
    assert "is not below the reward-blind" in g["reason"] and "by the margin" in g["reason"]
    assert "with the rewards shuffled" in g["reason"]


@pytest.fixture(scope="module")
def init_result():
    cfg = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, d=3, n=6, token_layout="stacked")
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(M.init(jax.random.PRNGKey(s), cfg) for s in range(R)))
    train = T.TrainConfig(lr=1e-3, batch=8, steps=len(STEPS), chunk=len(STEPS), checkpoint_every=len(STEPS))
    return T.TrainResult(params=params, losses=FLAT, model_config=cfg, train_config=train,
                         runs=[{"seed": s, "lr": 1e-3, "noise": 0.0} for s in range(R)], run_dir=None, finished=True)


def test_the_label_does_not_depend_on_the_training_noise(init_result):
    """The gate judges the clean objective: the training noise recorded, and the shown rewards
    of the evaluation contexts, change nothing."""
    clean = H.run_gate(init_result, CTX)
    for p in (0.5, 1.0):
        noisy = dataclasses.replace(init_result, train_config=dataclasses.replace(init_result.train_config, noise=p),
                                    runs=[{**r, "noise": p} for r in init_result.runs])
        shown = CTX.replace(rewards=corrupt("replace", jax.random.PRNGKey(5), CTX.r_true, p))
        assert H.run_gate(noisy, shown) == clean
    assert clean["status"] in H.STATUSES and len(clean["runs"]) == R and clean["n_contexts"] == 24


def test_runs_slice_and_non_finite_runs(init_result):
    one = H.runs_slice(init_result, 1, 2)
    assert one.losses.shape == (1, len(STEPS)) and len(one.runs) == 1
    broken = dataclasses.replace(one, params=jax.tree_util.tree_map(lambda a: a * jnp.nan, one.params))
    g = H.run_gate(broken, CTX)
    assert g["status"] == "failed" and "NaN or inf" in g["reason"]
    with pytest.raises(ValueError, match="TrainResult"):
        H.run_gate({"params": None}, CTX)
    with pytest.raises(ValueError, match="loss must be one of"):
        O.measure(None, CTX, 2, "nope")


def test_results_stored_before_the_gate_read_as_unknown():
    old = {"status": "not trained", "reason": "1 of 3 seeds: seed 0: training loss 16.36 not below 16.42"}
    g = H.legacy(old)
    assert g["status"] == "unknown" and "old gate said: not trained (1 of 3 seeds" in g["reason"]
    assert H.legacy({"status": "trained", "reason": ""})["reason"].endswith("old gate said: trained")
    assert H.legacy(None)["status"] == "unknown" and H.variant_gate([1.0], {}, {})["status"] == "unknown"
    new = {"status": "failed", "reason": "x"}
    assert H.legacy(new) is new and H.describe(new) == "failed (x)"


def test_an_old_file_is_unknown_unless_its_stored_errors_show_a_failure():
    """Files stored before the gate: a seed whose error at the largest t is not below the
    reward-blind predictor's on the task is failed (its claims are withheld); otherwise the
    answer is unknown, and a seed mean alone never decides."""
    blind = H.blind_error(3, 6)
    assert 0.0 < blind < 2.0
    cfg = {"d": 3, "n": 6}
    good = H.variant_gate(None, {}, cfg, nmse_per_seed=[[0.5, blind - 0.1]] * 3)
    bad = H.variant_gate(None, {}, cfg, nmse_per_seed=[[0.5, blind - 0.1], [0.5, blind + 0.2], [0.5, 0.1]])
    assert good["status"] == "unknown" and bad["status"] == "failed" and "run 1:" in bad["reason"]
    assert H.variant_gate(None, {}, cfg, nmse_mean=[0.5, 1.9])["status"] == "unknown"
