"""Training: loss falls, resume is bit-identical, vmap over runs equals separate runs,
checkpoints and run folders, NaN stops, configs validated.

Every training run here shares one model config, batch and chunk length, so the compiled
chunk is reused (the step count, checkpoint interval, learning rate and seed are not part
of the compiled function): two compilations in all, one per number of runs trained at once.
"""

from __future__ import annotations

import dataclasses
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import model as M
from icalign import train as T
from icalign.losses import cosine_reward, prefix_plackett_luce
from icalign.tasks import sample_contexts

MODEL = M.ModelConfig(n_layers=2, n_heads=2, d_model=32, d=3, n=10, token_layout="stacked")
TRAIN = T.TrainConfig(lr=1e-3, batch=32, steps=200, chunk=25, checkpoint_every=50)


def _assert_trees_equal(a, b):
    """Bitwise equal pytrees (same structure, shapes, dtypes and values)."""
    chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 200-step run with checkpoints (the reference for several tests)."""
    root = tmp_path_factory.mktemp("runs_ref")
    return T.train(MODEL, TRAIN, seeds=(0,), run_root=root, progress=False)


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------


def _oracle_loss(steps):
    """Loss of the predictor y_hat = y* on each step's training batch: a yardstick computed
    from the data (the model never sees y*)."""
    runs, _ = T.make_runs((0,), train_cfg=TRAIN)
    run = T.select_run(runs, 0)

    @jax.jit
    def one(step):
        ctx = T.batch_for_step(run, step, MODEL, TRAIN)
        y = jnp.broadcast_to(ctx.y_star[:, None, :], ctx.ys.shape)
        rows = prefix_plackett_luce(cosine_reward(y, ctx.ys[:, None, :, :]), ctx.rewards)
        return jnp.mean(rows[:, TRAIN.min_seen:])

    return np.asarray(jax.lax.map(one, jnp.arange(steps)))


def test_tiny_config_loss_falls_by_30_percent_in_200_steps(reference):
    """The cosine PL loss cannot fall 30% in absolute terms: scores are bounded in [-1, 1], so
    even y* keeps most of it (checked below). What training can remove is the part above
    that yardstick; it must fall by at least 30% within 200 steps."""
    losses = reference.losses[0]
    assert losses.shape == (200,) and np.all(np.isfinite(losses))
    oracle = _oracle_loss(200)
    assert oracle.mean() > 0.7 * losses[:10].mean()  # why the raw loss cannot fall 30%
    start = (losses - oracle)[:10].mean()
    end = (losses - oracle)[-25:].mean()
    assert start > 0
    assert end <= 0.7 * start, (start, end)


def test_loss_never_uses_y_star():
    """The training loss is a function of (x, candidates, shown rewards) only. Eager, on the
    small shapes test_model.py also uses (op-by-op primitives are compiled once per session)."""
    cfg = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, d=3, n=4)
    ctx = sample_contexts(jax.random.PRNGKey(1), 2, cfg.d, cfg.n)
    shapes = jax.eval_shape(lambda: M.init(jax.random.PRNGKey(0), cfg))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    with jax.disable_jit():
        loss = float(T.loss_fn(params, ctx, cfg))
        assert loss == float(T.loss_fn(params, ctx.replace(y_star=-ctx.y_star), cfg))
        assert loss != float(T.loss_fn(params, ctx.replace(rewards=ctx.rewards[:, ::-1]), cfg))


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume, run folders
# ---------------------------------------------------------------------------------------------


class _Killed(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(reference, tmp_path):
    seen = []

    def kill_at_125(step, losses):
        seen.append(step)
        if step == 125:  # after the step-100 checkpoint, before the step-150 one
            raise _Killed

    with pytest.raises(_Killed):
        T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False, callback=kill_at_125)
    run_dir = T.run_dir_for(MODEL, TRAIN, reference.runs, tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "running" and meta["steps_done"] == 100

    seen.clear()
    resumed = T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False,
                      callback=lambda s, l: seen.append(s))
    assert seen[0] == 125  # it resumed from step 100, it did not start over
    _assert_trees_equal(resumed.params, reference.params)
    np.testing.assert_array_equal(resumed.losses, reference.losses)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(25, 201, 25))  # no duplicate from the killed run


def test_checkpoint_files_and_load(reference):
    run_dir = reference.run_dir
    assert run_dir.name.startswith("run-") and len(run_dir.name) == len("run-") + 12
    assert {p.name for p in run_dir.iterdir()} == {"checkpoints", "manifests", "meta.json", "metrics.jsonl"}
    # two generations, each with its manifest of checksums
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["150", "200"]
    assert sorted(p.name for p in (run_dir / "manifests").iterdir()) == ["150.json", "200.json"]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps_done"] == 200
    assert meta["identity"]["x64"] is False and meta["identity"]["devices"] == 1
    assert meta["model_config"] == MODEL.to_dict() and meta["train_config"] == TRAIN.to_dict()
    loaded = T.load_run(run_dir)
    assert loaded.finished
    _assert_trees_equal(loaded.params, reference.params)
    np.testing.assert_array_equal(loaded.losses, reference.losses)


def test_finished_run_is_not_overwritten_without_force(tmp_path):
    short = dataclasses.replace(TRAIN, steps=50)
    first = T.train(MODEL, short, seeds=(3,), run_root=tmp_path, progress=False)
    with pytest.raises(T.RunExistsError, match="force"):
        T.train(MODEL, short, seeds=(3,), run_root=tmp_path, progress=False)
    loaded = T.train_or_load(MODEL, short, seeds=(3,), run_root=tmp_path, progress=False)
    _assert_trees_equal(loaded.params, first.params)
    again = T.train(MODEL, short, seeds=(3,), run_root=tmp_path, progress=False, force=True)
    _assert_trees_equal(again.params, first.params)  # retrained from scratch, deterministically


def test_run_folder_is_named_by_config_hash():
    _, runs0 = T.make_runs((0,), train_cfg=TRAIN)
    _, runs1 = T.make_runs((1,), train_cfg=TRAIN)
    a = T.run_dir_for(MODEL, TRAIN, runs0)
    assert a == T.run_dir_for(MODEL, TRAIN, runs0)
    assert a != T.run_dir_for(MODEL, TRAIN, runs1)
    assert a != T.run_dir_for(dataclasses.replace(MODEL, n_layers=3), TRAIN, runs0)
    assert a != T.run_dir_for(MODEL, dataclasses.replace(TRAIN, steps=201), runs0)


# ---------------------------------------------------------------------------------------------
# vmap over runs
# ---------------------------------------------------------------------------------------------


def test_vmap_over_seeds_equals_separate_runs():
    """Batching runs changes only float rounding, and Adam turns a rounding difference in a
    small gradient component into a parameter difference of at most ~lr per step; a real
    mix-up of runs would differ by the weights' own scale (~0.02) everywhere. Tolerance:
    atol = lr / 10. The key bias b_k is compared against lr * steps only: its gradient is
    exactly zero (softmax is invariant to adding q.b_k to every logit of a query), so its
    computed gradient is pure rounding noise, which Adam normalises into full steps."""
    short = dataclasses.replace(TRAIN, steps=50)
    both = T.train(MODEL, short, seeds=(0, 1), checkpoint=False, progress=False)
    for i, seed in enumerate((0, 1)):
        alone = T.train(MODEL, short, seeds=(seed,), checkpoint=False, progress=False)
        np.testing.assert_allclose(both.losses[i], alone.losses[0], rtol=1e-5)
        a, b = both.params_of(i), alone.params_of(0)
        np.testing.assert_array_less(np.abs(np.asarray(a.blocks.attn.bk - b.blocks.attn.bk)), short.lr * short.steps)
        strip = lambda p: p.replace(blocks=p.blocks.replace(attn=p.blocks.attn.replace(bk=None)))
        for x, y in zip(jax.tree_util.tree_leaves(strip(a)), jax.tree_util.tree_leaves(strip(b))):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=short.lr / 10)
    # different seeds really are different runs
    assert not np.allclose(both.losses[0], both.losses[1])


def test_runs_may_differ_in_learning_rate(tmp_path):
    spec, runs = T.make_runs((0,), lrs=(1e-3, 2e-3), train_cfg=TRAIN)
    assert [r["seed"] for r in runs] == [0, 0] and [r["lr"] for r in runs] == [1e-3, 2e-3]
    np.testing.assert_array_equal(spec.k_data[0], spec.k_data[1])  # same data stream
    with pytest.raises(ValueError, match="seeds has 2 values; give 1 or 3"):
        T.make_runs((0, 1), lrs=(1e-3, 2e-3, 3e-3), train_cfg=TRAIN)


@pytest.mark.parametrize("gated", [False, True])
def test_microbatched_step_gives_the_whole_batch_gradient(gated):
    """TrainConfig.microbatches: the mean of the slices' losses and gradients against
    jax.value_and_grad of loss_fn on the whole batch (an independent computation), for a
    plain and a gated (grouped-variant) objective."""
    from icalign.model.gates import gates_for, stack_gates, super_config
    variant = dataclasses.replace(MODEL, n_layers=1)
    model = super_config([MODEL, variant]) if gated else MODEL
    train = dataclasses.replace(TRAIN, batch=16)
    split = T.ICAObjective.of(model, dataclasses.replace(train, microbatches=4), gated=gated)
    runs, _ = T.make_runs((0,), train_cfg=train)
    run = T.select_run(runs, 0)
    params = M.init(run.k_init, model)
    ctx = T.batch_for_step(run, 3, model, train)
    gates = T.select_run(stack_gates([gates_for(variant, model)]), 0) if gated else None
    whole = jax.jit(jax.value_and_grad(T.loss_fn), static_argnums=(2, 3))
    want_loss, want_grad = whole(params, ctx, model, train.min_seen, gates)
    loss, grad = jax.jit(split.value_and_grad)(params, (ctx, gates) if gated else ctx)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(want_grad))
    for g, w in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(want_grad)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6 * scale)


def test_microbatches_train_and_are_part_of_the_run_identity(reference):
    """Training with microbatches goes through the loop (losses track the reference run's for
    its first steps, up to float rounding amplified by Adam), and names its own run folder."""
    split = dataclasses.replace(TRAIN, steps=25, microbatches=2)
    out = T.train(MODEL, split, seeds=(0,), checkpoint=False, progress=False)
    np.testing.assert_allclose(out.losses[0, :5], reference.losses[0, :5], rtol=1e-4)
    _, runs = T.make_runs((0,), train_cfg=TRAIN)
    assert T.run_dir_for(MODEL, TRAIN, runs) != T.run_dir_for(MODEL, dataclasses.replace(TRAIN, microbatches=2), runs)


# ---------------------------------------------------------------------------------------------
# Failure modes
# ---------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    # An absurd learning rate overflows the weights after the first update.
    short = dataclasses.replace(TRAIN, steps=50)
    with pytest.raises(T.NonFiniteLossError) as err:
        T.train(MODEL, short, seeds=(0,), lrs=(1e38,), run_root=tmp_path, progress=False)
    msg = str(err.value)
    m = re.search(r"at step (\d+)", msg)
    assert m and 1 <= int(m.group(1)) < 25, msg
    assert "nan" in msg.lower() or "inf" in msg.lower()
    meta = json.loads(next(tmp_path.glob("run-*/meta.json")).read_text())
    assert meta["status"].startswith("failed") and m.group(1) in meta["status"]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(batch=0), "batch"),
    (dict(steps=-1), "steps"),
    (dict(chunk=50, checkpoint_every=75), "multiple of chunk"),
    (dict(corruption="flip"), "corruption"),
    (dict(noise=1.5), "replace level p"),
    (dict(b2=1.0), "b2"),
    (dict(microbatches=0), "microbatches"),
    (dict(batch=256, microbatches=3), "microbatches=3 must divide batch=256"),
])
def test_bad_train_config_fails_with_clear_message(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        T.TrainConfig(**kwargs)


def test_train_rejects_wrong_types():
    with pytest.raises(ValueError, match="ModelConfig"):
        T.train({"n_layers": 2}, TRAIN, checkpoint=False)
    with pytest.raises(ValueError, match="seed"):
        T.make_runs((0.5,), train_cfg=TRAIN)


# ---------------------------------------------------------------------------------------------
# The one loop trains the other models too: the concept model and the necessity fits resume
# bit-identically after a kill
# ---------------------------------------------------------------------------------------------


def _kill_after_first_chunk(monkeypatch):
    from icalign.training import loop

    real, calls = loop.run_chunk, {"n": 0}

    def chunk_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "run_chunk", chunk_then_die)
    return lambda: monkeypatch.setattr(loop, "run_chunk", real)


def test_concept_model_resumes_bit_identically(tmp_path, monkeypatch):
    from icalign.selfcorrect.concept import ConceptTask
    from icalign.selfcorrect.concept_model import concept_config, train_concept

    task = ConceptTask(n=5)
    cfg = concept_config(task, n_layers=1, n_heads=2, d_model=8)
    kw = dict(steps=4, batch=4, chunk=2, progress=False)
    ref_params, ref_losses = train_concept(jax.random.PRNGKey(7), task, cfg, **kw)
    restore = _kill_after_first_chunk(monkeypatch)
    with pytest.raises(_Killed):
        train_concept(jax.random.PRNGKey(7), task, cfg, run_dir=tmp_path / "c", **kw)
    restore()
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["steps_done"] == 2
    params, losses = train_concept(jax.random.PRNGKey(7), task, cfg, run_dir=tmp_path / "c", **kw)
    _assert_trees_equal(params, ref_params)
    np.testing.assert_array_equal(losses, ref_losses)


def test_necessity_fit_resumes_bit_identically(tmp_path, monkeypatch):
    from icalign.analysis.necessity import fit_variant
    from icalign.theory import construct, necessity

    spec = construct.spec_for(3, 2, np.eye(2))
    cfg = necessity.variant_configs(spec)["no FFN"]
    kw = dict(seeds=2, steps=4, batch=8, chunk=2)
    ref_rel, ref_curves = fit_variant(jax.random.PRNGKey(1), spec, cfg, **kw)
    restore = _kill_after_first_chunk(monkeypatch)
    with pytest.raises(_Killed):
        fit_variant(jax.random.PRNGKey(1), spec, cfg, run_dir=tmp_path / "n", **kw)
    restore()
    rel, curves = fit_variant(jax.random.PRNGKey(1), spec, cfg, run_dir=tmp_path / "n", **kw)
    np.testing.assert_array_equal(rel, ref_rel)
    np.testing.assert_array_equal(curves, ref_curves)
    assert curves.shape == (2, 4) and np.all(np.isfinite(rel))
