"""Losses and corruption models as extension points: a registered one reaches training, the
health gate, the minimiser reference, the GD learners and the CLI's --set; a bad name is
refused before anything compiles; the run folder follows the registered function's body."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import config as C
from icalign import losses, tasks
from icalign import model as M
from icalign import train as T
from icalign.analysis import evaluate as E
from icalign.analysis import health as H
from icalign.analysis import objective as O
from icalign.analysis import references as R
from icalign.core.registry import source_hash
from icalign.experiments import tf_vs_gd
from icalign.theory import gd
from icalign.training.ica import identity_parts

MODEL = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, d=3, n=5, token_layout="stacked")
TRAIN = T.TrainConfig(lr=3e-3, batch=8, steps=2, chunk=2, checkpoint_every=2)


def _scaled_pl(y_hat, ys, rewards, mask):
    """Twice the published loss plus 7: the offset shows which loss was used."""
    return 2.0 * losses.plackett_luce(losses.cosine_reward(y_hat, ys), rewards, mask) + 7.0


def _scaled_pl_edited(y_hat, ys, rewards, mask):
    return 3.0 * losses.plackett_luce(losses.cosine_reward(y_hat, ys), rewards, mask) + 7.0


def _shrink(key, rewards, level):
    """A deterministic critic: rewards scaled by 1 - level (level 0: clean)."""
    return rewards * (1.0 - level)


def _shrink_edited(key, rewards, level):
    return rewards * (1.0 - level) ** 2


@pytest.fixture(scope="module")
def registered():
    losses.register_loss("scaled_pl", _scaled_pl, scale_invariant=True)
    tasks.register_corruption("shrink", _shrink, levels=(0.0, 0.5), range=(0.0, 1.0), level_name="s")
    yield
    losses.unregister_loss("scaled_pl")
    tasks.unregister_corruption("shrink")


def test_a_registered_loss_and_corruption_train_and_reach_every_consumer(registered):
    train = dataclasses.replace(TRAIN, loss="scaled_pl", corruption="shrink", noise=0.5)
    res = T.train(MODEL, train, seeds=(0,), checkpoint=False, progress=False)
    # step 0's recorded loss is the registered loss on step 0's batch, whose shown rewards
    # are the registered corruption's (r_true halved), computed here from the pieces
    runs, settings = T.make_runs((0,), train_cfg=train)
    run0 = T.select_run(runs, 0)
    batch = T.batch_for_step(run0, 0, MODEL, train)
    np.testing.assert_allclose(batch.rewards, 0.5 * batch.r_true, rtol=1e-6)
    params0 = M.init(run0.k_init, MODEL)
    published = float(T.loss_fn(params0, batch, MODEL))
    np.testing.assert_allclose(res.losses[0, 0], 2.0 * published + 7.0, rtol=1e-5)
    assert np.all(np.isfinite(res.losses))

    # health gate: the clean objective of the run's own loss, the training loss of the same
    # params on the same clean contexts (an affine image of the published one)
    ctx5 = tasks.sample_contexts(jax.random.PRNGKey(4), 8, MODEL.d, MODEL.n)
    gate = H.run_gate(res, ctx5.replace(rewards=0.5 * ctx5.r_true))  # shown rewards are not what it judges
    published = float(T.loss_fn(res.params_of(0), ctx5, MODEL))
    np.testing.assert_allclose(gate["runs"][0]["objective"]["model"], 2.0 * published + 7.0, rtol=1e-5)
    assert gate["loss"] == "scaled_pl" and gate["runs"][0]["objective"]["optimum"] < gate["runs"][0]["objective"]["blind"]

    # GD learners: plain GD at half the step on twice the loss (autodiff) = the closed form at full step
    ctx = tasks.sample_contexts(jax.random.PRNGKey(1), 1, MODEL.d, MODEL.n)
    x, ys, r, key = ctx.x[0], ctx.ys[0], ctx.rewards[0], jax.random.PRNGKey(2)
    y_ours = gd.fit_linear(key, x, ys, r, 4, "gd", steps=10, lr=0.5, loss="scaled_pl")
    y_pub = gd.fit_linear(key, x, ys, r, 4, "gd", steps=10, lr=1.0)
    np.testing.assert_allclose(y_ours, y_pub, rtol=1e-4, atol=1e-5)
    assert not np.allclose(y_ours, gd.fit_linear(key, x, ys, r, 4, "gd", steps=10, lr=0.5), rtol=1e-3)

    # every sweep's config takes the new corruption (as --set does)
    from icalign.experiments import gd_baseline
    assert C.override(gd_baseline.QUICK, ["corruption=shrink"]).corruption == "shrink"


def _pl_by_hand(s, r):
    order = np.argsort(-r, kind="stable")
    s = np.asarray(s, float)[order]
    return sum(-s[i] + np.log(np.sum(np.exp(s[i:]))) for i in range(len(s)))


def test_built_in_losses_match_their_definitions():
    """The training objective of each built-in loss against its definition written out in
    numpy, context by context and row by row."""
    runs, _ = T.make_runs((0,), train_cfg=TRAIN)
    run0 = T.select_run(runs, 0)
    batch = T.batch_for_step(run0, 0, MODEL, TRAIN)
    y = np.asarray(M.predict(M.init(run0.k_init, MODEL), batch, MODEL), float)  # (B, N, D): row t after t triplets
    ys_all, r_all = np.asarray(batch.ys, float), np.asarray(batch.rewards, float)
    rows = {"cosine_pl": [], "sqdist_pl": [], "cosine_bt": []}
    for b in range(TRAIN.batch):
        for t in range(TRAIN.min_seen, MODEL.n):
            yh, ys, rw = y[b, t], ys_all[b, :t], r_all[b, :t]
            cos = ys @ yh / (np.linalg.norm(ys, axis=1) * np.linalg.norm(yh))
            rows["cosine_pl"].append(_pl_by_hand(cos, rw))
            rows["sqdist_pl"].append(_pl_by_hand(-0.5 * np.sum((yh - ys) ** 2, axis=1), rw))
            pairs = [(i, j) for i in range(t) for j in range(t) if rw[i] > rw[j]]
            rows["cosine_bt"].append(np.mean([np.log1p(np.exp(cos[j] - cos[i])) for i, j in pairs]))
    for loss, want in rows.items():
        np.testing.assert_allclose(float(T.loss_fn(M.init(run0.k_init, MODEL), batch, MODEL, loss=loss)),
                                   np.mean(want), rtol=1e-5, err_msg=loss)


def test_the_minimiser_reference_minimises_the_named_loss():
    """With cosine_bt (no closed form: autodiff) the returned direction is stationary for BT on
    the sphere, and not for cosine PL, whose minimiser is elsewhere (clearly so in one of the
    two contexts)."""
    ctx = tasks.sample_contexts(jax.random.PRNGKey(1), 2, MODEL.d, MODEL.n)
    u, _ = R.minimiser(ctx, jnp.asarray([MODEL.n]), steps=200, loss="cosine_bt")
    u = u[:, 0]
    for name, small in (("cosine_bt", True), ("cosine_pl", False)):
        loss = lambda v, ys, r: losses.LOSSES[name](v, ys, r, jnp.ones(MODEL.n, bool))
        g = jax.jit(jax.vmap(jax.grad(loss)))(u, ctx.ys, ctx.rewards)
        tangent = np.linalg.norm(g - np.sum(g * u, -1, keepdims=True) * u, axis=-1)
        assert np.all(tangent < 1e-3) if small else np.max(tangent) > 1e-2, (name, tangent)


def test_bad_names_are_refused_with_the_allowed_values():
    with pytest.raises(C.ConfigError, match=r"'train\.loss' = 'plackett'.*must be one of \['cosine_pl', 'sqdist_pl'"):
        C.override(tf_vs_gd.QUICK, ["train.loss=plackett"])
    assert C.override(tf_vs_gd.QUICK, ["train.loss=sqdist_pl"]).train.loss == "sqdist_pl"
    with pytest.raises(ValueError, match=r"TrainConfig\.corruption must be one of"):
        T.TrainConfig(corruption="shrunk")
    with pytest.raises(ValueError, match="loss must be one of"):
        O.measure(None, tasks.sample_contexts(jax.random.PRNGKey(0), 2, 3, 5), 2, "nope")  # the gate's measurement
    with pytest.raises(ValueError, match="scale of the prediction"):
        R.minimiser(tasks.sample_contexts(jax.random.PRNGKey(0), 1, 3, 5), jnp.asarray([2]), loss="sqdist_pl")
    with pytest.raises(ValueError, match="built in and cannot be replaced"):
        losses.register_loss("cosine_pl", _scaled_pl)
    with pytest.raises(ValueError, match="built in and cannot be replaced"):
        tasks.register_corruption("replace", _shrink, levels=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"fn\(key, rewards, 0\.0\) must return the rewards unchanged"):
        tasks.register_corruption("bad", lambda k, r, lv: r + 1.0, levels=(0.0, 1.0))
    with pytest.raises(ValueError, match="ascend strictly from 0"):
        tasks.register_corruption("bad", _shrink, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="pl_reward must be one of"):
        losses.register_loss("bad", _scaled_pl, pl_reward="l1")
    assert "bad" not in tasks.CORRUPTIONS and "bad" not in losses.LOSSES


def test_the_run_folder_follows_the_registered_function(registered):
    train = dataclasses.replace(TRAIN, loss="scaled_pl", corruption="shrink")
    _, runs = T.make_runs((0,), train_cfg=train)
    first = T.run_dir_for(MODEL, train, runs)
    default = T.run_dir_for(MODEL, TRAIN, runs)
    try:
        losses.register_loss("scaled_pl", _scaled_pl_edited, scale_invariant=True)
        edited_loss = T.run_dir_for(MODEL, train, runs)
        tasks.register_corruption("shrink", _shrink_edited, levels=(0.0, 0.5), range=(0.0, 1.0), level_name="s")
        edited_both = T.run_dir_for(MODEL, train, runs)
        # a compiled program keyed by the name runs the new body, not the stale one
        shown = E.corrupted_rewards(jax.random.PRNGKey(0), tasks.sample_contexts(jax.random.PRNGKey(0), 2, 3, 5),
                                    "shrink", [0.5])
    finally:
        losses.register_loss("scaled_pl", _scaled_pl, scale_invariant=True)
        tasks.register_corruption("shrink", _shrink, levels=(0.0, 0.5), range=(0.0, 1.0), level_name="s")
    assert len({first, default, edited_loss, edited_both}) == 4
    assert T.run_dir_for(MODEL, train, runs) == first  # the same bodies name the same folder again
    r_true = tasks.sample_contexts(jax.random.PRNGKey(0), 2, 3, 5).r_true
    np.testing.assert_allclose(shown[:, 0], 0.25 * r_true, rtol=1e-6)


def test_groups_with_the_published_loss_keep_their_folder_hash():
    """A group folder hashes the train config as a dataclass; with the published loss the part
    it hashes is that of a TrainConfig without the loss field (built here), so groups keep
    their names; another loss changes it."""
    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(TRAIN) if f.name != "loss"]
    old = dataclasses.make_dataclass("TrainConfig", fields, frozen=True)(**{k: getattr(TRAIN, k) for k, _, _ in fields})
    assert M.config_hash(*identity_parts(TRAIN, {"loss": "cosine_pl"})) == M.config_hash(old)
    other = dataclasses.replace(TRAIN, loss="cosine_bt")
    assert M.config_hash(*identity_parts(other, {"loss": "cosine_pl"})) != M.config_hash(old)


def test_source_hash_sees_bodies_closures_and_code_without_source():
    def make(scale):
        return lambda k, r, lv: r * (1.0 - scale * lv)

    assert source_hash(make(1.0)) == source_hash(make(1.0)) != source_hash(make(0.5))
    assert source_hash(_shrink) != source_hash(_shrink_edited)
    ns_a, ns_b = {}, {}
    exec("def f(k, r, lv):\n    return r * (1 - lv)\n", ns_a)  # no source file: the bytecode decides
    exec("def f(k, r, lv):\n    return r * (1 - lv) ** 2\n", ns_b)
    assert source_hash(ns_a["f"]) != source_hash(ns_b["f"])
    with pytest.raises(ValueError, match="plain Python function"):
        source_hash(np.add)


def test_the_experiments_gd_learners_fit_the_training_loss(monkeypatch):
    """tf-vs-gd's comparison and the evaluation curves hand ``loss`` (the experiments pass
    ``train.loss``) to the one GD fit, ``gd.fit_contexts`` (whose losses the tests above check),
    read here by a stand-in for it; studies whose references are built for the published loss
    refuse another by name."""
    from icalign.analysis import compare as CMP
    from icalign.experiments import mechanism, self_correction

    seen = []

    def spy(keys_B, x, ys, rewards, ts, learner="adam", steps=50, lr=None, xs=None, loss=None):
        seen.append(loss)
        return jnp.zeros((x.shape[0], ts.shape[0], x.shape[-1]), x.dtype)

    monkeypatch.setattr(gd, "fit_contexts", spy)
    ctx = tasks.sample_contexts(jax.random.PRNGKey(3), 2, MODEL.d, MODEL.n)
    params = M.init(jax.random.PRNGKey(4), MODEL)
    CMP.compare(params, MODEL, ctx, jax.random.PRNGKey(5), learners=("adam",), gd_steps=1, loss="sqdist_pl")
    E.gd_curves(jax.random.PRNGKey(5), ctx, ctx.rewards[:, None, :], "gd", 1, loss="cosine_bt")
    assert seen == ["sqdist_pl", "cosine_bt"]
    for mod in (mechanism, self_correction):
        with pytest.raises(ValueError, match="train.loss must be 'cosine_pl'"):
            C.override(mod.QUICK, ["train.loss=sqdist_pl"])
