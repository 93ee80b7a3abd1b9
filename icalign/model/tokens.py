"""Contexts <-> tokens: the two token layouts and where each prediction is read.

See :mod:`icalign.model` for the layouts. Uses x, the candidates and the *shown* rewards
only; y* never enters a token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.tasks import Context, triplet_queries
from icalign.model.config import ModelConfig

__all__ = ["token_dim", "seq_len", "readout_positions", "tokenize"]


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


def tokenize(ctx: Context, config: ModelConfig) -> jax.Array:
    """Tokens of a context (leading batch axes allowed). Uses x, ys and the *shown* rewards
    only; y* never enters. See the module docstring for both layouts. With per-triplet
    queries (``ctx.xs``; stacked layout only) candidate j's token carries its own x_j and the
    query token carries the test query x."""
    x, ys, r = ctx.x, ctx.ys, ctx.rewards
    N, D = ys.shape[-2:]
    if (N, D) != (config.n, config.d):
        raise ValueError(f"context has (N, D) = ({N}, {D}) but the config says (n, d) = "
                         f"({config.n}, {config.d})")
    if ctx.xs is not None and config.token_layout != "stacked":
        # The interleaved layout reads each prediction at the next triplet's own query token,
        # so it has no place for a test query shared by all rows.
        raise ValueError(f"per-triplet queries need token_layout='stacked', got {config.token_layout!r}")
    xs = triplet_queries(ctx)
    if config.token_layout == "interleaved":
        r_pad = jnp.zeros(ys.shape, ys.dtype).at[..., 0].set(r)
        triplets = jnp.stack([xs, ys, r_pad], axis=-2)  # (..., N, 3, D)
        return triplets.reshape(*ys.shape[:-2], 3 * N, D)
    half_sq = 0.5 * jnp.sum(ys * ys, axis=-1, keepdims=True)
    cands = jnp.concatenate([xs, ys, r[..., None], jnp.ones_like(r[..., None]), half_sq], axis=-1)
    query = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (D + 3,), x.dtype)], axis=-1)
    return jnp.concatenate([query[..., None, :], cands], axis=-2)
