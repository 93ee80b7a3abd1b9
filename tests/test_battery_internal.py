"""The battery's internal tests (icalign.analysis.battery_internal) on planted models: the
hand-built construction (its forward pass is one PL-GD step, docs/theory.md section 3) must
read as GD under gradient patching and as a selective probe target; a random-init model of the
same architecture must not. Tiny sizes: n = 4 candidates, D = 3, 16 contexts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct
from icalign import model as M
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
