"""Hand-built transformers (icalign.construct) against the closed-form GD step and jax.grad.

Every comparison is between independent computations: the constructed weights run through
model.apply; the reference is gd.gradient_descent (closed form, W-space, step eta/||x||^2)
and a jax.grad loop on losses.plackett_luce in prediction space. Preconditions and the error
bound (icalign.theory.bounds) are tested in tests/test_bounds.py.
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
    for bg in (4.0, 8.0, 16.0):  # B * gap
        spec = spec_for(ctx, seed, B=bg / (0.5 / 6), rel_tol=1.0)  # soft selection: a looser tolerance
        err = float(jnp.max(jnp.abs(construct.run(spec, ctx) - exact)))
        bound = construct.error_bound(spec, ctx)
        assert err <= bound, (bg, err, bound)
        errors.append(err)
        bounds.append(bound)
    assert errors[0] > 1e-4  # at B * gap = 4 the soft selection is visibly off
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert all(a > b for a, b in zip(bounds, bounds[1:]))
    # Softer still, the selected reward no longer pins down which candidate to eliminate: refused.
    with pytest.raises(ValueError, match="precondition 'elimination'"):
        construct.run(spec_for(ctx, seed, B=1.0 / (0.5 / 6)), ctx)


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
    with pytest.raises(ValueError, match="precondition 'order'.*best-first"):
        construct.run(spec_for(ctx, causal=True), ctx)
    with pytest.raises(ValueError, match=r"lie in \[0, r_cap"):
        construct.run(spec_for(ctx), ctx.replace(rewards=ctx.rewards + 2.0))
    with pytest.raises(ValueError, match="M must exceed"):
        construct.PLConstruction(d=3, n=4, W0=np.eye(3), B=100.0, M=150.0)
    with pytest.raises(ValueError, match="M must exceed"):  # above 2 B r_cap, but by less than the margin
        construct.PLConstruction(d=3, n=4, W0=np.eye(3), B=100.0, M=230.0)
    with pytest.raises(ValueError, match=r"W0 must have shape \(3, 3\)"):
        construct.PLConstruction(d=3, n=4, W0=np.eye(2))


@pytest.mark.parametrize("steps", [1, 2])
def test_causal_any_order(x64, steps):
    """The reward comparator gives each token its own remaining sets: row i is `steps` GD steps
    on the online PL loss over candidates 1..i, whatever the order of the candidates."""
    n = 5
    ctx = separated_context(7, n, order="random")
    assert not np.all(np.diff(np.asarray(ctx.rewards)) < 0)
    spec = spec_for(ctx, 7, causal=True, any_order=True, steps=steps)
    rows = construct.run(spec, ctx)
    bound = construct.error_bound(spec, ctx)
    np.testing.assert_allclose(rows[0], jnp.asarray(spec.W0) @ ctx.x, atol=1e-12)
    for i in range(1, n + 1):
        mask = jnp.arange(n) < i
        err = float(jnp.max(jnp.abs(rows[i] - closed_form(spec, ctx, mask))))
        assert err <= bound[i] and err < 1e-9, (i, err, bound[i])
        np.testing.assert_allclose(rows[i], autodiff(spec, ctx, mask), atol=1e-9, rtol=0)
    # The per-token flags of the best-first variant refuse this order, and would be wrong on it.
    best_first = dataclasses.replace(spec, any_order=False)
    with pytest.raises(ValueError, match="precondition 'order'"):
        construct.run(best_first, ctx)
    wrong = construct.run(best_first, ctx, check=False)
    errs = [float(jnp.max(jnp.abs(wrong[i] - closed_form(spec, ctx, jnp.arange(n) < i)))) for i in range(2, n + 1)]
    assert max(errs) > 1e-2


def test_one_head_per_layer_equals_the_two_head_block(x64):
    """Heads <-> depth: head A alone, then head B with the FFN, reproduces the two-head block
    layer for layer (residual after layer 2k = residual after block k) and the GD step."""
    ctx = separated_context(8, 4)
    two = spec_for(ctx, 8, steps=2)
    one = dataclasses.replace(two, heads_per_layer=1)
    cfg1, p1 = construct.build(one)
    cfg2, p2 = construct.build(two)
    assert (cfg1.n_heads, cfg1.n_layers) == (1, 2 * cfg2.n_layers) and cfg2.n_heads == 2
    out1, res1 = model.apply(p1, model.tokenize(ctx, cfg1), cfg1, capture=True)
    out2, res2 = model.apply(p2, model.tokenize(ctx, cfg2), cfg2, capture=True)
    np.testing.assert_allclose(res1[::2], res2, atol=1e-12, rtol=0)
    np.testing.assert_allclose(out1[0], closed_form(two, ctx), atol=1e-9, rtol=0)
    assert float(jnp.max(jnp.abs(res1[1] - res1[0]))) > 1e-3  # the odd layers do half the work


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


def test_non_floating_dtype_is_refused_by_name():
    spec = construct.PLConstruction(d=2, n=3, W0=np.eye(2))
    for dtype in (jnp.int32, np.int64, bool, "not a dtype"):
        with pytest.raises(ValueError, match="dtype must be a floating dtype"):
            construct.build(spec, dtype=dtype)


def test_named_slots_do_not_overlap_and_a_misplaced_write_is_refused():
    from icalign.theory import basis

    spec = construct.spec_for(4, 3, np.eye(3), causal=True, any_order=True)
    S = spec.slots
    spans = sorted(S.span(name) for name, _, _ in basis.ROLES)
    assert spans[0][0] == 0 and spans[-1][1] == S.width == spec.config().d_model
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, disjoint
    assert (S.R, S.X, S.THR.stop) == (2 * 3, slice(0, 3), S.width) and S.owner(S.RM) == "RM"
    text = construct.describe(spec)
    assert "G    [" in text and "written by head A, head B, FFN" in text and f"width {S.width}" in text
    # a head B that also wrote RMAX (head A's slot) would corrupt the elimination: refused by name
    wo = np.zeros((1, S.width))
    wo[0, S.G.start] = wo[0, S.RM] = 1.0
    with pytest.raises(ValueError, match=r"layer 2 head B writes slot\(s\) \['RM'\]"):
        basis.check_writes(S, [("layer 2 head B", "head B", wo, -1)])
    basis.check_writes(S, [("layer 2 head A", "head A", wo, -1)])  # head A may write both

