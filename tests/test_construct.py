"""Hand-built transformers (icalign.construct) against the closed-form GD step and jax.grad.

Every comparison is between independent computations: the constructed weights run through
model.apply; the reference is gd.gradient_descent (closed form, W-space, step eta/||x||^2)
and a jax.grad loop on losses.plackett_luce in prediction space.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct, gd, losses, model, tasks


def separated_context(seed, n, d=3, order="random"):
    """A context with rewards in [0, 1] separated by >= 0.6/n (the construction's precondition)."""
    rng = np.random.default_rng(seed)
    r = (np.arange(n) + 0.5 + rng.uniform(-0.2, 0.2, n)) / n
    r = {"random": rng.permutation(r), "best_first": np.sort(r)[::-1]}[order]
    ys = rng.normal(size=(n, d))
    x = rng.normal(size=d)
    f = lambda a: jnp.asarray(a, jnp.float64)
    return tasks.Context(x=f(x), ys=f(ys), r_true=f(r), rewards=f(r), y_star=f(np.zeros(d)))


def spec_for(ctx, seed=0, **kw):
    d, n = ctx.d, ctx.n
    W0 = np.random.default_rng(seed + 100).normal(size=(d, d))
    kw.setdefault("gap", 0.5 / n)
    kw.setdefault("B", 50.0 / kw["gap"])  # B * gap = 50: e^{-50} ~ 2e-22, exact in float64
    kw.setdefault("M", 4 * kw["B"] + 100)
    return construct.PLConstruction(d=d, n=n, W0=W0, **kw)


def closed_form(spec, ctx, mask=None):
    eta_w = spec.eta / float(ctx.x @ ctx.x)  # prediction-space step -> W-space step
    W = gd.gradient_descent(jnp.asarray(spec.W0), ctx.x, ctx.ys, ctx.rewards, eta_w, spec.steps,
                            "sqdist", spec.beta, mask)
    return W @ ctx.x


def autodiff(spec, ctx, mask=None):
    y = jnp.asarray(spec.W0) @ ctx.x
    loss = lambda y: losses.plackett_luce(losses.sqdist_reward(y, ctx.ys, spec.beta), ctx.rewards, mask)
    for _ in range(spec.steps):
        y = y - spec.eta * jax.grad(loss)(y)
    return y


@pytest.mark.parametrize("seed", range(8))
def test_bradley_terry_one_layer(x64, seed):
    ctx = separated_context(seed, 2)
    spec = spec_for(ctx, seed, beta=0.3 + seed / 4, eta=0.05 + seed / 10)
    cfg, _ = construct.build(spec)
    assert cfg.n_layers == 1 and not cfg.ffn and cfg.attention == "softmax"
    out = construct.run(spec, ctx)
    np.testing.assert_allclose(out, closed_form(spec, ctx), atol=1e-9, rtol=0)
    np.testing.assert_allclose(out, autodiff(spec, ctx), atol=1e-9, rtol=0)
    # The BT step itself (docs/theory.md section 2), independent of PL:
    w, l = (0, 1) if ctx.rewards[0] > ctx.rewards[1] else (1, 0)
    y0 = jnp.asarray(spec.W0) @ ctx.x
    s = losses.sqdist_reward(y0, ctx.ys, spec.beta)
    bt = y0 + spec.eta * spec.beta * jax.nn.sigmoid(s[l] - s[w]) * (ctx.ys[w] - ctx.ys[l])
    np.testing.assert_allclose(out, bt, atol=1e-9, rtol=0)


@pytest.mark.parametrize("n", [3, 4, 6, 8])
@pytest.mark.parametrize("seed", range(3))
def test_plackett_luce_one_step_any_order(x64, n, seed):
    ctx = separated_context(seed, n, d=3)
    assert not np.all(np.diff(np.asarray(ctx.rewards)) < 0)  # really unsorted
    spec = spec_for(ctx, seed, beta=0.7, eta=0.2)
    out = construct.run(spec, ctx)
    np.testing.assert_allclose(out, closed_form(spec, ctx), atol=1e-9, rtol=0)
    np.testing.assert_allclose(out, autodiff(spec, ctx), atol=1e-9, rtol=0)


@pytest.mark.parametrize("steps", [2, 3])
def test_several_gd_steps(x64, steps):
    ctx = separated_context(11, 5, d=3)
    spec = spec_for(ctx, 11, steps=steps, eta=0.15)
    assert spec.config().n_layers == steps * 4
    out = construct.run(spec, ctx)
    np.testing.assert_allclose(out, closed_form(spec, ctx), atol=1e-9, rtol=0)
    np.testing.assert_allclose(out, autodiff(spec, ctx), atol=1e-9, rtol=0)
    one = construct.run(dataclasses.replace(spec, steps=1), ctx)
    assert np.max(np.abs(out - one)) > 1e-3  # the extra steps do something


def test_batched_under_jit(x64):
    ctxs = [separated_context(s, 4) for s in range(5)]
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ctxs)
    spec = spec_for(ctxs[0])
    cfg, params = construct.build(spec)
    out = jax.jit(lambda p, t: model.apply(p, t, cfg))(params, model.tokenize(batch, cfg))[:, 0]
    for i, c in enumerate(ctxs):
        np.testing.assert_allclose(out[i], closed_form(spec, c), atol=1e-9, rtol=0)


def test_causal_online_variant(x64):
    n = 6
    ctx = separated_context(3, n, order="best_first")
    spec = spec_for(ctx, 3, causal=True)
    rows = construct.run(spec, ctx)
    assert rows.shape == (n + 1, ctx.d)
    np.testing.assert_allclose(rows[0], jnp.asarray(spec.W0) @ ctx.x, atol=1e-12)
    for i in range(1, n + 1):
        mask = jnp.arange(n) < i
        np.testing.assert_allclose(rows[i], closed_form(spec, ctx, mask), atol=1e-9, rtol=0)
        np.testing.assert_allclose(rows[i], autodiff(spec, ctx, mask), atol=1e-9, rtol=0)
    full = construct.run(dataclasses.replace(spec, causal=False), ctx)
    np.testing.assert_allclose(rows[n], full, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_error_within_bound_and_falls_with_B(x64, seed):
    ctx = separated_context(seed, 6)
    exact = closed_form(spec_for(ctx, seed), ctx)
    errors, bounds = [], []
    for bg in (1.0, 2.0, 4.0, 8.0, 16.0):  # B * gap
        spec = spec_for(ctx, seed, B=bg / (0.5 / 6))
        err = float(jnp.max(jnp.abs(construct.run(spec, ctx) - exact)))
        bound = construct.error_bound(spec, ctx)
        assert err <= bound, (bg, err, bound)
        errors.append(err)
        bounds.append(bound)
    assert errors[0] > 1e-3  # at B * gap = 1 the soft selection is visibly off
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert all(a > b for a, b in zip(bounds, bounds[1:]))


def test_error_falls_as_B_and_M_grow_together(x64):
    """M must exceed 2 B r_cap (checked at construction), so M grows with B; the M terms of
    the bound are then below e^{-B r_cap} and the selection term sets the error."""
    ctx = separated_context(5, 5)
    exact = closed_form(spec_for(ctx, 5), ctx)
    errs = []
    for B in (20.0, 40.0, 80.0):
        spec = spec_for(ctx, 5, B=B, M=2 * B + 1.0)
        err = float(jnp.max(jnp.abs(construct.run(spec, ctx) - exact)))
        assert err <= construct.error_bound(spec, ctx)
        errs.append(err)
    assert errs[0] > errs[1] > errs[2]


def test_tied_rewards_are_detected_not_silently_wrong(x64):
    ctx = separated_context(1, 5)
    tied = ctx.replace(rewards=ctx.rewards.at[3].set(ctx.rewards[1]))
    spec = spec_for(ctx, 1)
    with pytest.raises(ValueError, match="tied rewards"):
        construct.run(spec, tied)
    # Why the check exists: without it the output is wrong by far more than the bound.
    wrong = construct.run(spec, tied, check=False)
    assert float(jnp.max(jnp.abs(wrong - closed_form(spec, tied)))) > 1e-3


def test_other_preconditions_are_detected(x64):
    ctx = separated_context(2, 4)
    with pytest.raises(ValueError, match="best-first"):
        construct.run(spec_for(ctx, causal=True), ctx)
    with pytest.raises(ValueError, match=r"lie in \[0, r_cap"):
        construct.run(spec_for(ctx), ctx.replace(rewards=ctx.rewards + 2.0))
    with pytest.raises(ValueError, match="M must exceed"):
        construct.PLConstruction(d=3, n=4, W0=np.eye(3), B=100.0, M=150.0)
    with pytest.raises(ValueError, match=r"W0 must have shape \(3, 3\)"):
        construct.PLConstruction(d=3, n=4, W0=np.eye(2))


def test_constructed_params_are_ordinary_model_params(x64):
    """Same type, same pytree structure and shapes as model.init for the same config, and the
    same model.apply: nothing special-cases constructed weights."""
    ctx = separated_context(4, 4)
    spec = spec_for(ctx)
    cfg, params = construct.build(spec)
    assert isinstance(params, model.Params) and isinstance(cfg, model.ModelConfig)
    ref = model.init(jax.random.PRNGKey(0), cfg, jnp.float64)
    shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    assert shapes(params) == shapes(ref)
    out = model.apply(params, model.tokenize(ctx, cfg), cfg)[0]
    np.testing.assert_allclose(out, closed_form(spec, ctx), atol=1e-9, rtol=0)
    # Random weights of the same type give something else entirely.
    assert float(jnp.max(jnp.abs(model.apply(ref, model.tokenize(ctx, cfg), cfg)[0] - out))) > 1e-3
