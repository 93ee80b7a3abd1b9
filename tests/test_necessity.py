"""The necessity study's variants change one factor each, and its target is the PL step."""

import dataclasses

import jax
import numpy as np

from icalign.analysis import necessity as study, necessity_claims
from icalign.theory import construct, gd, necessity


def _spec(n=4, d=3):
    return construct.PLConstruction(d=d, n=n, W0=np.eye(d), gap=0.1, B=400.0, M=1000.0)


def test_each_variant_changes_one_factor():
    spec = _spec()
    cfgs = necessity.variant_configs(spec)
    full = dataclasses.asdict(cfgs["full"])
    expected = {
        "linear attention": {"attention"},
        "one head": {"n_heads", "head_dim"},  # head_dim doubles to keep the attention width
        "no FFN": {"ffn"},
        "half the blocks": {"n_layers"},
    }
    for name, fields in expected.items():
        diff = {k for k, v in dataclasses.asdict(cfgs[name]).items() if full[k] != v}
        assert diff == fields, name
    one = cfgs["one head"]
    assert one.n_heads * one.head_size == cfgs["full"].n_heads * cfgs["full"].head_size


def test_target_is_the_closed_form_step_and_construction_hits_it(x64):
    spec = _spec(n=5)
    ctx = construct.separated_contexts(jax.random.PRNGKey(0), 8, 5, 3)
    y0, yp = necessity.target(spec, ctx)
    x, ys, r = ctx.x[2], ctx.ys[2], ctx.rewards[2]
    W = gd.gradient_descent(np.eye(3), x, ys, r, spec.eta / float(x @ x), 1, "sqdist", spec.beta)
    np.testing.assert_allclose(yp[2], W @ x, atol=1e-12)
    assert float(necessity.relative_error(construct.run(spec, ctx), y0, yp)) < 1e-20
    assert float(necessity.relative_error(y0, y0, yp)) == 1.0  # answering y0 scores exactly 1


def test_fit_variant_runs_and_is_deterministic():
    spec = _spec(n=3)
    cfg = necessity.variant_configs(spec)["no FFN"]
    rel_a, curves = study.fit_variant(jax.random.PRNGKey(1), spec, cfg, seeds=2, steps=5, batch=8)
    rel_b, _ = study.fit_variant(jax.random.PRNGKey(1), spec, cfg, seeds=2, steps=5, batch=8)
    assert rel_a.shape == (2,) and curves.shape == (2, 5) and np.all(np.isfinite(rel_a))
    np.testing.assert_array_equal(rel_a, rel_b)


def test_compare_states_needed_not_needed_or_not_resolved():
    full = [0.10, 0.12, 0.11, 0.13, 0.09]
    worse = necessity_claims.compare([0.5, 0.6, 0.4, 0.7, 0.55], full)
    assert worse["verdict"] == "needed" and np.isclose(worse["p_worse"], 1 / 252)  # exact, all ranks above
    assert necessity_claims.compare([0.01, 0.02, 0.03, 0.015, 0.025], full)["verdict"] == "not needed"
    assert necessity_claims.compare([0.10, 0.14, 0.08, 0.125, 0.095], full)["verdict"] == "not resolved"
    # A diverged seed on either side is a training failure, never evidence for "needed".
    for reduced, f in (([np.nan] * 5, full), ([0.01, np.nan, 0.02, 0.015, 0.03], full),
                       ([0.5, 0.6, 0.4, 0.7, 0.55], [np.inf] + list(full[1:]))):
        c = necessity_claims.compare(reduced, f)
        assert c["verdict"] == "not trained" and c["p_worse"] is None, c


def test_seed_summary_and_claims_per_reduced_architecture():
    s = necessity_claims.seed_summary([0.3, np.nan, 0.1, 0.2])
    assert (s["median"], s["best"], s["diverged_seeds"]) == (0.2, 0.1, 1)
    results = {"4": {"variants": {"full": {"rel_error_per_seed": [0.1, 0.1, 0.1, 0.1, 0.1]},
                                  "no FFN": {"rel_error_per_seed": [0.5] * 5},
                                  "one head": {"rel_error_per_seed": [0.1] * 5}}}}
    claims = necessity_claims.claims(results)
    assert [(c["n"], c["variant"], c["verdict"]) for c in claims] == [(4, "no FFN", "needed"),
                                                                       (4, "one head", "not resolved")]
    assert "Mann-Whitney" in claims[0]["statistic"]
