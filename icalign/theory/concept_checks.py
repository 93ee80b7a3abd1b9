"""The latent-concept claims of docs/theory.md section 5, measured against independent
computations: each row is an error and its bound; ``icalign.theory.verify`` decides pass.

* the corrected posterior (``bayes.posterior_from_evidence``) equals brute-force enumeration
  of the joint distribution of the concept and every evidence sequence;
* its log-odds are linear in rounds (``bayes.log_odds_rounds``) when every round brings the
  same log-likelihood ratio;
* the predictive entropy splits into the expected entropy given the concept plus the mutual
  information, the latter computed from its definition (sum_k p_k KL(p(y|k) || p(y))), and
  0 <= I <= H[p(C)].
"""

from __future__ import annotations

import itertools

import jax
import numpy as np

from icalign.theory import bayes

__all__ = ["checks"]


def _normalise(a, axis=-1):
    return a / a.sum(axis, keepdims=True)


def _brute_force_posterior(prior, tables, observed):
    """p(C | e_1..t) for t = 0..T by summing the joint p(C) prod_i p(e_i | C) over every
    sequence of V^T evidence values that agrees with the observed prefix (no cancellation,
    no log-space: the definition of conditioning)."""
    K, T, V = prior.shape[0], tables.shape[0], tables.shape[-1]
    out = np.zeros((T + 1, K))
    for seq in itertools.product(range(V), repeat=T):
        joint = prior * np.prod([tables[i, :, seq[i]] for i in range(T)], axis=0)  # (K,)
        for t in range(T + 1):
            if seq[:t] == tuple(observed[:t]):
                out[t] += joint
    return out / out.sum(-1, keepdims=True)


def _entropy(p, axis=-1):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis)


def checks(key, contexts: int):
    """Yield (claim, N, max abs error, bound) rows; N is the number of concepts K."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1])
    # 1. posterior = enumeration (K = 3 concepts, T = 4 rounds, V = 3 evidence values)
    K, T, V = 3, 4, 3
    worst = 0.0
    for _ in range(min(contexts, 16)):  # enumeration is V^T sequences per context
        prior = _normalise(rng.uniform(0.05, 1, K))
        tables = _normalise(rng.uniform(0.05, 1, (T, K, V)))
        observed = rng.integers(0, V, T)
        loglik = np.log(tables[np.arange(T), :, observed])  # (T, K)
        fast = np.asarray(bayes.posterior_from_evidence(np.log(prior), loglik))
        worst = max(worst, float(np.max(np.abs(fast - _brute_force_posterior(prior, tables, observed)))))
    yield "latent concept: corrected posterior = brute-force enumeration", K, worst, 1e-12
    # 2. logit p(C+ | q_t) = L0 + t Delta for a constant log-likelihood ratio per round
    l0 = rng.normal(size=contexts) * 2
    delta = rng.normal(size=contexts)
    rounds = 12
    loglik = np.zeros((contexts, rounds, 2))
    loglik[..., 0] = delta[:, None]  # C+ gains Delta per round relative to C-
    post = np.asarray(bayes.posterior_from_evidence(np.stack([l0, np.zeros(contexts)], -1), loglik))
    logit = np.log(post[..., 0]) - np.log(post[..., 1])
    with jax.numpy_rank_promotion("allow"):  # log_odds_rounds broadcasts (B, 1) against the round axis
        lin = np.asarray(bayes.log_odds_rounds(l0, delta, rounds))
    yield "latent concept: log-odds linear in rounds, L0 + t Delta", 2, float(np.max(np.abs(logit - lin))), 1e-10
    # 3. H[p(y)] = E_C H[p(y | C)] + I(Y; C), I from its definition, 0 <= I <= H[p(C)]
    post = _normalise(rng.uniform(0.01, 1, (contexts, K)) ** 3)
    cond = _normalise(rng.uniform(0.01, 1, (contexts, K, 5)) ** 3)
    parts = {k: np.asarray(v) for k, v in bayes.predictive_entropy(post, cond).items()}
    mix = np.einsum("bk,bkv->bv", post, cond)
    kl = np.sum(cond * (np.log(cond) - np.log(mix[:, None, :])), -1)  # KL(p(y|k) || p(y))
    mi = np.sum(post * kl, -1)
    err = np.max(np.abs(parts["total"] - (np.sum(post * _entropy(cond), -1) + mi)))
    err = max(err, np.max(np.abs(_entropy(mix) - parts["total"])))
    err = max(err, float(np.max(np.maximum(0, -mi))), float(np.max(np.maximum(0, mi - _entropy(post)))))
    yield "latent concept: H[p(y)] = E_C H[p(y|C)] + I(Y;C), 0 <= I <= H[p(C)]", K, float(err), 1e-12
