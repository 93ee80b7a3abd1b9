"""An adversarial verifier: hunt, inside the documented preconditions, for contexts where a
construction's error comes closest to (or exceeds) its documented bound (``icalign verify
--search``; docs/theory.md section 3.9).

Each claim of :data:`CLAIMS` is a construction variant. For every claim the hunt draws specs and
batches of contexts from the seven families of :data:`FAMILIES` (docs/theory.md section 3.9):
extreme norms and clusters, ill-conditioned W0 (condition 1e2 .. 1e12), x near zero and huge
(across the "query norm" edges), candidates clustered far from the origin, every reward gap at
the built-for gap, and long runs (5 GD steps, large eta beta); beta, eta, soft to sharp
selection, M and rel_tol vary in every family. It keeps the contexts that pass the checks, runs
the construction through ``model.apply`` and the closed form of ``icalign.gd``, and records
error / bound and relative error / rel_tol per family. A few rounds of local search (random
multiplicative moves, kept when the ratio grows) then push on the worst contexts found. ``checker`` swaps in another precondition set
and bound: tests replay the first version's (rewards only, and a claimed 1e-9) and the hunt finds
the far-candidate counterexample (docs/theory.md section 3) against it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.tasks import Context
from icalign.theory import bounds, construct, gd

__all__ = ["Claim", "CLAIMS", "FAMILIES", "documented", "evaluate", "hunt"]


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


@functools.partial(jax.jit, static_argnames=("steps", "causal"))
def _reference_fn(W0, x, ys, r, eta, beta, steps: int, causal: bool):
    def one(x, ys, r, mask):
        return gd.gradient_descent(W0, x, ys, r, eta / jnp.dot(x, x), steps, "sqdist", beta, mask) @ x

    if not causal:
        return jax.vmap(lambda x, ys, r: one(x, ys, r, None))(x, ys, r)
    n = ys.shape[-2]
    masks = jnp.arange(n)[None, :] < jnp.arange(1, n + 1)[:, None]  # row i sees candidates < i
    rows = jax.vmap(jax.vmap(one, in_axes=(None, None, None, 0)), in_axes=(0, 0, 0, None))(x, ys, r, masks)
    return jnp.concatenate([(x @ W0.T)[:, None, :], rows], axis=1)


def _reference(spec, ctx):
    """Closed-form GD (icalign.gd, W-space, step eta / ||x||^2) at the query, or for every row."""
    return _reference_fn(jnp.asarray(spec.W0, jnp.float64), ctx.x, ctx.ys, ctx.rewards, spec.eta, spec.beta,
                         spec.steps, spec.causal)


def documented(spec, ctx):
    """The documented checks and bound (:func:`icalign.theory.bounds.analyse`): (valid, bound)."""
    a = bounds.analyse(spec, ctx)
    return a.valid, a.bound


def evaluate(spec, ctx, checker=documented):
    """(ratio, valid) per context: max over outputs of |constructed - closed form| / bound,
    for the contexts that ``checker(spec, ctx) -> (valid, bound)`` accepts (NaN elsewhere)."""
    return _evaluate(spec, ctx, checker)[:2]


def _evaluate(spec, ctx, checker=documented):
    """(ratio, valid, relative error): the last is max over rows with a step of
    ||constructed - closed form|| / ||closed form - y_hat_0|| (NaN where not accepted)."""
    with jax.enable_x64(True):
        valid, bound = checker(spec, ctx)
        valid = np.asarray(valid, bool)
        if not valid.any():
            return np.full(valid.shape, np.nan), valid, np.full(valid.shape, np.nan)
        out = np.asarray(construct.run(spec, ctx, check=False))
        ref = np.asarray(_reference(spec, ctx))
        err = np.max(np.abs(out - ref), axis=-1)  # (B,) or (B, N + 1)
        y0 = np.asarray(ctx.x) @ np.asarray(spec.W0, float).T
        y0 = y0[:, None, :] if spec.causal else y0
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = err / bound
            step = np.linalg.norm(ref - y0, axis=-1)
            rel = np.linalg.norm(out - ref, axis=-1) / step
        has_step = np.arange(spec.n + 1)[None, :] >= 2 if spec.causal else np.ones(err.shape, bool)
        rel = np.where(has_step, rel, 0.0)
        ratio, rel = (a.max(-1) if a.ndim == 2 else a for a in (ratio, rel))
        ratio = np.where(np.isfinite(ratio) | ~valid, ratio, np.inf)  # non-finite output: a failure
        rel = np.where(np.isfinite(rel) | ~valid, rel, np.inf)
        return np.where(valid, ratio, np.nan), valid, np.where(valid, rel, np.nan)


FAMILIES = ("extreme", "ill-conditioned W0", "x near zero", "x huge", "far cluster", "gaps at gap", "long run")


def _spec(rng, claim: Claim, n: int, d: int, defaults: bool, W0=None, **over):
    """A random spec at extreme settings (``defaults``: spec_for's B, M, beta and eta)."""
    W0 = rng.normal(size=(d, d)) * 10 ** rng.uniform(-2, 1.5) if W0 is None else W0
    fields = dict(steps=claim.steps, causal=claim.causal, any_order=claim.any_order,
                  heads_per_layer=claim.heads_per_layer)
    if defaults:
        return construct.spec_for(n, d, W0, **fields)
    gap = 0.5 / n
    sel = float(np.exp(rng.uniform(np.log(3.0), np.log(60.0))))  # B * gap, soft to sharp
    B = sel / gap
    M = 2 * B + 2 * construct.LEAK_MARGIN + float(10 ** rng.uniform(0, over.pop("log_m", 4)))
    rel_tol = construct.REL_TOL if rng.uniform() < 0.5 else float(10 ** rng.uniform(-6, -0.5))
    fields.update(gap=gap, B=B, M=M, beta=float(10 ** rng.uniform(-2, 2)), eta=float(10 ** rng.uniform(-3, 0)),
                  rel_tol=rel_tol)
    return construct.PLConstruction(d=d, n=n, W0=W0, **{**fields, **over})


def _rewards(rng, claim: Claim, spec, batch: int, at_gap: bool = False):
    """Rewards in [0, r_cap]: gaps of exactly ``gap`` at random places (every gap with
    ``at_gap``), the rest of the slack spread at random; best-first or permuted."""
    n = spec.n
    g = np.where(rng.uniform(size=(batch, n - 1)) < 0.5, 0.0, rng.uniform(size=(batch, n - 1)))
    slack = spec.r_cap - spec.gap * (n - 1)
    # "exactly gap" is gap (1 + 1e-12): the cumulative sum's rounding (~1e-16) cannot push it below
    g = spec.gap * (1 + 1e-12) + (0.0 if at_gap else slack * g / np.maximum(g.sum(-1, keepdims=True), 1e-12) *
                    rng.uniform(0, 1, (batch, 1)))
    g = np.broadcast_to(g, (batch, n - 1))
    r = np.concatenate([np.zeros((batch, 1)), np.cumsum(g, -1)], -1) + rng.uniform(0, 1, (batch, 1)) * (
        spec.r_cap - np.sum(g, -1, keepdims=True))
    r = np.clip(r, 0.0, spec.r_cap)
    return r[:, ::-1] if claim.order == "best_first" else np.stack([rng.permutation(row) for row in r])


def _context(x, ys, r) -> Context:
    f = lambda a: jnp.asarray(a, jnp.float64)
    return Context(x=f(x), ys=f(ys), r_true=f(r), rewards=f(r), y_star=f(np.zeros(x.shape)))


def _contexts(rng, claim: Claim, spec, batch: int) -> Context:
    """Extreme contexts: norms over six decades, clusters around W0 x, near-tied rewards."""
    n, d = spec.n, spec.d
    x = rng.normal(size=(batch, d)) * 10 ** rng.uniform(-3, 3, (batch, 1))
    y0 = x @ np.asarray(spec.W0).T
    scale = 10 ** rng.uniform(-3, 3, (batch, 1, 1))
    ys = rng.normal(size=(batch, n, d)) * scale * 10 ** rng.uniform(-1, 1, (batch, n, 1))
    near = rng.uniform(size=(batch, 1, 1)) < 0.3  # candidates clustered around the prediction
    ys = np.where(near, y0[:, None, :] + ys * 1e-2, ys)
    return _context(x, ys, _rewards(rng, claim, spec, batch))


def _draw(rng, claim: Claim, family: str, n: int, d: int, batch: int, defaults: bool):
    """(spec, contexts) of one family (docs/theory.md section 3.9)."""
    if family == "extreme":
        spec = _spec(rng, claim, n, d, defaults)
        return spec, _contexts(rng, claim, spec, batch)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    G = rng.normal(size=(d, d))
    ys = rng.normal(size=(batch, n, d)) * 10 ** rng.uniform(-1, 1, (batch, 1, 1))
    x = unit(rng.normal(size=(batch, d)))
    at_gap, over = family == "gaps at gap", {}
    if family == "ill-conditioned W0":  # condition number 1e2 .. 1e12, x often along the weakest direction
        cond = 10 ** rng.uniform(2, 12)
        U, V = (np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(2))
        W0 = 10 ** rng.uniform(-1, 1) * cond * U @ np.diag(cond ** -np.linspace(0, 1, d)) @ V.T
        weak = rng.uniform(size=(batch, 1)) < 0.5
        x = np.where(weak, V[:, -1] * 10 ** rng.uniform(-2, 0, (batch, 1)), x)
    elif family in ("x near zero", "x huge"):  # ||x|| over 1e-160 .. 1e-3 or 1e3 .. 1e160
        lo, hi = (-160, -3) if family == "x near zero" else (3, 160)
        S = 10 ** rng.uniform(lo, hi)
        x = x * S * 10 ** rng.uniform(-1, 1, (batch, 1))
        W0 = G / S if rng.uniform() < 0.5 else G  # y_hat_0 of order 1, or W0 of order 1
    elif family == "far cluster":  # candidates clustered far from the origin, the prediction near or not
        c = unit(rng.normal(size=(batch, 1, d))) * 10 ** rng.uniform(1, 6, (batch, 1, 1))
        ys = c + ys * 10 ** rng.uniform(-3, 0, (batch, 1, 1))
        W0 = G
        x = np.where(rng.uniform(size=(batch, 1)) < 0.5, np.linalg.solve(G, (c[:, 0] + ys[:, 0]).T / 2).T, x)
        over["log_m"] = 13
    elif family == "long run":  # 5 GD steps with eta beta up to ~30
        W0 = G
        over.update(steps=5, eta=float(10 ** rng.uniform(-1, 0.5)),
                    beta=float(10 ** rng.uniform(-0.5, 1)))
    else:
        W0 = G
    spec = _spec(rng, claim, n, d, defaults, W0=W0, **({} if defaults else over))
    return spec, _context(x, ys, _rewards(rng, claim, spec, batch, at_gap))


def _perturb(rng, claim, ctx: Context, sigma: float) -> Context:
    """Local moves: rescale and jitter candidates and query; rewards keep their order."""
    b, n, d = ctx.ys.shape
    ys = np.asarray(ctx.ys) * np.exp(sigma * rng.normal(size=(b, n, 1))) + sigma * rng.normal(size=(b, n, d)) * \
        np.abs(np.asarray(ctx.ys)).mean((-1, -2), keepdims=True)
    x = np.asarray(ctx.x) * np.exp(sigma * rng.normal(size=(b, 1)))
    f = lambda a: jnp.asarray(a, jnp.float64)
    return ctx.replace(x=f(x), ys=f(ys))


def hunt(claim: Claim, seed: int = 0, shapes=((4, 3),), specs: int = 2, batch: int = 32, rounds: int = 2,
         checker=documented, defaults: bool = False, progress=None, families=FAMILIES) -> dict:
    """The worst error / bound ratio found for ``claim``: for each (N, d) of ``shapes`` and
    each family of :data:`FAMILIES`, ``specs`` random specs (``defaults``: spec_for's) with
    ``batch`` contexts each, then ``rounds`` of local search. Returns {"worst_ratio",
    "worst_tolerance" (worst relative error / rel_tol), "tried", "valid", "over_bound",
    "over_tolerance", "families": {family: the same counts and worsts}, "worst": a summary,
    "example": (spec, context) of the worst ratio}."""
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"families must be among {FAMILIES}, got {f!r}")
    with jax.enable_x64(True):
        return _hunt(claim, np.random.default_rng(seed), shapes, specs, batch, rounds, checker, defaults,
                     progress, families)


def _record(st, spec, ctx, ratio, valid, rel, batch):
    """Add one evaluated batch to a family's counts and worsts."""
    st["tried"] += batch
    st["valid"] += int(valid.sum())
    if not valid.any():
        return
    st["over_bound"] += int(np.sum(ratio[valid] > 1))
    st["over_tolerance"] += int(np.sum(rel[valid] > spec.rel_tol))
    st["worst_ratio"] = max(st["worst_ratio"], float(np.max(ratio[valid])))
    st["worst_tolerance"] = max(st["worst_tolerance"], float(np.max(rel[valid])) / spec.rel_tol)
    a = bounds.analyse(spec, ctx)
    with np.errstate(all="ignore"):
        b_s = np.where(a.step > 0, a.bound / np.where(a.step > 0, a.step, 1.0), 0.0)
    b_s = (b_s.max(-1) if b_s.ndim == 2 else b_s)[valid & a.valid]
    if b_s.size:
        st["worst_bound_step"] = max(st["worst_bound_step"], float(np.max(b_s)))


def _hunt(claim, rng, shapes, specs, batch, rounds, checker, defaults, progress, families):
    worst, where, example = 0.0, None, None
    fams = {f: dict(tried=0, valid=0, over_bound=0, over_tolerance=0, worst_ratio=0.0, worst_tolerance=0.0,
                    worst_bound_step=0.0) for f in families}
    for n, d in shapes:
        n = claim.n or n
        for family in families:
            for _ in range(specs):
                spec, ctx = _draw(rng, claim, family, n, d, batch, defaults)
                ratio, valid, rel = _evaluate(spec, ctx, checker)
                _record(fams[family], spec, ctx, ratio, valid, rel, batch)
                for r in range(rounds + 1):
                    if valid.any() and np.nanmax(ratio) > worst:
                        i = int(np.nanargmax(ratio))
                        worst = float(ratio[i])
                        example = (spec, jax.tree_util.tree_map(lambda a: a[i], ctx))
                        where = {"family": family, "N": n, "d": d, "steps": spec.steps, "beta": spec.beta,
                                 "eta": spec.eta, "B*gap": spec.B * spec.gap, "M": spec.M, "rel_tol": spec.rel_tol,
                                 "x_norm": float(np.linalg.norm(ctx.x[i])),
                                 "max_candidate_norm": float(np.linalg.norm(ctx.ys[i], axis=-1).max()), "round": r}
                    if r == rounds or not valid.any():
                        break
                    moved = _perturb(rng, claim, ctx, sigma=0.3 / (r + 1))
                    r_new, v_new, rel_new = _evaluate(spec, moved, checker)
                    _record(fams[family], spec, moved, r_new, v_new, rel_new, batch)
                    better = v_new & ~(np.nan_to_num(r_new, nan=-1) <= np.nan_to_num(ratio, nan=-1))
                    keep = lambda a, b: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
                    ctx = jax.tree_util.tree_map(keep, moved, ctx)
                    ratio, valid, rel = (np.where(better, u, v) for u, v in ((r_new, ratio), (v_new, valid),
                                                                              (rel_new, rel)))
            if progress is not None:
                progress(claim, n, d, worst)
    total = lambda k: sum(f[k] for f in fams.values())
    return {"worst_ratio": worst if math.isfinite(worst) else float("inf"),
            "worst_tolerance": max(f["worst_tolerance"] for f in fams.values()),
            "tried": total("tried"), "valid": total("valid"), "over_bound": total("over_bound"),
            "over_tolerance": total("over_tolerance"), "families": fams, "worst": where, "example": example}
