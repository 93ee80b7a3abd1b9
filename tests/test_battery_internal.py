"""The battery's internal tests (icalign.analysis.battery_internal) on planted models: the
hand-built construction (its forward pass is one PL-GD step, docs/theory.md section 3) must
read as GD under gradient patching and as a selective probe target; a random-init model of the
same architecture must not. Tiny sizes: n = 4 candidates, D = 3, 16 contexts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct
from icalign import model as M
from icalign.analysis import battery as BT
from icalign.analysis import battery_internal as BI
from icalign.analysis import probes as P

N, D, B, HALF, ETA = 4, 3, 16, 8, 0.3


def test_residualised_target_is_the_pl_mean_minus_the_plain_mean():
    assert P.QUANTITIES[:6] == ("top candidate", "PL-weighted mean", "PL gradient (sqdist)", "PL gradient (cosine)",
                                "mean candidate", "answer y*")  # appended, not reordered
    rng = np.random.default_rng(0)
    ys, r, y0 = rng.normal(size=(2, 5, 3)), rng.uniform(size=(2, 5)), rng.normal(size=(2, 3))
    ctx = construct.separated_contexts(jax.random.PRNGKey(0), 2, 5, 3, dtype=jnp.float32)
    ctx = ctx.replace(ys=jnp.asarray(ys, jnp.float32), rewards=jnp.asarray(r, jnp.float32))
    ts = np.array([1, 2, 4])
    got = np.asarray(P.quantities(ctx, jnp.asarray(y0, jnp.float32), jnp.asarray(ts)))
    for b in range(2):
        for j, t in enumerate(ts):
            s = -0.5 * np.sum((y0[b] - ys[b, :t]) ** 2, axis=1)  # head B's weights at y0 on the shown ones
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            want = p @ ys[b, :t] - ys[b, :t].mean(0)
            np.testing.assert_allclose(got[b, j, P.QUANTITIES.index("PL-weighted mean minus plain mean")], want,
                                       atol=2e-5)
    assert np.allclose(got[:, 0, 6], 0.0, atol=1e-6)  # one shown candidate: its PL mean is its plain mean


def test_resume_runs_the_rest_of_the_model_from_any_layer(key):
    cfg = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, token_layout="stacked", d=D, n=N)
    params = M.init(key, cfg)
    ctx = construct.separated_contexts(key, 3, N, D, dtype=jnp.float32)
    out, h = jax.jit(M.apply, static_argnums=(2, 3))(params, M.tokenize(ctx, cfg), cfg, True)
    resume = jax.jit(M.resume, static_argnums=(2, 3))  # compiled: one program instead of many small ones
    np.testing.assert_allclose(resume(params, h[1], cfg, 1), out, atol=1e-5)  # block 2 and the read-out
    edit = jnp.arange(8.0) - 3.5  # not a constant shift, which the next LayerNorm would remove
    edited = resume(params, h[1].at[:, 2].add(edit), cfg, 1)  # causal: positions before 2 cannot see it
    np.testing.assert_allclose(edited[:, :2], out[:, :2], atol=1e-5)
    assert np.abs(edited[:, 2] - out[:, 2]).min() > 1e-4
    with pytest.raises(ValueError, match="layer must be an int in 0..2"):
        M.resume(params, h[0], cfg, 3)
    with pytest.raises(ValueError, match="d_model=8"):
        M.resume(params, h[0][..., :4], cfg, 0)


@pytest.fixture(scope="module")
def planted():
    """The causal construction (one PL-GD step on sqdist, step ETA, best-first contexts), a
    random init of its architecture, and the contexts with the construction's own y0."""
    with jax.enable_x64(True):
        spec = construct.spec_for(N, D, 1.5 * np.eye(D), causal=True, eta=ETA)
        cfg, params = construct.build(spec)
        null = M.init(jax.random.PRNGKey(7), cfg, jnp.float64)
        ctx = construct.separated_contexts(jax.random.PRNGKey(1), B, N, D, best_first=True)
        y0 = construct.run(spec, ctx)[:, 0]
    return cfg, params, null, ctx, y0


def test_gradient_patch_reads_the_construction_as_gd_and_a_random_init_not(planted, x64):
    cfg, params, null, ctx, y0 = planted
    run = lambda p, layer: BI.patch_gradient(jax.random.PRNGKey(3), p, cfg, ctx, y0, [2, 3], HALF, layer,
                                             quantity="PL gradient (sqdist)", draws=4)
    gd = run(params, None)
    assert gd["fit"]["decode_error"] < 1e-8 and len(gd["d_gd"]) == B - HALF
    # the construction's answer is y0 + ETA * (-grad): a change dG of the decoded gradient moves it by -ETA dG
    # (to within the ridge probe's spread over collinear slots, which the minimum-norm patch also moves)
    assert gd["fit"]["layer"] < cfg.n_layers  # chosen on the fitting half; a block runs after the patch
    np.testing.assert_allclose(gd["per_t"]["gain_gradient_patch"]["mean"], ETA, rtol=0.05)
    np.testing.assert_allclose(gd["per_t"]["cos_gradient_patch"]["mean"], 1.0, atol=0.01)
    assert gd["claim"]["verdict"] == "supported"
    assert BT.verdict("patch", gd["d_gd"], gd["d_min"], gd["margin"])["verdict"] == "GD"
    rand = run(null, gd["fit"]["layer"])  # the same layer: the same compiled patch
    assert np.mean(rand["per_t"]["cos_gradient_patch"]["mean"]) < 0.5
    assert BT.verdict("patch", rand["d_gd"], rand["d_min"], rand["margin"])["verdict"] != "GD"


def test_selectivity_counts_the_construction_and_not_a_random_init(planted, x64):
    cfg, params, null, ctx, y0 = planted
    sel = BI.probe_selectivity(jax.random.PRNGKey(4), params, null, cfg, ctx, y0, [2, 3], HALF)["quantities"]
    g = sel["PL gradient (sqdist)"]
    assert g["counts"] and g["r2"]["mean"][g["layer"]["layer"]] > 0.999  # the G slot holds it exactly
    s, l = g["selectivity"], g["layer"]["layer"]
    np.testing.assert_allclose(s["effect"][l], g["r2"]["mean"][l] - g["r2_null"]["mean"][l], atol=1e-9)
    assert not sel["answer y*"]["counts"] and "does not vary" in sel["answer y*"]["claim"]["reason"]
    # the roles swapped: a random init "trained", the construction as the null, must not count
    swapped = BI.probe_selectivity(jax.random.PRNGKey(4), null, params, cfg, ctx, y0, [2, 3], HALF)["quantities"]
    g = swapped["PL gradient (sqdist)"]
    assert not g["counts"] and g["claim"]["verdict"] == "contradicted"
    assert g["selectivity"]["high"][g["layer"]["layer"]] < 0


def test_bad_input_is_refused_by_name_before_any_compilation(planted):
    cfg, params, null, ctx, y0 = planted
    good = dict(key=jax.random.PRNGKey(0), params=params, config=cfg, ctx=ctx, y0=y0, ts=[2, 3], half=HALF)
    cases = [({"ts": [1, 2]}, "ts must be"), ({"ts": [3, 2]}, "ts must be"), ({"ts": [2, 4]}, "ts must be"),
             ({"half": 15}, "half must be"), ({"y0": y0[:, :2]}, "y0 must be"), ({"config": "tiny"}, "config must"),
             ({"ctx": dataclasses.replace(cfg)}, "ctx must be")]
    for change, msg in cases:
        for fn, extra in ((BI.patch_gradient, {"layer": 1}), (BI.probe_selectivity, {"params_null": null})):
            with pytest.raises(ValueError, match=msg):
                fn(**{**good, **extra, **change})
    for change, msg in (({"layer": 9}, "layer must be"), ({"scale": 0.0}, "scale must be"),
                        ({"quantity": "answer y*"}, "quantity must be"), ({"draws": 1}, "draws must be"),
                        ({"l2": -1.0}, "l2")):
        with pytest.raises(ValueError, match=msg):
            BI.patch_gradient(**{**good, "layer": 1, **change})
