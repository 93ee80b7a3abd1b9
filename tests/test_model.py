"""The one transformer: config validation, parameter count, toggles, causality, layouts.

A second, independent forward pass (plain numpy, float64, loops over layers and heads) is
the reference the toggles are checked against: each toggle must change only its own factor.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import model as M
from icalign.tasks import sample_contexts

TINY = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, d=3, n=4)
# One set of small contexts for every test: with a single set of shapes, the eager
# (op-by-op) primitives compile once per session instead of once per test.
CTX = sample_contexts(jax.random.PRNGKey(1), 2, TINY.d, TINY.n)


def _tokens(config):
    return CTX, M.tokenize(CTX, config)


def _params(config, seed=0, scale=0.3):
    """Params of ``config`` with every leaf random (numpy; nothing compiled): biases, LN gains
    and positions become non-trivial, so a toggle that silently ignored one would show."""
    shapes = jax.eval_shape(lambda: M.init(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def _predict(params, ctx, config):
    with jax.disable_jit():
        return np.asarray(M.predict(params, ctx, config))


def _apply(params, tokens, config):
    """Eager forward (no jit): cheap for tiny configs once the primitives are compiled."""
    with jax.disable_jit():
        return np.asarray(M.apply(params, tokens, config))


# ---------------------------------------------------------------------------------------------
# Independent numpy reference (float64)
# ---------------------------------------------------------------------------------------------


def _ref_forward(params, tokens, config, weights=None, capture=False):
    """GPT-2 pre-LN forward written from the definition, one sequence at a time, one head at a
    time. ``weights(logits, visible) -> mixing weights`` can be swapped (default: per config).
    ``capture``: also return the residual stream after the read-in and after every layer."""
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    toks = np.asarray(tokens, np.float64)
    L, H, dh = config.n_layers, config.n_heads, config.head_size

    def ln(h, p):
        if p is None:
            return h
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + M.LN_EPS) * p.scale + p.bias

    def default_weights(logits, visible):
        if config.attention == "softmax":
            z = np.where(visible, logits, -np.inf)
            z = np.exp(z - z.max(-1, keepdims=True))
            return z / z.sum(-1, keepdims=True)
        if config.attention == "linear":
            return np.where(visible, logits, 0.0)
        if config.attention == "linear_mean":
            return np.where(visible, logits, 0.0) / visible.sum(-1, keepdims=True)
        return np.where(visible, np.maximum(logits, 0.0), 0.0)

    weights = weights or default_weights
    gelu = lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    act = gelu if config.ffn_activation == "gelu" else (lambda x: np.maximum(x, 0.0))
    b = lambda v: 0.0 if v is None else v
    outs, streams = [], []
    for seq in toks.reshape(-1, *toks.shape[-2:]):
        T = seq.shape[0]
        visible = np.tril(np.ones((T, T), bool)) if config.causal else np.ones((T, T), bool)
        h = seq @ P.read_in.w + P.read_in.b
        if config.positional:
            h = h + P.pos[:T]
        hs = [h]
        for l in range(L):
            blk = jax.tree_util.tree_map(lambda a: a[l], P.blocks)
            a_in = ln(h, blk.ln1)
            att = np.zeros_like(h)
            for i in range(H):
                q = a_in @ blk.attn.wq[:, i] + (0 if blk.attn.bq is None else blk.attn.bq[i])
                k = a_in @ blk.attn.wk[:, i] + (0 if blk.attn.bk is None else blk.attn.bk[i])
                v = a_in @ blk.attn.wv[:, i] + (0 if blk.attn.bv is None else blk.attn.bv[i])
                w = weights(q @ k.T / math.sqrt(dh), visible)
                att = att + (w @ v) @ blk.attn.wo[i]
            h = h + att + b(blk.attn.bo)
            if config.ffn:
                f_in = ln(h, blk.ln2)
                h = h + act(f_in @ blk.ffn.w1 + b(blk.ffn.b1)) @ blk.ffn.w2 + b(blk.ffn.b2)
            hs.append(h)
        streams.append(np.stack(hs))
        h = ln(h, P.ln_f)
        outs.append(h @ P.read_out.w + P.read_out.b)
    out = np.stack(outs).reshape(*toks.shape[:-1], config.d)
    if not capture:
        return out
    return out, np.stack(streams, axis=1).reshape(L + 1, *toks.shape[:-1], config.d_model)


def _apply64(params, tokens, config):
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        return _apply(p64, jnp.asarray(np.asarray(tokens), jnp.float64), config)


# ---------------------------------------------------------------------------------------------
# Config validation: fails at construction (before anything is traced), names field and value
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field, shown", [
    (dict(n_layers=0), "n_layers", "0"),
    (dict(n_layers=-3), "n_layers", "-3"),
    (dict(n_heads=0), "n_heads", "0"),
    (dict(d_model=-8), "d_model", "-8"),
    (dict(head_dim=0), "head_dim", "0"),
    (dict(ffn_width=-1), "ffn_width", "-1"),
    (dict(d=0), "d", "0"),
    (dict(n=1), "n", "1"),
    (dict(d_model=96, n_heads=5), "d_model=96 is not divisible by n_heads=5", "head_dim"),
    (dict(attention="cosine"), "attention", "'cosine'"),
    (dict(ffn_activation="tanh"), "ffn_activation", "'tanh'"),
    (dict(token_layout="flat"), "token_layout", "'flat'"),
    (dict(n_layers=2.0), "n_layers", "2.0"),
    (dict(causal="yes"), "causal", "'yes'"),
    (dict(final_norm=1), "final_norm", "1"),
    (dict(init_std=0.0), "init_std", "0.0"),
])
def test_bad_config_fails_with_clear_message(kwargs, field, shown):
    """Raised by the constructor, i.e. before anything is traced; names field and value."""
    with pytest.raises(ValueError) as err:
        M.ModelConfig(**kwargs)
    msg = str(err.value)
    assert f"ModelConfig.{field}" in msg and shown in msg, msg


def test_unknown_attention_lists_allowed_values():
    with pytest.raises(ValueError, match=r"attention.*\['softmax', 'linear', 'relu', 'linear_mean'\].*'cosine'"):
        M.ModelConfig(attention="cosine")


def test_head_dim_is_independent_of_heads_and_width():
    # 5 heads of size 32 on width 96: heads and width vary separately (not divisible, allowed
    # because head_dim is given).
    cfg = M.ModelConfig(n_layers=1, n_heads=5, d_model=96, head_dim=32)
    p = M.init(jax.random.PRNGKey(0), cfg)
    assert p.blocks.attn.wq.shape == (1, 96, 5, 32)
    assert p.blocks.attn.wo.shape == (1, 5, 32, 96)
    # head_dim=None re-derives after dataclasses.replace (fixed width, more heads).
    assert dataclasses.replace(M.BASE, n_heads=4).head_size == 24


def test_params_must_match_config():
    p = _params(TINY)
    _, tok = _tokens(TINY)
    with pytest.raises(ValueError, match="ffn"):
        _apply(p, tok, dataclasses.replace(TINY, ffn=False))
    with pytest.raises(ValueError, match="tokens must have shape"):
        _apply(p, tok[..., :2], TINY)


# ---------------------------------------------------------------------------------------------
# Parameter count and init
# ---------------------------------------------------------------------------------------------


def test_base_param_count_equals_gpt2_arithmetic():
    L, W, n_pos, d = 20, 96, 60, 5
    attn = 3 * (W * W + W) + (W * W + W)         # q, k, v, output projection, with biases
    mlp = (W * 4 * W + 4 * W) + (4 * W * W + W)  # fc, proj with biases
    lns = 2 * (2 * W)                            # ln_1, ln_2 (gain and bias)
    expected = L * (attn + mlp + lns) + n_pos * W + 2 * W + (d * W + W) + (W * d + d)
    params = jax.eval_shape(lambda: M.init(jax.random.PRNGKey(0), M.BASE))
    assert M.param_count(params) == expected


def test_gpt2_init_statistics():
    cfg = M.ModelConfig(n_layers=8, n_heads=2, d_model=64)
    p = M.init(jax.random.PRNGKey(0), cfg)
    np.testing.assert_allclose(np.std(p.blocks.attn.wq), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(p.blocks.ffn.w1), 0.02, rtol=0.05)
    # residual projections scaled by 1/sqrt(2 n_layers)
    np.testing.assert_allclose(np.std(p.blocks.attn.wo), 0.02 / math.sqrt(16), rtol=0.05)
    np.testing.assert_allclose(np.std(p.blocks.ffn.w2), 0.02 / math.sqrt(16), rtol=0.05)
    assert np.all(p.blocks.attn.bq == 0) and np.all(p.blocks.ln1.scale == 1)


# ---------------------------------------------------------------------------------------------
# Toggles: each changes only its own factor (against the independent reference, float64)
# ---------------------------------------------------------------------------------------------

TOGGLES = [
    dict(),
    dict(attention="linear"),
    dict(attention="relu"),
    dict(attention="linear_mean"),
    dict(attention="linear_mean", causal=False),
    dict(ffn=False),
    dict(ffn_activation="relu"),
    dict(ffn_width=5),
    dict(layer_norm=False),
    dict(layer_norm=False, final_norm=True),
    dict(layer_norm=True, final_norm=False),
    dict(positional=False),
    dict(causal=False),
    dict(bias=False),
    dict(token_layout="stacked"),
    dict(n_heads=3, head_dim=4),
]


@pytest.mark.parametrize("toggle", TOGGLES, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()) or "base")
def test_forward_matches_independent_reference(toggle):
    cfg = dataclasses.replace(TINY, **toggle)
    params = _params(cfg, 1)
    _, tok = _tokens(cfg)
    np.testing.assert_allclose(_apply64(params, tok, cfg), _ref_forward(params, tok, cfg), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("layout", M.LAYOUTS)
def test_capture_returns_every_layers_residual_and_reads_out_to_apply(layout):
    """apply(capture=True): the residual stream after the read-in and after each block,
    checked layer by layer against the independent reference; reading out the last one with
    model.readout gives apply's output, and capture does not change that output."""
    cfg = dataclasses.replace(TINY, token_layout=layout, n_layers=3)
    params = _params(cfg, 2)
    _, tok = _tokens(cfg)
    ref_out, ref_h = _ref_forward(params, tok, cfg, capture=True)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        t64 = jnp.asarray(np.asarray(tok), jnp.float64)
        with jax.disable_jit():
            out, h = M.apply(p64, t64, cfg, capture=True)
            plain = M.apply(p64, t64, cfg)
            read = M.readout(p64, h[-1], cfg)
    assert h.shape == (cfg.n_layers + 1, *tok.shape[:-1], cfg.d_model)
    np.testing.assert_allclose(np.asarray(h), ref_h, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
    np.testing.assert_allclose(np.asarray(read), np.asarray(out), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="capture"):
        M.apply(params, tok, cfg, capture="yes")


def test_linear_and_softmax_differ_only_in_normalisation():
    """Same params: softmax = normalise(exp(logits)), linear = logits; swapping only that
    function in the reference reproduces each."""
    soft = TINY
    lin = dataclasses.replace(TINY, attention="linear")
    params = _params(soft, 2)
    _, tok = _tokens(soft)

    def softmax_weights(logits, visible):
        e = np.where(visible, np.exp(logits - logits.max()), 0.0)
        return e / e.sum(-1, keepdims=True)

    unnormalised = lambda logits, visible: np.where(visible, logits, 0.0)
    np.testing.assert_allclose(_apply64(params, tok, soft), _ref_forward(params, tok, lin, softmax_weights), rtol=1e-9)
    np.testing.assert_allclose(_apply64(params, tok, lin), _ref_forward(params, tok, soft, unnormalised), rtol=1e-9)
    assert not np.allclose(_apply64(params, tok, soft), _apply64(params, tok, lin))


def test_ffn_off_equals_zeroed_ffn_weights():
    on = TINY
    off = dataclasses.replace(TINY, ffn=False)
    params = _params(on, 3)
    zero_ffn = params.replace(blocks=params.blocks.replace(
        ffn=jax.tree_util.tree_map(jnp.zeros_like, params.blocks.ffn)))
    no_ffn = params.replace(blocks=params.blocks.replace(ffn=None, ln2=None))
    _, tok = _tokens(on)
    np.testing.assert_allclose(_apply(zero_ffn, tok, on), _apply(no_ffn, tok, off), rtol=0, atol=1e-7)
    assert not np.allclose(_apply(params, tok, on), _apply(no_ffn, tok, off))


def test_positional_off_equals_zero_positions():
    on = TINY
    off = dataclasses.replace(TINY, positional=False)
    params = _params(on, 4)
    _, tok = _tokens(on)
    np.testing.assert_allclose(_apply(params.replace(pos=jnp.zeros_like(params.pos)), tok, on),
                               _apply(params.replace(pos=None), tok, off), rtol=0, atol=1e-7)


def test_causal_toggle_changes_only_the_mask():
    """One layer: the last position sees every token either way, so only earlier outputs differ."""
    c1 = dataclasses.replace(TINY, n_layers=1)
    full = dataclasses.replace(c1, causal=False)
    params = _params(c1, 5)
    _, tok = _tokens(c1)
    a, b = _apply(params, tok, c1), _apply(params, tok, full)
    np.testing.assert_allclose(a[..., -1, :], b[..., -1, :], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[..., 0, :], b[..., 0, :])


# ---------------------------------------------------------------------------------------------
# Causality for every toggle combination: d out_t / d token_s == 0 exactly for s > t
# ---------------------------------------------------------------------------------------------

COMBOS = list(itertools.product(M.ATTENTIONS, M.LAYOUTS, (True, False), (True, False), (True, False)))


@pytest.mark.parametrize("attention, layout, ffn, layer_norm, positional", COMBOS)
def test_causality_every_toggle_combination(attention, layout, ffn, layer_norm, positional):
    cfg = dataclasses.replace(TINY, attention=attention, token_layout=layout, ffn=ffn,
                              layer_norm=layer_norm, positional=positional)
    params = _params(cfg, 6)
    _, tok = _tokens(cfg)
    tok = tok[0]
    # Eager (no jit): each combination would otherwise pay its own XLA compile.
    with jax.disable_jit():
        jac = np.asarray(jax.jacrev(lambda t: M.apply(params, t, cfg))(tok))  # (T, d, T, F)
    T = tok.shape[0]
    per_pair = np.abs(jac).sum(axis=(1, 3))  # (T_out, T_in)
    later = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(per_pair[later] == 0.0), per_pair
    # ...and the check can fail: earlier tokens do matter.
    assert np.all(per_pair[np.tril(np.ones((T, T), bool))].sum() > 0)


def test_non_causal_model_fails_the_causality_check():
    cfg = dataclasses.replace(TINY, causal=False)
    params = _params(cfg)
    _, tok = _tokens(cfg)
    with jax.disable_jit():
        jac = np.asarray(jax.jacrev(lambda t: M.apply(params, t, cfg))(tok[0]))
    assert np.abs(jac[0, :, -1, :]).sum() > 0  # position 0 sees the last token


# ---------------------------------------------------------------------------------------------
# Token layouts: what each position has seen
# ---------------------------------------------------------------------------------------------


def test_interleaved_tokens():
    ctx, tok = _tokens(TINY)
    n, d = TINY.n, TINY.d
    assert tok.shape == (2, 3 * n, d)
    for j in range(n):
        np.testing.assert_array_equal(tok[:, 3 * j], ctx.x)
        np.testing.assert_array_equal(tok[:, 3 * j + 1], ctx.ys[:, j])
        np.testing.assert_array_equal(tok[:, 3 * j + 2, 0], ctx.rewards[:, j])
        np.testing.assert_array_equal(tok[:, 3 * j + 2, 1:], 0.0)
    np.testing.assert_array_equal(M.readout_positions(TINY), 3 * np.arange(n))


def test_stacked_tokens():
    cfg = dataclasses.replace(TINY, token_layout="stacked")
    ctx, tok = _tokens(cfg)
    n, d = cfg.n, cfg.d
    assert tok.shape == (2, n + 1, 2 * d + 3)
    np.testing.assert_array_equal(tok[:, 0, :d], ctx.x)
    np.testing.assert_array_equal(tok[:, 0, d:], 0.0)
    for j in range(n):
        y = np.asarray(ctx.ys[:, j])
        np.testing.assert_allclose(tok[:, j + 1], np.concatenate(
            [ctx.x, y, ctx.rewards[:, j, None], np.ones((2, 1)), 0.5 * (y * y).sum(-1, keepdims=True)], -1),
            rtol=1e-6)


@pytest.mark.parametrize("layout", M.LAYOUTS)
def test_prediction_n_has_seen_exactly_n_triplets(layout):
    """Changing candidate j (response or reward) moves predictions n > j only; y* never enters."""
    cfg = dataclasses.replace(TINY, token_layout=layout)
    params = _params(cfg, 7)
    ctx, _ = _tokens(cfg)
    base = _predict(params, ctx, cfg)
    assert base.shape == (2, cfg.n, cfg.d)
    for j in range(cfg.n):
        for field in ("ys", "rewards"):
            new = getattr(ctx, field).at[:, j].add(1.0)
            moved = _predict(params, ctx.replace(**{field: new}), cfg)
            np.testing.assert_array_equal(moved[:, : j + 1], base[:, : j + 1])
            assert not np.allclose(moved[:, j + 1:], base[:, j + 1:]) or j + 1 == cfg.n
    np.testing.assert_array_equal(_predict(params, ctx.replace(y_star=ctx.y_star + 5.0), cfg), base)


# ---------------------------------------------------------------------------------------------
# jit == no jit
# ---------------------------------------------------------------------------------------------


def test_jit_equals_no_jit():
    params = _params(TINY, 8)
    _, tok = _tokens(TINY)
    jitted = jax.jit(M.apply, static_argnames="config")(params, tok, config=TINY)
    assert isinstance(jitted, jax.Array)
    with jax.disable_jit():
        eager = _apply(params, tok, TINY)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_stack_unstack_blocks_roundtrip():
    p = _params(TINY)
    blocks = M.unstack_blocks(p.blocks)
    assert len(blocks) == TINY.n_layers
    back = M.stack_blocks(blocks)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, p.blocks)


def test_bfloat16_precision_rounds_the_matmuls_only():
    """precision='bfloat16': the blocks' matmuls see bfloat16 operands (forward and backward),
    accumulating in float32; params, gradients and outputs stay float32, and the outputs stay
    within bfloat16 rounding of the float32 model (not equal: the rounding is real)."""
    cfg = dataclasses.replace(TINY, n_layers=2)
    params = _params(cfg, 3)
    _, tok = _tokens(cfg)
    cfg16 = dataclasses.replace(cfg, precision="bfloat16")
    with jax.disable_jit():
        out32, out16 = M.apply(params, tok, cfg), M.apply(params, tok, cfg16)
        grad = jax.grad(lambda p: jnp.sum(M.apply(p, tok, cfg16) ** 2))(params)
    rel = float(jnp.max(jnp.abs(out16 - out32)) / jnp.max(jnp.abs(out32)))
    assert 1e-5 < rel < 3e-2, rel
    assert out16.dtype == jnp.float32 and {a.dtype for a in jax.tree_util.tree_leaves(grad)} == {jnp.dtype("float32")}
    text = jax.jit(jax.grad(lambda p: jnp.sum(M.apply(p, tok, cfg16) ** 2))).lower(params).as_text()
    assert "bf16" in text  # the products really run on bfloat16 operands
    with pytest.raises(ValueError, match="ModelConfig.precision"):
        M.ModelConfig(precision="float16")
