"""The one forward pass: ``apply(params, tokens, config, capture=False)``.

Pure and jit-able. With ``capture=True`` it also returns the residual stream after the
read-in and after every block, which every per-layer analysis (probes, layer-to-GD-step
matching) reads; with ``capture="attention"`` it returns every layer's per-head mixing weights
instead (icalign.analysis.attention reads them). Nothing outside this package touches the
layer helpers below.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.tasks import Context, check_context_values
from icalign.core.validate import check_real_array
from icalign.model.config import ATTENTIONS, ModelConfig
from icalign.model.params import FFN, Attention, Block, LayerNorm, Params, check_params
from icalign.model.tokens import readout_positions, seq_len, token_dim, tokenize

__all__ = ["apply", "predict", "readout", "resume", "attention_weights", "LN_EPS", "CAPTURES"]

LN_EPS = 1e-5
#: Values of ``apply``'s ``capture``: nothing extra, the residual stream (True is its alias, kept
#: for the callers that predate the string form), or the attention weights.
CAPTURES = (False, True, "residual", "attention")


def _layer_norm(h_MxF, p: Optional[LayerNorm]):
    if p is None:
        return h_MxF
    mu = jnp.mean(h_MxF, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h_MxF - mu), axis=-1, keepdims=True)
    return (h_MxF - mu) * jax.lax.rsqrt(var + LN_EPS) * p.scale[None, :] + p.bias[None, :]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(spec: str, a, b):
    """einsum(spec, a, b) on bfloat16 operands with float32 accumulation and a float32
    result; its gradients are the two transposed products, also bfloat16 x bfloat16 -> float32
    (autodiff of preferred_element_type would run them on other dtypes). Valid for specs where
    every contracted index appears in both operands, as for matmuls and attention."""
    return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)


def _bf16_fwd(spec, a, b):
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    return jnp.einsum(spec, a16, b16, preferred_element_type=jnp.float32), (a16, b16)


def _bf16_bwd(spec, res, g):
    a16, b16 = res
    lhs, out = spec.split("->")
    x, y = lhs.split(",")
    g16 = g.astype(jnp.bfloat16)
    da = jnp.einsum(f"{out},{y}->{x}", g16, b16, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{x},{out}->{y}", a16, g16, preferred_element_type=jnp.float32)
    return da, db


_bf16_einsum.defvjp(_bf16_fwd, _bf16_bwd)


def _product(spec: str, a, b, precision: str):
    """The model's every matmul: float32 as written, or bfloat16 operands (ModelConfig.precision)."""
    if precision == "bfloat16":
        return _bf16_einsum(spec, a, b)
    return jnp.einsum(spec, a, b) if spec != "mk,kn->mn" else a @ b


def _dense2d(h_MxF, w, b, in_axes: int = 1, precision: str = "float32"):
    """Dense layer on a 2-D (tokens, features) array. w's first ``in_axes`` axes are inputs,
    the rest outputs (e.g. (d_model, H, dh) or (H, dh, d_model)); both groups are flattened
    so XLA sees one plain 2-D matmul, which it differentiates much faster on CPU than a
    (batch, time, features) contraction."""
    n_in = int(np.prod(w.shape[:in_axes]))
    out = _product("mk,kn->mn", h_MxF, w.reshape(n_in, -1), precision)
    if b is not None:
        out = out + b.reshape(1, -1)
    return out


def attention_weights(logits_BxHxTxS, visible_TxS, kind: str):
    """Mixing weights from scaled logits q.k/sqrt(dh); ``visible`` is the causal mask (or all
    True). softmax normalises over visible keys; linear and relu do not normalise;
    linear_mean is linear attention divided by the number of visible keys (still bilinear in
    the tokens, so it cannot form the PL softmax weights, but its output no longer grows with
    the context length)."""
    visible_TxS = jnp.broadcast_to(visible_TxS, logits_BxHxTxS.shape)
    if kind == "softmax":
        neg = jnp.asarray(jnp.finfo(logits_BxHxTxS.dtype).min / 2, logits_BxHxTxS.dtype)
        return jax.nn.softmax(jnp.where(visible_TxS, logits_BxHxTxS, neg), axis=-1)
    if kind == "linear":
        return jnp.where(visible_TxS, logits_BxHxTxS, 0.0)
    if kind == "linear_mean":
        count = jnp.maximum(jnp.sum(visible_TxS, axis=-1, keepdims=True), 1).astype(logits_BxHxTxS.dtype)
        return jnp.where(visible_TxS, logits_BxHxTxS, 0.0) / count
    return jnp.where(visible_TxS, jax.nn.relu(logits_BxHxTxS), 0.0)


def _attention(h_MxF, p: Attention, B: int, T: int, config: ModelConfig, gates=None):
    """(output (B*T, d_model), mixing weights (B, H, T, T)): the weights are the very array the
    values are multiplied by, returned so that ``capture="attention"`` costs nothing extra:
    without capture the scan drops it, and the compiled forward pass, gradient and gated
    gradient were checked to be the same HLO as before this output existed."""
    H, dh = config.n_heads, config.head_size
    # Heads move next to the batch axis before the T x T products: XLA's CPU batched matmul
    # ran them about twice as fast on (B, H, T, dh) operands as on (B, T, H, dh) ones. At the
    # base config (batch 256) the forward pass went from 1.37 to 1.18 s; the train step did
    # not change beyond noise, as its backward products take the same time either way.
    prec = config.precision

    def heads(w, b):
        return _dense2d(h_MxF, w, b, precision=prec).reshape(B, T, H, dh).transpose(0, 2, 1, 3)

    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = heads(p.wq, p.bq), heads(p.wk, p.bk), heads(p.wv, p.bv)
    logits_BxHxTxS = _product("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, prec) / math.sqrt(dh)
    if config.causal:
        visible_TxS = jnp.tril(jnp.ones((T, T), bool))
    else:
        visible_TxS = jnp.ones((T, T), bool)
    w_BxHxTxS = attention_weights(logits_BxHxTxS, visible_TxS, config.attention)
    if gates is not None:  # a gated variant: its attention kind, its first `heads` heads
        kinds = [attention_weights(logits_BxHxTxS, visible_TxS, kind) for kind in ATTENTIONS]
        w_BxHxTxS = jnp.select([gates.attention == i for i in range(len(ATTENTIONS))], kinds)
        w_BxHxTxS = jnp.where((jnp.arange(H) < gates.heads)[None, :, None, None], w_BxHxTxS, 0.0)
    mixed_BxHxTxK = _product("bhts,bhsk->bhtk", w_BxHxTxS, v_BxHxSxK, prec)
    mixed_MxHK = mixed_BxHxTxK.transpose(0, 2, 1, 3).reshape(B * T, H * dh)
    return _dense2d(mixed_MxHK, p.wo, p.bo, in_axes=2, precision=prec), w_BxHxTxS


def _ffn(h_MxF, p: FFN, config: ModelConfig):
    act = jax.nn.gelu if config.ffn_activation == "gelu" else jax.nn.relu
    prec = config.precision
    return _dense2d(act(_dense2d(h_MxF, p.w1, p.b1, precision=prec)), p.w2, p.b2, precision=prec)


def _block(h_MxF, blk: Block, B: int, T: int, config: ModelConfig):
    """(residual after the block, its attention weights (B, H, T, T))."""
    att_MxF, w_BxHxTxS = _attention(_layer_norm(h_MxF, blk.ln1), blk.attn, B, T, config)
    h_MxF = h_MxF + att_MxF
    if config.ffn:
        h_MxF = h_MxF + _ffn(_layer_norm(h_MxF, blk.ln2), blk.ffn, config)
    return h_MxF, w_BxHxTxS


def _gated_norm(h_MxF, p, gates):
    return h_MxF if p is None else jnp.where(gates.layer_norm, _layer_norm(h_MxF, p), h_MxF)


def _gated_block(h_MxF, blk: Block, layer, B: int, T: int, config: ModelConfig, gates):
    """:func:`_block` of a gated variant (icalign.model.gates): where-selects, not products with
    0/1, so an inactive part passes its input through exactly and gets a zero gradient.
    Returns (residual, attention weights); a layer beyond the gated depth reports weights 0, as
    it mixes nothing."""
    att_MxF, w_BxHxTxS = _attention(_gated_norm(h_MxF, blk.ln1, gates), blk.attn, B, T, config, gates)
    out = h_MxF + att_MxF
    if config.ffn:
        out = jnp.where(gates.ffn, out + _ffn(_gated_norm(out, blk.ln2, gates), blk.ffn, config), out)
    active = layer < gates.depth
    return jnp.where(active, out, h_MxF), jnp.where(active, w_BxHxTxS, 0.0)


def _check_inputs(params: Params, tokens, config: ModelConfig):
    """(tokens as an array, lead shape, T). Tokens must be finite real floats: integers,
    booleans and complex numbers are refused, a list is converted; a tracer (apply under the
    library's own jit) is checked by dtype and shape only, at trace time, so compiled steps
    pay nothing."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_params(params, config)
    tokens = check_real_array("tokens", tokens)
    shape = jnp.shape(tokens)
    if len(shape) < 2 or shape[-1] != token_dim(config):
        raise ValueError(
            f"tokens must have shape (..., T, {token_dim(config)}) for token_layout="
            f"{config.token_layout!r} and d={config.d}, got {shape}")
    T = shape[-2]
    if not 1 <= T <= seq_len(config):
        raise ValueError(f"tokens have T={T} positions; allowed 1..{seq_len(config)} (seq_len of the config)")
    return tokens, shape[:-2], T


def _capture_mode(capture) -> Optional[str]:
    """None, "residual" or "attention" from ``apply``'s ``capture`` (checked before tracing).
    Only real bools and the two strings pass: 1, 0 or numpy bools are refused, as before."""
    if isinstance(capture, bool):
        return "residual" if capture else None
    if isinstance(capture, str) and capture in ("residual", "attention"):
        return capture
    raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {capture!r}")


def apply(params: Params, tokens: jax.Array, config: ModelConfig, capture=False, gates=None):
    """Model output at every token: tokens (..., T, token_dim) -> (..., T, d). Pure.

    T may be shorter than ``seq_len(config)`` (a prefix of a context). With ``causal=True``
    output t depends on tokens 0..t only.

    ``capture=True`` (or ``"residual"``) returns ``(out, residuals)``: ``residuals``
    (n_layers + 1, ..., T, d_model) is the residual stream after the read-in (and positions),
    row 0, and after each block, rows 1..n_layers; ``readout(params, residuals[-1], config)``
    is ``out``.

    ``capture="attention"`` returns ``(out, attention)``: ``attention`` (n_layers, ...,
    n_heads, T, T) holds, per layer and head, the weights row t (the query position) puts on
    column s (the key position), exactly the array the layer multiplies the values by. For
    ``attention="softmax"`` each row is a distribution over the visible keys (0 on masked
    ones). For the linear variants they are not a distribution: ``"linear"`` gives the scaled
    logits q.k / sqrt(head_dim) on visible keys, ``"relu"`` their positive part and
    ``"linear_mean"`` the logits divided by the number of visible keys (signed, unnormalised;
    0 on masked keys). With bfloat16 precision they are the float32 weights before the
    product casts them to bfloat16. With ``gates`` they are the gated model's: its attention
    kind, and 0 for its inactive heads and for layers beyond its depth.

    ``gates`` (:class:`icalign.model.gates.Gates`, scalars) run a gated variant of ``config``:
    fewer layers or heads, linear attention, no FFN or no LayerNorm, chosen at run time.
    """
    mode = _capture_mode(capture)
    tokens, lead, T = _check_inputs(params, tokens, config)
    B = int(np.prod(lead)) if lead else 1
    h_MxF = _dense2d(jnp.reshape(tokens, (B * T, jnp.shape(tokens)[-1])), params.read_in.w, params.read_in.b)
    if config.positional:
        h_MxF = (h_MxF.reshape(B, T, -1) + params.pos[None, :T]).reshape(B * T, -1)

    # Rematerialise each block in the backward pass from its input (only the residual stream
    # between blocks is kept). Paired timings of the base-config gradient (batch 256, 2-core
    # CPU, jax 0.10, one process): 3.59 s saving the dense outputs
    # (dots_with_no_batch_dims_saveable), 3.28 s saving nothing. Stacking the saved dense
    # outputs into (n_layers, tokens, features) scan buffers (zero-fill, then one write per
    # layer) cost more than recomputing the block. The gradients are bit-identical.
    def kept(h, w):  # what the scan stacks per layer: nothing unless capturing
        return {"residual": h, "attention": w}.get(mode)

    @partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    def layer(h, blk):
        h, w = _block(h, blk, B, T, config)
        return h, kept(h, w)

    @partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    def gated_layer(h, blk_and_index):
        h, w = _gated_block(h, *blk_and_index, B, T, config, gates)
        return h, kept(h, w)

    h0_MxF = h_MxF
    if gates is None:
        h_MxF, kept_L = jax.lax.scan(layer, h_MxF, params.blocks)
    else:
        h_MxF, kept_L = jax.lax.scan(gated_layer, h_MxF, (params.blocks, jnp.arange(config.n_layers)))
    out = _readout2d(params, h_MxF, gates).reshape(*lead, T, config.d)
    if mode is None:
        return out
    if mode == "attention":  # (L, B, H, T, T) -> (L, ..., H, T, T)
        return out, kept_L.reshape(config.n_layers, *lead, config.n_heads, T, T)
    residuals = jnp.concatenate([h0_MxF[None], kept_L], axis=0)
    return out, residuals.reshape(config.n_layers + 1, *lead, T, config.d_model)


def _readout2d(params: Params, h_MxF, gates=None):
    h_MxF = _layer_norm(h_MxF, params.ln_f) if gates is None else _gated_norm(h_MxF, params.ln_f, gates)
    return _dense2d(h_MxF, params.read_out.w, params.read_out.b)


def readout(params: Params, h: jax.Array, config: ModelConfig) -> jax.Array:
    """The output map read_out(LN_f(h)) applied to residuals h (..., d_model) -> (..., d):
    what ``apply`` does after the last block (use it on any layer's captured residual)."""
    check_params(params, config)
    if jnp.shape(h)[-1:] != (config.d_model,):
        raise ValueError(f"h must have shape (..., d_model={config.d_model}), got {jnp.shape(h)}")
    return _readout2d(params, jnp.reshape(h, (-1, config.d_model))).reshape(*jnp.shape(h)[:-1], config.d)


def resume(params: Params, h: jax.Array, config: ModelConfig, layer: int) -> jax.Array:
    """The output (..., T, d) of the model run on from the residual stream after ``layer``
    blocks, h (..., T, d_model) (row ``layer`` of ``apply(..., capture=True)``'s residuals):
    blocks layer+1..n_layers, then the read-out. ``resume(params, residuals[l], config, l)``
    is ``apply``'s output for every l; an edited h runs the rest of the model on the edit
    (activation patching). ``layer`` is a static Python int in 0..n_layers."""
    check_params(params, config)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= config.n_layers:
        raise ValueError(f"layer must be an int in 0..{config.n_layers} (n_layers), got {layer!r}")
    h = check_real_array("h", h)
    shape = jnp.shape(h)
    if len(shape) < 2 or shape[-1] != config.d_model or not 1 <= shape[-2] <= seq_len(config):
        raise ValueError(f"h must have shape (..., T, d_model={config.d_model}) with 1 <= T <= {seq_len(config)}, "
                         f"got {shape}")
    lead, T = shape[:-2], shape[-2]
    B = int(np.prod(lead)) if lead else 1
    rest = jax.tree_util.tree_map(lambda a: a[int(layer):], params.blocks)
    h_MxF, _ = jax.lax.scan(lambda x, blk: (_block(x, blk, B, T, config)[0], None),
                            jnp.reshape(h, (B * T, shape[-1])), rest)
    return _readout2d(params, h_MxF).reshape(*lead, T, config.d)


def predict(params: Params, ctx: Context, config: ModelConfig, gates=None) -> jax.Array:
    """y_hat (..., N, D): row n is the prediction after n seen (query, response, reward)
    triplets, n = 0..N-1 (the layout of ``losses.prefix_plackett_luce``). Every field of
    ``ctx`` must hold finite real floats (checked by name, before tokenizing)."""
    if not isinstance(ctx, Context):
        raise ValueError(f"ctx must be an icalign.tasks.Context, got {type(ctx).__name__}")
    check_context_values(ctx)
    out = apply(params, tokenize(ctx, config), config, gates=gates)
    return out[..., readout_positions(config), :]
