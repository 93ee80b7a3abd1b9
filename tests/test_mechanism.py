"""The mechanism study (docs/theory.md section 7): per-triplet queries, the reference learners,
probes, interventions and implicit weights, each checked against a planted mechanism that it
must detect (and, where it can, a case where it must fail)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import construct, gd, losses, tasks
from icalign import model as M
from icalign import train as T
from icalign.analysis import interventions as I
from icalign.analysis import mechanism as X
from icalign.analysis import probes as P
from icalign.analysis import references as R
from icalign.core.metrics import normalised_mse, prefix_mask
from icalign.theory.contexts import separated_contexts


# --- per-triplet queries (shared files: tasks, tokens, gd, training) ----------------------------

def test_per_triplet_contexts_keep_the_shared_draws_and_show_each_triplet_at_its_query():
    key = jax.random.PRNGKey(0)
    shared, per = tasks.sample_contexts(key, 8, 4, 9), tasks.sample_contexts(key, 8, 4, 9, "per_triplet")
    assert shared.xs is None and shared.ys_query is None and per.xs.shape == (8, 9, 4)
    for f in ("x", "r_true", "rewards", "y_star"):
        np.testing.assert_array_equal(getattr(per, f), getattr(shared, f))
    np.testing.assert_array_equal(per.ys_query, shared.ys)
    assert not np.allclose(per.ys, shared.ys)
    # the shown responses are linear in [r x_j; (1 - r) x_j] with one [W*, W_eps]: least squares
    # on all triplets recovers y* = W* x exactly (this is also the exact-recovery reference)
    W = R.recover_weights(per, jnp.asarray([9]))[:, 0]
    np.testing.assert_allclose(jnp.einsum("bde,be->bd", W, per.x), per.y_star, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(tasks.scored_candidates(shared), shared.ys)
    np.testing.assert_array_equal(tasks.scored_candidates(per), per.ys_query)


def test_per_triplet_tokens_carry_each_query_and_bad_settings_fail_early():
    per = tasks.sample_contexts(jax.random.PRNGKey(1), 2, 3, 5, "per_triplet")
    cfg = M.ModelConfig(n_layers=1, n_heads=1, d_model=8, token_layout="stacked", d=3, n=5)
    tok = M.tokenize(per, cfg)
    np.testing.assert_array_equal(tok[:, 0, :3], per.x)
    np.testing.assert_array_equal(tok[:, 1:, :3], per.xs)
    with pytest.raises(ValueError, match="token_layout='stacked'"):
        M.tokenize(per, dataclasses.replace(cfg, token_layout="interleaved"))
    with pytest.raises(ValueError, match="queries"):
        tasks.sample_contexts(jax.random.PRNGKey(1), 2, queries="each")
    with pytest.raises(ValueError, match="TrainConfig.queries"):
        T.TrainConfig(queries="each")
    with pytest.raises(ValueError, match="token_layout='stacked'"):
        T.train(dataclasses.replace(cfg, token_layout="interleaved"), T.TrainConfig(queries="per_triplet", steps=1),
                checkpoint=False, progress=False)


def test_run_folders_of_shared_runs_keep_their_names():
    """The folder hash of a shared-query, one-microbatch, cosine-PL, published-protocol run is the
    one a TrainConfig without the seven later fields had (a dataclass of that name and those fields, built here), with the
    run's identity, so such runs keep their folders."""
    train = T.TrainConfig(lr=1e-3, batch=64, steps=1000)
    old_fields = [(f.name, f.type, f.default) for f in dataclasses.fields(train) if f.name not in ("queries", "query_corr", "microbatches", "loss",
                                                                   "lr_grid", "stop", "valid_contexts")]
    Old = dataclasses.make_dataclass("TrainConfig", old_fields, frozen=True)
    old = Old(**{k: getattr(train, k) for k, _, _ in old_fields})
    model = M.ModelConfig(n_layers=2, n_heads=2, d_model=32, token_layout="stacked")
    _, runs = T.make_runs((0,), None, None, train)
    identity = T.run_identity(len(runs))
    assert T.run_dir_for(model, train, runs).name == f"run-{M.config_hash(model, old, runs, identity)}"
    per = dataclasses.replace(train, queries="per_triplet", query_corr=0.5)
    assert T.run_dir_for(model, per, runs).name != f"run-{M.config_hash(model, old, runs, identity)}"
    split = dataclasses.replace(train, microbatches=2)
    assert T.run_dir_for(model, split, runs).name != f"run-{M.config_hash(model, old, runs, identity)}"


@pytest.mark.parametrize("reward", losses.REWARDS)
def test_per_triplet_gradient_matches_jax_grad_and_reduces_to_the_shared_one(x64, reward):
    rng = np.random.default_rng(0)
    W, xs, ys, r = (jnp.asarray(rng.normal(size=s)) for s in ((3, 4), (6, 4), (6, 3), (6,)))
    mask = jnp.asarray([True, True, False, True, True, False])

    def loss(W):
        yh = xs @ W.T
        s = (-0.5 * 0.7 * jnp.sum((yh - ys) ** 2, -1) if reward == "sqdist"
             else jax.vmap(lambda a, b: losses.cosine_reward(a, b[None])[0])(yh, ys))
        return losses.plackett_luce(s, r, mask)

    np.testing.assert_allclose(gd.pl_gradient_triplets(W, xs, ys, r, reward, 0.7, mask), jax.grad(loss)(W),
                               atol=1e-10)
    same = jnp.broadcast_to(xs[0], xs.shape)
    np.testing.assert_allclose(gd.pl_gradient_triplets(W, same, ys, r, reward, 0.7, mask),
                               gd.pl_gradient(W, xs[0], ys, r, reward, 0.7, mask), atol=1e-10)


@pytest.mark.parametrize("learner", sorted(gd.LEARNERS))
def test_fit_linear_with_every_query_equal_to_x_is_the_shared_fit(learner):
    c = tasks.mixed_linear(jax.random.PRNGKey(2), 5, 12)
    plain = gd.fit_linear(jax.random.PRNGKey(3), c.x, c.ys, c.rewards, 9, learner)
    per = gd.fit_linear(jax.random.PRNGKey(3), c.x, c.ys, c.rewards, 9, learner, xs=jnp.broadcast_to(c.x, c.ys.shape))
    np.testing.assert_allclose(per, plain, rtol=2e-3, atol=2e-3)


# --- reference learners ------------------------------------------------------------------------

def test_exact_recovery_is_exact_when_clean_and_robust_with_three_clean_rewards():
    ctx = tasks.sample_contexts(jax.random.PRNGKey(4), 32, 5, 12)
    ts = jnp.arange(2, 12)
    assert float(jnp.max(jnp.abs(normalised_mse(R.recover(ctx, ts), ctx.y_star[:, None])))) < 1e-5
    hit = jax.random.bernoulli(jax.random.PRNGKey(5), 0.5, ctx.r_true.shape)
    noisy = ctx.replace(rewards=jnp.where(hit, jax.random.uniform(jax.random.PRNGKey(6), hit.shape), ctx.r_true))
    err = np.asarray(normalised_mse(R.recover(noisy, ts), noisy.y_star[:, None]))
    clean_seen = np.cumsum(~np.asarray(hit), axis=1)[:, np.asarray(ts) - 1]
    assert (clean_seen >= 3).sum() > 100 and np.abs(err[clean_seen >= 3]).max() < 1e-4
    assert err[clean_seen < 2].mean() > 0.05  # with fewer it cannot know: the test can fail


def test_minimiser_reaches_the_plane_minimum_of_the_training_loss():
    """All candidates of a shared context lie in the plane of y* and eps; a dense grid of
    directions in that plane bounds the minimum from above."""
    ctx = tasks.sample_contexts(jax.random.PRNGKey(7), 4, 5, 20)
    ts = jnp.asarray([2, 5, 19])
    u, grad_left = R.minimiser(ctx, ts)
    for b in range(4):
        c = jax.tree_util.tree_map(lambda a: a[b], ctx)
        q1 = c.ys[0] / jnp.linalg.norm(c.ys[0])
        q2 = c.ys[1] - (c.ys[1] @ q1) * q1
        q2 = q2 / jnp.linalg.norm(q2)
        th = jnp.linspace(0.0, 2 * np.pi, 20000)
        grid = jnp.cos(th)[:, None] * q1[None] + jnp.sin(th)[:, None] * q2[None]
        for i, t in enumerate(ts):
            L = lambda v: losses.plackett_luce(losses.cosine_reward(v, c.ys), c.rewards, prefix_mask(t, 20))
            assert float(L(u[b, i])) <= float(jnp.min(jax.vmap(L)(grid))) + 1e-4
    assert float(jnp.max(grad_left)) < 1e-2


@pytest.mark.parametrize("reward", ["cosine", "sqdist"])
def test_fitted_gd_recovers_a_planted_gd_learner(reward):
    """'Transformer' answers made by gd.gradient_descent (the independent closed form) at a
    known step size and count: the grid must pick both and match them."""
    ctx = tasks.sample_contexts(jax.random.PRNGKey(8), 6, 4, 8)
    ts, etas, eta0, k0 = jnp.arange(1, 8), jnp.asarray([1e-3, 1e-2, 3e-2, 1e-1]), 3e-2, 5
    y0 = jax.random.normal(jax.random.PRNGKey(9), (6, 4))
    W0 = R.init_weights(ctx, y0)
    planted = jax.vmap(lambda W, c: jax.vmap(lambda t: gd.gradient_descent(
        W, c.x, c.ys, c.rewards, eta0, k0, reward, mask=prefix_mask(t, 8)) @ c.x)(ts))(W0, ctx)
    e, k, dist = R.select(planted, R.gd_grid(W0, ctx, ts, etas, 8, reward))
    np.testing.assert_array_equal(np.asarray(e)[1:], 2)  # t = 1: PL of one candidate has no gradient
    np.testing.assert_array_equal(np.asarray(k)[1:], k0)
    assert float(jnp.max(jnp.min(dist.reshape(-1, 7), 0))) < 1e-5


def test_construction_is_invariant_to_monotone_maps_within_its_error_bound(x64):
    """The hand-built PL-GD transformer reads reward values only to rank them: under each map
    (kept within its preconditions: rewards in [0, 1], gaps above the spec's) its output moves
    by at most the sum of the two contexts' documented error bounds; reversing the rewards
    moves it far more (the check can fail)."""
    n, d = 4, 3
    ctx = separated_contexts(jax.random.PRNGKey(10), 6, n, d)
    W0 = np.eye(d)
    maps = dict(I._MAPS)
    for name, f in maps.items():
        changed = ctx.replace(rewards=f(ctx.rewards))
        gap = 0.9 * min(float(np.min(np.diff(np.sort(np.asarray(c.rewards), -1), axis=-1))) for c in (ctx, changed))
        spec = construct.PLConstruction(d=d, n=n, W0=W0, gap=gap, B=50.0 / gap, M=200.0 / gap + 100.0)
        a, b = construct.run(spec, ctx), construct.run(spec, changed)
        moved = np.linalg.norm(np.asarray(a - b), axis=-1)
        bound = [construct.error_bound(spec, jax.tree_util.tree_map(lambda v: v[i], c))
                 for i in range(6) for c in (ctx, changed)]
        bound = np.asarray(bound).reshape(6, 2).sum(1)
        if name == "reverse":
            assert np.all(moved > 1e3 * bound)
        else:
            assert np.all(moved <= bound), (name, moved, bound)


# --- interventions -----------------------------------------------------------------------------

def test_interventions_and_pl_gd_invariance():
    ctx = tasks.sample_contexts(jax.random.PRNGKey(11), 4, 5, 12)
    ts = jnp.arange(1, 12)
    flat, t0 = I.flatten(ctx, ts)
    W0 = jnp.repeat(R.init_weights(ctx, jax.random.normal(jax.random.PRNGKey(12), (4, 5))), 11, 0)
    eta, k = jnp.full(t0.shape, 0.05), jnp.full(t0.shape, 6)
    base = X._gd_items(W0, flat, t0, eta, k, 8, "cosine")[1]
    for kind in I.INTERVENTIONS:
        c, t1, valid = I.intervene(kind, jax.random.PRNGKey(13), ctx, ts)
        after = X._gd_items(W0, c, jnp.where(valid, t1, t0), eta, k, 8, "cosine")[1]
        moved = np.asarray(normalised_mse(base, after))[np.asarray(valid) & (np.asarray(t0) >= 2)]
        if kind in I.MONOTONE + ("permute", "scale"):
            assert np.abs(moved).max() < 1e-5, kind
        else:
            assert moved.mean() > 1e-3, kind
    c, t1, valid = I.intervene("duplicate", jax.random.PRNGKey(13), ctx, ts)
    np.testing.assert_array_equal(t1, 2 * t0)
    np.testing.assert_array_equal(c.ys[2, :4], ctx.ys[0, jnp.asarray([0, 0, 1, 1])])  # item 2: t = 3
    c, t1, _ = I.intervene("distractors", jax.random.PRNGKey(13), ctx, ts)
    assert float(c.rewards[4, 5:8].max()) < float(ctx.rewards[0, :5].min())  # item 4: t = 5
    c, _, _ = I.intervene("permute", jax.random.PRNGKey(13), ctx, ts)
    np.testing.assert_array_equal(np.sort(c.rewards[6, :7]), np.sort(ctx.rewards[0, :7]))
    np.testing.assert_array_equal(c.rewards[6, 7:], ctx.rewards[0, 7:])
    # exact recovery reads reward values: an affine map moves it
    c, t1, _ = I.intervene("affine", jax.random.PRNGKey(13), ctx, ts)
    moved = normalised_mse(X._exact_items(flat, t0), X._exact_items(c, t1))
    assert float(jnp.mean(moved)) > 1e-3
    with pytest.raises(ValueError, match="intervention"):
        I.intervene("shuffle", jax.random.PRNGKey(0), ctx, ts)


# --- probes and implicit weights ---------------------------------------------------------------

def test_probe_recovers_a_planted_quantity_and_the_shuffled_control_does_not():
    rng = np.random.default_rng(14)
    M_, F, K = 2000, 24, 5
    y = rng.normal(size=(M_, K))
    noise = rng.normal(size=(3, M_, F))
    planted = noise.copy()
    planted[1, :, :8] = y @ rng.normal(size=(K, 8)) + 0.05 * rng.normal(size=(M_, 8))
    h = jnp.asarray(planted, jnp.float32)
    sse, sse_ctrl, sst = P.probe_layers(jax.random.PRNGKey(0), h[:, :1000], jnp.asarray(y[:1000], jnp.float32),
                                        h[:, 1000:], jnp.asarray(y[1000:], jnp.float32))
    real = P.r2_interval(np.asarray(sse).reshape(3, 100, 10), np.asarray(sst).reshape(3, 100, 10))
    ctrl = P.r2_interval(np.asarray(sse_ctrl).reshape(3, 100, 10), np.asarray(sst).reshape(3, 100, 10))
    assert real["low"][1] > 0.95 and ctrl["high"][1] < 0.05 and ctrl["low"][1] > -0.1
    assert abs(real["mean"][0]) < 0.05 and abs(real["mean"][2]) < 0.05


def test_probe_quantities_match_their_definitions():
    ctx = tasks.sample_contexts(jax.random.PRNGKey(15), 2, 3, 6)
    y0 = jnp.asarray([[0.3, -0.2, 0.5], [1.0, 0.0, -1.0]])
    q = np.asarray(P.quantities(ctx, y0, jnp.asarray([4])))[:, 0]
    for b in range(2):
        ys, r = np.asarray(ctx.ys[b, :4], np.float64), np.asarray(ctx.rewards[b, :4])
        srt = ys[np.argsort(-r)]
        s = -0.5 * np.sum((np.asarray(y0[b]) - srt) ** 2, -1)
        g = np.zeros(3)
        for i in range(3):  # the i = 4 term is zero
            p = np.exp(s[i:] - s[i:].max())
            g += srt[i] - (p / p.sum()) @ srt[i:]
        p = np.exp(s - s.max())
        np.testing.assert_allclose(q[b, 0], srt[0], rtol=1e-6)
        np.testing.assert_allclose(q[b, 1], (p / p.sum()) @ srt, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(q[b, 2], g, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(q[b, 4], ys.mean(0), rtol=1e-5)


def test_implicit_weights_recover_a_known_affine_map_and_flag_a_nonlinear_one():
    W = jax.random.normal(jax.random.PRNGKey(16), (3, 4, 5, 5))  # (B, T, D, D)
    b = jax.random.normal(jax.random.PRNGKey(19), (3, 4, 5))
    queries = jax.random.normal(jax.random.PRNGKey(17), (12, 3, 4, 5))
    got, got_b, fit = X.implicit_weights(queries, jnp.einsum("btde,qbte->qbtd", W, queries) + b[None])
    np.testing.assert_allclose(got, W, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got_b, b, rtol=1e-3, atol=1e-4)
    assert float(jnp.min(fit)) > 0.9999
    bent = jnp.einsum("btde,qbte->qbtd", W, queries) + jnp.sum(queries**2, -1, keepdims=True) ** 2
    assert float(jnp.mean(X.implicit_weights(queries, bent)[2])) < 0.8


def test_query_posterior_is_the_conditional_of_the_test_query():
    rho, n = 0.6, 6
    ctx = tasks.sample_contexts(jax.random.PRNGKey(18), 20000, 1, n, "per_triplet", rho)
    mean, std = X.query_posterior(ctx, rho)
    z = (np.asarray(ctx.x)[:, None, 0] - np.asarray(mean)[..., 0]) / np.asarray(std)[None]
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(z.std(0), 1.0, atol=0.03)


def test_studies_refuse_the_other_task_and_bad_settings():
    cfg = M.ModelConfig(n_layers=1, n_heads=1, d_model=8, token_layout="stacked", d=3, n=5)
    params = M.init(jax.random.PRNGKey(0), cfg)
    shared = tasks.sample_contexts(jax.random.PRNGKey(1), 4, 3, 5)
    per = tasks.sample_contexts(jax.random.PRNGKey(1), 4, 3, 5, "per_triplet", 0.5)
    key = jax.random.PRNGKey(2)
    with pytest.raises(ValueError, match="triplet_study needs per-triplet"):
        X.shared_study(params, cfg, per, key, [0.1])
    with pytest.raises(ValueError, match="shared_study needs shared"):
        X.triplet_study(params, cfg, shared, key, [0.1], 0.5)
    with pytest.raises(ValueError, match="etas"):
        X.shared_study(params, cfg, shared, key, [0.1, -1.0])
    with pytest.raises(ValueError, match="k_max"):
        X.shared_study(params, cfg, shared, key, [0.1], k_max=0)
    with pytest.raises(ValueError, match="intervention_contexts"):
        X.shared_study(params, cfg, shared, key, [0.1], intervention_contexts=3)
    with pytest.raises(ValueError, match="rho"):
        X.triplet_study(params, cfg, per, key, [0.1], 1.0)
