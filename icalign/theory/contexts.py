"""Random contexts that meet the constructions' preconditions, and constructions built for them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.tasks import Context
from icalign.core.validate import check_int, check_key
from icalign.theory.construct import PLConstruction

__all__ = ["separated_contexts", "spec_for"]


def separated_contexts(key: jax.Array, batch: int, n: int, d: int, best_first: bool = False,
                       dtype=jnp.float64):
    """Random contexts that meet the preconditions: candidates and query ~ N(0, I), rewards a
    random permutation of (k + 1/2 + U(-0.2, 0.2)) / n, so every gap is >= 0.6 / n and all lie
    in [0, 1] (best-first order if asked). y* is not defined here (zeros)."""
    check_key("key", key)
    for name, value, minimum in (("batch", batch, 1), ("n", n, 2), ("d", d, 1)):
        check_int(name, value, minimum)
    k_r, k_p, k_y, k_x = jax.random.split(key, 4)
    base = (jnp.arange(n, dtype=dtype)[None, :] + 0.5 + jax.random.uniform(k_r, (batch, n), dtype, -0.2, 0.2)) / n
    if best_first:
        r = base[:, ::-1]
    else:
        r = jax.vmap(jax.random.permutation)(jax.random.split(k_p, batch), base)
    ys = jax.random.normal(k_y, (batch, n, d), dtype)
    x = jax.random.normal(k_x, (batch, d), dtype)
    return Context(x=x, ys=ys, r_true=r, rewards=r, y_star=jnp.zeros((batch, d), dtype))


def spec_for(n: int, d: int, W0, selection: float = 50.0, **fields) -> PLConstruction:
    """A construction for the contexts of :func:`separated_contexts` (reward gaps >= 0.6 / n):
    built for gap = 0.5 / n, with selection strength B * gap = ``selection`` (50 gives
    float64 exactness) and M = 4 B + 100, unless ``fields`` give B or M."""
    gap = 0.5 / check_int("n", n, minimum=2)
    fields.setdefault("B", selection / gap)
    fields.setdefault("M", 4 * fields["B"] + 100.0)
    return PLConstruction(d=d, n=n, W0=np.asarray(W0), gap=gap, **fields)
