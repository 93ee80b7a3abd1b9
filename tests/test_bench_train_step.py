"""The train-step benchmark's FLOP counts against XLA's own cost analysis.

XLA counts a ``lax.scan`` body once, whatever the trip count, so the configs here have one
layer; its count also includes elementwise work (norms, softmax, GELU), so the analytic
matmul count must lie a little below it, never above.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from icalign import model as M
from icalign.benchmarks._common import xla_flops
from icalign.benchmarks.train_step import dense_only_step, model_flops


def _xla_flops(fn, *args) -> float:
    return xla_flops(jax.jit(fn).lower(*args).compile())


@pytest.mark.parametrize("overrides", [
    {},
    {"ffn": False},
    {"token_layout": "stacked", "n_heads": 4, "head_dim": 8},
])
def test_model_flops_matches_xla_forward(overrides):
    cfg = dataclasses.replace(M.BASE, **{"n_layers": 1, "d_model": 64, "n_heads": 2, **overrides})
    batch = 4
    params = M.init(jax.random.PRNGKey(0), cfg)
    tokens = jnp.zeros((batch, M.seq_len(cfg), M.token_dim(cfg)))
    xla = _xla_flops(lambda p, t: M.apply(p, t, cfg), params, tokens)
    ours = model_flops(cfg, batch)["forward"]
    assert 0.85 * xla <= ours <= xla, (ours, xla)


@pytest.mark.parametrize("ffn", [True, False])
def test_dense_only_step_flops_match_xla(ffn):
    cfg = dataclasses.replace(M.BASE, n_layers=1, d_model=48, n_heads=3, ffn=ffn)
    fn, args, flops = dense_only_step(cfg, batch=4)
    xla = _xla_flops(fn, *args)
    assert 0.95 * xla <= flops <= xla, (flops, xla)
    # Its dense products are the step's: the model count minus attention products and I/O.
    step = model_flops(cfg, 4)["step"]
    assert flops < step
