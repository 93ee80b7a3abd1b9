"""Multi-round self-correction as repeated in-context alignment (docs/theory.md
sections 1 and 5).

The loop. Round 0: the context holds N0 candidates with rewards. Round t = 0..T:

    y_hat_t  = learner(context with N0 + t candidates)
    r_t      = true reward of y_hat_t                     (``true_reward``)
    shown_t  = critic(r_t)                                (``critic_score``)
    append (y_hat_t, shown_t) to the context              (slot N0 + t)

so round t's answer has seen the N0 initial candidates plus its own t earlier answers with
the critic's scores: no new external information except the critic's. Shapes are static, so
the context is pre-allocated with N0 + T + 1 slots and a learner is told how many are filled
(``count``); the loop is a ``lax.scan`` over rounds, vmapped over critic settings, contexts
and critic-noise draws (``sweep``).

True reward of a free response. A candidate of the mixed-linear task is
y_j = r_j y* + (1 - r_j) eps and its reward is the mixing weight r_j. A learner's answer lies
anywhere in R^D, and every learner here (cosine PL) fixes only its direction. Its true reward
is the mixing weight of the candidate direction equally close to y*:
r(y) with cos(eps + r (y* - eps), y*) = cos(y, y*) (``true_reward``): it ranks answers exactly
like the metric and gives back r_j for every candidate, so answers and candidates are scored
on one scale.

Critics are :mod:`icalign.selfcorrect.critics`; per-round metrics :mod:`icalign.selfcorrect.metrics`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from icalign import model
from icalign.core.losses import cosine_reward, smooth_norm
from icalign.core.sharding import shard_contexts
from icalign.core.tasks import Context
from icalign.core.validate import check_choice, check_int, check_positive
from icalign.selfcorrect.critics import Critic, critic_score, pairwise_accuracy, true_reward, wrong_answer
from icalign.theory import gd

__all__ = ["Slots", "initial_slots", "slot_tokens", "Learner", "gd_learner", "transformer_learner", "Trajectory",
           "choice_entropy", "self_correct", "sweep"]


@struct.dataclass
class Slots:
    """What a learner may see: the query and S pre-allocated candidate slots, of which the
    first ``count`` are filled (``count`` is passed alongside). ``instr`` is an instruction
    value attached to each triplet (0: none; used by the latent-concept task, ignored by the
    GD learners). x (D,), ys (S, D), rewards (S,), instr (S,)."""

    x: jax.Array
    ys: jax.Array
    rewards: jax.Array
    instr: jax.Array


def initial_slots(x, ys0, rewards0, rounds: int, instr0=None) -> Slots:
    """Round-0 context with N0 filled slots and ``rounds + 1`` empty ones (one per answer)."""
    rounds = check_int("rounds", rounds, minimum=0)
    n0, d = ys0.shape[-2:]
    pad = rounds + 1
    ys = jnp.concatenate([ys0, jnp.zeros(ys0.shape[:-2] + (pad, d), ys0.dtype)], axis=-2)
    rewards = jnp.concatenate([rewards0, jnp.zeros(rewards0.shape[:-1] + (pad,), rewards0.dtype)], -1)
    instr = jnp.zeros_like(rewards) if instr0 is None else jnp.concatenate(
        [instr0, jnp.zeros(instr0.shape[:-1] + (pad,), instr0.dtype)], -1)
    return Slots(x=x, ys=ys, rewards=rewards, instr=instr)


def slot_tokens(slots: Slots, cfg) -> jax.Array:
    """Tokens of a slot context (``icalign.model.tokenize``; leading batch axes allowed).

    Interleaved layout: each triplet's instruction value is written into feature 1 of its
    reward token, which the published layout pads with 0: (r, z, 0, ..., 0); with no
    instructions this is exactly ``model.tokenize``. The stacked layout has no free feature,
    so it carries no instructions (``Learner.reads_instructions`` is False for it).
    Unfilled slots are zeros; a causal model never sees them."""

    ctx = Context(x=slots.x, ys=slots.ys, r_true=slots.rewards, rewards=slots.rewards,
                  y_star=jnp.zeros_like(slots.x))
    tokens = model.tokenize(ctx, cfg)
    if cfg.token_layout == "stacked":
        return tokens
    if cfg.d < 2:
        raise ValueError(f"cfg.d must be >= 2 to carry an instruction next to the reward, got {cfg.d}")
    return tokens.at[..., 2::3, 1].set(slots.instr)


@dataclasses.dataclass(frozen=True, eq=False)
class Learner:
    """A pure learner ``fn(params, key, slots, count) -> y_hat (D,)`` that reads the first
    ``count`` slots only (``count`` may be traced). ``params`` is a pytree passed through
    ``jit`` as an argument (None for the GD learners)."""

    name: str
    fn: Callable[..., jax.Array]
    params: Any = None
    reads_instructions: bool = False


def gd_learner(kind: str = "adam", steps: int = 50, lr=None) -> Learner:
    """A GD learner of ``icalign.gd.fit_linear`` on cosine PL over the filled slots:
    'adam' (the published baseline: lr 0.1, 50 steps) or 'gd' (plain GD, lr 1.0)."""
    check_choice("kind", kind, gd.LEARNERS)
    steps = check_int("steps", steps, minimum=1)
    if lr is not None:
        check_positive("lr", lr)

    def fn(params, key, slots, count):
        return gd.fit_linear(key, slots.x, slots.ys, slots.rewards, count, kind, steps, lr)

    return Learner(name=f"{kind} ({steps} steps)", fn=fn)


def transformer_learner(params, cfg, name: str = "transformer", tokens=None, features=None,
                        reads_instructions=None) -> Learner:
    """A trained (or constructed) ``icalign.model`` transformer as a learner: its prediction
    after ``count`` seen triplets (``model.readout_positions(cfg)[count]``: the x token of
    slot ``count`` when interleaved, the token of slot ``count - 1`` when stacked). Needs
    ``cfg.n == S`` slots (= N0 + rounds + 1). Reads instructions only when interleaved.
    ``tokens(slots, cfg)`` builds its tokens (default :func:`slot_tokens`); ``features`` keeps
    the first features of the read-out (default all), for models with extra output features."""

    model.check_params(params, cfg)
    pos = jnp.asarray(model.readout_positions(cfg))

    def fn(p, key, slots, count):
        if slots.ys.shape[-2] != cfg.n:
            raise ValueError(f"{name} reads cfg.n={cfg.n} slots but the loop allocates "
                             f"{slots.ys.shape[-2]} (N0 + rounds + 1); choose N0 = cfg.n - rounds - 1")
        out = model.apply(p, make_tokens(slots, cfg), cfg)
        return out[pos[count], :features]

    make_tokens = slot_tokens if tokens is None else tokens
    reads = cfg.token_layout == "interleaved" if reads_instructions is None else reads_instructions
    return Learner(name=name, fn=fn, params=params, reads_instructions=reads)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class Trajectory:
    """One run of the loop (leading axes added by ``sweep``).

    y_hat (T+1, D) answers; r_true (T+1,) their true rewards; shown (T+1,) the critic's scores;
    entropy (T+1,) entropy (nats) of the PL choice distribution over the N0 initial candidates
    (a fixed set, so rounds are comparable); entropy_all (T+1,) the same over every filled
    slot, divided by log(count); final: the context after the last round; final_r_true (S,).
    """

    y_hat: jax.Array
    r_true: jax.Array
    shown: jax.Array
    entropy: jax.Array
    entropy_all: jax.Array
    final: Slots
    final_r_true: jax.Array


def choice_entropy(y_hat: jax.Array, ys: jax.Array, mask: jax.Array, beta=1.0) -> jax.Array:
    """Entropy of p_j = softmax_j(beta * cos(y_hat, y_j)) over the masked-in candidates:
    the probability that PL with the learner's own reward model picks y_j first."""
    s = beta * cosine_reward(y_hat, ys)
    logp = jax.nn.log_softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
    return -jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0), axis=-1)


def self_correct(learner: Learner, learn_key, critic_key, slots0: Slots, r_true0, y_star, y_wrong,
                 critic: Critic, n0: int, rounds: int, instructions=None, beta=1.0,
                 critic_on_initial: bool = False, learner_params=None, rescale: bool = True) -> Trajectory:
    """Run the loop for one context, one critic setting and one critic-noise draw.

    ``slots0`` has N0 filled slots and ``rounds + 1`` empty ones (``initial_slots``);
    ``r_true0`` (S,) true rewards of the slots (the first N0 are used). ``learn_key`` is the
    same in every round: the model is one fixed function of its context, and only the
    context changes between rounds. ``critic_key`` is folded with the round index.
    ``instructions`` (rounds + 1,): entry t is the instruction read before round t's answer,
    stored on the triplet just before it (slot N0 - 1 + t); None: no instructions.
    ``critic_on_initial``: the critic also re-scores the N0 initial candidates (else they
    keep the given rewards). ``learner_params`` overrides ``learner.params`` (for jit).
    ``rescale``: an answer is appended at the mean norm of the initial candidates. Every
    learner here is trained or fitted on cosine rewards, so only its direction is meaningful,
    and its raw norm would put an out-of-distribution token into a transformer's context
    (the cosine-PL GD learners are scale-blind either way). ``Trajectory.y_hat`` is raw.
    """
    params = learner.params if learner_params is None else learner_params
    k_critic, k_init = jax.random.split(critic_key)
    S = slots0.ys.shape[-2]
    if S != n0 + rounds + 1:
        raise ValueError(f"slots0 must have N0 + rounds + 1 = {n0 + rounds + 1} slots, got {S}")
    filled0 = jnp.arange(S) < n0
    r_slots = jnp.where(filled0, r_true0, 0.0)
    if critic_on_initial:
        rescored = critic_score(k_init, r_true0, critic)
        slots0 = slots0.replace(rewards=jnp.where(filled0, rescored, slots0.rewards))
    if instructions is None:
        instructions = jnp.zeros((rounds + 1,), slots0.rewards.dtype)
    instr_next = jnp.concatenate([instructions[1:], jnp.zeros((1,), instructions.dtype)])
    slots0 = slots0.replace(instr=slots0.instr.at[n0 - 1].set(instructions[0]))
    initial_mask = filled0
    ref_norm = jnp.sum(jnp.where(filled0, smooth_norm(slots0.ys), 0.0)) / n0

    def body(carry, t):
        slots, r_all = carry
        count = n0 + t
        y_hat = learner.fn(params, learn_key, slots, count)
        r = true_reward(y_hat, y_star, y_wrong)
        shown = critic_score(jax.random.fold_in(k_critic, t), r, critic)
        seen = jnp.arange(S) < count
        ent0 = choice_entropy(y_hat, slots.ys, initial_mask, beta)
        ent_all = choice_entropy(y_hat, slots.ys, seen, beta) / jnp.log(count.astype(y_hat.dtype))
        y_app = y_hat * (ref_norm / smooth_norm(y_hat)) if rescale else y_hat
        slots = slots.replace(
            ys=slots.ys.at[count].set(y_app),
            rewards=slots.rewards.at[count].set(shown),
            # the next round's instruction sits on this triplet (dropped after the last round)
            instr=slots.instr.at[count].set(instr_next[t]),
        )
        r_all = r_all.at[count].set(r)
        return (slots, r_all), (y_hat, r, shown, ent0, ent_all)

    (final, r_final), (y_hat, r, shown, ent0, ent_all) = jax.lax.scan(
        body, (slots0, r_slots), jnp.arange(rounds + 1))
    return Trajectory(y_hat=y_hat, r_true=r, shown=shown, entropy=ent0, entropy_all=ent_all,
                      final=final, final_r_true=r_final)


def sweep(key, ctx: Context, critics: Critic, learner: Learner, rounds: int = 10, draws: int = 4,
          instructions=None, beta=1.0, critic_on_initial: bool = False, y_wrong=None, rescale: bool = True):
    """The loop for every (critic setting, context, critic-noise draw) in one compiled call.

    ``ctx``: a batch of contexts (B, N0, D) with their given (round-0) rewards; ``critics``:
    fields of shape (S,); ``instructions``: None or (B, rounds + 1); ``y_wrong``: the wrong
    answer per context (B, D), recovered from ``ctx`` by ``wrong_answer`` if None.
    ``rescale``: see ``self_correct``. Common random numbers: every critic setting sees the
    same critic keys and every draw the same learner key, so differences between settings
    are not sampling noise.

    Returns (Trajectory with leading axes (S, B, M), probe_accuracy (S, B)): the critic's
    pairwise ranking accuracy on the context's N0 candidates (fresh keys, averaged over M
    draws), a property of the critic that does not depend on the loop's path.
    """
    rounds = check_int("rounds", rounds, minimum=1)
    draws = check_int("draws", draws, minimum=1)
    check_positive("beta", beta)
    if not isinstance(learner, Learner):
        raise ValueError(f"learner must be an icalign.selfcorrect.Learner, got {type(learner).__name__}")
    if ctx.ys.ndim != 3:
        raise ValueError(f"ctx must be a batch of contexts with ys of shape (B, N0, D), got {ctx.ys.shape}")
    b, n0, _ = ctx.ys.shape
    if n0 < 2:
        raise ValueError(f"contexts need N0 >= 2 initial candidates, got {n0}")
    shapes = {jnp.shape(getattr(critics, f)) for f in ("sigma", "flip", "bias", "random")}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"critics fields must all have shape (S,), got {sorted(shapes)}; use make_critics")
    if instructions is not None and jnp.shape(instructions) != (b, rounds + 1):
        raise ValueError(f"instructions must have shape (B, rounds + 1) = ({b}, {rounds + 1}), "
                         f"got {jnp.shape(instructions)}")
    if y_wrong is None:
        y_wrong = wrong_answer(ctx)
    slots0 = initial_slots(ctx.x, ctx.ys, ctx.rewards, rounds)
    r_true0 = jnp.concatenate([ctx.r_true, jnp.zeros((b, rounds + 1), ctx.r_true.dtype)], -1)
    # Contexts are independent: spread them over the devices (no-op on one device).
    slots0, r_true0, y_star, y_wrong, instructions = shard_contexts((slots0, r_true0, ctx.y_star, y_wrong,
                                                                     instructions), b)
    return _sweep(learner.fn, learner.params, key, slots0, r_true0, y_star, y_wrong, critics, instructions,
                  jnp.asarray(beta, ctx.ys.dtype), n0=n0, rounds=rounds, draws=draws,
                  critic_on_initial=bool(critic_on_initial), rescale=bool(rescale))


@partial(jax.jit, static_argnames=("fn", "n0", "rounds", "draws", "critic_on_initial", "rescale"))
def _sweep(fn, params, key, slots0, r_true0, y_star, y_wrong, critics, instructions, beta, *, n0, rounds,
           draws, critic_on_initial, rescale):
    k_learn, k_critic, k_probe = jax.random.split(key, 3)
    b = y_star.shape[0]
    learn_keys = jax.random.split(k_learn, b)
    # key of (context i, draw m); the same for every critic setting (common random numbers)
    critic_keys = jax.vmap(lambda i: jax.vmap(lambda m: jax.random.fold_in(
        jax.random.fold_in(k_critic, i), m))(jnp.arange(draws)))(jnp.arange(b))  # (B, M, 2)
    probe_keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(k_probe, i), draws))(jnp.arange(b))
    learner = Learner(name="", fn=fn)

    def one(critic, lk, ck, s0, rt0, ys_, yw, ins):
        # the learner's key is the context's (the same in every draw); the critic's the draw's
        return self_correct(learner, lk, ck, s0, rt0, ys_, yw, critic, n0, rounds, ins, beta,
                            critic_on_initial, learner_params=params, rescale=rescale)

    def per_context(critic, lk, cks, s0, rt0, ys_, yw, ins, pks):
        traj = jax.vmap(lambda ck: one(critic, lk, ck, s0, rt0, ys_, yw, ins))(cks)
        r0 = rt0[:n0]
        acc = jax.vmap(lambda pk: pairwise_accuracy(critic_score(pk, r0, critic), r0))(pks)
        return traj, jnp.mean(acc)

    ins_axis = None if instructions is None else 0

    def per_setting(critic):
        return jax.vmap(per_context, in_axes=(None, 0, 0, 0, 0, 0, 0, ins_axis, 0))(
            critic, learn_keys, critic_keys, slots0, r_true0, y_star, y_wrong, instructions, probe_keys)

    return jax.vmap(per_setting)(critics)
