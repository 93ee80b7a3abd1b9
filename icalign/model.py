"""The one transformer: a frozen config, a typed params pytree, ``init`` and a pure ``apply``.

Trained weights (``icalign.train``) and hand-built weights (the constructions of THEORY.md
section 3) are the same :class:`Params` type fed to the same :func:`apply`; every
architecture variant is a static toggle of :class:`ModelConfig`, never a copy of the model.

Architecture (GPT-2, pre-LN; THEORY.md section 4)::

    h_0   = read_in(token) + pos                      (pos only if ``positional``)
    h_l+1 = h_l + Attn(LN1(h_l));  h_l+1 += FFN(LN2(h_l+1))   (LN is the identity if not
                                                                ``layer_norm``; FFN only if ``ffn``)
    out   = read_out(LN_f(h_L))                       (LN_f only if ``final_norm``)

    Attn(h) = sum_heads  w(q k^T / sqrt(head_dim), mask) v  W_o,  with the causal mask kept
    by every variant of w:
        softmax: w = softmax over visible keys          (GPT-2)
        linear : w = logits * visible                   (scaled, unnormalised: the published
                                                          "no softmax" variant)
        relu   : w = relu(logits) * visible             (unnormalised)

Token layouts (see :func:`tokenize` and :func:`readout_positions`):

* ``interleaved`` (published): x_1, y_1, r_1, x_2, y_2, r_2, ... with the reward padded to D
  dims (r, 0, ..., 0); 3N tokens of width D. The prediction is read at each x token: token 3n
  has seen the n complete triplets before it, n = 0..N-1.
* ``stacked`` (the theory's): a query token [x; 0; 0; 0; 0] followed by one token
  [x; y_j; r_j; 1; ||y_j||^2 / 2] per candidate; N+1 tokens of width 2D+3. The flag (1 on
  candidates, 0 on the query) is the construction's "alive" bit. ||y_j||^2 / 2 is there for
  the softmax identity of THEORY.md section 2 (the key-side logit bias -beta ||y_j||^2 / 2):
  it is not a linear function of the other features, so no read-in could supply it, and a
  trained model is free to ignore it. Position n (0-indexed) has seen exactly
  the candidates 1..n, so the prediction for "n seen" is read at position n: the query token
  for n = 0, the n-th candidate's own token for n >= 1. :func:`predict` returns n = 0..N-1
  like the interleaved layout; ``apply`` also gives position N (all N seen).

"n seen" holds only with ``causal=True`` (the default, and kept by every ablation: the
published no-softmax and no-FFN variants dropped the mask and leaked the answer).

CPU speed: dense layers act on 2-D (tokens x features) arrays, the batch and time axes folded
together; only attention uses (batch, heads, time, head_dim). The layers are a ``lax.scan``
over a stacked :class:`Block` (leading axis ``n_layers``), so compile time does not grow with
depth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign._validate import check_choice, check_int
from icalign.tasks import Context

__all__ = [
    "ModelConfig",
    "BASE",
    "ATTENTIONS",
    "ACTIVATIONS",
    "LAYOUTS",
    "Dense",
    "LayerNorm",
    "Attention",
    "FFN",
    "Block",
    "Params",
    "init",
    "apply",
    "tokenize",
    "predict",
    "readout_positions",
    "token_dim",
    "seq_len",
    "param_count",
    "stack_blocks",
    "unstack_blocks",
    "config_hash",
    "check_params",
    "attention_weights",
]

ATTENTIONS = ("softmax", "linear", "relu")
ACTIVATIONS = ("gelu", "relu")
LAYOUTS = ("interleaved", "stacked")
LN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _field_error(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"ModelConfig.{field} must be {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static architecture of the one transformer (all toggles; validated on construction).

    ``head_dim=None`` means d_model // n_heads (and d_model must then be divisible by
    n_heads); give ``head_dim`` to vary the head count at fixed head size, or the width at a
    fixed head count: the published heads ablation confounded the two. ``ffn_width=None``
    means 4 * d_model (GPT-2). ``final_norm=None`` follows ``layer_norm``. The resolved
    values are the properties ``head_size``, ``ffn_size`` and ``use_final_norm``; the fields
    keep what was given, so ``dataclasses.replace(cfg, n_heads=4)`` re-derives them.
    """

    n_layers: int = 20
    n_heads: int = 3
    d_model: int = 96
    head_dim: Optional[int] = None
    attention: str = "softmax"
    ffn: bool = True
    ffn_width: Optional[int] = None
    ffn_activation: str = "gelu"
    layer_norm: bool = True
    final_norm: Optional[bool] = None
    causal: bool = True
    positional: bool = True
    bias: bool = True
    token_layout: str = "interleaved"
    d: int = 5
    n: int = 20
    init_std: float = 0.02

    def __post_init__(self):
        # Messages name the field, the value and what is allowed (icalign._validate).
        for name in ("n_layers", "n_heads", "d_model", "d"):
            check_int(f"ModelConfig.{name}", getattr(self, name), minimum=1)
        check_int("ModelConfig.n", self.n, minimum=2)
        if self.head_dim is not None:
            check_int("ModelConfig.head_dim", self.head_dim, minimum=1)
        elif self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "either choose d_model as a multiple of n_heads, or give head_dim explicitly "
                "(head_dim is independent of n_heads and d_model)"
            )
        if self.ffn_width is not None:
            check_int("ModelConfig.ffn_width", self.ffn_width, minimum=1)
        check_choice("ModelConfig.attention", self.attention, ATTENTIONS)
        check_choice("ModelConfig.ffn_activation", self.ffn_activation, ACTIVATIONS)
        check_choice("ModelConfig.token_layout", self.token_layout, LAYOUTS)
        for name in ("ffn", "layer_norm", "causal", "positional", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise _field_error(name, getattr(self, name), "True or False")
        if self.final_norm is not None and not isinstance(self.final_norm, bool):
            raise _field_error("final_norm", self.final_norm, "True, False or None (follow layer_norm)")
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and std > 0):
            raise _field_error("init_std", std, "a finite number > 0")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ffn_size(self) -> int:
        return 4 * self.d_model if self.ffn_width is None else self.ffn_width

    @property
    def use_final_norm(self) -> bool:
        return self.layer_norm if self.final_norm is None else self.final_norm

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The published base config: 20 layers, 3 heads, width 96 (head_dim 32), interleaved tokens.
BASE = ModelConfig()


def config_hash(*parts) -> str:
    """A short stable hash of configs / JSON-able values (names run folders)."""
    def norm(p):
        if dataclasses.is_dataclass(p) and not isinstance(p, type):
            return {"__type__": type(p).__name__, **dataclasses.asdict(p)}
        return p
    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Params pytree
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class Dense:
    """y = x @ w + b. w (in, out), b (out,) or None."""

    w: jax.Array
    b: Optional[jax.Array] = None


@struct.dataclass
class LayerNorm:
    scale: jax.Array
    bias: jax.Array


@struct.dataclass
class Attention:
    """Multi-head attention. wq, wk, wv (d_model, H, head_dim); wo (H, head_dim, d_model).
    Biases (optional): bq, bk, bv (H, head_dim), bo (d_model,). A query bias against a key
    feature gives a key-side logit bias (THEORY.md section 2, the softmax identity)."""

    wq: jax.Array
    wk: jax.Array
    wv: jax.Array
    wo: jax.Array
    bq: Optional[jax.Array] = None
    bk: Optional[jax.Array] = None
    bv: Optional[jax.Array] = None
    bo: Optional[jax.Array] = None


@struct.dataclass
class FFN:
    """act(x @ w1 + b1) @ w2 + b2; w1 (d_model, F), w2 (F, d_model)."""

    w1: jax.Array
    w2: jax.Array
    b1: Optional[jax.Array] = None
    b2: Optional[jax.Array] = None


@struct.dataclass
class Block:
    """One pre-LN block. In :class:`Params` every leaf has a leading (n_layers,) axis."""

    attn: Attention
    ln1: Optional[LayerNorm] = None
    ln2: Optional[LayerNorm] = None
    ffn: Optional[FFN] = None


@struct.dataclass
class Params:
    """All weights of the model; absent parts (toggled off) are None.

    read_in (token_dim -> d_model), pos (seq_len, d_model), blocks (stacked over layers),
    ln_f, read_out (d_model -> d)."""

    read_in: Dense
    blocks: Block
    read_out: Dense
    pos: Optional[jax.Array] = None
    ln_f: Optional[LayerNorm] = None


def stack_blocks(blocks: Sequence[Block]) -> Block:
    """Per-layer blocks -> one Block with a leading layer axis (how :class:`Params` holds them)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)


def unstack_blocks(blocks: Block) -> list[Block]:
    """Inverse of :func:`stack_blocks`."""
    n = jax.tree_util.tree_leaves(blocks)[0].shape[0]
    return [jax.tree_util.tree_map(lambda a: a[i], blocks) for i in range(n)]


def token_dim(config: ModelConfig) -> int:
    """Width of one input token: D (interleaved) or 2D + 3 (stacked: x, y, r, flag, |y|^2/2)."""
    return config.d if config.token_layout == "interleaved" else 2 * config.d + 3


def seq_len(config: ModelConfig) -> int:
    """Tokens per context: 3N (interleaved) or N + 1 (stacked)."""
    return 3 * config.n if config.token_layout == "interleaved" else config.n + 1


def readout_positions(config: ModelConfig) -> np.ndarray:
    """Token index where the prediction after n seen triplets is read, n = 0..N-1."""
    n = np.arange(config.n)
    return 3 * n if config.token_layout == "interleaved" else n


def init(key: jax.Array, config: ModelConfig, dtype=jnp.float32) -> Params:
    """GPT-2 init: every weight ~ N(0, init_std^2), biases 0, LayerNorm scale 1 / bias 0; the
    residual projections (attention W_o, FFN w2) scaled by 1/sqrt(2 n_layers) so the residual
    stream's variance does not grow with depth (Radford et al. 2019)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    L, H, dh, dm, F = config.n_layers, config.n_heads, config.head_size, config.d_model, config.ffn_size
    std = config.init_std
    res_std = std / math.sqrt(2 * L)
    shapes = {
        "wq": (L, dm, H, dh), "wk": (L, dm, H, dh), "wv": (L, dm, H, dh), "wo": (L, H, dh, dm),
        "w1": (L, dm, F) if config.ffn else None, "w2": (L, F, dm) if config.ffn else None,
        "read_in": (token_dim(config), dm), "read_out": (dm, config.d),
        "pos": (seq_len(config), dm) if config.positional else None,
    }
    shapes = {k: v for k, v in shapes.items() if v is not None}
    # One N(0, 1) draw for all weights, cut into pieces: each random op costs seconds of XLA
    # compile time on CPU, so ten separate draws made init compile slower than a train step.
    sizes = [math.prod(s) for s in shapes.values()]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    pieces = dict(zip(shapes, jnp.split(flat, np.cumsum(sizes)[:-1])))
    draws = {k: pieces[k].reshape(s) for k, s in shapes.items()}
    normal = lambda name, s: s * draws[name]
    zeros = lambda *shape: jnp.zeros(shape, dtype)
    ones = lambda *shape: jnp.ones(shape, dtype)
    bias = config.bias

    def ln():
        return LayerNorm(scale=ones(L, dm), bias=zeros(L, dm)) if config.layer_norm else None

    attn = Attention(
        wq=normal("wq", std),
        wk=normal("wk", std),
        wv=normal("wv", std),
        wo=normal("wo", res_std),
        bq=zeros(L, H, dh) if bias else None,
        bk=zeros(L, H, dh) if bias else None,
        bv=zeros(L, H, dh) if bias else None,
        bo=zeros(L, dm) if bias else None,
    )
    ffn = None
    if config.ffn:
        ffn = FFN(
            w1=normal("w1", std),
            w2=normal("w2", res_std),
            b1=zeros(L, F) if bias else None,
            b2=zeros(L, dm) if bias else None,
        )
    blocks = Block(attn=attn, ln1=ln(), ln2=ln() if config.ffn else None, ffn=ffn)
    # Read-in / read-out always carry a bias: they are the model's interface to the task, and
    # the bias plays the constant-1 feature of the constructions.
    read_in = Dense(w=normal("read_in", std), b=zeros(dm))
    read_out = Dense(w=normal("read_out", std), b=zeros(config.d))
    pos = normal("pos", std) if config.positional else None
    ln_f = LayerNorm(scale=ones(dm), bias=zeros(dm)) if config.use_final_norm else None
    return Params(read_in=read_in, blocks=blocks, read_out=read_out, pos=pos, ln_f=ln_f)


def param_count(params) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(params)))


def check_params(params: Params, config: ModelConfig) -> None:
    """Raise a clear ValueError if ``params`` do not fit ``config`` (shapes, toggled parts).
    Static (shapes only), so it runs at trace time at no cost."""
    if not isinstance(params, Params):
        raise ValueError(f"params must be an icalign.model.Params, got {type(params).__name__}")
    L, H, dh, dm = config.n_layers, config.n_heads, config.head_size, config.d_model

    def expect(name, arr, shape):
        if arr is None:
            raise ValueError(f"params.{name} is missing (None) but the config needs it ({config})")
        if tuple(arr.shape[-len(shape):]) != tuple(shape) or arr.ndim < len(shape):
            raise ValueError(f"params.{name} has shape {tuple(arr.shape)}, expected (..., {', '.join(map(str, shape))})")

    def present(name, part, wanted, toggle):
        if (part is not None) != wanted:
            state = "present" if part is not None else "absent"
            raise ValueError(f"params.{name} is {state} but config.{toggle}={wanted}; "
                             "init the params with the same config you apply them with")

    expect("read_in.w", params.read_in.w, (token_dim(config), dm))
    expect("read_out.w", params.read_out.w, (dm, config.d))
    a = params.blocks.attn
    for nm in ("wq", "wk", "wv"):
        expect(f"blocks.attn.{nm}", getattr(a, nm), (L, dm, H, dh))
    expect("blocks.attn.wo", a.wo, (L, H, dh, dm))
    present("pos", params.pos, config.positional, "positional")
    if params.pos is not None and (params.pos.shape[-1] != dm or params.pos.shape[-2] < seq_len(config)):
        raise ValueError(f"params.pos has shape {params.pos.shape}, expected ({seq_len(config)}, {dm})")
    present("blocks.ffn", params.blocks.ffn, config.ffn, "ffn")
    present("blocks.ln1", params.blocks.ln1, config.layer_norm, "layer_norm")
    present("blocks.ln2", params.blocks.ln2, config.layer_norm and config.ffn, "layer_norm (with ffn)")
    present("ln_f", params.ln_f, config.use_final_norm, "final_norm")
    if config.ffn:
        expect("blocks.ffn.w1", params.blocks.ffn.w1, (L, dm, config.ffn_size))
        expect("blocks.ffn.w2", params.blocks.ffn.w2, (L, config.ffn_size, dm))


# ---------------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------------


def _layer_norm(h_MxF, p: Optional[LayerNorm]):
    if p is None:
        return h_MxF
    mu = jnp.mean(h_MxF, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h_MxF - mu), axis=-1, keepdims=True)
    return (h_MxF - mu) * jax.lax.rsqrt(var + LN_EPS) * p.scale[None, :] + p.bias[None, :]


def _dense2d(h_MxF, w, b, in_axes: int = 1):
    """Dense layer on a 2-D (tokens, features) array. w's first ``in_axes`` axes are inputs,
    the rest outputs (e.g. (d_model, H, dh) or (H, dh, d_model)); both groups are flattened
    so XLA sees one plain 2-D matmul, which it differentiates much faster on CPU than a
    (batch, time, features) contraction."""
    n_in = int(np.prod(w.shape[:in_axes]))
    out = h_MxF @ w.reshape(n_in, -1)
    if b is not None:
        out = out + b.reshape(1, -1)
    return out


def attention_weights(logits_BxHxTxS, visible_TxS, kind: str):
    """Mixing weights from scaled logits q.k/sqrt(dh); ``visible`` is the causal mask (or all
    True). softmax normalises over visible keys; linear and relu do not normalise."""
    visible_TxS = jnp.broadcast_to(visible_TxS, logits_BxHxTxS.shape)
    if kind == "softmax":
        neg = jnp.asarray(jnp.finfo(logits_BxHxTxS.dtype).min / 2, logits_BxHxTxS.dtype)
        return jax.nn.softmax(jnp.where(visible_TxS, logits_BxHxTxS, neg), axis=-1)
    if kind == "linear":
        return jnp.where(visible_TxS, logits_BxHxTxS, 0.0)
    return jnp.where(visible_TxS, jax.nn.relu(logits_BxHxTxS), 0.0)


def _attention(h_MxF, p: Attention, B: int, T: int, config: ModelConfig):
    H, dh = config.n_heads, config.head_size
    # Heads move next to the batch axis before the T x T products: XLA's CPU batched matmul
    # ran them about twice as fast on (B, H, T, dh) operands as on (B, T, H, dh) ones. At the
    # base config (batch 256) the forward pass went from 1.37 to 1.18 s; the train step did
    # not change beyond noise, as its backward products take the same time either way.
    def heads(w, b):
        return _dense2d(h_MxF, w, b).reshape(B, T, H, dh).transpose(0, 2, 1, 3)

    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = heads(p.wq, p.bq), heads(p.wk, p.bk), heads(p.wv, p.bv)
    logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK) / math.sqrt(dh)
    if config.causal:
        visible_TxS = jnp.tril(jnp.ones((T, T), bool))
    else:
        visible_TxS = jnp.ones((T, T), bool)
    w_BxHxTxS = attention_weights(logits_BxHxTxS, visible_TxS, config.attention)
    mixed_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", w_BxHxTxS, v_BxHxSxK)
    mixed_MxHK = mixed_BxHxTxK.transpose(0, 2, 1, 3).reshape(B * T, H * dh)
    return _dense2d(mixed_MxHK, p.wo, p.bo, in_axes=2)


def _ffn(h_MxF, p: FFN, config: ModelConfig):
    act = jax.nn.gelu if config.ffn_activation == "gelu" else jax.nn.relu
    return _dense2d(act(_dense2d(h_MxF, p.w1, p.b1)), p.w2, p.b2)


def _block(h_MxF, blk: Block, B: int, T: int, config: ModelConfig):
    h_MxF = h_MxF + _attention(_layer_norm(h_MxF, blk.ln1), blk.attn, B, T, config)
    if config.ffn:
        h_MxF = h_MxF + _ffn(_layer_norm(h_MxF, blk.ln2), blk.ffn, config)
    return h_MxF


def apply(params: Params, tokens: jax.Array, config: ModelConfig) -> jax.Array:
    """Model output at every token: tokens (..., T, token_dim) -> (..., T, d). Pure.

    T may be shorter than ``seq_len(config)`` (a prefix of a context). With ``causal=True``
    output t depends on tokens 0..t only.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_params(params, config)
    shape = jnp.shape(tokens)
    if len(shape) < 2 or shape[-1] != token_dim(config):
        raise ValueError(
            f"tokens must have shape (..., T, {token_dim(config)}) for token_layout="
            f"{config.token_layout!r} and d={config.d}, got {shape}")
    T = shape[-2]
    if not 1 <= T <= seq_len(config):
        raise ValueError(f"tokens have T={T} positions; allowed 1..{seq_len(config)} (seq_len of the config)")
    lead = shape[:-2]
    B = int(np.prod(lead)) if lead else 1
    h_MxF = _dense2d(jnp.reshape(tokens, (B * T, shape[-1])), params.read_in.w, params.read_in.b)
    if config.positional:
        h_MxF = (h_MxF.reshape(B, T, -1) + params.pos[None, :T]).reshape(B * T, -1)

    # Rematerialise everything but the 2-D dense matmuls in the backward pass. Profiled on
    # the base config (forward + backward, batch 256, a shared 2-core CPU): saving every
    # residual spent its time zero-filling and writing (n_layers, tokens, 4 d_model) scan
    # buffers (6.6 s); saving only the dense outputs and recomputing attention, norms and
    # GELU took 5.0 s; unrolling the layers instead of scanning 5.7 s, compiling 4x longer.
    @partial(jax.checkpoint, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
             prevent_cse=False)
    def layer(h, blk):
        return _block(h, blk, B, T, config), None

    h_MxF, _ = jax.lax.scan(layer, h_MxF, params.blocks)
    h_MxF = _layer_norm(h_MxF, params.ln_f)
    out = _dense2d(h_MxF, params.read_out.w, params.read_out.b)
    return out.reshape(*lead, T, config.d)


# ---------------------------------------------------------------------------------------------
# Contexts <-> tokens
# ---------------------------------------------------------------------------------------------


def tokenize(ctx: Context, config: ModelConfig) -> jax.Array:
    """Tokens of a context (leading batch axes allowed). Uses x, ys and the *shown* rewards
    only; y* never enters. See the module docstring for both layouts."""
    x, ys, r = ctx.x, ctx.ys, ctx.rewards
    N, D = ys.shape[-2:]
    if (N, D) != (config.n, config.d):
        raise ValueError(f"context has (N, D) = ({N}, {D}) but the config says (n, d) = "
                         f"({config.n}, {config.d})")
    xs = jnp.broadcast_to(x[..., None, :], ys.shape)
    if config.token_layout == "interleaved":
        r_pad = jnp.zeros(ys.shape, ys.dtype).at[..., 0].set(r)
        triplets = jnp.stack([xs, ys, r_pad], axis=-2)  # (..., N, 3, D)
        return triplets.reshape(*ys.shape[:-2], 3 * N, D)
    half_sq = 0.5 * jnp.sum(ys * ys, axis=-1, keepdims=True)
    cands = jnp.concatenate([xs, ys, r[..., None], jnp.ones_like(r[..., None]), half_sq], axis=-1)
    query = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (D + 3,), x.dtype)], axis=-1)
    return jnp.concatenate([query[..., None, :], cands], axis=-2)


def predict(params: Params, ctx: Context, config: ModelConfig) -> jax.Array:
    """y_hat (..., N, D): row n is the prediction after n seen (query, response, reward)
    triplets, n = 0..N-1 (the layout of ``losses.prefix_plackett_luce``)."""
    out = apply(params, tokenize(ctx, config), config)
    return out[..., readout_positions(config), :]
