"""Many architectures in one program: run-time gates over a common "super" architecture.

The ablation variants of a base (fewer layers, fewer heads at the same head size, linear
instead of softmax attention, no FFN, no LayerNorm) all fit inside one super architecture with
the largest of each factor. :class:`Gates` (arrays, one set per model) switch the super
architecture into each variant at run time, so the models of a sweep can be trained in one
vmapped program instead of one program per architecture:

* ``depth``: layers ``depth``.. pass the residual stream through unchanged;
* ``heads``: heads ``heads``.. contribute nothing;
* ``attention``: the attention kind, an index into ``ModelConfig`` ATTENTIONS (softmax,
  linear, relu, linear_mean; the mask is kept by all);
* ``ffn``: the FFN's output is added, else not;
* ``layer_norm``: the pre-LN norms and the final norm apply, else the identity.

A gated model computes exactly its variant's function on its variant's parameters
(:func:`embed` puts them into the super shapes, :func:`extract` takes them back); the inactive
parts get zero gradients, so Adam leaves them untouched. The arithmetic differs only by the
zero terms the padded products add: float rounding, not another model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign.model.config import ATTENTIONS, ModelConfig
from icalign.model.params import Params

__all__ = ["Gates", "SHAPE_FIELDS", "super_config", "gates_for", "embed", "extract"]

#: fields every member of a group must share with its super architecture (they set shapes or
#: change the computation in ways the gates do not express)
SHAPE_FIELDS = ("d_model", "ffn_size", "ffn_activation", "causal", "positional", "bias", "token_layout", "d", "n",
                "precision", "head_size")


@struct.dataclass
class Gates:
    depth: jax.Array
    heads: jax.Array
    attention: jax.Array
    ffn: jax.Array
    layer_norm: jax.Array


def _shape_key(c: ModelConfig) -> tuple:
    return tuple(getattr(c, f) for f in SHAPE_FIELDS)


def super_config(configs: Sequence[ModelConfig]) -> ModelConfig:
    """The smallest architecture every config in ``configs`` is a gated variant of; a
    ValueError names the field that prevents it (configs that differ in shapes must go to
    separate groups)."""
    configs = list(configs)
    if not configs:
        raise ValueError("configs must list at least one ModelConfig")
    first = configs[0]
    for c in configs[1:]:
        for f in SHAPE_FIELDS:
            if getattr(c, f) != getattr(first, f):
                raise ValueError(f"configs differ in {f} ({getattr(first, f)!r} vs {getattr(c, f)!r}): "
                                 "they cannot share one program")
        if c.use_final_norm != c.layer_norm or first.use_final_norm != first.layer_norm:
            raise ValueError("gated variants need final_norm to follow layer_norm")
    return dataclasses.replace(
        first, n_layers=max(c.n_layers for c in configs), n_heads=max(c.n_heads for c in configs),
        head_dim=first.head_size, ffn_width=first.ffn_size, ffn=any(c.ffn for c in configs),
        layer_norm=any(c.layer_norm for c in configs), final_norm=None, attention="softmax")


def gates_for(variant: ModelConfig, sup: ModelConfig) -> dict:
    """The gate values (Python numbers) that make ``sup`` compute ``variant``."""
    if _shape_key(variant) != _shape_key(sup) or variant.n_layers > sup.n_layers or variant.n_heads > sup.n_heads \
            or (variant.ffn and not sup.ffn) or (variant.layer_norm and not sup.layer_norm):
        raise ValueError(f"{variant} is not a gated variant of {sup}")
    return {"depth": variant.n_layers, "heads": variant.n_heads, "attention": ATTENTIONS.index(variant.attention),
            "ffn": variant.ffn, "layer_norm": variant.layer_norm}


def stack_gates(rows: Sequence[dict]) -> Gates:
    """Gates with a leading model axis from per-model gate values."""
    return Gates(depth=jnp.asarray([r["depth"] for r in rows], jnp.int32),
                 heads=jnp.asarray([r["heads"] for r in rows], jnp.int32),
                 attention=jnp.asarray([r["attention"] for r in rows], jnp.int32),
                 ffn=jnp.asarray([r["ffn"] for r in rows], bool),
                 layer_norm=jnp.asarray([r["layer_norm"] for r in rows], bool))


def _pad(a, shape, fill=0.0):
    """``a`` in the top-left corner of an array of ``shape`` filled with ``fill``."""
    out = np.full(shape, fill, np.asarray(a).dtype)
    out[tuple(slice(0, n) for n in np.shape(a))] = np.asarray(a)
    return out


def embed(params: Params, variant: ModelConfig, sup: ModelConfig) -> Params:
    """``params`` of ``variant`` placed in the shapes of ``sup``: missing layers, heads and
    FFNs are zeros, missing norms are the identity norm (scale 1, bias 0); all of them are
    switched off by the variant's gates, so their values never matter."""
    from icalign.model.params import init

    gates_for(variant, sup)  # validates
    template = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), sup))
    flat_v = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        shape = leaf.shape
        default = 1.0 if name.endswith(".scale") else 0.0
        if name not in flat_v:
            return jnp.full(shape, default, leaf.dtype)
        return jnp.asarray(_pad(flat_v[name], shape, default))

    return jax.tree_util.tree_map_with_path(fill, template)


def extract(params: Params, variant: ModelConfig, sup: ModelConfig) -> Params:
    """The inverse of :func:`embed`: ``variant``'s own parameters out of gated ``params``."""
    from icalign.model.params import init

    gates_for(variant, sup)
    template = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), variant))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: flat[jax.tree_util.keystr(path)][tuple(slice(0, n) for n in leaf.shape)], template)
