"""Sweeps sharded over devices give the single-device answer.

The multi-device checks run in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the flag is read when JAX starts its
CPU backend, so it cannot be set in this (already started) process. In that one process, with
8 CPU devices, the subprocess trains 8 seeds sharded (one per device) and unsharded, resumes a
sharded run from its checkpoint, and evaluates 64 contexts sharded and unsharded. Its
assertions make it exit nonzero; the stderr is shown on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign.core.sharding import AXIS, describe, shard_leading, sweep_mesh, to_host

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# In this process (one device)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 64])
def test_sweep_mesh_takes_the_largest_divisor_of_n(n):
    mesh = sweep_mesh(n)  # on a one-device machine: a mesh of one
    assert mesh.axis_names == (AXIS,)
    k, m = mesh.size, jax.device_count()
    assert n % k == 0 and k <= m and all(n % j for j in range(k + 1, min(n, m) + 1))
    assert sweep_mesh(n, devices=jax.devices()[:1]).size == 1


@pytest.mark.parametrize("n, needle", [(0, "n must be >= 1"), ("3", "n must be an integer"),
                                       (2.0, "n must be an integer"), (True, "n must be an integer")])
def test_sweep_mesh_rejects_bad_n(n, needle):
    with pytest.raises(ValueError, match=needle):
        sweep_mesh(n)


def test_sweep_mesh_rejects_no_devices():
    with pytest.raises(ValueError, match="devices"):
        sweep_mesh(4, devices=[])


def test_shard_leading_keeps_values_and_non_array_leaves():
    tree = {"a": jnp.arange(12.0).reshape(3, 4), "s": jnp.float32(2.0), "n": np.arange(3), "name": "x"}
    out = shard_leading(tree, sweep_mesh(3, devices=jax.devices()[:1]))
    assert out["name"] == "x"
    for k in ("a", "s", "n"):
        np.testing.assert_array_equal(to_host(out[k]), np.asarray(tree[k]))
    assert out["a"].sharding.spec == jax.sharding.PartitionSpec(AXIS)
    assert out["s"].sharding.spec == jax.sharding.PartitionSpec()  # a scalar has no axis to split


def test_shard_leading_rejects_a_mesh_without_the_sweep_axis():
    other = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="sweep"):
        shard_leading({"a": jnp.zeros(2)}, other)


def test_describe():
    d = describe(sweep_mesh(1))
    assert d["devices"] == 1 and d["platform"] == jax.devices()[0].platform and d["processes"] == 1


# ---------------------------------------------------------------------------------------------
# 8 CPU devices, in a subprocess
# ---------------------------------------------------------------------------------------------

EIGHT_DEVICES = textwrap.dedent(r"""
    import json, sys, tempfile
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_numpy_rank_promotion", "raise")  # as in tests/conftest.py
    from jax.sharding import PartitionSpec as P
    from icalign import model as M, tasks, train as T
    from icalign.core.sharding import describe, shard_leading, sweep_mesh

    assert jax.device_count() == 8, jax.devices()
    out = {"mesh": describe(sweep_mesh(8))}

    # The largest divisor of n among 8 devices: equal slices, no padding.
    sizes = {n: sweep_mesh(n).size for n in (1, 5, 7, 11, 12, 16)}
    assert sizes == {1: 1, 5: 5, 7: 7, 11: 1, 12: 6, 16: 8}, sizes
    assert sweep_mesh(9, devices=jax.devices()[:2]).size == 1

    # Leaves whose leading axis does not divide, and scalars, are replicated.
    placed = shard_leading({"v": jnp.arange(16.0), "odd": jnp.arange(5.0), "s": jnp.float32(1)},
                           sweep_mesh(8))
    assert placed["v"].sharding.spec == P("sweep") and len(placed["v"].addressable_shards) == 8
    assert placed["v"].addressable_shards[0].data.shape == (2,)
    assert placed["odd"].sharding.spec == P() and placed["s"].sharding.spec == P()

    # (a) 8 seeds trained sharded (one run per device) and on one device.
    MODEL = M.ModelConfig(n_layers=1, n_heads=2, d_model=16, token_layout="stacked", n=6)
    TRAIN = T.TrainConfig(lr=1e-3, batch=8, steps=6, chunk=3, checkpoint_every=3)
    seeds = tuple(range(8))
    sharded = T.train(MODEL, TRAIN, seeds=seeds, checkpoint=False, progress=False, shard=True)
    single = T.train(MODEL, TRAIN, seeds=seeds, checkpoint=False, progress=False, shard=False)
    leaves_s = jax.tree_util.tree_leaves(sharded.params)
    leaves_1 = jax.tree_util.tree_leaves(single.params)
    assert all(len(x.sharding.device_set) == 8 for x in leaves_s)
    assert all(len(x.addressable_shards) == 8 and x.addressable_shards[0].data.shape[0] == 1
               for x in leaves_s)
    assert all(len(x.sharding.device_set) == 1 for x in leaves_1)
    # Not bitwise: each device compiles the program for a run axis of 1 instead of 8, and
    # XLA:CPU picks different kernels (blocking, vectorisation) for the two shapes, so float
    # rounding differs (measured: losses 1e-7 relative, params < 3e-7 absolute). Adam turns a
    # rounding difference in a tiny gradient component into up to ~lr per step, so params
    # get atol = lr / 100; a mix-up of runs would differ by the weights' scale (~0.02). The
    # key bias b_k is bounded by lr * steps only: its gradient is exactly zero (softmax is
    # invariant to shifting every logit of a query), so its computed gradient is pure rounding
    # noise that Adam normalises into full steps (see tests/test_train.py).
    np.testing.assert_allclose(sharded.losses, single.losses, rtol=1e-6)
    strip = lambda p: p.replace(blocks=p.blocks.replace(attn=p.blocks.attn.replace(bk=None)))
    for x, y in zip(jax.tree_util.tree_leaves(strip(sharded.params)),
                    jax.tree_util.tree_leaves(strip(single.params))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=TRAIN.lr / 100)
    bk_diff = np.abs(np.asarray(sharded.params.blocks.attn.bk) - np.asarray(single.params.blocks.attn.bk))
    assert bk_diff.max() < TRAIN.lr * TRAIN.steps, bk_diff.max()
    out["train_bitwise"] = bool(np.array_equal(sharded.losses, single.losses) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_s, leaves_1)))
    out["train_max_param_diff"] = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                                      for x, y in zip(leaves_s, leaves_1))

    # A sharded run killed after its step-3 checkpoint resumes bit-identically (same
    # compiled chunk on the same restored state, placed on the same mesh).
    class Killed(Exception):
        pass

    def kill_at_3(step, losses):
        if step == 3:
            raise Killed

    with tempfile.TemporaryDirectory() as root:
        try:
            T.train(MODEL, TRAIN, seeds=seeds, run_root=root, progress=False, callback=kill_at_3)
            raise AssertionError("the callback did not stop training")
        except Killed:
            pass
        seen = []
        resumed = T.train(MODEL, TRAIN, seeds=seeds, run_root=root, progress=False,
                          callback=lambda step, losses: seen.append(step))
        assert seen == [6], seen  # it resumed from the step-3 checkpoint
        loaded = T.load_run(resumed.run_dir)
    np.testing.assert_array_equal(resumed.losses, sharded.losses)
    for x, y, z in zip(jax.tree_util.tree_leaves(resumed.params), leaves_s,
                       jax.tree_util.tree_leaves(loaded.params)):
        assert len(x.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(z), np.asarray(y))

    # (b) 64 contexts evaluated sharded (8 per device) and on one device.
    ctx = tasks.sample_contexts(jax.random.PRNGKey(5), 64, MODEL.d, MODEL.n)
    params = T.select_run(single.params, 0)
    predict = jax.jit(jax.vmap(lambda c: M.predict(params, c, MODEL)))
    y_sharded = predict(shard_leading(ctx, sweep_mesh(64)))
    assert len(y_sharded.sharding.device_set) == 8
    y_sharded = np.asarray(y_sharded)
    y_single = np.asarray(predict(ctx))
    # Same reason as above (a batch of 8 per device, not 64): 1-2 ulp apart.
    np.testing.assert_allclose(y_sharded, y_single, rtol=1e-6, atol=1e-6)
    # What each device runs is exactly the one-device program on its slice: bitwise.
    y_slices = np.concatenate([np.asarray(predict(jax.tree_util.tree_map(lambda a: a[i:i + 8], ctx)))
                               for i in range(0, 64, 8)])
    np.testing.assert_array_equal(y_sharded, y_slices)
    out["eval_bitwise"] = bool(np.array_equal(y_sharded, y_single))

    # (c) The GD-baseline sweep (and the self-correction loop, placed the same way by
    # icalign.core.sharding.shard_contexts) spread their contexts over the devices too.
    from icalign import gd
    ctx16 = tasks.sample_contexts(jax.random.PRNGKey(6), 16, 3, 6)
    nmse, _ = gd.baseline_sweep(jax.random.PRNGKey(7), ctx16, [0.0, 0.5], [2, 4], steps=5)
    assert len(nmse.sharding.device_set) == 8
    one = gd._sweep(jax.random.PRNGKey(7), ctx16, jnp.asarray([0.0, 0.5], jnp.float32), jnp.asarray([2, 4]),
                    jnp.float32(0.1), "replace", "adam", 5, 4, None)[0]  # the same program, unsharded
    # Adam divides by the root of tiny second moments, so last-bit differences between the
    # 8-device and 1-device kernels grow to ~1e-5 relative over 5 steps; a mix-up of contexts
    # would differ by O(0.1).
    np.testing.assert_allclose(np.asarray(nmse), np.asarray(one), rtol=1e-4, atol=1e-5)
    print(json.dumps(out))
""")


def test_eight_cpu_devices_match_one():
    # the suite's XLA flags (tests/conftest.py: the cheapest LLVM level, a third less compile time)
    # kept, the device count added
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8"]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mesh"]["devices"] == 8 and report["mesh"]["platform"] == "cpu"
