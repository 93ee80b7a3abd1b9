"""An adversarial verifier: hunt, inside the documented preconditions, for contexts where a
construction's error comes closest to (or exceeds) its documented bound (``icalign verify
--search``; docs/theory.md section 3.9).

Each claim of :data:`CLAIMS` is a construction variant. For every claim the hunt draws specs and
batches of contexts from *extreme* distributions (candidate, query and W0 norms log-uniform over
six decades, candidates clustered around the prediction or spread far from it, rewards with
several gaps exactly at the built-for gap, beta and eta over four decades, soft to sharp
selection, M from its smallest allowed value up), keeps the contexts that pass the checks, runs
the construction through ``model.apply`` and the closed form of ``icalign.gd``, and records
error / bound. A few rounds of local search (random multiplicative moves, kept when the ratio
grows) then push on the worst contexts found. ``checker`` swaps in another precondition set and
bound: tests replay the first version's (rewards only, and a claimed 1e-9) and the hunt finds
the far-candidate counterexample against it (docs/theory.md section 3).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.tasks import Context
from icalign.theory import bounds, construct, gd

__all__ = ["Claim", "CLAIMS", "documented", "evaluate", "hunt"]


@dataclasses.dataclass(frozen=True)
class Claim:
    """A construction variant: fields of :class:`~icalign.theory.construct.PLConstruction`."""

    label: str
    steps: int = 1
    causal: bool = False
    any_order: bool = False
    heads_per_layer: int = 2
    order: str = "random"  # how the hunt orders candidates: "random" or "best_first"
    n: int = 0  # a fixed number of candidates (BT: 2); 0 takes N from the hunt's shapes


CLAIMS = {
    "BT": Claim("BT: 1 softmax layer = one GD step", n=2),
    "PL": Claim("PL: N-1 blocks = one GD step, any reward order"),
    "PL steps": Claim("PL: 3 groups of N-1 blocks = 3 GD steps", steps=3),
    "causal": Claim("causal PL, best-first: token i = one GD step on online PL over candidates <= i",
                    causal=True, order="best_first"),
    "causal any order": Claim("causal PL, any order (reward comparator): token i = one GD step on online PL "
                              "over candidates <= i", causal=True, any_order=True),
    "heads<->depth": Claim("one head per layer, 2(N-1) layers = the two-head construction = one GD step",
                           heads_per_layer=1),
}


def _reference(spec, ctx):
    """Closed-form GD (icalign.gd, W-space, step eta / ||x||^2) at the query, or for every row."""
    W0 = jnp.asarray(spec.W0, jnp.float64)

    def one(x, ys, r, mask):
        W = gd.gradient_descent(W0, x, ys, r, spec.eta / jnp.dot(x, x), spec.steps, "sqdist", spec.beta, mask)
        return W @ x

    n = spec.n
    if not spec.causal:
        return jax.jit(jax.vmap(lambda x, ys, r: one(x, ys, r, None)))(ctx.x, ctx.ys, ctx.rewards)
    masks = jnp.arange(n)[None, :] < jnp.arange(1, n + 1)[:, None]  # row i sees candidates < i
    rows = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, None, None, 0)), in_axes=(0, 0, 0, None)))(
        ctx.x, ctx.ys, ctx.rewards, masks)  # (B, N, D)
    y0 = ctx.x @ W0.T
    return jnp.concatenate([y0[:, None, :], rows], axis=1)


def documented(spec, ctx):
    """The documented checks and bound (:func:`icalign.theory.bounds.analyse`): (valid, bound)."""
    a = bounds.analyse(spec, ctx)
    return a.valid, a.bound


def evaluate(spec, ctx, checker=documented):
    """(ratio, valid) per context: max over outputs of |constructed - closed form| / bound,
    for the contexts that ``checker(spec, ctx) -> (valid, bound)`` accepts (NaN elsewhere)."""
    with jax.enable_x64(True):
        valid, bound = checker(spec, ctx)
        valid = np.asarray(valid, bool)
        if not valid.any():
            return np.full(valid.shape, np.nan), valid
        out = np.asarray(construct.run(spec, ctx, check=False))
        ref = np.asarray(_reference(spec, ctx))
        err = np.max(np.abs(out - ref), axis=-1)  # (B,) or (B, N + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = err / bound
        ratio = ratio.max(-1) if ratio.ndim == 2 else ratio
        ratio = np.where(np.isfinite(ratio) | ~valid, ratio, np.inf)  # non-finite output: a failure
        return np.where(valid, ratio, np.nan), valid


def _spec(rng, claim: Claim, n: int, d: int, defaults: bool):
    """A random spec at extreme settings (``defaults``: spec_for's B, M, beta and eta)."""
    W0 = rng.normal(size=(d, d)) * 10 ** rng.uniform(-2, 1.5)
    fields = dict(steps=claim.steps, causal=claim.causal, any_order=claim.any_order,
                  heads_per_layer=claim.heads_per_layer)
    if defaults:
        return construct.spec_for(n, d, W0, **fields)
    gap = 0.5 / n
    sel = float(np.exp(rng.uniform(np.log(3.0), np.log(60.0))))  # B * gap, soft to sharp
    B = sel / gap
    M = 2 * B + 2 * construct.LEAK_MARGIN + float(10 ** rng.uniform(0, 4))
    return construct.PLConstruction(d=d, n=n, W0=W0, gap=gap, B=B, M=M, beta=float(10 ** rng.uniform(-2, 2)),
                                    eta=float(10 ** rng.uniform(-3, 0)), **fields)


def _contexts(rng, claim: Claim, spec, batch: int) -> Context:
    """Extreme contexts: norms over six decades, clusters around W0 x, near-tied rewards."""
    n, d = spec.n, spec.d
    x = rng.normal(size=(batch, d)) * 10 ** rng.uniform(-3, 3, (batch, 1))
    y0 = x @ np.asarray(spec.W0).T
    scale = 10 ** rng.uniform(-3, 3, (batch, 1, 1))
    ys = rng.normal(size=(batch, n, d)) * scale * 10 ** rng.uniform(-1, 1, (batch, n, 1))
    near = rng.uniform(size=(batch, 1, 1)) < 0.3  # candidates clustered around the prediction
    ys = np.where(near, y0[:, None, :] + ys * 1e-2, ys)
    # rewards: gaps of exactly `gap` at random places, the rest of the slack spread at random
    g = np.where(rng.uniform(size=(batch, n - 1)) < 0.5, 0.0, rng.uniform(size=(batch, n - 1)))
    slack = spec.r_cap - spec.gap * (n - 1)
    g = spec.gap + slack * g / np.maximum(g.sum(-1, keepdims=True), 1e-12) * rng.uniform(0, 1, (batch, 1))
    r = np.concatenate([np.zeros((batch, 1)), np.cumsum(g, -1)], -1) + rng.uniform(0, 1, (batch, 1)) * (
        spec.r_cap - np.sum(g, -1, keepdims=True))
    r = np.clip(r, 0.0, spec.r_cap)
    r = r[:, ::-1] if claim.order == "best_first" else np.stack([rng.permutation(row) for row in r])
    f = lambda a: jnp.asarray(a, jnp.float64)
    return Context(x=f(x), ys=f(ys), r_true=f(r), rewards=f(r), y_star=f(np.zeros((batch, d))))


def _perturb(rng, claim, ctx: Context, sigma: float) -> Context:
    """Local moves: rescale and jitter candidates and query; rewards keep their order."""
    b, n, d = ctx.ys.shape
    ys = np.asarray(ctx.ys) * np.exp(sigma * rng.normal(size=(b, n, 1))) + sigma * rng.normal(size=(b, n, d)) * \
        np.abs(np.asarray(ctx.ys)).mean((-1, -2), keepdims=True)
    x = np.asarray(ctx.x) * np.exp(sigma * rng.normal(size=(b, 1)))
    f = lambda a: jnp.asarray(a, jnp.float64)
    return ctx.replace(x=f(x), ys=f(ys))


def hunt(claim: Claim, seed: int = 0, shapes=((4, 3),), specs: int = 2, batch: int = 32, rounds: int = 2,
         checker=documented, defaults: bool = False, progress=None) -> dict:
    """The worst error / bound ratio found for ``claim``: for each (N, d) of ``shapes``,
    ``specs`` random specs (``defaults``: spec_for's) with ``batch`` extreme contexts each, then
    ``rounds`` of local search. Returns {"worst_ratio", "tried", "valid", "worst": a summary,
    "example": (spec, context) of the worst}."""
    with jax.enable_x64(True):
        return _hunt(claim, np.random.default_rng(seed), shapes, specs, batch, rounds, checker, defaults,
                     progress)


def _hunt(claim, rng, shapes, specs, batch, rounds, checker, defaults, progress):
    worst, where, example, tried, valid_n = 0.0, None, None, 0, 0
    for n, d in shapes:
        n = claim.n or n
        for _ in range(specs):
            spec = _spec(rng, claim, n, d, defaults)
            ctx = _contexts(rng, claim, spec, batch)
            ratio, valid = evaluate(spec, ctx, checker)
            tried += batch
            valid_n += int(valid.sum())
            for r in range(rounds + 1):
                if valid.any() and np.nanmax(ratio) > worst:
                    i = int(np.nanargmax(ratio))
                    worst = float(ratio[i])
                    example = (spec, jax.tree_util.tree_map(lambda a: a[i], ctx))
                    where = {"N": n, "d": d, "beta": spec.beta, "eta": spec.eta, "B*gap": spec.B * spec.gap,
                             "M": spec.M, "x_norm": float(np.linalg.norm(ctx.x[i])),
                             "max_candidate_norm": float(np.linalg.norm(ctx.ys[i], axis=-1).max()),
                             "round": r}
                if r == rounds or not valid.any():
                    break
                moved = _perturb(rng, claim, ctx, sigma=0.3 / (r + 1))
                r_new, v_new = evaluate(spec, moved, checker)
                tried += batch
                better = v_new & ~(np.nan_to_num(r_new, nan=-1) <= np.nan_to_num(ratio, nan=-1))
                ctx = jax.tree_util.tree_map(lambda a, b: jnp.where(
                    better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), moved, ctx)
                ratio, valid = np.where(better, r_new, ratio), valid | v_new
            if progress is not None:
                progress(claim, n, d, worst)
    return {"worst_ratio": worst if math.isfinite(worst) else float("inf"), "tried": tried, "valid": valid_n,
            "worst": where, "example": example}
