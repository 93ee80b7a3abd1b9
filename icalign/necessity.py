"""Necessity of each component: the best error a reduced architecture reaches on the PL step.

The target map is one GD step on the Plackett-Luce loss (squared-distance reward), the map the
full construction of :mod:`icalign.construct` computes exactly: y+ = y0 + eta beta sum_i
(y_tau(i) - ybar_i), y0 = W0 x, on random contexts whose rewards meet the construction's
preconditions. Each architecture (the construction's config with one factor toggled) is
trained directly on that target by Adam on the squared error, several seeds at once (vmap),
and scored on held-out contexts by the relative error

    rel = E ||f(ctx) - y+||^2 / E ||y+ - y0||^2,

the fraction of the GD update the model misses (1 = no better than answering y0, which the
model can do by copying the read-in). THEORY.md section 3 predicts a floor > 0 for each
reduced architecture and ~0 for the full one.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icalign import construct, gd, model

__all__ = ["VARIANTS", "variant_configs", "target", "relative_error", "fit_variant"]

VARIANTS = ("full", "linear attention", "one head", "no FFN", "half the blocks")


def variant_configs(spec: construct.PLConstruction, d_model: int = 64, head_dim: int = 16,
                    ffn_width: int = 128) -> dict[str, model.ModelConfig]:
    """The construction's architecture (2 softmax heads, ReLU FFN, N-1 blocks, no LayerNorm,
    no positions, stacked tokens) at a trainable width, and each reduced architecture (one
    factor changed). The width is not the construction's minimal 4d+6: at that width Adam
    from a random init stalls (relative error ~0.2-0.4 after 1500 steps at N = 4, against
    ~0.02 at width 64), and a floor caused by the optimiser would say nothing about the
    architecture."""
    full = dataclasses.replace(spec.config(), d_model=d_model, head_dim=head_dim, ffn_width=ffn_width,
                               ffn=True)
    return {
        "full": full,
        "linear attention": dataclasses.replace(full, attention="linear"),
        # One head with the same total attention width (head_dim doubled): only the head count changes.
        "one head": dataclasses.replace(full, n_heads=1, head_dim=2 * full.head_size),
        "no FFN": dataclasses.replace(full, ffn=False),
        "half the blocks": dataclasses.replace(full, n_layers=max(1, full.n_layers // 2)),
    }


def target(spec: construct.PLConstruction, ctx) -> tuple[jax.Array, jax.Array]:
    """(y0, y+) for a batch of contexts: the start and one closed-form PL GD step."""
    W0 = jnp.asarray(spec.W0, ctx.ys.dtype)

    def one(x, ys, r):
        eta_w = spec.eta / jnp.dot(x, x)
        return W0 @ x, gd.gd_step(W0, x, ys, r, eta_w, "sqdist", spec.beta) @ x

    return jax.vmap(one)(ctx.x, ctx.ys, ctx.rewards)


def relative_error(pred, y0, y_plus) -> jax.Array:
    return jnp.sum((pred - y_plus) ** 2) / jnp.sum((y_plus - y0) ** 2)


def _query_output(params, ctx, cfg):
    return model.apply(params, model.tokenize(ctx, cfg), cfg)[..., 0, :]


@partial(jax.jit, static_argnames=("cfg", "steps", "batch", "n", "d"))
def _fit(seeds_key, spec_W0, eta, beta, cfg, steps, batch, n, d, lr):
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))

    def data(key):
        ctx = construct.separated_contexts(key, batch, n, d, dtype=jnp.float32)
        y0 = jnp.einsum("ij,bj->bi", spec_W0, ctx.x)
        eta_w = eta / jnp.sum(ctx.x * ctx.x, -1)
        step = jax.vmap(lambda x, ys, r, e: gd.gd_step(spec_W0, x, ys, r, e, "sqdist", beta) @ x)
        return ctx, y0, step(ctx.x, ctx.ys, ctx.rewards, eta_w)

    def train_one(key):
        k_init, k_data = jax.random.split(key)
        params = model.init(k_init, cfg)
        state = opt.init(params)

        def body(carry, step):
            params, state = carry
            ctx, y0, yp = data(jax.random.fold_in(k_data, step))
            loss, grads = jax.value_and_grad(
                lambda p: jnp.mean(jnp.sum((_query_output(p, ctx, cfg) - yp) ** 2, -1)))(params)
            upd, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, upd), state), loss

        (params, _), losses = jax.lax.scan(body, (params, state), jnp.arange(steps))
        ctx, y0, yp = data(jax.random.fold_in(k_data, steps + 10_000))  # held out
        return relative_error(_query_output(params, ctx, cfg), y0, yp), losses

    return jax.vmap(train_one)(seeds_key)


def fit_variant(key, spec: construct.PLConstruction, cfg: model.ModelConfig, seeds: int, steps: int,
                batch: int = 64, lr: float = 3e-3) -> tuple[np.ndarray, np.ndarray]:
    """Train ``seeds`` random inits of ``cfg`` on the PL-step target at once (vmap).

    Returns (held-out relative error per seed, training-loss curves (seeds, steps))."""
    keys = jax.random.split(key, seeds)
    rel, curves = _fit(keys, jnp.asarray(spec.W0, jnp.float32), spec.eta, spec.beta, cfg, steps,
                       batch, spec.n, spec.d, lr)
    return np.asarray(rel), np.asarray(curves)
