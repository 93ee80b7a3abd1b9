"""The mechanism study's verdicts (docs/theory.md section 7): every choice (the closest
reference, the best layer, each probe's layer) is a function of the fitting half only, and
every claim pairs two quantities context by context on the test half."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from icalign import tasks
from icalign.analysis import mechanism as X
from icalign.analysis import mechanism_claims as MC
from icalign.analysis.interventions import MONOTONE

B, T, D = 10, 4, 3
HALF = B // 2


def _answers(seed: int):
    """y* (all the distances read of a context), the 'transformer's' answers and four
    references' (B, T, D)."""
    rng = np.random.default_rng(seed)
    ctx = SimpleNamespace(y_star=rng.normal(size=(B, D)).astype(np.float32))
    y = rng.normal(size=(B, T, D)).astype(np.float32)
    refs = {r: (y + s * rng.normal(size=y.shape)).astype(np.float32)
            for r, s in zip(X.REFERENCES, (0.3, 0.5, 1.0, 2.0))}
    return ctx, y, refs


def _cos_distance(a, b):  # independent of icalign.core.metrics
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 1.0 - np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_closest_reference_is_chosen_on_the_fitting_half_and_judged_on_the_test_half():
    ctx, y, refs = _answers(0)
    ts = np.arange(1, T + 1)
    res = X._distances(ctx, y, refs, HALF, ts)
    assert res["cells"]["t"] == [2, T] and res["cells"]["half"] == "test"
    for j, t in enumerate(res["cells"]["t"]):  # the stored cells are the test-half distances at t
        for r in refs:
            np.testing.assert_allclose(res["cells"]["distance"][r][j], _cos_distance(y, refs[r])[HALF:, t - 1],
                                       rtol=1e-4, atol=1e-5)
        fit_order = sorted(refs, key=lambda r: _cos_distance(y, refs[r])[:HALF, t - 1].mean())
        assert res["selection"]["closest"][str(t)]["order"] == fit_order
    # make gd_sqdist identical to the transformer on the test half only
    assert res["selection"]["closest"]["2"]["order"][0] != "gd_sqdist"
    test_moved = {**refs, "gd_sqdist": np.concatenate([refs["gd_sqdist"][:HALF], y[HALF:]])}
    again = X._distances(ctx, y, test_moved, HALF, ts)
    assert again["selection"] == res["selection"]  # the test half cannot change a choice
    assert max(np.abs(again["cells"]["distance"]["gd_sqdist"]).ravel()) < 1e-5  # ... but it is what is judged
    fit_moved = {**refs, "gd_sqdist": np.concatenate([y[:HALF], refs["gd_sqdist"][HALF:]])}
    assert X._distances(ctx, y, fit_moved, HALF, ts)["selection"]["closest"]["2"]["order"][0] == "gd_sqdist"


def test_the_best_layer_is_chosen_on_the_fitting_half():
    rng = np.random.default_rng(1)
    names = [0, 1, 2, 3, "output"]
    err = rng.uniform(0.2, 0.3, size=(5, B))
    err[2, :HALF] = 0.1  # layer 2 is best on the fitting half
    choice = X.choose_layer(err, names, HALF)
    assert choice["layer"] == "2" and choice["chosen_on"] == "fit"
    flipped = err.copy()
    flipped[1, HALF:], flipped[2, HALF:] = 0.0, 1.0  # the test half says layer 1
    assert X.choose_layer(flipped, names, HALF) == choice
    flipped[0, :HALF] = flipped[3, :HALF] = flipped[4, :HALF] = 0.0  # layer 0, the last (its read-out is the
    assert X.choose_layer(flipped, names, HALF)["layer"] == "2"  # output) and the output are never candidates
    flipped[1, :HALF] = 0.05
    assert X.choose_layer(flipped, names, HALF)["layer"] == "1"


def test_each_probes_layer_is_chosen_on_the_fitting_half():
    """The real probe path on a planted residual stream: layer 1 carries the top candidate on
    the fitting half only; replacing the test half's residuals leaves every choice unchanged."""
    ctx = tasks.sample_contexts(jax.random.PRNGKey(2), 8, D, T + 1)
    ts = np.arange(1, T + 1)
    q = np.asarray(X.P.quantities(ctx, ctx.ys[:, 0], ts))  # (B, T, Q, D)
    rng = np.random.default_rng(2)
    h = rng.normal(size=(3, 8, T, 8)).astype(np.float32)
    h[1, :, :, :D] = q[:, :, 0]  # top candidate written into layer 1
    h[2, :, :, :D] = q[:, :, 0] + 0.5 * rng.normal(size=q[:, :, 0].shape)
    key = jax.random.PRNGKey(3)
    res = X._probes(key, h, ctx, ctx.ys[:, 0], ts, 4, t_from=1)
    top = res["top candidate"]["layer"]
    assert top["layer"] == 1 and top["chosen_on"] == "fit" and top["r2_fit"][1] > 0.99
    h2 = h.copy()
    h2[:, 4:] = rng.normal(size=h2[:, 4:].shape)  # the test half now carries nothing
    res2 = X._probes(key, h2, ctx, ctx.ys[:, 0], ts, 4, t_from=1)
    assert all(res2[k]["layer"] == res[k]["layer"] for k in res)
    assert res2["top candidate"]["r2"]["mean"][1] < 0.5 < res["top candidate"]["r2"]["mean"][1]


def _result(dist: dict, health=None, layer_err=None, moves=None) -> dict:
    """A minimal shared-query result holding what the claims read: (2, C) test-half distances
    per reference (t = 2, 5), the choices, the layers' test errors and the interventions."""
    C = len(next(iter(dist.values()))[0])
    layer_err = layer_err or {"1": np.full(C, 0.2), "output": np.full(C, 0.3)}
    moves = moves or {"transformer": np.linspace(0.01, 0.02, C), "gd_cosine": np.zeros(C)}
    order = list(dist)
    study = {"t": [1, 2, 3, 4, 5], "halves": X.halves(2 * C), "health": health,
             "cells": {"half": "test", "t": [2, 5], "distance": {k: np.asarray(v).tolist() for k, v in dist.items()}},
             "selection": {"closest": {t: {"chosen_on": "fit", "order": order, "fit_mean": {r: 0.1 for r in order}}
                                       for t in ("2", "5")},
                           "layer": {"chosen_on": "fit", "layer": "1", "fit_mean": {"1": 0.2, "output": 0.3}}},
             "layers": [{"layer": k, "own": {"nmse": {"values": np.asarray(v).tolist()}}} for k, v in layer_err.items()],
             "interventions": {k: {n: {"values": np.asarray(v).tolist()} for n, v in moves.items()}
                               for k in MONOTONE + ("reverse",)}}
    study["interventions"]["reverse"]["transformer"]["values"] = np.full(C, 1.5).tolist()
    return {"shared": study}


def test_identical_distances_give_exactly_zero_and_a_zero_width_interval():
    rng = np.random.default_rng(4)
    same = rng.uniform(0.0, 0.3, size=(2, 64))  # widely spread over contexts, identical per context
    cl = MC.claims(_result({"gd_cosine": same, "minimiser": same.copy(), "exact": same + 0.2}))
    c = cl[0]
    assert c["claim"].startswith("shared queries, t = 2: the transformer is closer to fitted GD (cosine PL) than to "
                                 "the minimiser")
    assert c["effect"] == 0.0 and c["low"] == 0.0 and c["high"] == 0.0 and c["verdict"] == "not resolved"
    assert c["n"] == 64 and "64 test-half contexts" in c["sample"] and "fitting half (64 contexts)" in c["chosen_on"]
    exact = cl[1]
    assert exact["better"] == "gd_cosine" and exact["worse"] == "exact" and exact["verdict"] == "supported"
    np.testing.assert_allclose([exact["effect"], exact["low"], exact["high"]], 0.2, atol=1e-12)


def test_claims_pair_by_context():
    """A small constant gap under a large spread across contexts is resolved only if the two
    arms are paired context by context; reversing one arm's contexts must lose it."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.0, 1.0, size=(2, 40))
    gap = 0.01 + 0.001 * rng.normal(size=(2, 40))
    paired = MC.claims(_result({"gd_cosine": base, "minimiser": base + gap}))[0]
    assert paired["verdict"] == "supported" and paired["high"] - paired["low"] < 0.002
    broken = MC.claims(_result({"gd_cosine": base[:, ::-1], "minimiser": base + gap}))[0]
    assert broken["verdict"] == "not resolved" and broken["high"] - broken["low"] > 0.1


def test_layer_and_intervention_claims_and_a_failed_model():
    C = 30
    rng = np.random.default_rng(6)
    out = rng.uniform(0.2, 0.6, C)
    res = _result({"gd_cosine": np.full((2, C), 0.1), "minimiser": np.full((2, C), 0.2)},
                  layer_err={"1": out - 0.05, "output": out})
    cl = {c["claim"]: c for c in MC.claims(res)}
    layer = cl["read by the model's own read-out, layer 1 points closer to y* than the output does"]
    assert layer["verdict"] == "supported" and abs(layer["effect"] - 0.05) < 1e-12 and layer["low"] > 0.049
    moved = cl["the affine reward map moves the transformer's answer more than PL-GD's"]
    assert moved["verdict"] == "supported" and moved["n"] == C
    sick = {"status": "failed", "reason": "loss not below the trivial predictors"}
    assert all(c["verdict"] == "not trained" for c in MC.claims({"shared": {**res["shared"], "health": sick}}))
    with pytest.raises(ValueError, match="rerun"):
        MC.claims({"shared": {k: v for k, v in res["shared"].items() if k != "cells"}})


def test_a_result_from_before_the_split_is_refused_by_name():
    from icalign.viz import mechanism as V

    old = {"model_config": {}, "claims": [], "shared": {"t": [1, 2], "distance": {}, "nmse": {}}}
    for f in (MC.claims, V.markdown, V.verdict):
        with pytest.raises(ValueError, match="rerun `icalign run mechanism`"):
            f(old)


def test_seeds_are_pooled_by_blocks_and_the_order_by_their_fitting_halves():
    """Three seeds studied on the same contexts: the claim's interval is over the seeds' own
    blocks of contexts (seeds x contexts), and the references compared are those closest on
    average over the seeds' fitting halves, whatever seed 0 alone chose."""
    rng = np.random.default_rng(7)
    C = 60
    per = []
    for s in range(3):
        one = _result({"gd_cosine": rng.uniform(0, 0.1, (2, C)), "minimiser": 0.3 + rng.uniform(0, 0.1, (2, C))})
        sh = one["shared"]
        fit = {"gd_cosine": 0.05, "minimiser": 0.35} if s else {"gd_cosine": 0.5, "minimiser": 0.35}
        for t in ("2", "5"):
            sh["selection"]["closest"][t]["fit_mean"] = fit
        per.append({"cells": sh["cells"], "selection": sh["selection"], "layer_nmse": {"1": [0.2] * C, "output": [0.3] * C},
                    "interventions": {k: {n: v["values"] for n, v in d.items()} for k, d in sh["interventions"].items()}})
    res = _result({"gd_cosine": np.zeros((2, C)), "minimiser": np.zeros((2, C))})
    res["shared"].update(per_seed=per, seeds=[0, 1, 2])
    c = MC.claims(res)[0]
    assert c["better"] == "gd_cosine" and c["worse"] == "minimiser"  # pooled: (0.5 + 0.05 * 2) / 3 < 0.35
    assert c["population"] == "seeds x contexts" and c["n"] == 3 and c["verdict"] == "supported"
    assert "3 trained models (seeds)" in c["sample"]
