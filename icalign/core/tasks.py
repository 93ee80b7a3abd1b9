"""In-context alignment tasks: contexts of (query, candidate responses, rewards).

Every generator is a pure function of a PRNG key, so any context can be regenerated from
its key, and every function works under ``jit`` and ``vmap``. Sizes are static Python ints;
corruption levels are (possibly traced) arrays so a sweep over levels is a ``vmap``.

Reference protocol (docs/theory.md section 4, "mixed linear alignment"): one query x ~ N(0, I)
shared by all candidates; W*, W_eps ~ N(0, 1)^{d x d} per context; y* = W* x, eps = W_eps x;
true rewards r_j ~ U(0, 1); responses y_j = r_j y* + (1 - r_j) eps. The reward is exactly
the mixing weight: a perfect critic. Corruption changes only the *shown* rewards.

Per-triplet queries (``queries="per_triplet"``, docs/theory.md section 7): the same draws, but
triplet j is shown at its own query x_j = rho x + sqrt(1 - rho^2) xi_j, xi_j ~ N(0, I)
(``query_corr`` rho in [0, 1); 0: independent of x), y_j = r_j W* x_j + (1 - r_j) W_eps x_j, and
x becomes the test query whose answer y* = W* x is asked for. The shared-query candidates at x
(same mixing weights) are kept as ``ys_query``: the training loss and the metrics score the
prediction against them, never shown to the learner. W-space and prediction-space updates then
differ, and a learner's implicit W can be read off by varying x.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from icalign.core.registry import FieldView, Registry
from icalign.core.validate import (check_choice, check_finite, check_int, check_key, check_level, check_memory,
                                   check_real_array)

__all__ = [
    "Context",
    "QUERIES",
    "mixed_linear",
    "triplet_queries",
    "scored_candidates",
    "check_query_corr",
    "sample_contexts",
    "CORRUPTIONS",
    "Corruption",
    "register_corruption",
    "unregister_corruption",
    "DEFAULT_LEVELS",
    "LEVEL_RANGES",
    "LEVEL_NAMES",
    "corrupt",
    "check_batched_contexts",
    "check_context_values",
    "replace_random",
    "gaussian_noise",
    "reverse_random",
    "subset_reversal",
    "with_shown_rewards",
    "check_corruption_levels",
]


@struct.dataclass
class Context:
    """One in-context alignment problem (leading batch axes allowed on every field).

    x:        (D,)   the query, shared by all candidates.
    ys:       (N, D) candidate responses.
    r_true:   (N,)   true rewards (the mixing weight of y* in y_j).
    rewards:  (N,)   rewards shown to the learner (the critic's scores; = r_true if clean).
    y_star:   (D,)   the right answer W* x (never used by any learner; only by metrics).
    xs:       (N, D) per-triplet queries, or None: every triplet's query is x.
    ys_query: (N, D) with per-triplet queries, the candidates at x with the same mixing weights
              (what the training loss and the ranking metric score; never shown); else None.
    """

    x: jax.Array
    ys: jax.Array
    r_true: jax.Array
    rewards: jax.Array
    y_star: jax.Array
    xs: Optional[jax.Array] = None
    ys_query: Optional[jax.Array] = None

    @property
    def n(self) -> int:
        return self.ys.shape[-2]

    @property
    def d(self) -> int:
        return self.ys.shape[-1]


QUERIES = ("shared", "per_triplet")


def check_query_corr(name: str, query_corr, queries: str) -> None:
    """rho in [0, 1) for per-triplet queries; exactly 0 for shared ones (where it means nothing)."""
    if queries == "shared" and query_corr != 0:
        raise ValueError(f"{name} must be 0 with shared queries (it sets per-triplet queries only), got {query_corr!r}")
    check_level(name, query_corr, 0.0, 1.0)
    if not isinstance(query_corr, jax.core.Tracer) and float(query_corr) >= 1.0:
        raise ValueError(f"{name} must be < 1 (1 would be shared queries), got {query_corr!r}")


def mixed_linear(key: jax.Array, d: int = 5, n: int = 20, queries: str = "shared", query_corr=0.0) -> Context:
    """The published "mixed linear alignment" context (docs/theory.md section 4), or, with
    ``queries="per_triplet"``, the same context with each triplet shown at its own query
    (module docstring). The shared-query draws are the same for both options."""
    check_key("key", key)
    d = check_int("d", d, minimum=1)
    n = check_int("n", n, minimum=2)
    check_choice("queries", queries, QUERIES)
    check_query_corr("query_corr", query_corr, queries)
    k_x, k_star, k_eps, k_r = jax.random.split(key, 4)
    x = jax.random.normal(k_x, (d,))
    w_star = jax.random.normal(k_star, (d, d))
    w_eps = jax.random.normal(k_eps, (d, d))
    y_star = w_star @ x
    eps = w_eps @ x
    r = jax.random.uniform(k_r, (n,))
    ys = r[:, None] * y_star[None, :] + (1.0 - r[:, None]) * eps[None, :]
    if queries == "shared":
        return Context(x=x, ys=ys, r_true=r, rewards=r, y_star=y_star)
    # A folded key, so the four draws above stay those of the shared context.
    xs = query_corr * x[None, :] + (1.0 - query_corr**2) ** 0.5 * jax.random.normal(jax.random.fold_in(key, 1), (n, d))
    shown = r[:, None] * (xs @ w_star.T) + (1.0 - r[:, None]) * (xs @ w_eps.T)
    return Context(x=x, ys=shown, r_true=r, rewards=r, y_star=y_star, xs=xs, ys_query=ys)


def sample_contexts(key: jax.Array, batch: int, d: int = 5, n: int = 20, queries: str = "shared",
                    query_corr=0.0) -> Context:
    """``batch`` independent contexts, fields with a leading (batch,) axis."""
    check_key("key", key)
    batch = check_int("batch", batch, minimum=1)
    d = check_int("d", d, minimum=1)
    n = check_int("n", n, minimum=2)
    check_choice("queries", queries, QUERIES)
    check_query_corr("query_corr", query_corr, queries)
    check_memory(f"{batch} contexts of d={d}, n={n}", contexts_bytes(batch, d, n), "the number of contexts (batch)")
    keys = jax.random.split(key, batch)
    return jax.vmap(lambda k: mixed_linear(k, d, n, queries, query_corr))(keys)


def triplet_queries(ctx: Context) -> jax.Array:
    """The query of every triplet, (..., N, D): ``ctx.xs``, or x repeated for shared queries."""
    return jnp.broadcast_to(ctx.x[..., None, :], ctx.ys.shape) if ctx.xs is None else ctx.xs


def scored_candidates(ctx: Context) -> jax.Array:
    """The candidates a prediction for the query x is scored against, (..., N, D): the shown
    ones for shared queries, the unshown ``ys_query`` for per-triplet queries."""
    return ctx.ys if ctx.ys_query is None else ctx.ys_query


def contexts_bytes(batch: int, d: int, n: int) -> float:
    """float32 bytes of ``batch`` contexts while they are generated: x, y*, eps (D), W*, W_eps
    (D x D), candidates (N x D), rewards, plus the keys."""
    for name, value, minimum in (("batch", batch, 1), ("d", d, 1), ("n", n, 2)):
        check_int(name, value, minimum)
    return 4.0 * batch * (2 * d * d + (n + 3) * d + 3 * n + 8)


def with_shown_rewards(ctx: Context, rewards: jax.Array) -> Context:
    """The same context with other shown rewards (candidates and truth unchanged)."""
    return ctx.replace(rewards=rewards)


# ---------------------------------------------------------------------------------------------
# Reward corruption: pure functions of (key, rewards, level) acting on the shown rewards only.
# ``rewards`` has shape (..., N); ``level`` is a scalar (it may be a traced, vmapped value).
# ---------------------------------------------------------------------------------------------


def _check_corruption_inputs(key, rewards):
    """The key, and the rewards as an array of finite reals (a list is converted, integers
    become floats) with a last axis of N >= 1 candidates (an empty one would pass through
    every corruption silently)."""
    check_key("key", key)
    rewards = check_real_array("rewards", rewards, integers=True)
    if jnp.ndim(rewards) < 1 or jnp.shape(rewards)[-1] < 1:
        raise ValueError(f"rewards must have a last axis of N >= 1 candidates, got shape {jnp.shape(rewards)}")
    return rewards


def replace_random(key: jax.Array, rewards: jax.Array, p) -> jax.Array:
    """Published model: each shown reward is replaced, with probability p, by a fresh U(0,1)."""
    rewards = _check_corruption_inputs(key, rewards)
    check_level("p", p, 0.0, 1.0)
    k_mask, k_new = jax.random.split(key)
    hit = jax.random.bernoulli(k_mask, p, rewards.shape)
    fresh = jax.random.uniform(k_new, rewards.shape, dtype=rewards.dtype)
    return jnp.where(hit, fresh, rewards)


def gaussian_noise(key: jax.Array, rewards: jax.Array, sigma) -> jax.Array:
    """Additive critic noise: r + sigma * N(0, 1). sigma = 0 is the clean critic."""
    rewards = _check_corruption_inputs(key, rewards)
    check_level("sigma", sigma, 0.0, LEVEL_RANGES["gaussian"][1])
    return rewards + sigma * jax.random.normal(key, rewards.shape, dtype=rewards.dtype)


def reverse_random(key: jax.Array, rewards: jax.Array, p) -> jax.Array:
    """Adversarial critic: each reward is reversed, r -> 1 - r, with probability p."""
    rewards = _check_corruption_inputs(key, rewards)
    check_level("p", p, 0.0, 1.0)
    hit = jax.random.bernoulli(key, p, rewards.shape)
    return jnp.where(hit, 1.0 - rewards, rewards)


def subset_reversal(key: jax.Array, rewards: jax.Array, p) -> jax.Array:
    """Ranking-level corruption: a random subset S (each candidate in S with probability p)
    has its ranking reversed among itself.

    The multiset of shown reward values is kept: the members of S, sorted by reward, receive
    their own values in reverse order. Every pair inside S is inverted, so p = 1 reverses the
    whole ranking (all N(N-1)/2 pairs discordant) and p = 0 is the identity. Pairs with one
    member outside S may also change order, so the expected discordant fraction grows
    monotonically from 0 to 1 with p (at least p^2). Values are never invented, unlike
    ``replace_random``: only the critic's *ranking* is wrong.
    """
    rewards = _check_corruption_inputs(key, rewards)
    check_level("p", p, 0.0, 1.0)
    n = rewards.shape[-1]
    in_s = jax.random.bernoulli(key, p, rewards.shape)

    def one(r, s):
        # Rank S members ascending by reward (non-members pushed to the end); the k-th
        # smallest member receives the k-th largest member value.
        big = jnp.finfo(r.dtype).max
        asc = jnp.argsort(jnp.where(s, r, big), stable=True)
        m = jnp.sum(s)
        k = jnp.arange(n)
        partner = jnp.where(k < m, m - 1 - k, k)  # reversed position within the S block
        new_vals = r[asc][partner]
        out = r.at[asc].set(new_vals)
        return jnp.where(s, out, r)

    flat_r = rewards.reshape(-1, n)
    flat_s = in_s.reshape(-1, n)
    return jax.vmap(one)(flat_r, flat_s).reshape(rewards.shape)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """A reward-corruption model: ``fn(key, rewards (..., N), level) -> shown rewards``, the
    ``levels`` a sweep covers by default, the allowed ``range`` (low, high or None) of its level,
    and the level's name in tables (``level_name``). Level 0 is the clean critic."""

    fn: Callable
    levels: tuple[float, ...]
    range: tuple[float, float | None]
    level_name: str = "level"
    fingerprint: str | None = dataclasses.field(default=None, compare=False)

    def __call__(self, key, rewards, level):
        return self.fn(key, rewards, level)


#: The corruption models by name; the config field ``train.corruption`` (and every sweep's
#: ``corruption``) picks one. Add one with :func:`register_corruption`.
CORRUPTIONS = Registry("corruption", "corruption")
DEFAULT_LEVELS = FieldView(CORRUPTIONS, "levels")  #: the range a sweep of each model covers by default
LEVEL_RANGES = FieldView(CORRUPTIONS, "range")  #: allowed level range of each model (None: unbounded above)
LEVEL_NAMES = FieldView(CORRUPTIONS, "level_name")


def register_corruption(name: str, fn: Callable, levels, range=(0.0, 1.0), level_name: str = "level",
                        _builtin: bool = False) -> None:
    """Add a corruption model ``fn(key, rewards, level)`` (pure, jit- and vmap-able; ``level``
    may be traced) under ``name``: ``train.corruption=NAME`` and every corruption sweep then
    accept it. ``levels``: its default sweep, ascending from 0; ``range``: (low = 0, high or
    None). Checked now on 8 rewards: the output keeps the rewards' shape and level 0 leaves
    them unchanged. Registering a name again replaces it (a built-in name is refused)."""
    if not isinstance(range, (tuple, list)) or len(range) != 2 or range[0] != 0 or not (
            range[1] is None or (isinstance(range[1], (int, float)) and range[1] > 0)):
        raise ValueError(f"range must be (0, high) with high > 0 or None (level 0 is the clean critic), got {range!r}")
    lo, hi = 0.0, None if range[1] is None else float(range[1])
    levels = tuple(float(v) for v in levels)
    if not levels or levels[0] != 0.0 or list(levels) != sorted(set(levels)):
        raise ValueError(f"levels must ascend strictly from 0 (the clean critic), got {levels!r}")
    check_level(f"{name} levels", levels, lo, hi)
    if not isinstance(level_name, str) or not level_name:
        raise ValueError(f"level_name must be a non-empty string, got {level_name!r}")
    entry = Corruption(fn, levels, (lo, hi), level_name)
    if not _builtin:
        r = jnp.linspace(0.05, 0.95, 8)
        try:
            out = jnp.asarray(fn(jax.random.PRNGKey(0), r, 0.0))
        except TypeError as err:
            raise ValueError(f"corruption {name!r} must be a function fn(key, rewards, level): {err}") from None
        if out.shape != r.shape or not bool(jnp.all(out == r)):
            raise ValueError(f"corruption {name!r}: fn(key, rewards, 0.0) must return the rewards unchanged, with "
                             f"their shape {r.shape}; got shape {out.shape}")
    CORRUPTIONS.add(name, entry, builtin=_builtin)


def unregister_corruption(name: str) -> None:
    """Remove a user-registered corruption model (built-in ones stay)."""
    CORRUPTIONS.remove(name)


for _name, _fn, _levels, _range, _lname in (
    ("replace", replace_random, (0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 1.0), "p"),
    # sigma beyond 1e3 drowns every reward in [0, 1] and overflows float32 for absurd values
    ("gaussian", gaussian_noise, (0.0, 0.1, 0.25, 0.5, 1.0), (0.0, 1000.0), "sigma"),
    ("reverse", reverse_random, (0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 1.0), "p"),
    ("subset_reversal", subset_reversal, (0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 1.0), "p"),
):
    register_corruption(_name, _fn, _levels, _range, _lname, _builtin=True)
del _name, _fn, _levels, _range, _lname


def check_corruption_levels(kind: str, levels) -> None:
    """Raise a clear ValueError if ``kind`` is unknown or any level is out of its range."""
    entry = CORRUPTIONS.get_checked(kind)
    low, high = entry.range
    check_level(f"{kind} level {entry.level_name}", levels, low, high)


def corrupt(kind: str, key: jax.Array, rewards: jax.Array, level) -> jax.Array:
    """Apply the named corruption model (one of ``CORRUPTIONS``) to the shown rewards."""
    return CORRUPTIONS.get_checked(kind)(key, rewards, level)


def check_batched_contexts(ctx: Context, n: int | None = None) -> None:
    """``ctx`` is a batch of contexts: x (B, D), ys (B, N, D), rewards and r_true (B, N), y* (B, D),
    with finite values (a sweep would otherwise fail deep in XLA or answer with NaN)."""
    if not isinstance(ctx, Context):
        raise ValueError(f"ctx must be an icalign.tasks.Context, got {type(ctx).__name__}")
    B = jnp.shape(ctx.x)[0] if jnp.ndim(ctx.x) == 2 else None
    ok = B is not None and jnp.ndim(ctx.ys) == 3 and jnp.shape(ctx.ys)[0] == B
    if ok:
        N, D = jnp.shape(ctx.ys)[1:]
        ok = (jnp.shape(ctx.x) == (B, D) and jnp.shape(ctx.rewards) == (B, N) and jnp.shape(ctx.r_true) == (B, N)
              and jnp.shape(ctx.y_star) == (B, D))
    if not ok:
        raise ValueError("ctx must be a batch of contexts (tasks.sample_contexts): x (B, D), ys (B, N, D), rewards "
                         f"(B, N); got x {jnp.shape(ctx.x)}, ys {jnp.shape(ctx.ys)}, rewards {jnp.shape(ctx.rewards)}")
    if n is not None and N != n:
        raise ValueError(f"contexts have N={N} candidates; the model expects n={n}")
    check_context_values(ctx)


def check_context_values(ctx: Context) -> None:
    """Every array field of ``ctx`` holds finite real floats (integers, booleans and complex
    numbers are refused by name: a sweep would fail deep in XLA or return complex numbers)."""
    for f in ("x", "ys", "rewards", "r_true", "y_star", "xs", "ys_query"):
        if getattr(ctx, f) is not None:
            check_real_array(f"ctx.{f}", getattr(ctx, f))
