"""The latent-concept model of self-correction (THEORY.md section 5; Liu et al. 2024).

Analytic part: the conditional-independence model. A latent concept C (K values; binary:
C+ / C-) has prior pi_0; the pieces of evidence appended round by round (an instruction, an
answer with the critic's score) are independent given C. Then each piece adds its
log-likelihood, and with a constant expected log-likelihood ratio Delta per round

    logit p(C+ | q_t) = L_0 + t * Delta                                          (corrected)

so 1 - p_t <= exp(-(L_0 + t Delta)) falls geometrically (ratio -> e^{-Delta}) when
Delta > 0, and p_t -> 0 (the wrong concept is locked in) when Delta < 0. The paper's own
round formula is mis-normalised (it multiplies unnormalised terms, so its posterior decays
to 0 whatever the evidence; reviewers noted this); the form above is THEORY.md's correction
and is what every function here implements. The predictive distribution
p(y | q_t) = sum_C p(y | C) p(C | q_t) has entropy

    H[p(y | q_t)] = E_{C ~ p(C|q_t)} H[p(y | C)]  +  I(Y; C | q_t),

and the concept-ambiguity (mutual-information) term is at most H[p(C | q_t)], so it goes to 0
as the posterior concentrates.

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

Learned part: a transformer trained on this mixture with full-context PL (row n is scored by
PL over all N candidates, most of them unseen at row n, ranked by their true rewards; the
model reads only the noisy shown scores and the instructions; y* never enters). The
published prefix loss would not do: it scores row n on the seen candidates only, which the
model reads directly, so an instruction could never lower it.
Linear probes read C from the hidden states of every layer.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from icalign._validate import check_choice, check_int, check_level, check_positive
from icalign.losses import cosine_reward, plackett_luce
from icalign.selfcorrect import Critic, critic_score, true_reward
from icalign.tasks import Context

__all__ = [
    "log_odds_rounds",
    "posterior_rounds",
    "posterior_from_evidence",
    "binary_entropy",
    "predictive_entropy",
    "expected_flip_delta",
    "instruction_llr",
    "critic_llr",
    "expected_performance",
    "ConceptTask",
    "ConceptBatch",
    "families",
    "sample_concept",
    "evidence_log_odds",
    "cumulative_log_odds",
    "concept_config",
    "concept_tokens",
    "concept_predict",
    "concept_learner",
    "concept_loss",
    "train_concept",
    "hidden_states",
    "readout_from_hidden",
    "Probe",
    "fit_probe",
    "probe_logit",
    "probe_cosine",
    "loop_instructions",
    "fit_layer_probes",
    "concept_loop",
]


# ---------------------------------------------------------------------------------------------
# Analytic model
# ---------------------------------------------------------------------------------------------


def log_odds_rounds(l0, delta, rounds: int) -> jax.Array:
    """logit p(C+ | q_t) = L_0 + t Delta for t = 0..rounds (THEORY.md section 5, corrected).
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

    With e_true = e_assumed < 1/2 this is > 0 (THEORY.md: +-log((1-e)/e) per round);
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


# ---------------------------------------------------------------------------------------------
# The concept task
# ---------------------------------------------------------------------------------------------


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


def concept_config(task: ConceptTask, **fields):
    """The model config for the concept task: the theory's stacked layout (one token per
    candidate holding x, y and r, which a small model learns in a few hundred steps; the
    interleaved layout needs far more) with one extra response feature, d = task.d + 1, that
    carries the instruction: the model sees the response (y; z) and the query (x; 0).
    Other fields (n_layers, ...) pass through."""
    from icalign import model

    for name in ("d", "n", "token_layout"):
        if name in fields:
            raise ValueError(f"{name} is fixed by the task for the concept model; do not pass it")
    return model.ModelConfig(d=task.d + 1, n=task.n, token_layout="stacked", **fields)


def _check_concept_cfg(cfg, d: int):
    if cfg.token_layout != "stacked" or cfg.d != d + 1:
        raise ValueError(f"the concept model needs token_layout='stacked' and d = task d + 1 = {d + 1} "
                         f"(see concept_config), got token_layout={cfg.token_layout!r}, d={cfg.d}")


def concept_tokens(x, ys, rewards, instr, cfg) -> jax.Array:
    """``model.tokenize`` (stacked) of the context with query (x; 0) and responses
    (y_j; z_j): the instruction z_j is one more feature of its response. Leading batch axes
    allowed. x (..., D), ys (..., S, D), rewards and instr (..., S)."""
    from icalign import model

    _check_concept_cfg(cfg, ys.shape[-1])
    x1 = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
    ys1 = jnp.concatenate([ys, instr[..., None].astype(ys.dtype)], axis=-1)
    ctx = Context(x=x1, ys=ys1, r_true=rewards, rewards=rewards, y_star=jnp.zeros_like(x1))
    return model.tokenize(ctx, cfg)


def concept_predict(params, tokens, cfg) -> jax.Array:
    """Predictions after n = 0..N-1 seen triplets, first D features of the read-out:
    tokens (..., N+1, 2(D+1)+2) -> (..., N, D)."""
    from icalign import model

    out = model.apply(params, tokens, cfg)
    return out[..., jnp.asarray(model.readout_positions(cfg)), : cfg.d - 1]


def concept_learner(params, cfg, name: str = "concept transformer"):
    """The concept model as a ``selfcorrect.Learner`` (it reads the slots' instructions)."""
    from icalign import model
    from icalign.selfcorrect import Learner

    model.check_params(params, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))

    def fn(p, key, slots, count):
        if slots.ys.shape[-2] != cfg.n:
            raise ValueError(f"the concept model reads cfg.n={cfg.n} slots but the loop allocates "
                             f"{slots.ys.shape[-2]} (N0 + rounds + 1)")
        out = model.apply(p, concept_tokens(slots.x, slots.ys, slots.rewards, slots.instr, cfg), cfg)
        return out[pos[count], : cfg.d - 1]

    return Learner(name=name, fn=fn, params=params, reads_instructions=True)


# ---------------------------------------------------------------------------------------------
# Training a transformer on the mixture
# ---------------------------------------------------------------------------------------------


def concept_loss(params, batch: ConceptBatch, cfg, ranking: str = "true", beta: float = 1.0) -> jax.Array:
    """Full-context PL with the cosine reward: row n (prediction after n seen triplets) is
    scored by PL over all N candidates, most of them unseen at row n; mean over rows and
    batch. ``ranking='true'``: the candidates are ranked by their true rewards (a noiseless
    critic's full ranking; the model itself reads only the noisy shown scores and the
    instructions); ``'shown'``: by the shown scores (a much weaker signal). y* never enters."""

    check_choice("ranking", ranking, ("true", "shown"))
    tokens = concept_tokens(batch.x, batch.ys, batch.rewards, batch.instr, cfg)
    y_hat = concept_predict(params, tokens, cfg)  # (B, N, D)
    scores = cosine_reward(y_hat, batch.ys[..., None, :, :])  # (B, N, N)
    rank_by = batch.r_true if ranking == "true" else batch.rewards
    return jnp.mean(plackett_luce(beta * scores, rank_by[..., None, :]))


@partial(jax.jit, static_argnames=("task", "cfg", "batch", "length", "opt", "ranking", "beta"), donate_argnums=(0, 1))
def _train_chunk(params, opt_state, k_data, start, *, task, cfg, batch, length, opt, ranking, beta):
    def step(carry, i):
        p, s = carry
        data = sample_concept(jax.random.fold_in(k_data, i), task, batch)
        loss, g = jax.value_and_grad(concept_loss)(p, data, cfg, ranking, beta)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    return jax.lax.scan(step, (params, opt_state), start + jnp.arange(length))


def train_concept(key, task: ConceptTask, cfg, steps: int = 600, batch: int = 32, lr: float = 3e-3,
                  chunk: int = 50, progress: bool = True, ranking: str = "true", beta: float = 1.0):
    """Train ``icalign.model`` on the concept mixture (Adam, fresh contexts every step,
    batch i from fold_in(k_data, i)). Returns (params, losses (steps,)).

    ``icalign.train`` trains on the mixed-linear task with the prefix loss only, so the
    concept model has its own (short) loop: same conventions (chunks of ``chunk`` steps in
    one jit'd scan, NaN check between chunks)."""
    from icalign import model
    from tqdm.auto import tqdm

    steps = check_int("steps", steps, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    chunk = check_int("chunk", chunk, minimum=1)
    check_positive("lr", lr)
    check_choice("ranking", ranking, ("true", "shown"))
    check_positive("beta", beta)
    _check_concept_cfg(cfg, task.d)
    if cfg.n != task.n:
        raise ValueError(f"cfg.n = {cfg.n} must match task.n = {task.n} (use concept_config)")
    k_init, k_data = jax.random.split(key)
    params = model.init(k_init, cfg)
    opt = optax.adam(lr)
    opt_state = opt.init(params)
    losses = []
    with tqdm(total=steps, disable=not progress, unit="step", desc="train concept model") as bar:
        for s in range(0, steps, chunk):
            length = min(chunk, steps - s)
            (params, opt_state), ls = _train_chunk(params, opt_state, k_data, jnp.asarray(s),
                                                   task=task, cfg=cfg, batch=batch, length=length, opt=opt,
                                                   ranking=ranking, beta=float(beta))
            ls = np.asarray(ls)
            if not np.all(np.isfinite(ls)):
                raise FloatingPointError(f"concept training loss is not finite at step {s + int(np.argmin(np.isfinite(ls)))}")
            losses.append(ls)
            bar.update(length)
            bar.set_postfix(loss=f"{ls[-1]:.4f}")
    return params, np.concatenate(losses)


# ---------------------------------------------------------------------------------------------
# Hidden states and linear probes
# ---------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("cfg",))
def hidden_states(params, tokens: jax.Array, cfg) -> jax.Array:
    """Residual stream of ``icalign.model`` after the read-in (layer 0) and after each block:
    tokens (..., T, token_dim) -> (n_layers + 1, ..., T, d_model).

    ``model.apply`` returns only the read-out, so this re-runs its pieces (read-in, positions,
    the scanned blocks); ``readout_from_hidden`` of the last layer equals ``model.apply``
    (tested), which guards against the two drifting apart."""
    from icalign import model

    model.check_params(params, cfg)
    shape = jnp.shape(tokens)
    lead, T = shape[:-2], shape[-2]
    B = int(np.prod(lead)) if lead else 1
    h = model._dense2d(jnp.reshape(tokens, (B * T, shape[-1])), params.read_in.w, params.read_in.b)
    if cfg.positional:
        h = (h.reshape(B, T, -1) + params.pos[:T]).reshape(B * T, -1)

    def layer(h, blk):
        h = model._block(h, blk, B, T, cfg)
        return h, h

    _, hs = jax.lax.scan(layer, h, params.blocks)
    hs = jnp.concatenate([h[None], hs], axis=0)
    return hs.reshape(cfg.n_layers + 1, *lead, T, cfg.d_model)


def readout_from_hidden(params, h_last: jax.Array, cfg) -> jax.Array:
    """The model's output from its last hidden state: read_out(LN_f(h))."""
    from icalign import model

    shape = h_last.shape
    h = model._layer_norm(h_last.reshape(-1, shape[-1]), params.ln_f)
    out = model._dense2d(h, params.read_out.w, params.read_out.b)
    return out.reshape(*shape[:-1], cfg.d)


@struct.dataclass
class Probe:
    """Logistic probe on standardised features: logit = ((h - mu) / sd) . w + b."""

    w: jax.Array
    b: jax.Array
    mu: jax.Array
    sd: jax.Array


def fit_probe(h: jax.Array, labels: jax.Array, l2: float = 1e-3, iters: int = 30) -> Probe:
    """L2-regularised logistic regression of ``labels`` (0/1) on ``h`` (M, F), solved by
    Newton's method (F is small: the model width); ``l2`` scales the penalty l2/2 |w|^2 per
    sample. vmap it over a layer axis to fit one probe per layer."""
    iters = check_int("iters", iters, minimum=1)
    check_positive("l2", l2)
    if h.ndim != 2 or labels.shape != h.shape[:1]:
        raise ValueError(f"h must be (M, F) and labels (M,), got {h.shape} and {labels.shape}")
    mu = jnp.mean(h, axis=0)
    sd = jnp.std(h, axis=0) + 1e-6
    X = jnp.concatenate([(h - mu[None]) / sd[None], jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
    y = labels.astype(h.dtype)
    m, f1 = X.shape
    reg = l2 * jnp.eye(f1, dtype=h.dtype).at[-1, -1].set(0.0)  # no penalty on the bias

    def newton(theta, _):
        p = jax.nn.sigmoid(X @ theta)
        grad = X.T @ (p - y) / m + reg @ theta
        hess = (X * (p * (1 - p))[:, None]).T @ X / m + reg
        return theta - jnp.linalg.solve(hess, grad), None

    theta, _ = jax.lax.scan(newton, jnp.zeros(f1, h.dtype), None, length=iters)
    return Probe(w=theta[:-1], b=theta[-1], mu=mu, sd=sd)


def _lead(v, h):
    """v (F,) shaped to broadcast against h (..., F) (explicit: rank promotion may raise)."""
    return v.reshape((1,) * (h.ndim - 1) + v.shape)


def probe_logit(probe: Probe, h: jax.Array) -> jax.Array:
    """The probe's log-odds of C+ for hidden states h (..., F) -> (...)."""
    return jnp.sum((h - _lead(probe.mu, h)) / _lead(probe.sd, h) * _lead(probe.w, h), axis=-1) + probe.b


def probe_cosine(probe: Probe, h: jax.Array) -> jax.Array:
    """The paper's concept activation: cos(h - mu, probe direction) with the direction
    w / sd in raw hidden-state coordinates. (..., F) -> (...)."""
    v = probe.w / probe.sd
    hc = h - _lead(probe.mu, h)
    return jnp.sum(hc * _lead(v, h), -1) / (jnp.linalg.norm(hc, axis=-1) * jnp.linalg.norm(v) + 1e-12)


# ---------------------------------------------------------------------------------------------
# Loop instructions
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Probes per layer, and the self-correction loop on the concept task
# ---------------------------------------------------------------------------------------------


def fit_layer_probes(key, params, cfg, task: ConceptTask, contexts: int = 512, l2: float = 1e-3):
    """One logistic probe per layer (read-in and every block) reading C from the hidden state
    at every read-out position n >= 1 of training-distribution contexts.

    Half the contexts fit the probes, the other half score them. Returns (probes: Probe with
    a leading layer axis, report: dict of per-layer held-out 'accuracy', 'corr_bayes' (Pearson
    r between the probe's logit and the exact Bayes log-odds, over contexts and positions)
    and 'bayes_accuracy', the accuracy of the Bayes posterior on the same held-out data)."""
    from icalign import model

    contexts = check_int("contexts", contexts, minimum=4)
    b = sample_concept(key, task, contexts)
    tokens = concept_tokens(b.x, b.ys, b.rewards, b.instr, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))[1:]
    h = hidden_states(params, tokens, cfg)[:, :, pos]  # (L+1, B, N-1, W)
    bayes = cumulative_log_odds(task, evidence_log_odds(task, b.ys, b.rewards, b.instr, b.a, b.b))[:, 1:task.n]
    label = jnp.broadcast_to((b.concept > 0)[:, None], bayes.shape)
    half = contexts // 2
    n_layers, _, npos, width = h.shape
    fit = h[:, :half].reshape(n_layers, -1, width)
    probes = jax.vmap(lambda hl: fit_probe(hl, label[:half].reshape(-1), l2))(fit)
    held = jax.vmap(probe_logit)(probes, h[:, half:])  # (L+1, B-half, N-1)
    acc = jnp.mean((held > 0) == label[half:][None], axis=(1, 2))
    bh = np.asarray(bayes[half:]).ravel()
    corr = [float(np.corrcoef(np.asarray(held[l]).ravel(), bh)[0, 1]) for l in range(n_layers)]
    report = {"accuracy": np.asarray(acc), "corr_bayes": np.asarray(corr),
              "bayes_accuracy": float(jnp.mean((bayes[half:] > 0) == label[half:])),
              "contexts": contexts, "positions": int(npos)}
    return probes, report


def concept_loop(key, params, cfg, task: ConceptTask, critics: Critic, batch: ConceptBatch, rounds: int,
                 probes: Probe, injections: Sequence[int] = (), beta: float = 1.0, critic_towards: str = "target",
                 learner=None) -> dict[str, np.ndarray]:
    """Self-correction on the concept task with the concept model as learner
    (``selfcorrect.sweep``): ``batch`` holds the N0 initial candidates (no instructions) and
    ``cfg.n`` must be N0 + rounds + 1. Round t reads the instruction z_t
    (``loop_instructions``, contrary at ``injections``), answers, and its answer is scored by
    each critic setting (towards the context's target) and appended.

    Returns arrays with axes (S critic settings, B contexts, T+1 rounds), signs aligned with
    each context's true concept (positive = towards it):
      bayes_logit: exact log-odds of the true concept for an observer who knows a, b and the
                   task's critic (not the loop's: a different loop critic is a misspecified one);
      bayes_post:  its posterior probability; probe_logit, probe_cos (L+1 layers first):
                   the probes' log-odds and the paper's cosine activation; nmse against the
                   target; entropy of the model's choice over the N0 initial candidates;
                   mutual_info: the Bayes predictive's concept-ambiguity term for that choice
                   (p(j | C) = softmax_j(beta cos(target_C, y_j))).
    """
    from icalign import model, selfcorrect
    from icalign.metrics import normalised_mse

    rounds = check_int("rounds", rounds, minimum=1)
    check_choice("critic_towards", critic_towards, ("target", "other"))
    n0 = batch.ys.shape[-2]
    if cfg.n != n0 + rounds + 1:
        raise ValueError(f"cfg.n = {cfg.n} must be N0 + rounds + 1 = {n0 + rounds + 1}")
    k_instr, k_loop = jax.random.split(key)
    instructions = loop_instructions(k_instr, task, batch.concept, rounds, injections)
    towards, away = (batch.target, batch.other) if critic_towards == "target" else (batch.other, batch.target)
    # the initial candidates keep their shown scores (from the task's critic); r_true is only
    # read for the N0 initial slots' bookkeeping
    ctx = Context(x=batch.x, ys=batch.ys, r_true=batch.r_true, rewards=batch.rewards, y_star=towards)
    learner = concept_learner(params, cfg) if learner is None else learner
    traj, _ = selfcorrect.sweep(k_loop, ctx, critics, learner, rounds, draws=1, instructions=instructions,
                                beta=beta, y_wrong=away)
    final = jax.tree_util.tree_map(lambda a: a[:, :, 0], traj.final)  # drop the draw axis
    t_idx = n0 + jnp.arange(rounds + 1)
    sign = batch.concept[None, :, None]
    ev = evidence_log_odds(task, final.ys, final.rewards, final.instr, batch.a[None], batch.b[None])
    logit = cumulative_log_odds(task, ev)[..., t_idx] * sign  # (S, B, T+1)
    tokens = concept_tokens(final.x, final.ys, final.rewards, final.instr, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))[t_idx]
    h = hidden_states(params, tokens, cfg)[:, :, :, pos]  # (L+1, S, B, T+1, W)
    if probes.w.shape[0] != h.shape[0]:
        raise ValueError(f"probes must have one probe per layer ({h.shape[0]}: read-in and each block; "
                         f"fit_layer_probes), got {probes.w.shape[0]}")
    p_logit = jax.vmap(probe_logit)(probes, h) * sign[None]
    p_cos = jax.vmap(probe_cosine)(probes, h) * sign[None]
    y_hat = traj.y_hat[:, :, 0]  # (S, B, T+1, D)
    nmse = normalised_mse(y_hat, batch.target[None, :, None, :])
    # the Bayes predictive over the initial candidates and its concept-ambiguity term
    cos_a = cosine_reward(batch.a, batch.ys)  # (B, N0)
    cos_b = cosine_reward(batch.b, batch.ys)
    cond = jax.nn.softmax(beta * jnp.stack([cos_a, cos_b], axis=1), axis=-1)  # (B, 2, N0): C+, C-
    lo_plus = logit * sign  # log-odds of C+
    post = jnp.stack([jax.nn.sigmoid(lo_plus), jax.nn.sigmoid(-lo_plus)], axis=-1)  # (S, B, T+1, 2)
    mi = predictive_entropy(post, cond[None, :, None])["mutual_info"]
    out = {"bayes_logit": logit, "bayes_post": jax.nn.sigmoid(logit), "probe_logit": p_logit,
           "probe_cos": p_cos, "nmse": nmse, "entropy": traj.entropy[:, :, 0], "mutual_info": mi,
           "instructions": instructions * batch.concept[:, None]}
    return {k: np.asarray(v) for k, v in out.items()}
