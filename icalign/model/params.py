"""The model's weights: a typed pytree (:class:`Params`), its GPT-2 ``init`` and shape checks.

Trained and hand-built weights (``icalign.theory.construct``) are the same :class:`Params`
type; absent parts (toggled off in the config) are ``None``. Per-layer blocks are stacked on
a leading ``n_layers`` axis, so the forward pass scans over them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign.core.validate import check_key, check_memory
from icalign.model.config import ModelConfig
from icalign.model.tokens import seq_len, token_dim

__all__ = ["Dense", "LayerNorm", "Attention", "FFN", "Block", "Params", "init", "param_count", "config_param_count",
           "check_params", "stack_blocks", "unstack_blocks"]


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
    feature gives a key-side logit bias (docs/theory.md section 2, the softmax identity)."""

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


def init(key: jax.Array, config: ModelConfig, dtype=jnp.float32) -> Params:
    """GPT-2 init: every weight ~ N(0, init_std^2), biases 0, LayerNorm scale 1 / bias 0; the
    residual projections (attention W_o, FFN w2) scaled by 1/sqrt(2 n_layers) so the residual
    stream's variance does not grow with depth (Radford et al. 2019)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    check_key("key", key)
    check_memory(f"the parameters of {config}", np.dtype(dtype).itemsize * config_param_count(config),
                 "n_layers, d_model, n_heads, head_dim or ffn_width")
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


def config_param_count(config: ModelConfig) -> int:
    """The number of parameters :func:`init` creates for ``config``, from the shapes alone
    (nothing allocated): used to refuse a model that cannot fit before building it."""
    L, H, dh, dm, F = config.n_layers, config.n_heads, config.head_size, config.d_model, config.ffn_size
    b = config.bias
    attn = 4 * dm * H * dh + (3 * H * dh + dm if b else 0)
    ffn = (2 * dm * F + (F + dm if b else 0)) if config.ffn else 0
    norms = 2 * dm * (int(config.layer_norm) + int(config.layer_norm and config.ffn))
    io_ = token_dim(config) * dm + dm + dm * config.d + config.d
    return L * (attn + ffn + norms) + io_ + (seq_len(config) * dm if config.positional else 0) \
        + (2 * dm if config.use_final_norm else 0)


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
