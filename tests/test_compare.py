"""TF-vs-GD comparison: predictions, sensitivities (checked by finite differences), the
combined report, and the figure drawn from a results file."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.analysis import compare as C
from icalign import gd
from icalign import model as M
from icalign.core.metrics import normalised_mse, unit
from icalign.tasks import sample_contexts

# The same small shapes as test_model.py, so eager primitives are shared within a session.
CFG = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, d=3, n=4)
CTX = sample_contexts(jax.random.PRNGKey(1), 2, CFG.d, CFG.n)
KEY = jax.random.PRNGKey(5)
STEPS = 20  # GD steps: fewer than the published 50 keeps the compiled scans small


def _params(config, seed=0, scale=0.3, dtype=np.float32):
    shapes = jax.eval_shape(lambda: M.init(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


@pytest.fixture(scope="module")
def report():
    return C.compare(_params(CFG), CFG, CTX, KEY, gd_steps=STEPS, n_sensitivity=2)


def test_similarity():
    a = jnp.asarray([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    b = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 2.0, 0.0]])
    cos, l2 = C.similarity(a, b, 1)
    np.testing.assert_allclose(cos, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(l2, [0.0, np.sqrt(5.0)], rtol=1e-6)
    cos0, _ = C.similarity(a, jnp.zeros_like(a), 1)
    np.testing.assert_array_equal(cos0, 0.0)  # not NaN


def test_gd_predictions_are_fit_linear_per_context_and_t(report):
    ts = jnp.arange(1, CFG.n)
    y = C.gd_predictions(KEY, CTX, ts, "adam", STEPS)
    keys = jax.random.split(KEY, 2)
    for b in range(2):
        for t in (2, 3):  # t = 1: see the note in test_report_gd_t1
            want = gd.fit_linear(keys[b], CTX.x[b], CTX.ys[b], CTX.rewards[b], t, "adam", STEPS)
            np.testing.assert_allclose(y[b, t - 1], want, rtol=1e-5, atol=1e-6)
    # the report scored exactly these predictions
    np.testing.assert_allclose(report["nmse"]["adam"]["per_context"], normalised_mse(y, CTX.y_star[:, None]),
                               rtol=1e-6)


def test_report_scores_the_transformer_rows(report):
    with jax.disable_jit():
        y = np.asarray(M.predict(_params(CFG), CTX, CFG))[:, 1:]
    np.testing.assert_allclose(report["nmse"]["transformer"]["per_context"],
                               normalised_mse(y, CTX.y_star[:, None]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(report["t"], [1, 2, 3])
    for name in ("transformer", "adam", "gd"):
        assert report["nmse"][name]["mean"].shape == (3,)
    for name in ("adam", "gd"):
        cos = report["pred_diff"][name]["cos"]["mean"]
        assert np.all(np.abs(cos) <= 1 + 1e-6)
        sens = report["sensitivity"][name]
        for block in ("candidates", "rewards", "joint"):
            assert sens[block]["cos"]["mean"].shape == (3,)
        # GD's output depends on rewards only through their ranking: zero reward Jacobian,
        # so the reward block's distance is the transformer's own reward sensitivity.
        np.testing.assert_array_equal(sens["rewards"]["cos"]["mean"], 0.0)
        np.testing.assert_allclose(sens["rewards"]["l2"]["mean"], sens["norm"]["transformer_rewards"]["mean"],
                                   rtol=1e-5)


def test_transformer_sensitivities_match_finite_differences():
    """d u_t / d (ys, rewards) from jax.jacobian equals central differences (float64)."""
    with jax.enable_x64(True):
        params = _params(CFG, seed=3, dtype=np.float64)
        ctx = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), CTX)
        ts = jnp.arange(1, CFG.n)
        j_ys, j_r = C.transformer_sensitivities(params, ctx, CFG, ts)  # (B,T,D,N,D), (B,T,D,N)

        def u(c):
            with jax.disable_jit():
                return np.asarray(unit(M.predict(params, c, CFG)))[:, 1:]  # (B, T, D)

        h = 1e-6
        for j in range(CFG.n):
            for k in range(CFG.d):
                dy = jnp.zeros_like(ctx.ys).at[:, j, k].set(h)
                fd = (u(ctx.replace(ys=ctx.ys + dy)) - u(ctx.replace(ys=ctx.ys - dy))) / (2 * h)
                np.testing.assert_allclose(np.asarray(j_ys)[:, :, :, j, k], fd, atol=1e-7)
            dr = jnp.zeros_like(ctx.rewards).at[:, j].set(h)
            fd = (u(ctx.replace(rewards=ctx.rewards + dr)) - u(ctx.replace(rewards=ctx.rewards - dr))) / (2 * h)
            np.testing.assert_allclose(np.asarray(j_r)[:, :, :, j], fd, atol=1e-7)
        assert np.abs(np.asarray(j_r)).max() > 1e-3  # the transformer does use reward values


def test_sensitivities_respect_what_each_learner_has_seen():
    """Prediction t depends on candidates 0..t-1 only, for the transformer (causal mask) and
    for GD (fitted on the first t); GD's reward Jacobian is exactly zero, and so is its
    candidate Jacobian at t = 1 (PL over one candidate is constant: the fit never moves)."""
    ts = jnp.arange(1, CFG.n)
    tf_ys, tf_r = C.transformer_sensitivities(_params(CFG), CTX, CFG, ts)
    gd_ys, gd_r = C.gd_sensitivities(KEY, CTX, ts, "gd", STEPS)
    for i, t in enumerate(np.asarray(ts)):
        for jac in (tf_ys, gd_ys):
            np.testing.assert_array_equal(np.asarray(jac)[:, i, :, t:], 0.0)
        assert np.abs(np.asarray(tf_ys)[:, i, :, :t]).sum() > 0
        if t >= 2:
            assert np.abs(np.asarray(gd_ys)[:, i, :, :t]).sum() > 0
        else:
            np.testing.assert_array_equal(np.asarray(gd_ys)[:, i], 0.0)
        np.testing.assert_array_equal(np.asarray(tf_r)[:, i, :, t:], 0.0)
    np.testing.assert_array_equal(np.asarray(gd_r), 0.0)


def test_bad_inputs_fail_clearly():
    params = _params(CFG)
    with pytest.raises(ValueError, match="ts must be"):
        C.compare(params, CFG, CTX, KEY, ts=[0, 1])
    with pytest.raises(ValueError, match="ts must be"):
        C.gd_predictions(KEY, CTX, [4], "adam")
    with pytest.raises(ValueError, match="learner"):
        C.compare(params, CFG, CTX, KEY, learners=("sgd",))
    other = sample_contexts(jax.random.PRNGKey(0), 2, 3, 5)
    with pytest.raises(ValueError, match=r"\(N, D\) = \(5, 3\)"):
        C.compare(params, CFG, other, KEY)


def test_figure_is_drawn_from_the_results_file(tmp_path):
    from icalign.viz.tf import tf_vs_gd

    t = [1, 2, 3]
    stats = lambda v: {"mean": v, "sem": [0.01] * 3}
    res = {
        "quick": True, "hardware": {"backend": "cpu", "device": "cpu", "cpu_count": 2},
        "model_config": CFG.to_dict(), "train_config": {"steps": 10},
        "comparison": {
            "t": t, "n_contexts": 2, "n_sensitivity": 2,
            "nmse": {"transformer": stats([0.9, 0.5, 0.3]), "adam": stats([0.8, 0.4, 0.3]), "gd": stats([0.8, 0.4, 0.3])},
            "pred_diff": {k: {"cos": stats([0.1, 0.5, 0.8]), "l2": stats([1.0, 0.8, 0.5])} for k in ("adam", "gd")},
            "sensitivity": {k: {"candidates": {"cos": stats([0.1, 0.2, 0.3])}} for k in ("adam", "gd")},
        },
    }
    from icalign.io import read_json, save_figure

    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    out = save_figure(tf_vs_gd(read_json(path)), tmp_path / "fig")
    assert [p.suffix for p in out] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in out)
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
