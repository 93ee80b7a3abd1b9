"""The claim engine can fail: on synthetic data with a known effect, its paired seed-level
interval covers the effect at the nominal rate and a "supported" verdict comes at the power it
promises; a variant that did not train is labelled so and decides nothing; old result files
are re-analysed exactly where they can be and conservatively where they cannot."""

import numpy as np
import pytest

from icalign.analysis import claims as CL
from icalign.analysis import health as H
from icalign.core import stats

RNG = np.random.default_rng(15)
REPS = 4000  # Monte-Carlo replicates: the standard error of a 95% rate is 0.0034, of an 80% one 0.0063


def _seed_arms(worse_SxC, better_SxC, health=None):
    """Arms as older files stored them: each seed's mean over the shared contexts at one t
    (no per-(seed, context) cells; the seeds x contexts interval is tests/test_calibration.py's)."""
    summ = lambda v: {k: x for k, x in stats.summarise(v[:, :, None], "seeds", keep=True).items() if k != "cells"}
    return (CL.arm("worse", summ(worse_SxC), n_contexts=worse_SxC.shape[1], health=health),
            CL.arm("better", summ(better_SxC), n_contexts=better_SxC.shape[1]))


def _simulate(delta, seeds, contexts, sd_seed, sd_ctx, reps):
    """Two models on the same contexts: a shared context effect (cancels in the pairing),
    an effect of each trained seed, and per-(seed, context) noise. Returns (reps, S, C) x 2."""
    ctx = RNG.normal(0, 1.0, (reps, 1, contexts))
    a = 0.3 + ctx + RNG.normal(0, sd_seed, (reps, seeds, 1)) + RNG.normal(0, sd_ctx, (reps, seeds, contexts))
    b = 0.3 + ctx + RNG.normal(0, sd_seed, (reps, seeds, 1)) + RNG.normal(0, sd_ctx, (reps, seeds, contexts))
    return a + delta, b


def _verdicts_and_cover(delta, seeds, sd_seed=0.05, sd_ctx=0.3, contexts=32, reps=REPS):
    a, b = _simulate(delta, seeds, contexts, sd_seed, sd_ctx, reps)
    d = (a - b).mean(axis=2)  # (reps, S): what the engine computes from per-seed means
    lo, hi = stats.mean_ci(d, axis=1)[1:]
    # the engine on a few replicates gives exactly these intervals
    for r in range(3):
        e = CL.effect(*_seed_arms(a[r], b[r]))
        np.testing.assert_allclose([e["low"], e["high"]], [lo[r], hi[r]], rtol=1e-9)
        assert e["unit"] == "seeds" and e["n"] == seeds and e["n_contexts"] == contexts
    sd_d = np.sqrt(2 * sd_seed ** 2 + 2 * sd_ctx ** 2 / contexts)  # true sd of one seed's paired difference
    return np.mean((lo <= delta) & (delta <= hi)), np.mean(lo > 0), sd_d


@pytest.mark.parametrize("seeds", [3, 5])
def test_paired_seed_interval_covers_the_known_effect_at_the_nominal_rate(seeds):
    cover, _, _ = _verdicts_and_cover(0.1, seeds)
    assert abs(cover - 0.95) < 0.015, cover


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_power_at_the_smallest_detectable_effect_is_80_percent(seeds):
    sd_d = np.sqrt(2 * 0.05 ** 2 + 2 * 0.3 ** 2 / 32)
    mde = stats.mde(sd_d, seeds)
    _, supported, _ = _verdicts_and_cover(mde, seeds)
    assert abs(supported - 0.8) < 0.03, (seeds, mde, supported)
    _, at_half, _ = _verdicts_and_cover(mde / 2, seeds)
    assert at_half < 0.6  # and it is a threshold: half the effect is detected far less often


def test_units_needed_is_the_first_count_with_80_percent_power():
    for effect, sd in ((0.1, 0.2), (0.05, 0.3), (1.0, 0.1)):
        n = stats.units_needed(effect, sd)
        assert stats.power(effect, sd, n) >= 0.8
        assert n == 2 or stats.power(effect, sd, n - 1) < 0.8
    assert stats.units_needed(0.0, 1.0) is None and stats.units_needed(1e-6, 1.0) is None


def test_sd_is_recovered_exactly_from_a_stored_interval():
    v = RNG.normal(size=(4, 7))
    m, lo, hi = stats.mean_ci(v, axis=0)
    for j in range(7):
        assert stats.sd_from_interval(m[j], lo[j], hi[j], 4) == pytest.approx(v[:, j].std(ddof=1), rel=1e-9)


def test_verdicts_follow_the_interval_and_a_failed_training_decides_nothing():
    base = np.full((3, 16), 0.3) + RNG.normal(0, 0.01, (3, 16))
    sick = {"status": "not trained", "reason": "2 of 3 seeds: ..."}
    assert CL.claim("x", *_seed_arms(base + 0.5, base))["verdict"] == "supported"
    assert CL.claim("x", *_seed_arms(base - 0.5, base))["verdict"] == "contradicted"
    shift = np.array([[0.05], [-0.04], [0.01]])  # seeds disagree about the sign
    flat = CL.claim("x", *_seed_arms(base + shift, base))
    assert flat["low"] < 0 < flat["high"] and flat["verdict"] == "not resolved"
    assert flat["reason"] == "the interval contains 0" and np.isfinite(flat["mde"])
    assert flat["mde_range"][0] < flat["mde"] < flat["mde_range"][1]  # power is a range, not a figure
    c = CL.claim("x", *_seed_arms(base + 0.5, base, health=sick))
    assert c["verdict"] == "not trained" and "worse failed its training-health gate" in c["reason"]
    for status in ("under-converged", "unknown"):  # labelled, not withheld
        c = CL.claim("x", *_seed_arms(base + 0.5, base, health={"status": status, "reason": "r"}))
        assert c["verdict"] == "supported" and c["health"] == f"worse: {status}" and status in CL.line(c)
    c = CL.claim("x", *_seed_arms(base + 0.5, base, health={"status": "failed", "reason": "r"}))
    assert c["verdict"] == "not trained"
    # a file judged only by the old gate: "trained" reads unknown (labelled), "not trained" withholds
    old = lambda status: H.legacy({"status": status, "reason": "loss 15.4 not below 15.3"})
    assert CL.claim("x", *_seed_arms(base + 0.5, base, health=old("trained")))["verdict"] == "supported"
    assert CL.claim("x", *_seed_arms(base + 0.5, base, health=old("not trained")))["verdict"] == "not trained"
    assert c["effect"] == pytest.approx(0.5, abs=0.02)  # the numbers are still reported


def test_model_against_reference_and_the_conservative_bound_for_old_files():
    a = 0.3 + RNG.normal(0, 0.05, (5, 1)) + RNG.normal(0, 0.2, (5, 64))  # 5 seeds on 64 contexts
    ref = 0.3 + RNG.normal(0, 0.2, 64)
    gd = stats.summarise(ref[:, None], "contexts", keep=True)
    model = stats.summarise(a[:, :, None], "seeds", keep=True)
    crossed = CL.effect(CL.arm("m", model, n_contexts=64), CL.arm("gd", gd, n_contexts=64))
    assert crossed["population"] == "seeds x contexts" and crossed["n"] == 5
    assert crossed["effect"] == pytest.approx(np.mean([(a[s] - ref)[s::5][:12].mean() for s in range(5)]))
    model = {k: v for k, v in model.items() if k != "cells"}
    exact = CL.effect(CL.arm("m", model, n_contexts=64), CL.arm("gd", gd, n_contexts=64))
    assert exact["unit"] == "seeds" and exact["n"] == 5 and exact["population"] == "seeds, these contexts"
    assert exact["effect"] == pytest.approx(a.mean() - ref.mean())
    old = {k: model[k] for k in ("mean", "low", "high", "n", "unit")}  # what old files stored
    recovered = CL.effect(CL.arm("m", old, n_contexts=64), CL.arm("gd", gd, n_contexts=64))
    np.testing.assert_allclose([recovered["low"], recovered["high"]], [exact["low"], exact["high"]], rtol=1e-9)
    # two seeded arms without per-seed values: the bound interval contains the paired one
    b = a + 0.02 + RNG.normal(0, 0.01, (5, 1))  # strongly correlated with a
    mb = {k: v for k, v in stats.summarise(b[:, :, None], "seeds", keep=True).items() if k != "cells"}
    paired = CL.effect(CL.arm("b", mb, n_contexts=64), CL.arm("a", model, n_contexts=64))
    bound = CL.effect(CL.arm("b", {k: mb[k] for k in old}, n_contexts=64), CL.arm("a", old, n_contexts=64))
    assert bound["pairing"].startswith("bound") and bound["effect"] == pytest.approx(paired["effect"])
    assert bound["low"] <= paired["low"] and bound["high"] >= paired["high"]
    assert paired["low"] > 0 and bound["low"] < 0  # pairing detects the small shift; the bound cannot


def test_seeds_over_contexts_of_their_own_cover_both():
    """A per-seed value over the seed's own contexts (its training stream) is a draw of
    (model, contexts): the claim says so, and seed means on shared contexts do not."""
    v = RNG.normal(0.1, 0.05, 4)
    own = CL.claim("x", CL.sample("a", v, "seeds", n_contexts=8, own_contexts=True),
                   CL.sample("b", v * 0, "seeds", n_contexts=8, own_contexts=True))
    shared = CL.claim("x", CL.sample("a", v, "seeds", n_contexts=8), CL.sample("b", v * 0, "seeds", n_contexts=8))
    assert own["population"] == "seeds x contexts" and "each on contexts of its own" in CL.short(own)
    assert shared["population"] == "seeds, these contexts" and own["low"] == shared["low"]


def test_claims_refuse_different_context_sets():
    s = stats.summarise(np.zeros((3, 4, 1)) + np.arange(3)[:, None, None], "seeds", keep=True)
    with pytest.raises(ValueError, match="stored cells have shape"):
        CL.arm("b", s, n_contexts=8)  # a summary's cells are checked against the context count
    with pytest.raises(ValueError, match="same contexts"):
        CL.effect(CL.arm("a", s, n_contexts=4), CL.cells("b", np.zeros((3, 8))))
    with pytest.raises(ValueError, match="same number of seeds"):
        CL.effect(CL.cells("a", np.zeros((3, 8))), CL.cells("b", np.zeros((4, 8))))


# ---------------------------------------------------------------------------------------------
# Training health (the gate's own tests: tests/test_health.py)
# ---------------------------------------------------------------------------------------------


def test_a_claim_on_a_model_that_failed_training_is_not_trained():
    failed = {"status": "failed", "reason": "clean objective 15.43 is not below the reward-blind 15.48 by the margin 0.08"}
    s = lambda v: stats.summarise(np.asarray(v, float)[:, None, None], "seeds", keep=True)
    c = CL.claim("x", CL.arm("linear", s([1.0, 1.0, 1.1]), n_contexts=1, health=failed),
                 CL.arm("softmax", s([0.3, 0.31, 0.29]), n_contexts=1))
    assert c["verdict"] == "not trained" and "linear failed its training-health gate" in c["reason"] and "margin 0.08" in c["reason"]


def _pair(d_S):
    """Arms whose paired per-seed difference is d_S (one context each)."""
    zero = np.zeros_like(d_S)
    return (CL.sample("a", d_S, "seeds", n_contexts=1), CL.sample("b", zero, "seeds", n_contexts=1))


def test_agreement_follows_the_interval_against_the_margin():
    tight = np.array([0.01, -0.01, 0.005, -0.005, 0.0])
    assert CL.agreement("x", *_pair(tight), margin=0.1)["verdict"] == "supported"
    assert CL.agreement("x", *_pair(tight + 1.0), margin=0.1)["verdict"] == "contradicted"
    assert CL.agreement("x", *_pair(tight + 0.1), margin=0.1)["verdict"] == "not resolved"  # straddles +margin
    wide = np.array([0.3, -0.3, 0.2, -0.25, 0.05])
    c = CL.agreement("x", *_pair(wide), margin=0.1)
    assert c["verdict"] == "not resolved" and c["low"] < -0.1 and c["margin"] == 0.1
    sick = {"status": "not trained", "reason": "diverged"}
    a, b = _pair(tight)
    assert CL.agreement("x", {**a, "health": sick}, b, margin=0.1)["verdict"] == "not trained"
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            CL.agreement("x", a, b, margin=bad)


def test_agreement_at_the_margin_is_claimed_at_most_at_the_test_level():
    # true difference exactly at the margin: "agree" must come at most 2.5% of the time (two
    # one-sided tests at 2.5%, the 95% interval inside +-margin), whatever the spread
    margin, sd = 0.1, 0.08
    d = margin + RNG.normal(0, sd, (400, 5))
    rate = np.mean([CL.agreement("x", *_pair(row), margin=margin)["verdict"] == "supported" for row in d])
    assert rate <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / 400)
    d0 = RNG.normal(0, 0.02, (100, 5))  # no difference, small spread: agreement is found
    assert np.mean([CL.agreement("x", *_pair(row), margin=margin)["verdict"] == "supported" for row in d0]) > 0.9
