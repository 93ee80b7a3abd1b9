"""The latent-concept sandbox task: right versus wrong answer family (docs/theory.md
section 5).

Sandbox task (learned part), "right versus wrong answer family". Two fixed family matrices
A, B (from ``family_seed``, shared by every context, so a model can learn them); per
context a = (A + spread G_a) x, b = (B + spread G_b) x, candidates y_j = u_j a + (1 - u_j) b.
Under C+ the target is a, under C- it is b: the critic scores a response by its true reward
towards the target (``selfcorrect.true_reward``; u_j or 1 - u_j for candidates), with Gaussian
noise sigma_c and flip rate e. Each triplet may carry an instruction z ~ N(strength * C, 1)
(an extra feature of its token, ``concept_tokens``). An observer who knows a and b sees
independent evidence pieces given C, with exact log-likelihood ratios

    instruction: 2 * strength * z
    critic score s of a response with true rewards r+ (towards a) and r- (towards b):
        log p(s | r+) - log p(s | r-),   p(s | r) = (1 - e) N(s; r, sigma_c^2) + e N(s; 1 - r, sigma_c^2)

so its posterior is exactly the additive model above (``evidence_log_odds``).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from icalign.core.validate import check_int, check_level, check_positive
from icalign.theory.bayes import critic_llr, instruction_llr
from icalign.selfcorrect.critics import Critic, critic_score, true_reward

__all__ = ["ConceptTask", "ConceptBatch", "families", "sample_concept", "evidence_log_odds",
           "cumulative_log_odds", "loop_instructions"]


@dataclasses.dataclass(frozen=True)
class ConceptTask:
    """Static description of the right-vs-wrong family mixture (see the module docstring).

    strength: instruction strength s (z ~ N(s C, 1)); instr_prob: chance that a triplet of a
    training context carries an instruction; critic_sigma, critic_flip: the critic's noise
    and flip rate; spread: per-context perturbation of the family matrices; prior: P(C+);
    family_seed: seed of the fixed family matrices A, B."""

    d: int = 5
    n: int = 20
    strength: float = 0.7
    instr_prob: float = 0.5
    critic_sigma: float = 0.5
    critic_flip: float = 0.0
    spread: float = 0.5
    prior: float = 0.5
    family_seed: int = 0

    def __post_init__(self):
        for name, minimum in (("d", 2), ("n", 2), ("family_seed", 0)):
            try:
                check_int(name, getattr(self, name), minimum)
            except ValueError as e:
                raise ValueError(f"ConceptTask.{e}") from None
        for name, lo, hi in (("strength", 0.0, None), ("instr_prob", 0.0, 1.0), ("critic_flip", 0.0, 0.5),
                             ("spread", 0.0, None)):
            check_level(f"ConceptTask.{name}", getattr(self, name), lo, hi)
        check_positive("ConceptTask.critic_sigma", self.critic_sigma)
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"ConceptTask.prior must lie in (0, 1), got {self.prior!r}")

    @property
    def critic(self) -> Critic:
        return Critic(sigma=jnp.float32(self.critic_sigma), flip=jnp.float32(self.critic_flip),
                      bias=jnp.float32(0.0))

    @property
    def prior_log_odds(self) -> float:
        return math.log(self.prior / (1.0 - self.prior))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@struct.dataclass
class ConceptBatch:
    """Contexts of the concept task (leading batch axes allowed).

    x (D,); ys (N, D); u (N,) mixing weight towards family a; rewards (N,) shown critic
    scores; instr (N,) instruction per triplet (0: none); concept () +1 or -1; a, b (D,)
    the two family answers (the target is a under C+, b under C-)."""

    x: jax.Array
    ys: jax.Array
    u: jax.Array
    rewards: jax.Array
    instr: jax.Array
    concept: jax.Array
    a: jax.Array
    b: jax.Array

    @property
    def target(self):
        return jnp.where(self.concept[..., None] > 0, self.a, self.b)

    @property
    def other(self):
        return jnp.where(self.concept[..., None] > 0, self.b, self.a)

    @property
    def r_true(self):
        """True rewards towards the target: u under C+, 1 - u under C-."""
        return jnp.where(self.concept[..., None] > 0, self.u, 1.0 - self.u)


def families(task: ConceptTask) -> tuple[jax.Array, jax.Array]:
    """The fixed family matrices (A, B), each N(0, 1)^{d x d}, from ``task.family_seed``."""
    k_a, k_b = jax.random.split(jax.random.PRNGKey(task.family_seed))
    return (jax.random.normal(k_a, (task.d, task.d)), jax.random.normal(k_b, (task.d, task.d)))


def _one_context(key, task: ConceptTask, n: int, instr_prob, fam):
    A, B = fam
    k_c, k_x, k_a, k_b, k_u, k_crit, k_pres, k_z = jax.random.split(key, 8)
    concept = jnp.where(jax.random.bernoulli(k_c, task.prior), 1.0, -1.0)
    x = jax.random.normal(k_x, (task.d,))
    a = (A + task.spread * jax.random.normal(k_a, A.shape)) @ x
    b = (B + task.spread * jax.random.normal(k_b, B.shape)) @ x
    u = jax.random.uniform(k_u, (n,))
    ys = u[:, None] * a[None, :] + (1.0 - u[:, None]) * b[None, :]
    r = jnp.where(concept > 0, u, 1.0 - u)
    shown = critic_score(k_crit, r, task.critic)
    present = jax.random.bernoulli(k_pres, instr_prob, (n,))
    instr = jnp.where(present, task.strength * concept + jax.random.normal(k_z, (n,)), 0.0)
    return ConceptBatch(x=x, ys=ys, u=u, rewards=shown, instr=instr, concept=concept, a=a, b=b)


def sample_concept(key, task: ConceptTask, batch: int, n: int | None = None, instr_prob=None) -> ConceptBatch:
    """``batch`` contexts of the concept task with ``n`` candidates (default ``task.n``);
    ``instr_prob`` overrides ``task.instr_prob`` (0: no instructions, e.g. a loop's start)."""
    batch = check_int("batch", batch, minimum=1)
    n = task.n if n is None else check_int("n", n, minimum=2)
    instr_prob = task.instr_prob if instr_prob is None else instr_prob
    check_level("instr_prob", instr_prob, 0.0, 1.0)
    return _sample_concept(key, jnp.asarray(instr_prob, jnp.float32), task=task, batch=batch, n=n)


@partial(jax.jit, static_argnames=("task", "batch", "n"))
def _sample_concept(key, instr_prob, *, task, batch, n):
    fam = families(task)
    return jax.vmap(lambda k: _one_context(k, task, n, instr_prob, fam))(jax.random.split(key, batch))


def evidence_log_odds(task: ConceptTask, ys, rewards, instr, a, b) -> jax.Array:
    """Log-likelihood ratio (C+ vs C-) of every triplet: its critic score plus its
    instruction (module docstring). ys (..., S, D), rewards and instr (..., S), a, b (..., D).
    Exact for candidates and for appended answers alike (their true rewards towards a and b
    are ``true_reward(y, a, b)`` and ``true_reward(y, b, a)``). Empty slots must be masked
    by the caller (``cumulative_log_odds``)."""
    return _evidence(task, ys, rewards, instr, a, b)


@partial(jax.jit, static_argnames=("task",))
def _evidence(task, ys, rewards, instr, a, b):
    r_plus = true_reward(ys, a[..., None, :], b[..., None, :])
    r_minus = true_reward(ys, b[..., None, :], a[..., None, :])
    votes = critic_llr(rewards, r_plus, r_minus, task.critic_flip, task.critic_sigma)
    return votes + instruction_llr(instr, task.strength)


def cumulative_log_odds(task: ConceptTask, evidence: jax.Array) -> jax.Array:
    """logit p(C+ | first n triplets) for n = 0..S: prior log-odds + the sum of the first n
    evidence terms. (..., S) -> (..., S + 1)."""
    cum = jnp.cumsum(evidence, axis=-1)
    return task.prior_log_odds + jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum], axis=-1)


def loop_instructions(key, task: ConceptTask, concept: jax.Array, rounds: int,
                      injections: Sequence[int] = ()) -> jax.Array:
    """Instructions of a self-correction loop: entry t (read before round t's answer) is
    z_t ~ N(strength * C, 1), and at each round in ``injections`` the contrary
    z_t ~ N(-strength * C, 1) (the paper's injection experiment). concept (B,) -> (B, rounds+1)."""
    rounds = check_int("rounds", rounds, minimum=0)
    for t in injections:
        check_int("injection round", t, minimum=0)
        if t > rounds:
            raise ValueError(f"injection round {t} is beyond the last round {rounds}")
    sign = jnp.ones(rounds + 1).at[jnp.asarray(list(injections), int)].set(-1.0) if injections else jnp.ones(rounds + 1)
    noise = jax.random.normal(key, (concept.shape[0], rounds + 1))
    return task.strength * concept[:, None] * sign[None, :] + noise
