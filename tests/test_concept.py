"""The latent-concept model (icalign.theory.bayes, icalign.selfcorrect.concept, .concept_model): exact Bayesian posterior against brute-force
enumeration, the corrected round formula (linear log-odds, geometric convergence, lock-in
when Delta < 0), the entropy decomposition, the concept task's exact log-odds, and the
pieces of the learned part (hidden states, probes)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from icalign import model, selfcorrect as sc
from icalign.selfcorrect import concept_model
from icalign.theory import bayes
from icalign.selfcorrect import concept as concept_task

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def model_rank_promotion():
    """model._dense2d adds a (F,) bias to (M, F) activations, which conftest's rank-promotion
    setting rejects (reported to the model's owner); only calls into the model are exempted."""
    return jax.numpy_rank_promotion("allow")


# ---------------------------------------------------------------------------------------------
# Exact posterior against brute-force enumeration of the joint distribution
# ---------------------------------------------------------------------------------------------


def joint_table(prior, cond, T):
    """p(C, e_1, ..., e_T) as a (K, V, ..., V) array, built by enumerating every sequence."""
    K, V = cond.shape
    joint = np.zeros((K,) + (V,) * T)
    for c in range(K):
        for seq in itertools.product(range(V), repeat=T):
            joint[(c,) + seq] = prior[c] * np.prod([cond[c, e] for e in seq])
    return joint


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(2, 3), V=st.integers(2, 3), T=st.integers(1, 4))
def test_posterior_matches_brute_force_enumeration(x64, seed, K, V, T):
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(K))
    cond = rng.dirichlet(np.ones(V), size=K)  # p(e | C = k)
    joint = joint_table(prior, cond, T)
    obs = rng.integers(0, V, size=T)
    post = bayes.posterior_from_evidence(jnp.log(prior), jnp.log(cond[:, obs].T))  # (T+1, K)
    for t in range(T + 1):
        # brute force: condition the full joint on e_1..e_t, sum out the future e_{t+1..T}
        sliced = joint[(slice(None),) + tuple(obs[:t])]
        marg = sliced.reshape(K, -1).sum(axis=1)
        np.testing.assert_allclose(post[t], marg / marg.sum(), rtol=1e-10, atol=1e-12)
        if t < T:
            # the predictive of the next piece and its concept-ambiguity term, also by brute force
            nxt = sliced.reshape((K, V, -1)).sum(axis=2)  # p(C, e_{t+1}, e_1..t)
            p_e = nxt.sum(0) / nxt.sum()
            p_c = nxt.sum(1) / nxt.sum()
            mi = np.sum(nxt / nxt.sum() * np.log((nxt / nxt.sum()) / (p_c[:, None] * p_e[None, :])))
            dec = bayes.predictive_entropy(post[t], jnp.asarray(cond))
            np.testing.assert_allclose(dec["total"], -np.sum(p_e * np.log(p_e)), rtol=1e-10)
            np.testing.assert_allclose(dec["mutual_info"], mi, atol=1e-10)
            h_post = -np.sum(p_c * np.log(p_c))
            assert -1e-12 <= float(dec["mutual_info"]) <= h_post + 1e-12


def test_binary_additive_form_is_bayes_rule(x64):
    rng = np.random.default_rng(0)
    llr = rng.normal(size=7)
    # each piece: p(e|C+) / p(e|C-) = exp(llr); any split of the likelihood works
    loglik = np.stack([llr / 2, -llr / 2], axis=1)
    post = bayes.posterior_from_evidence(jnp.log(jnp.array([0.3, 0.7])), jnp.asarray(loglik))
    logit = np.log(post[:, 0] / post[:, 1])
    np.testing.assert_allclose(logit, np.log(0.3 / 0.7) + np.concatenate([[0], np.cumsum(llr)]), atol=1e-10)
    # constant evidence: the corrected round formula L0 + t Delta
    post_c = bayes.posterior_from_evidence(jnp.log(jnp.array([0.3, 0.7])), jnp.tile(jnp.array([[0.4, -0.4]]), (7, 1)))
    np.testing.assert_allclose(post_c[:, 0], bayes.posterior_rounds(np.log(0.3 / 0.7), 0.8, 7), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Corrected round formula: linear log-odds, geometric convergence, lock-in for Delta < 0
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(l0=st.floats(-4, 4), delta=st.floats(0.2, 2.0))
def test_log_odds_linear_and_geometric_convergence(x64, l0, delta):
    T = 60
    logit = np.asarray(bayes.log_odds_rounds(l0, delta, T))
    np.testing.assert_allclose(np.diff(logit, 2), 0, atol=1e-9)  # linear in t
    p = np.asarray(bayes.posterior_rounds(l0, delta, T))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logit)), rtol=1e-12)
    miss = np.asarray(jax.nn.sigmoid(-bayes.log_odds_rounds(l0, delta, T)))  # 1 - p_t without cancellation
    assert np.all(np.diff(p) >= 0)
    assert np.all(miss <= np.exp(-(l0 + delta * np.arange(T + 1))) * (1 + 1e-12))  # 1 - p_t <= e^{-(L0 + t D)}
    ratio = miss[1:] / miss[:-1]
    # geometric with rate e^{-Delta}: ratio_t / e^{-Delta} - 1 = (e^{-L_t} - e^{-L_t - Delta}) /
    # (1 + e^{-L_t - Delta}) lies in [0, e^{-L_t}]
    excess = ratio / np.exp(-delta) - 1
    assert np.all(ratio < 1) and np.all(excess >= -1e-12) and np.all(excess <= np.exp(-logit[:-1]) + 1e-12)
    # expected performance converges at the same rate to that of C+ (while 1 - p > 1e-6, so
    # that 0.9 - perf keeps at least 10 significant digits in float64)
    k = int(np.sum(miss > 1e-6))
    perf = np.asarray(bayes.expected_performance(p[:k], 0.9, 0.2))
    np.testing.assert_allclose((0.9 - perf[1:]) / (0.9 - perf[:-1]), ratio[:k - 1], rtol=1e-6)
    # the concept-ambiguity term vanishes: MI <= H_b(p_t) -> 0
    cond = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    post = jnp.stack([p, 1 - p], axis=-1)
    mi = np.asarray(bayes.predictive_entropy(post, cond)["mutual_info"])
    assert np.all(mi <= np.asarray(bayes.binary_entropy(p)) + 1e-12) and np.all(mi >= -1e-12)
    # and it goes to 0 at the posterior's rate: H_b(p) <= (1 - p)(1 - log(1 - p)) = miss (1 + L)
    # once L >= 0; it falls from its peak on
    assert mi[-1] <= miss[-1] * (1 + logit[-1]) * (1 + 1e-9) and mi[-1] < 1e-3 * mi.max()
    assert np.all(np.diff(mi[mi.argmax():]) <= 1e-15)


@pytest.mark.parametrize("delta", [-0.2, -1.0])
def test_negative_delta_locks_in_the_wrong_concept(x64, delta):
    l0 = 3.0  # a confident correct start
    T = 200
    p = np.asarray(bayes.posterior_rounds(l0, delta, T))
    assert p[0] > 0.95 and p[-1] < 1e-6 and np.all(np.diff(p) < 0)
    ratio = p[1:] / p[:-1]
    assert abs(ratio[-1] / np.exp(delta) - 1) < 1e-9  # p_t -> 0 geometrically, rate e^{Delta}


def simulate_votes(key, paths, T, flip_true, flip_assumed, l0=0.0):
    """Log-odds paths of an observer reading binary critic votes under C+: each vote agrees
    with C+ with probability 1 - flip_true; the observer adds +-log((1-e_a)/e_a)."""
    agree = jax.random.bernoulli(key, 1 - flip_true, (paths, T))
    step = np.log((1 - flip_assumed) / flip_assumed)
    llr = jnp.where(agree, step, -step)
    return l0 + jnp.concatenate([jnp.zeros((paths, 1)), jnp.cumsum(llr, axis=1)], axis=1)


@pytest.mark.parametrize("flip_true, flip_assumed", [(0.2, 0.2), (0.35, 0.2), (0.8, 0.2)])
def test_noisy_votes_grow_log_odds_linearly_at_the_predicted_rate(x64, flip_true, flip_assumed):
    paths, T = 2000, 200
    lo = np.asarray(simulate_votes(jax.random.PRNGKey(0), paths, T, flip_true, flip_assumed))
    delta = float(bayes.expected_flip_delta(flip_true, flip_assumed))
    slope = (lo[:, -1] - lo[:, 0]) / T
    se = slope.std(ddof=1) / np.sqrt(paths)
    assert abs(slope.mean() - delta) < 5 * se
    # the mean path is linear in t (every round adds the same expected step)
    mean = lo.mean(0)
    resid = mean - (mean[0] + delta * np.arange(T + 1))
    sd_t = lo.std(0, ddof=1) / np.sqrt(paths)
    assert np.all(np.abs(resid) < 5 * sd_t + 1e-12)
    if flip_true > 0.5:  # a critic worse than the observer believes: Delta < 0, wrong concept wins
        assert delta < 0 and np.mean(lo[:, -1] < 0) > 0.99
    else:
        assert delta > 0 and np.mean(lo[:, -1] > 0) > 0.99


# ---------------------------------------------------------------------------------------------
# The concept task
# ---------------------------------------------------------------------------------------------


TASK = concept_task.ConceptTask(d=4, n=10, strength=0.7, critic_sigma=0.6, critic_flip=0.15)


@pytest.fixture(scope="module")
def samples():
    # one compiled sampler for the whole file (compiles dominate this file's run time)
    return concept_task.sample_concept(jax.random.PRNGKey(0), TASK, 400)


def test_concept_samples_have_the_stated_structure(samples):
    b = samples
    np.testing.assert_allclose(b.ys, b.u[..., None] * b.a[:, None] + (1 - b.u[..., None]) * b.b[:, None], atol=1e-5)
    assert set(np.unique(b.concept)) == {-1.0, 1.0}
    np.testing.assert_allclose(b.r_true, np.where(b.concept[:, None] > 0, b.u, 1 - b.u))
    present = b.instr != 0
    assert abs(present.mean() - TASK.instr_prob) < 0.03
    z = np.asarray(b.instr * b.concept[:, None])[np.asarray(present)]  # aligned with the concept
    assert abs(z.mean() - TASK.strength) < 0.05 and abs(z.std() - 1) < 0.05
    # the family matrices are fixed: the same for every key
    A1, _ = concept_task.families(TASK)
    np.testing.assert_array_equal(A1, concept_task.families(TASK)[0])


def test_task_log_odds_equal_the_exact_posterior(samples):
    """cumulative_log_odds against Bayes' rule evaluated with scipy densities (float64)."""
    b = jax.tree_util.tree_map(lambda a: np.asarray(a[:6], np.float64), samples)
    ev = concept_task.evidence_log_odds(TASK, *(jnp.asarray(v, jnp.float32) for v in (b.ys, b.rewards, b.instr, b.a, b.b)))
    lo = np.asarray(concept_task.cumulative_log_odds(TASK, ev))
    e, s = TASK.critic_flip, TASK.critic_sigma
    for i in range(6):
        log_p = {}
        for c, r in ((1, b.u[i]), (-1, 1 - b.u[i])):
            votes = (1 - e) * stats.norm.pdf(b.rewards[i], r, s) + e * stats.norm.pdf(b.rewards[i], 1 - r, s)
            instr = stats.norm.pdf(b.instr[i], TASK.strength * c, 1)
            log_p[c] = np.cumsum(np.log(votes) + np.log(instr))
        expect = np.log(TASK.prior / (1 - TASK.prior)) + log_p[1] - log_p[-1]
        # float32 evaluation: allow a few 1e-6 relative errors per term, summed over 10 terms
        np.testing.assert_allclose(lo[i, 1:], expect, rtol=1e-4, atol=1e-4)
    # the true rewards of candidates towards a and b are u and 1 - u
    np.testing.assert_allclose(sc.true_reward(samples.ys[:6], samples.a[:6, None], samples.b[:6, None]),
                               samples.u[:6], atol=1e-5)


def test_critic_llr_limits(x64):
    # no flips: the Gaussian log-ratio; symmetric flips (e = 1/2): no information
    s, rp, rm = jnp.array(0.8), jnp.array(0.9), jnp.array(0.1)
    np.testing.assert_allclose(bayes.critic_llr(s, rp, rm, 0.0, 0.5), ((s - rm) ** 2 - (s - rp) ** 2) / (2 * 0.25))
    np.testing.assert_allclose(bayes.critic_llr(s, rp, rm, 0.5, 0.5), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        bayes.critic_llr(s, rp, rm, 0.1, 0.0)


@pytest.mark.parametrize("field, value, match", [
    ("strength", -1.0, "strength"), ("critic_flip", 0.7, "critic_flip"), ("critic_sigma", 0.0, "critic_sigma"),
    ("prior", 1.0, "prior"), ("d", 1, "d"), ("instr_prob", 2.0, "instr_prob"),
])
def test_concept_task_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        concept_task.ConceptTask(**{field: value})


def test_loop_instructions_inject_contrary_rounds():
    concept = jnp.array([1.0, -1.0] * 2000)
    z = np.asarray(concept_task.loop_instructions(jax.random.PRNGKey(0), TASK, concept, 9, injections=(2, 5, 8)))
    aligned = (z * np.asarray(concept)[:, None]).mean(0)
    inj = np.zeros(10, bool)
    inj[[2, 5, 8]] = True
    assert np.all(np.abs(aligned[~inj] - TASK.strength) < 0.06)
    assert np.all(np.abs(aligned[inj] + TASK.strength) < 0.06)
    with pytest.raises(ValueError, match="beyond"):
        concept_task.loop_instructions(jax.random.PRNGKey(0), TASK, concept, 5, injections=(8,))


# ---------------------------------------------------------------------------------------------
# Learned part: tokens, hidden states, probes
# ---------------------------------------------------------------------------------------------


def test_hidden_states_read_out_to_the_model_output(samples):
    cfg = concept_model.concept_config(TASK, n_layers=2, n_heads=2, d_model=16)
    params = model.init(jax.random.PRNGKey(0), cfg)
    b = jax.tree_util.tree_map(lambda a: a[:3], samples)
    tokens = concept_model.concept_tokens(b.x, b.ys, b.rewards, b.instr, cfg)
    assert tokens.shape == (3, TASK.n + 1, model.token_dim(cfg))
    np.testing.assert_array_equal(tokens[:, 1:, 2 * TASK.d + 1], b.instr)  # the instruction feature
    learner = concept_model.concept_learner(params, cfg)
    slots = sc.Slots(x=b.x[0], ys=b.ys[0], rewards=b.rewards[0], instr=b.instr[0])

    @jax.jit
    def outputs(p):  # one compile for all four
        h = concept_model.hidden_states(p, tokens, cfg)
        return (h, model.readout(p, h[-1], cfg), model.apply(p, tokens, cfg),
                learner.fn(p, None, slots, 4), concept_model.concept_predict(p, tokens[0], cfg)[4])

    with model_rank_promotion():
        h, read, out, y_learner, y_pred = outputs(params)
    assert h.shape == (3, 3, TASK.n + 1, 16)
    np.testing.assert_allclose(read, out, rtol=1e-5, atol=1e-6)
    # the concept learner reads the model's prediction after `count` triplets
    np.testing.assert_allclose(y_learner, y_pred, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="stacked"):
        concept_model.concept_tokens(b.x, b.ys, b.rewards, b.instr, model.ModelConfig(d=TASK.d, n=TASK.n))


def test_fit_probe_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    w = rng.normal(size=12)
    h = rng.normal(size=(3000, 12)) * rng.uniform(0.5, 3, size=12) + 5.0
    labels = rng.random(3000) < jax.nn.sigmoid(2.0 * ((h - 5.0) @ w) / np.linalg.norm(w))
    probe = concept_model.fit_probe(jnp.asarray(h, jnp.float32), jnp.asarray(labels))
    logit = np.asarray(concept_model.probe_logit(probe, jnp.asarray(h, jnp.float32)))
    assert np.mean((logit > 0) == labels) > 0.75
    direction = np.asarray(probe.w / probe.sd)
    assert direction @ w / (np.linalg.norm(direction) * np.linalg.norm(w)) > 0.95


def test_a_finished_concept_run_is_loaded_not_refused(tmp_path):
    """A second study with the same settings loads the finished run (it used to stop with
    "holds a finished run")."""
    import jax

    cfg = concept_model.concept_config(TASK, n_layers=1, n_heads=1, d_model=8)
    key = jax.random.PRNGKey(2)
    kw = dict(steps=4, batch=4, chunk=4, progress=False, run_dir=tmp_path / "concept")
    p1, l1 = concept_model.train_concept(key, TASK, cfg, **kw)
    p2, l2 = concept_model.train_concept(key, TASK, cfg, **kw)
    np.testing.assert_array_equal(l1, l2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
