"""The self-correction loop (icalign.selfcorrect): critics, true rewards, the compiled loop
against a plain Python loop, and the loop's behaviour under exact and adversarial critics."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import gd, model, selfcorrect as sc, tasks
from icalign.core import metrics

N0, ROUNDS, STEPS = 6, 6, 30  # tiny: a few Adam steps per fit keep the file fast


def model_rank_promotion():
    """model._dense2d adds a (F,) bias to (M, F) activations, which conftest's rank-promotion
    setting rejects (reported to the model's owner); only calls into the model are exempted."""
    return jax.numpy_rank_promotion("allow")


def critics(**named):
    return sc.make_critics(named)[1]


@pytest.fixture(scope="module")
def contexts():
    # one sampler compile for the whole file: on a loaded CPU, compiles dominate its run time
    return tasks.sample_contexts(jax.random.PRNGKey(7), 48, d=5, n=N0)


def head(ctx, k, dtype=None):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a[:k], dtype)), ctx)


# ---------------------------------------------------------------------------------------------
# True rewards, critics, accuracy
# ---------------------------------------------------------------------------------------------


def test_true_reward_gives_back_candidate_rewards_and_ranks_like_the_metric(contexts):
    ctx = head(contexts, 8)
    eps = sc.wrong_answer(ctx)
    # the recovered wrong answer generates every candidate
    np.testing.assert_allclose(ctx.ys, ctx.r_true[..., None] * ctx.y_star[:, None] +
                               (1 - ctx.r_true[..., None]) * eps[:, None], atol=1e-4)
    # candidates, then arbitrary responses, then the same responses rescaled: one compiled call
    y = jnp.asarray(np.random.default_rng(1).normal(size=(8, 50, 5)), jnp.float32)
    both = jnp.concatenate([ctx.ys, y, 3.7 * y], axis=1)
    r_all = jax.jit(sc.true_reward)(both, ctx.y_star[:, None], eps[:, None])
    r, r_y, r_scaled = r_all[:, :N0], r_all[:, N0:N0 + 50], r_all[:, N0 + 50:]
    # float32 throughout (as the experiments run): bisection resolves r to ~1e-7
    np.testing.assert_allclose(r, ctx.r_true, atol=2e-5)
    # scale-free, and ordered exactly like cos(y, y*) for arbitrary responses
    np.testing.assert_allclose(r_scaled, r_y, atol=1e-5)
    cos = 1 - metrics.normalised_mse(y, ctx.y_star[:, None])
    inside = r_y > sc.R_FLOOR + 1e-6  # below the floor all responses tie at -1
    for i in range(8):
        c, rr = np.asarray(cos[i][inside[i]]), np.asarray(r_y[i][inside[i]])
        order = np.argsort(c)
        assert np.all(np.diff(rr[order]) > -1e-6)
        assert np.corrcoef(np.argsort(order), np.argsort(np.argsort(rr)))[0, 1] > 0.999
    assert np.all((r_y >= sc.R_FLOOR) & (r_y <= 1))


def test_critic_settings_do_what_they_say():
    r = jnp.asarray(np.random.default_rng(0).uniform(size=20000), jnp.float32)
    key = jax.random.PRNGKey(1)
    c = critics(exact=(0, 0, 0), adv=(0, 0, 1), flip_all=(0, 1, 0), noise=(0.3, 0, 0), flip=(0, 0.25, 0),
                half=(0, 0, 0.5))
    one = lambda i: jax.tree_util.tree_map(lambda a: a[i], c)
    np.testing.assert_allclose(sc.critic_score(key, r, one(0)), r, atol=1e-6)
    np.testing.assert_allclose(sc.critic_score(key, r, one(1)), 1 - r, atol=1e-6)
    np.testing.assert_allclose(sc.critic_score(key, r, one(2)), 1 - r, atol=1e-6)
    noise = sc.critic_score(key, r, one(3)) - r
    assert abs(float(noise.std()) - 0.3) < 0.01 and abs(float(noise.mean())) < 0.01
    flipped = np.isclose(sc.critic_score(key, r, one(4)), 1 - r, atol=1e-6) & ~np.isclose(r, 0.5, atol=1e-3)
    assert abs(float(flipped.mean()) - 0.25) < 0.015
    # bias 0.5 prefers the middle of the segment
    s = sc.critic_score(key, jnp.array([0.0, 0.25, 0.5, 0.75, 1.0]), one(5))
    assert int(jnp.argmax(s)) == 2


def test_pairwise_accuracy():
    true = jnp.array([0.1, 0.5, 0.3, 0.9])
    assert float(sc.pairwise_accuracy(true, true)) == 1.0
    assert float(sc.pairwise_accuracy(-true, true)) == 0.0
    # one swapped pair out of six; a tie counts 1/2
    assert float(sc.pairwise_accuracy(jnp.array([0.1, 0.3, 0.5, 0.9]), true)) == pytest.approx(5 / 6)
    assert float(sc.pairwise_accuracy(jnp.array([0.1, 0.4, 0.4, 0.9]), true)) == pytest.approx(5.5 / 6)
    # only pairs touching item 3
    inc = jnp.array([False, False, False, True])
    assert float(sc.pairwise_accuracy(jnp.array([0.1, 0.5, 0.3, 0.2]), true, inc)) == pytest.approx(1 / 3)


def test_convergence_round():
    change = np.array([[0.5, 0.1, 1e-4, 1e-5], [0.5, 1e-4, 0.1, 1e-4], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(sc.convergence_round(change, 1e-3), [3, 4, 5])


@pytest.mark.parametrize("bad, match", [
    ({"c": (-0.1, 0, 0)}, "sigma"), ({"c": (0, 1.5, 0)}, "flip"), ({"c": (0, 0, 2)}, "bias"),
    ({"c": (0, 0)}, "sigma, flip, bias"), ({"c": (0, 0, 0, 1.5)}, "random"), ({}, "at least one"),
])
def test_make_critics_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        sc.make_critics(bad)


def test_sweep_validates_its_inputs():
    ctx = tasks.sample_contexts(jax.random.PRNGKey(0), 2, 3, 4)
    c = critics(exact=(0, 0, 0))
    with pytest.raises(ValueError, match="learner"):
        sc.sweep(jax.random.PRNGKey(0), ctx, c, lambda *a: None)
    with pytest.raises(ValueError, match="instructions"):
        sc.sweep(jax.random.PRNGKey(0), ctx, c, sc.gd_learner("gd", 2), rounds=3, instructions=jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="rounds"):
        sc.sweep(jax.random.PRNGKey(0), ctx, c, sc.gd_learner("gd", 2), rounds=0)
    with pytest.raises(ValueError, match="kind"):
        sc.gd_learner("sgd")


# ---------------------------------------------------------------------------------------------
# The compiled loop against a plain Python loop
# ---------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("kind", "steps"))
def reference_round(learn_key, critic_key, x, ys, rewards, y_star, eps, critic, kind, steps):
    """One round on the context as it is (all of ys filled): fit, score, critic."""
    y_hat = gd.fit_linear(learn_key, x, ys, rewards, ys.shape[0], kind, steps)
    r = sc.true_reward(y_hat, y_star, eps)
    return y_hat, r, sc.critic_score(critic_key, r, critic)


def python_loop(kind, learn_key, critic_key, ctx, eps, critic, rounds, steps):
    """Reference: a growing context (no pre-allocated slots, no masks), one round at a time."""
    k_critic, _ = jax.random.split(critic_key)
    ys, rewards = ctx.ys, ctx.rewards
    out = []
    for t in range(rounds + 1):
        y_hat, r, shown = reference_round(learn_key, jax.random.fold_in(k_critic, t), ctx.x, ys, rewards,
                                          ctx.y_star, eps, critic, kind, steps)
        ys = jnp.concatenate([ys, y_hat[None]])
        rewards = jnp.concatenate([rewards, shown[None]])
        out.append((y_hat, r, shown))
    return [jnp.stack(v) for v in zip(*out)], rewards


def test_jit_vmap_loop_equals_python_loop(contexts, x64):
    rounds, steps = 3, 10
    ctx = head(contexts, 2, np.float64)
    eps = sc.wrong_answer(ctx)
    c = critics(noisy=(0.2, 0.3, 0.0), biased=(0.1, 0.0, 0.6))
    learner = sc.gd_learner("adam", steps)
    learn_keys = jax.random.split(jax.random.PRNGKey(4), 2)
    critic_keys = jax.random.split(jax.random.PRNGKey(5), 2)
    slots0 = sc.initial_slots(ctx.x, ctx.ys, ctx.rewards, rounds)
    r0 = jnp.concatenate([ctx.r_true, jnp.zeros((2, rounds + 1))], -1)

    def one(critic, lk, ck, s0, rt0, ystar, yw):
        return sc.self_correct(learner, lk, ck, s0, rt0, ystar, yw, critic, N0, rounds)

    per_ctx = jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0, 0))
    traj = jax.jit(jax.vmap(per_ctx, in_axes=(0,) + (None,) * 6))(
        c, learn_keys, critic_keys, slots0, r0, ctx.y_star, eps)
    for s in range(2):
        critic = jax.tree_util.tree_map(lambda a: a[s], c)
        for i in range(2):
            one_ctx = jax.tree_util.tree_map(lambda a: a[i], ctx)
            (y_hat, r, shown), rewards = python_loop("adam", learn_keys[i], critic_keys[i], one_ctx, eps[i],
                                                     critic, rounds, steps)
            np.testing.assert_allclose(traj.y_hat[s, i], y_hat, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(traj.r_true[s, i], r, atol=1e-8)
            np.testing.assert_allclose(traj.shown[s, i], shown, atol=1e-8)
            np.testing.assert_allclose(traj.final.rewards[s, i], rewards, atol=1e-8)
            # answers are appended at the initial candidates' mean norm, in their own direction
            appended = traj.final.ys[s, i, N0:]
            np.testing.assert_allclose(np.linalg.norm(appended, axis=-1),
                                       np.linalg.norm(one_ctx.ys, axis=-1).mean(), rtol=1e-9)
            np.testing.assert_allclose(1 - metrics.normalised_mse(appended, y_hat), 1, atol=1e-12)


def test_transformer_learner_reads_only_filled_slots():
    ctx = tasks.mixed_linear(jax.random.PRNGKey(1), 3, N0 + 3)
    slots = sc.Slots(x=ctx.x, ys=ctx.ys, rewards=ctx.rewards, instr=jnp.zeros(N0 + 3))
    junk = slots.replace(ys=slots.ys.at[N0:].set(9.0), rewards=slots.rewards.at[N0:].set(-3.0))
    for layout in ("interleaved", "stacked"):
        cfg = model.ModelConfig(n_layers=1, n_heads=1, d_model=8, d=3, n=N0 + 3, token_layout=layout)
        params = model.init(jax.random.PRNGKey(0), cfg)
        learner = sc.transformer_learner(params, cfg)
        assert learner.reads_instructions == (layout == "interleaved")
        # without instructions the slot tokens are the model's own tokens
        np.testing.assert_array_equal(sc.slot_tokens(slots, cfg), model.tokenize(ctx, cfg))

        @jax.jit
        def outputs(p):
            return (learner.fn(p, None, slots, N0), learner.fn(p, None, junk, N0),
                    model.predict(p, ctx, cfg)[N0])

        with model_rank_promotion():
            y, y_junk, y_ref = outputs(params)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(y_junk, y, rtol=1e-5, atol=1e-7)  # unfilled slots are never read
    with pytest.raises(ValueError, match="slots"):
        short = sc.Slots(x=ctx.x, ys=ctx.ys[:N0], rewards=ctx.rewards[:N0], instr=jnp.zeros(N0))
        jax.eval_shape(lambda: learner.fn(params, None, short, 2))
    # interleaved: the instruction sits next to the reward
    tok = sc.slot_tokens(slots.replace(instr=jnp.arange(N0 + 3.0)), model.ModelConfig(d=3, n=N0 + 3))
    np.testing.assert_array_equal(tok[2::3, 1], jnp.arange(N0 + 3.0))
    np.testing.assert_array_equal(tok[2::3, 0], ctx.rewards)


# ---------------------------------------------------------------------------------------------
# Behaviour: an exact critic helps and the loop settles; an adversarial one drives y_hat away
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_and_adversarial(contexts):
    ctx = contexts
    names, c = sc.make_critics({"exact": (0, 0, 0), "adversarial": (0, 0, 1)})
    # plain gradient descent: the theory's learner (the Adam baseline runs in the experiment)
    traj, _ = sc.sweep(jax.random.PRNGKey(8), ctx, c, sc.gd_learner("gd", STEPS), rounds=ROUNDS, draws=1)
    return sc.round_metrics(traj, ctx.y_star, tol=1e-3)


def test_exact_critic_never_leaves_the_model_worse_and_the_loop_converges(exact_and_adversarial):
    m = exact_and_adversarial
    nmse = m["nmse"][0, :, 0]  # (B, T+1), exact critic
    mean = nmse.mean(0)
    se = nmse.std(0, ddof=1) / np.sqrt(nmse.shape[0])
    # no round is worse than round 0 on average (beyond sampling error)
    assert np.all(mean[1:] <= mean[0] + 2 * se[1:]), mean
    # and the improvement at the end is real
    assert mean[-1] < mean[0] - 2 * se[-1]
    # converges: the step between the last two rounds is tiny and far below the first step
    change = m["change"][0, :, 0]
    assert change[:, -1].mean() < 1e-2 and change[:, -1].mean() < change[:, 0].mean() / 10
    assert np.median(m["conv_round"][0, :, 0]) <= ROUNDS


def test_adversarial_critic_drives_the_answer_away_from_y_star(exact_and_adversarial):
    m = exact_and_adversarial
    adv = m["nmse"][1, :, 0]
    exact = m["nmse"][0, :, 0]
    diff = adv[:, -1] - adv[:, 0]
    assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)), "nmse did not grow over rounds"
    gap = adv[:, -1] - exact[:, -1]
    assert gap.mean() > 2 * gap.std(ddof=1) / np.sqrt(len(gap))
    # the adversarial critic's scores are anti-correlated with the truth
    assert np.nanmean(m["loop_accuracy"][1]) < 0.5 < np.nanmean(m["loop_accuracy"][0])
