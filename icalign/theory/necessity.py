"""Necessity of each component: the best error a reduced architecture reaches on the PL step.

The target map is one GD step on the Plackett-Luce loss (squared-distance reward), the map the
full construction of :mod:`icalign.construct` computes exactly: y+ = y0 + eta beta sum_i
(y_tau(i) - ybar_i), y0 = W0 x, on random contexts whose rewards meet the construction's
preconditions. Each architecture (the construction's config with one factor toggled) is
trained directly on that target, several seeds at once, and scored on held-out contexts by the
relative error

    rel = E ||f(ctx) - y+||^2 / E ||y+ - y0||^2,

the fraction of the GD update the model misses (1 = no better than answering y0, which the
model can do by copying the read-in). docs/theory.md section 3 predicts a floor > 0 for each
reduced architecture and ~0 for the full one. This module holds the theory's part (the
architectures and the target); training them is :mod:`icalign.analysis.necessity`, the verdicts
:mod:`icalign.analysis.necessity_claims`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from icalign import model
from icalign.theory import construct, gd

__all__ = ["VARIANTS", "variant_configs", "target", "target_from", "relative_error"]

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
    return target_from(jnp.asarray(spec.W0, ctx.ys.dtype), spec.eta, spec.beta, ctx)


def target_from(W0, eta, beta, ctx):
    """:func:`target` from the construction's numbers (traceable: W0 an array)."""
    y0 = jnp.einsum("ij,bj->bi", W0, ctx.x)
    eta_w = eta / jnp.sum(ctx.x * ctx.x, -1)  # the step in W-space that moves y by eta (see construct)
    step = jax.vmap(lambda x, ys, r, e: gd.gd_step(W0, x, ys, r, e, "sqdist", beta) @ x)
    return y0, step(ctx.x, ctx.ys, ctx.rewards, eta_w)


def relative_error(pred, y0, y_plus) -> jax.Array:
    return jnp.sum((pred - y_plus) ** 2) / jnp.sum((y_plus - y0) ** 2)
