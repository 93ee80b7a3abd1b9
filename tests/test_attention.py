"""Attention capture (model.apply(..., capture="attention")) and the best-candidate attention check
(icalign.analysis.attention).

The captured weights are checked against a hand recomputation of layer 0 in numpy (read-in,
positions, LayerNorm, q and k written out here, not taken from the forward code), against a
gated model's own ungated variant, and for what softmax rows must be. The best-candidate check is
run on two planted cases with known answers (a hand-set head that attends by reward, and the
construction's head A) and on a random-init model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct
from icalign import model as M
from icalign.analysis.attention import best_candidate_attention, candidate_keys
from icalign.model import gates as G
from icalign.tasks import Context


def _separated(batch, n, d, seed=0):
    """Contexts whose shown rewards are >= 0.6 / n apart, in random order (the construction's
    precondition; numpy, so that no eager op compiles)."""
    rng = np.random.default_rng(seed)
    r = (np.arange(n) + 0.5 + rng.uniform(-0.2, 0.2, (batch, n))) / n
    r = np.stack([rng.permutation(row) for row in r]).astype(np.float32)
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return Context(x=f(batch, d), ys=f(batch, n, d), r_true=jnp.asarray(r), rewards=jnp.asarray(r),
                   y_star=f(batch, d))


CFG = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, d=3, n=5)
CTX = _separated(4, CFG.n, CFG.d, seed=9)
_apply = jax.jit(M.apply, static_argnums=(2,), static_argnames=("capture",))
_tokenize = jax.jit(M.tokenize, static_argnums=(1,))
_init = jax.jit(M.init, static_argnums=(1,))


def _random_params(config, seed=0, scale=0.5):
    """Every leaf random (biases, LN gains, positions included), so a capture that skipped one
    of them would not match the hand recomputation."""
    shapes = jax.eval_shape(lambda: M.init(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def _layer0_by_hand(params, tokens, config):
    """Layer 0's weights (B, H, T, T) in float64 numpy from the definitions of docs/theory.md
    section 4: h = tokens W_in + b_in + pos, pre-LN, logits q.k / sqrt(head_dim), causal mask."""
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(tokens, np.float64)
    T = x.shape[-2]
    h = x @ P.read_in.w + P.read_in.b + P.pos[:T]
    mu = h.mean(-1, keepdims=True)
    h = (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + M.LN_EPS) * P.blocks.ln1.scale[0] \
        + P.blocks.ln1.bias[0]
    q = np.einsum("btf,fhk->bhtk", h, P.blocks.attn.wq[0]) + P.blocks.attn.bq[0][None, :, None, :]
    k = np.einsum("btf,fhk->bhtk", h, P.blocks.attn.wk[0]) + P.blocks.attn.bk[0][None, :, None, :]
    logits = np.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(config.head_size)
    seen = np.tril(np.ones((T, T), bool))
    if config.attention == "linear":
        return np.where(seen, logits, 0.0)
    z = np.exp(np.where(seen, logits, -np.inf) - np.where(seen, logits, -np.inf).max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_softmax_rows_are_causal_distributions_and_capture_keeps_the_output():
    cfg = CFG
    params, tok = _random_params(cfg, 1), _tokenize(CTX, cfg)
    out, att = _apply(params, tok, cfg, capture="attention")
    T = tok.shape[-2]
    assert att.shape == (cfg.n_layers, 4, cfg.n_heads, T, T)
    att = np.asarray(att)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    assert np.all(att >= 0)
    assert np.all(att[..., ~np.tril(np.ones((T, T), bool))] == 0.0)  # masked keys get exactly 0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_apply(params, tok, cfg)))
    out_r, h = _apply(params, tok, cfg, capture="residual")
    np.testing.assert_array_equal(np.asarray(out_r), np.asarray(out))
    assert h.shape == (cfg.n_layers + 1, 4, T, cfg.d_model)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_layer0_weights_match_a_hand_recomputation(attention):
    """Linear attention's weights are the scaled logits on visible keys, the array the values
    are multiplied by (not a distribution)."""
    cfg = dataclasses.replace(CFG, attention=attention)
    params, tok = _random_params(cfg, 2), _tokenize(CTX, cfg)
    _, att = _apply(params, tok, cfg, capture="attention")
    np.testing.assert_allclose(np.asarray(att[0]), _layer0_by_hand(params, tok, cfg), rtol=1e-4, atol=1e-5)


def test_gated_model_reports_its_variants_weights():
    """A 1-layer 1-head variant run gated inside a 2-layer 2-head super model: the weights of
    its one head equal the variant's own (ungated) capture; the inactive head and layer report 0."""
    variant = dataclasses.replace(CFG, n_layers=1, n_heads=1, head_dim=4)
    sup = dataclasses.replace(CFG, head_dim=4)
    p_var, tok = _random_params(variant, 3), _tokenize(CTX, variant)
    gates = G.Gates(**{k: jnp.asarray(v) for k, v in G.gates_for(variant, sup).items()})
    out_g, att_g = _apply(G.embed(p_var, variant, sup), tok, sup, capture="attention", gates=gates)
    out_v, att_v = _apply(p_var, tok, variant, capture="attention")
    np.testing.assert_allclose(np.asarray(att_g[0, :, :1]), np.asarray(att_v[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_g), np.asarray(out_v), atol=1e-5)
    assert np.all(np.asarray(att_g[0, :, 1:]) == 0) and np.all(np.asarray(att_g[1]) == 0)


@pytest.mark.parametrize("bad", [1, 0, None, "yes", "Attention", np.bool_(True)])
def test_bad_capture_is_refused(bad):
    with pytest.raises(ValueError, match="capture must be one of"):
        M.apply(_random_params(CFG), _tokenize(CTX, CFG), CFG, capture=bad)


def test_candidate_key_positions_follow_the_token_layouts():
    """Checked against tokenize: the stacked key holds y_j in its y slot, the interleaved keys
    hold y_j and (r_j, 0, ..)."""
    ctx = _separated(1, 5, 3)
    for layout in M.LAYOUTS:
        cfg = dataclasses.replace(CFG, token_layout=layout)
        tok, keys = np.asarray(_tokenize(ctx, cfg))[0], candidate_keys(cfg)
        ys, r = np.asarray(ctx.ys)[0], np.asarray(ctx.rewards)[0]
        if layout == "stacked":
            np.testing.assert_array_equal(tok[keys[:, 0], 3:6], ys)
        else:
            np.testing.assert_array_equal(tok[keys[:, 0]], ys)
            np.testing.assert_array_equal(tok[keys[:, 1], 0], r)


ONE_HEAD = M.ModelConfig(n_layers=1, n_heads=1, d_model=8, d=3, n=5, layer_norm=False, ffn=False)


def test_a_head_planted_to_attend_by_reward_scores_high():
    """Interleaved, one head: the positions mark reward tokens, the key reads the reward and the
    query is a constant, so the logit is 200 r_j on reward tokens and <= -1000 elsewhere: the
    head puts ~all its mass on the best seen candidate's r token."""
    cfg = ONE_HEAD
    p = _random_params(cfg)
    T, dh = M.seq_len(cfg), cfg.head_size
    pos = np.zeros((T, 8), np.float32)
    pos[2::3, 3] = 1.0  # slot 3: "this is a reward token"
    wq, wk = np.zeros((1, 8, 1, dh), np.float32), np.zeros((1, 8, 1, dh), np.float32)
    bq, bk = np.zeros((1, 1, dh), np.float32), np.zeros((1, 1, dh), np.float32)
    bq[0, 0, 0] = 200.0 * math.sqrt(dh)
    wk[0, 0, 0, 0], wk[0, 3, 0, 0], bk[0, 0, 0] = 1.0, 10.0, -10.0
    p = p.replace(read_in=M.Dense(w=jnp.eye(3, 8), b=jnp.zeros(8)), pos=jnp.asarray(pos),
                  blocks=p.blocks.replace(attn=p.blocks.attn.replace(
                      wq=jnp.asarray(wq), wk=jnp.asarray(wk), bq=jnp.asarray(bq), bk=jnp.asarray(bk))))
    res = best_candidate_attention(p, cfg, _separated(8, 5, 3, seed=1))
    best, worst = np.asarray(res["best"]), np.asarray(res["worst"])  # (B, L, H, T')
    assert best.shape == (8, 1, 1, 4) and res["t"] == [1, 2, 3, 4]
    assert best.min() > 0.99 and worst[..., 1:].max() < 0.01
    assert (res["fit"]["layer"], res["fit"]["head"]) == (0, 0)
    assert min(res["lift"]) > 0.5 and min(res["contrast"]) > 0.98
    np.testing.assert_allclose(res["uniform"], 2 / (3 * np.arange(1, 5) + 1))
    assert res["per_t"]["best"]["low"][0] > 0.99


def test_the_constructions_head_A_attends_to_the_best_candidate():
    """The causal construction (stacked tokens): layer 0's head A (head 0) selects the best of
    the first t candidates at every position; its head B (the PL softmax) does not."""
    spec = construct.spec_for(4, 3, np.eye(3), causal=True)
    cfg, params = construct.build(spec, jnp.float32)
    res = best_candidate_attention(params, cfg, _separated(8, 4, 3, seed=2))
    best, worst = np.asarray(res["best"]), np.asarray(res["worst"])
    assert best[:, 0, 0].min() > 0.99 and worst[:, 0, 0, 1:].max() < 0.01
    assert res["heads"]["layer 0 head 1"]["contrast"] < 0.9
    assert min(res["lift"]) > 0.4


def test_a_random_init_model_attends_about_uniformly():
    cfg = ONE_HEAD  # the planted test's architecture (one compiled program for both)
    res = best_candidate_attention(_init(jax.random.PRNGKey(5), cfg), cfg, _separated(8, 5, 3, seed=3))
    lift = np.asarray(res["best"]) - np.asarray(res["uniform"])
    assert np.abs(lift).max() < 0.05
    assert all(abs(v["lift"]) < 0.02 for v in res["heads"].values())


@pytest.mark.parametrize("change, match", [
    (dict(causal=False), "config.causal"),
    (dict(attention="linear"), "config.attention"),
])
def test_best_candidate_attention_refuses_unmeasurable_configs(change, match):
    cfg = dataclasses.replace(CFG, **change)
    with pytest.raises(ValueError, match=match):
        best_candidate_attention(_random_params(cfg), cfg, _separated(4, 5, 3))


def test_best_candidate_attention_refuses_bad_contexts():
    params, ctx = _random_params(CFG), _separated(4, 5, 3)
    with pytest.raises(ValueError, match="at least 4 contexts"):
        best_candidate_attention(params, CFG, jax.tree_util.tree_map(lambda a: np.asarray(a)[:3], ctx))
    with pytest.raises(ValueError, match="leading batch axis"):
        best_candidate_attention(params, CFG, jax.tree_util.tree_map(lambda a: np.asarray(a)[0], ctx))
    rewards = np.array(ctx.rewards)
    rewards[2, 1] = rewards[2, 0]
    tied = ctx.replace(rewards=jnp.asarray(rewards))
    with pytest.raises(ValueError, match="ctx.rewards: context 2 has a tie"):
        best_candidate_attention(params, CFG, tied)
    with pytest.raises(ValueError, match="config says"):
        best_candidate_attention(params, CFG, _separated(4, 4, 3))
