"""The latent-concept model of self-correction, analytic part (docs/theory.md section 5;
Liu et al. 2024).

The conditional-independence model. A latent concept C (K values; binary: C+ / C-) has prior
pi_0; the pieces of evidence appended round by round (an instruction, an answer with the
critic's score) are independent given C. Then each piece adds its log-likelihood, and with a
constant expected log-likelihood ratio Delta per round

    logit p(C+ | q_t) = L_0 + t * Delta                                          (corrected)

so 1 - p_t <= exp(-(L_0 + t Delta)) falls geometrically (ratio -> e^{-Delta}) when
Delta > 0, and p_t -> 0 (the wrong concept is locked in) when Delta < 0. The paper's own
round formula is mis-normalised (it multiplies unnormalised terms, so its posterior decays
to 0 whatever the evidence; reviewers noted this); the form above is the correction of
docs/theory.md and is what every function here implements. The predictive distribution
p(y | q_t) = sum_C p(y | C) p(C | q_t) has entropy

    H[p(y | q_t)] = E_{C ~ p(C|q_t)} H[p(y | C)]  +  I(Y; C | q_t),

and the concept-ambiguity (mutual-information) term is at most H[p(C | q_t)], so it goes to 0
as the posterior concentrates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icalign.core.validate import check_int, check_level, check_positive

__all__ = ["log_odds_rounds", "posterior_rounds", "posterior_from_evidence", "binary_entropy",
           "predictive_entropy", "expected_flip_delta", "instruction_llr", "critic_llr", "expected_performance"]


def log_odds_rounds(l0, delta, rounds: int) -> jax.Array:
    """logit p(C+ | q_t) = L_0 + t Delta for t = 0..rounds (docs/theory.md section 5, corrected).
    l0 and delta broadcast; the round axis is last."""
    rounds = check_int("rounds", rounds, minimum=0)
    t = jnp.arange(rounds + 1)
    return jnp.asarray(l0)[..., None] + jnp.asarray(delta)[..., None] * t


def posterior_rounds(l0, delta, rounds: int) -> jax.Array:
    """p(C+ | q_t) = sigmoid(L_0 + t Delta), t = 0..rounds."""
    return jax.nn.sigmoid(log_odds_rounds(l0, delta, rounds))


def posterior_from_evidence(log_prior: jax.Array, loglik: jax.Array) -> jax.Array:
    """Posterior over K concepts after 0..T conditionally independent pieces of evidence:
    p(C | e_1..t) ∝ p(C) prod_{i<=t} p(e_i | C). log_prior (..., K), loglik (..., T, K)
    (row i: log p(e_i | C = k)). Returns (..., T+1, K); row 0 is the normalised prior."""
    log_prior = jnp.asarray(log_prior)
    loglik = jnp.asarray(loglik)
    if loglik.ndim < 2 or loglik.shape[-1] != log_prior.shape[-1]:
        raise ValueError(f"loglik must have shape (..., T, K) with K = {log_prior.shape[-1]} "
                         f"(the length of log_prior), got {loglik.shape}")
    cum = jnp.cumsum(loglik, axis=-2)
    cum = jnp.concatenate([jnp.zeros_like(cum[..., :1, :]), cum], axis=-2)
    return jax.nn.softmax(log_prior[..., None, :] + cum, axis=-1)


def _xlogx(p):
    return jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)


def binary_entropy(p) -> jax.Array:
    """H_b(p) in nats."""
    p = jnp.asarray(p)
    return -(_xlogx(p) + _xlogx(1.0 - p))


def predictive_entropy(post: jax.Array, cond: jax.Array) -> dict[str, jax.Array]:
    """Decomposition of the entropy of the mixture p(y) = sum_k post_k cond_k(y).

    post (..., K) posterior over concepts; cond (..., K, V) each concept's distribution over
    V outcomes. Returns {'total': H[p(y)], 'expected': sum_k post_k H[cond_k] (what remains
    when the concept is known), 'mutual_info': total - expected = I(Y; C) (the
    concept-ambiguity term, 0 <= MI <= H[post])}, all in nats."""
    post = jnp.asarray(post)
    cond = jnp.asarray(cond)
    if cond.ndim < 2 or cond.shape[-2] != post.shape[-1]:
        raise ValueError(f"cond must have shape (..., K, V) with K = {post.shape[-1]} (post's last axis), "
                         f"got {cond.shape}")
    lead = jnp.broadcast_shapes(post.shape[:-1], cond.shape[:-2])
    post = jnp.broadcast_to(post, lead + post.shape[-1:])
    cond = jnp.broadcast_to(cond, lead + cond.shape[-2:])
    mix = jnp.sum(post[..., :, None] * cond, axis=-2)
    total = -jnp.sum(_xlogx(mix), axis=-1)
    expected = -jnp.sum(post * jnp.sum(_xlogx(cond), axis=-1), axis=-1)
    return {"total": total, "expected": expected, "mutual_info": total - expected}


def expected_flip_delta(flip_true, flip_assumed) -> jax.Array:
    """Expected log-odds step of one critic vote under C+ when the critic flips with rate
    e_true and the observer assumes e_assumed: (1 - 2 e_true) log((1 - e_a) / e_a).

    With e_true = e_assumed < 1/2 this is > 0 (docs/theory.md: +-log((1-e)/e) per round);
    with e_true > 1/2 > e_assumed (a critic worse than the observer believes) Delta < 0 and
    the loop locks in the wrong concept."""
    check_level("flip_true", flip_true, 0.0, 1.0)
    check_level("flip_assumed", flip_assumed, 0.0, 1.0)
    e_t, e_a = jnp.asarray(flip_true), jnp.asarray(flip_assumed)
    return (1.0 - 2.0 * e_t) * (jnp.log1p(-e_a) - jnp.log(e_a))


def instruction_llr(z, strength) -> jax.Array:
    """log N(z; s, 1) - log N(z; -s, 1) = 2 s z for an instruction z ~ N(s C, 1)."""
    return 2.0 * jnp.asarray(strength) * jnp.asarray(z)


def critic_llr(shown, r_plus, r_minus, flip, sigma) -> jax.Array:
    """log p(s | C+) - log p(s | C-) for a critic score s of a response whose true rewards
    are r+ under C+ and r- under C-, with p(s | r) = (1 - e) N(s; r, sigma^2) + e N(s; 1 - r,
    sigma^2) (Gaussian noise after a flip with rate e, as ``selfcorrect.critic_score``).
    Needs sigma > 0 (a noiseless critic would identify C from one score)."""
    check_positive("sigma", sigma)
    check_level("flip", flip, 0.0, 1.0)

    def loglik(r):
        z1 = -0.5 * jnp.square((shown - r) / sigma)
        z2 = -0.5 * jnp.square((shown - (1.0 - r)) / sigma)
        return jnp.logaddexp(jnp.log1p(-flip) + z1, jnp.log(flip) + z2)

    return loglik(r_plus) - loglik(r_minus)


def expected_performance(post_plus, perf_plus, perf_minus) -> jax.Array:
    """E[performance | q_t] = p_t perf(C+) + (1 - p_t) perf(C-): converges to perf(C+) at the
    geometric rate of 1 - p_t."""
    return post_plus * perf_plus + (1.0 - post_plus) * perf_minus
