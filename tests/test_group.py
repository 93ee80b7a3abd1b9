"""Many architectures in one program: a gated variant computes exactly its standalone model,
and a group trained together equals each variant trained alone up to float rounding."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from icalign import model as M
from icalign import train as T
from icalign.model import gates as G
from icalign.tasks import sample_contexts

BASE = M.ModelConfig(n_layers=2, n_heads=2, d_model=16, d=3, n=6, token_layout="stacked")
VARIANTS = [BASE, dataclasses.replace(BASE, n_layers=1), dataclasses.replace(BASE, n_heads=1, head_dim=8),
            dataclasses.replace(BASE, attention="linear"), dataclasses.replace(BASE, ffn=False),
            dataclasses.replace(BASE, layer_norm=False), dataclasses.replace(BASE, attention="linear_mean"),
            dataclasses.replace(BASE, attention="relu")]
TRAIN = T.TrainConfig(lr=3e-3, batch=4, steps=4, chunk=2, checkpoint_every=2)


def test_a_gated_variant_is_its_standalone_model():
    sup = G.super_config(VARIANTS)
    assert (sup.n_layers, sup.n_heads, sup.attention, sup.ffn, sup.layer_norm) == (2, 2, "softmax", True, True)
    ctx = sample_contexts(jax.random.PRNGKey(1), 4, BASE.d, BASE.n)
    for v in VARIANTS:
        params = M.init(jax.random.PRNGKey(2), v)
        gates = jax.tree_util.tree_map(lambda a: a[0], G.stack_gates([G.gates_for(v, sup)]))
        out = M.predict(G.embed(params, v, sup), ctx, sup, gates=gates)
        np.testing.assert_allclose(out, M.predict(params, ctx, v), rtol=1e-6, atol=1e-7)
        back = G.extract(G.embed(params, v, sup), v, sup)
        for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
            np.testing.assert_array_equal(a, b)


def test_configs_that_differ_in_shape_are_separate_groups():
    wide = dataclasses.replace(BASE, n_heads=1)  # head size 16, not 8: another program
    assert [len(g) for g in T.groups(VARIANTS + [wide])] == [len(VARIANTS), 1]
    with pytest.raises(ValueError, match="head_size"):
        G.super_config([BASE, wide])
    assert G.super_config([BASE, dataclasses.replace(BASE, attention="relu")]).attention == "softmax"


def test_a_group_trains_like_its_members_alone_in_any_chunking(tmp_path):
    """Same inits, same data: only float rounding differs (Adam turns last-bit gradient
    differences into up to ~lr per step, so params get atol lr / 10; a mix-up of runs would
    differ by the weights' scale, ~0.02). Split into programs of one run (as when memory is
    short) it trains the same runs; a finished group run is loaded, not trained again."""
    members = [VARIANTS[1], VARIANTS[5]]  # fewer layers; no LayerNorm
    grouped = T.train_group(members, TRAIN, seeds=(0, 1), run_root=tmp_path, progress=False)
    split = T.train_group(members, TRAIN, seeds=(0, 1), checkpoint=False, progress=False, max_runs=1)
    loaded = T.train_group(members, TRAIN, seeds=(0, 1), run_root=tmp_path, progress=False)
    for v, res, res_split, res_loaded in zip(members, grouped, split, loaded):
        alone = T.train(v, TRAIN, seeds=(0, 1), checkpoint=False, progress=False)
        assert res.model_config == v
        np.testing.assert_allclose(res.losses, alone.losses, rtol=1e-5)
        np.testing.assert_allclose(res_split.losses, alone.losses, rtol=1e-5)
        np.testing.assert_array_equal(res_loaded.losses, res.losses)
        for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TRAIN.lr / 10)
