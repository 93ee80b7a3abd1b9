"""Every theorem-as-code claim, checked numerically in float64 (``icalign verify``).

Each row compares independent computations (hand-built transformer through ``model.apply`` vs
the closed-form step of :mod:`icalign.theory.gd` vs ``jax.grad`` of :mod:`icalign.core.losses`;
the latent-concept rows against enumeration and definitions) over many random contexts. A
construction row's bound is the documented per-context bound of :mod:`icalign.theory.bounds`,
and its ratio is the largest error / bound over the contexts; other rows have a fixed bound.
Each construction row also carries the worst ratio that :func:`icalign.theory.search.hunt`
found for its claim (a short hunt by default, a wide one with ``search=True``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core import losses
from icalign.theory import bounds, concept_checks, construct, gd, search

__all__ = ["claims", "verify", "table", "EXACT", "WIDE_SHAPES"]

EXACT = 1e-9  # analytic identities: equal up to float64 rounding
# jax.grad through the eps-smoothed cosine in float64 (N terms of size <= 2), and the smoothing
# itself: on unit vectors it moves each score by <= 2 eps^2 = 2e-16
COSINE_SLACK = 1e-12
# (N, d) of the wide hunt: N from 2 to 32, d from 1 to 16 (BT always takes N = 2)
WIDE_SHAPES = ((3, 16), (5, 1), (8, 8), (16, 3), (32, 2))
D = 3


def _spec(n, key, **kw):
    return construct.spec_for(n, D, np.asarray(jax.random.normal(key, (D, D), jnp.float64)), **kw)


def _references(spec, ctx):
    """(closed form, jax.grad) at the query, or for every row (causal), batched."""
    W0 = jnp.asarray(spec.W0)

    def closed(x, ys, r, mask):
        return gd.gradient_descent(W0, x, ys, r, spec.eta / jnp.dot(x, x), spec.steps, "sqdist", spec.beta,
                                   mask) @ x

    def auto(x, ys, r, mask):
        loss = lambda y: losses.plackett_luce(losses.sqdist_reward(y, ys, spec.beta), r, mask)
        y = W0 @ x
        for _ in range(spec.steps):
            y = y - spec.eta * jax.grad(loss)(y)
        return y

    out = []
    for f in (closed, auto):
        if spec.causal:
            masks = jnp.arange(spec.n)[None, :] < jnp.arange(1, spec.n + 1)[:, None]
            rows = jax.jit(jax.vmap(jax.vmap(f, (None, None, None, 0)), (0, 0, 0, None)))(ctx.x, ctx.ys, ctx.rewards,
                                                                                        masks)
            out.append(jnp.concatenate([(ctx.x @ W0.T)[:, None, :], rows], axis=1))
        else:
            out.append(jax.jit(jax.vmap(lambda x, ys, r: f(x, ys, r, None)))(ctx.x, ctx.ys, ctx.rewards))
    return out


def _rows(label, spec, ctx, out=None):
    """Two rows (vs closed form, vs jax.grad) with the documented per-context bound."""
    out = construct.run(spec, ctx) if out is None else out
    bound = bounds.analyse(spec, ctx).bound
    for name, ref in zip(("closed form", "jax.grad"), _references(spec, ctx)):
        err = np.max(np.abs(np.asarray(out - ref)), axis=-1)
        yield f"{label} (vs {name})", spec.n, float(err.max()), float(np.max(bound)), float(np.max(err / bound))


def claims(key, contexts: int):
    """Yield (claim, N, max abs error, bound, worst error/bound, search claim or None) rows."""
    k = iter(jax.random.split(key, 64))
    # --- analytic identities (docs/theory.md section 2) ---
    n = 20
    ys = jax.random.normal(next(k), (contexts, n, 5), jnp.float64)
    yh = jax.random.normal(next(k), (contexts, 5), jnp.float64)
    r = jax.random.uniform(next(k), (contexts, n), jnp.float64)
    W = jax.random.normal(next(k), (contexts, 5, 5), jnp.float64)
    x = jax.random.normal(next(k), (contexts, 5), jnp.float64)
    lhs = jax.jit(lambda yh, ys: jax.nn.softmax(losses.sqdist_reward(yh, ys, 0.7), axis=-1))(yh, ys)
    rhs = jax.jit(lambda yh, ys: jax.nn.softmax(
        0.7 * jnp.einsum("bnd,bd->bn", ys, yh) - 0.35 * jnp.sum(ys**2, -1), axis=-1))(yh, ys)
    yield _fixed("softmax identity: sqdist weights = biased dot-product attention", n, _err(lhs, rhs), 1e-12)
    for reward in losses.REWARDS:
        closed = jax.jit(jax.vmap(lambda W, x, ys, r: gd.pl_gradient(W, x, ys, r, reward)))(W, x, ys, r)
        auto = jax.jit(jax.vmap(jax.grad(lambda W, x, ys, r: losses.plackett_luce(
            losses.reward_scores(W @ x, ys, reward), r))))(W, x, ys, r)
        yield _fixed(f"dL_PL/dW closed form = jax.grad ({reward})", n, _err(closed, auto), 1e-10)
        bt_c = jax.jit(jax.vmap(lambda W, x, ys: gd.bt_gradient(W, x, ys[0], ys[1], reward)))(W, x, ys)
        bt_a = jax.jit(jax.vmap(jax.grad(lambda W, x, ys: losses.bradley_terry(
            *losses.reward_scores(W @ x, ys[:2], reward)))))(W, x, ys)
        yield _fixed(f"dL_BT/dW closed form = jax.grad ({reward})", 2, _err(bt_c, bt_a), 1e-10)
    s2 = jax.random.normal(next(k), (contexts, 2), jnp.float64) * 3
    r2 = jax.random.uniform(next(k), (contexts, 2), jnp.float64)
    win = (r2[:, 0] > r2[:, 1])
    bt = losses.bradley_terry(jnp.where(win, s2[:, 0], s2[:, 1]), jnp.where(win, s2[:, 1], s2[:, 0]))
    yield _fixed("PL with N = 2 equals BT", 2, _err(losses.plackett_luce(s2, r2), bt), 1e-12)

    # --- constructions (docs/theory.md section 3), each bounded per context ---
    for n, steps, name in [(2, 1, "BT"), (4, 1, "PL"), (8, 1, "PL"), (16, 1, "PL"), (4, 3, "PL steps")]:
        spec = _spec(n, next(k), steps=steps, eta=0.2, beta=0.8)
        ctx = construct.separated_contexts(next(k), contexts, n, D)
        for row in _rows(search.CLAIMS[name].label, spec, ctx):
            yield row + (name,)
    n = 8
    spec = _spec(n, next(k), causal=True, eta=0.2)
    for row in _rows(search.CLAIMS["causal"].label, spec, construct.separated_contexts(next(k), contexts, n, D,
                                                                                      best_first=True)):
        yield row + ("causal",)
    n = 6
    spec = _spec(n, next(k), causal=True, any_order=True, eta=0.2)
    for row in _rows(search.CLAIMS["causal any order"].label, spec, construct.separated_contexts(next(k), contexts,
                                                                                                n, D)):
        yield row + ("causal any order",)
    n = 4
    two = _spec(n, next(k), eta=0.2, beta=0.8)
    one = dataclasses.replace(two, heads_per_layer=1)
    ctx = construct.separated_contexts(next(k), contexts, n, D)
    out1 = construct.run(one, ctx)
    b = bounds.analyse(one, ctx).bound + bounds.analyse(two, ctx).bound
    err = np.max(np.abs(np.asarray(out1 - construct.run(two, ctx))), -1)
    label = search.CLAIMS["heads<->depth"].label
    yield f"{label} (vs two heads)", n, float(err.max()), float(b.max()), float(np.max(err / b)), "heads<->depth"
    for row in _rows(label, one, ctx, out1):
        yield row + ("heads<->depth",)
    # Soft selection: B * gap = 4, the documented bound must hold per context.
    n = 8
    spec = _spec(n, next(k), selection=4.0)
    for row in list(_rows("soft selection (B*gap = 4): error within the documented bound", spec,
                          construct.separated_contexts(next(k), contexts, n, D)))[:1]:
        yield row + ("PL",)

    # Cosine reward on unit vectors (docs/theory.md section 3.8): with beta = 1 the construction
    # forms the cosine-PL softmax exactly; its step's tangent part is the cosine GD step.
    n = 6
    q = np.linalg.qr(np.asarray(jax.random.normal(next(k), (D, D), jnp.float64)))[0]
    spec = construct.spec_for(n, D, q, beta=1.0, eta=0.2)
    ctx = construct.separated_contexts(next(k), contexts, n, D)
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    ctx = ctx.replace(x=unit(ctx.x), ys=unit(ctx.ys))
    y0 = ctx.x @ q.T  # unit: q is orthogonal
    step = construct.run(spec, ctx) - y0
    tangent = step - y0 * jnp.sum(y0 * step, -1, keepdims=True)
    grad = jax.jit(jax.vmap(jax.grad(lambda y, ys, r: losses.plackett_luce(losses.cosine_reward(y, ys), r))))(
        y0, ctx.ys, ctx.rewards)
    err = np.max(np.abs(np.asarray(tangent + spec.eta * grad)), -1)
    b = bounds.analyse(spec, ctx).bound + COSINE_SLACK
    yield ("cosine PL, unit vectors: tangent part of the construction's step (beta = 1) = -eta dL_cos/dy "
           "(jax.grad)", n, float(err.max()), float(b.max()), float(np.max(err / b)), "PL")

    # --- latent concept (docs/theory.md section 5) ---
    for row in concept_checks.checks(next(k), contexts):
        yield _fixed(*row)

    # --- refusals: inputs outside the preconditions raise before anything runs ---
    tied = ctx.replace(rewards=ctx.rewards.at[:, 1].set(ctx.rewards[:, 0]))
    yield _fixed("tied rewards are rejected before running (0 = rejected)", 4, _refused(two, tied), 0.0)
    repro = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ctx.replace(
        x=jnp.array([0.5, -0.3, 0.2]), ys=50 * jnp.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]),
        rewards=jnp.array([0.2, 0.9, 0.45, 0.7]), r_true=jnp.zeros(4), y_star=jnp.zeros(3)))
    yield _fixed("the far-candidate context (candidates 50 e_i, W0 = I) is refused (0 = refused)", 4,
                 _refused(construct.spec_for(4, 3, np.eye(3)), repro), 0.0)


def _fixed(claim, n, err, bound):
    return claim, n, err, bound, err / bound if bound > 0 else (0.0 if err == 0 else np.inf), None


def _err(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def _refused(spec, ctx) -> float:
    try:
        construct.run(spec, ctx)
        return 1.0
    except ValueError:
        return 0.0


def _hunts(seed: int, contexts: int, wide: bool, names, progress) -> dict:
    """Worst error/bound ratio per construction claim: a short hunt at the verify sizes, or
    the wide one (N up to 32, d up to 16, three specs per shape, two rounds of local search)."""
    out = {}
    for i, name in enumerate(names):
        claim = search.CLAIMS[name]
        shapes = WIDE_SHAPES if wide else ((4 if name != "causal any order" else 6, D),)
        res = search.hunt(claim, seed=seed + i, shapes=shapes, specs=3 if wide else 1,
                          batch=32 if wide else contexts, rounds=2 if wide else 1, progress=progress)
        out[name] = {k: v for k, v in res.items() if k != "example"}
    return out


def verify(seed: int = 0, contexts: int = 64, progress: bool = False, search_wide: bool = False) -> dict:
    """Check every claim on ``contexts`` random contexts each (float64) and hunt for
    counterexamples to each construction claim. Returns {"claims": rows, "search", "contexts",
    "seconds", "all_pass"}; each row has claim, N, dtype, max_abs_error, bound, worst_ratio,
    search_worst_ratio (None for rows without a hunt) and pass (every ratio <= 1)."""
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    with jax.enable_x64(True):
        raw = list(tqdm(claims(jax.random.PRNGKey(seed), contexts), desc="verify", unit="claim",
                        disable=not progress))
        t_claims = time.perf_counter() - t0
        names = list(dict.fromkeys(r[5] for r in raw if r[5]))
        hunts = _hunts(seed, contexts, search_wide, names, None)
    rows = []
    for claim, n, err, bound, ratio, name in raw:
        found = hunts[name]["worst_ratio"] if name else None
        rows.append({"claim": claim, "N": n, "dtype": "float64", "max_abs_error": err, "bound": bound,
                     "worst_ratio": ratio, "search_worst_ratio": found,
                     "pass": bool(ratio <= 1 and (found is None or found <= 1))})
    return {"claims": rows, "search": {"wide": search_wide, "claims": hunts,
                                       "seconds": time.perf_counter() - t0 - t_claims},
            "contexts": contexts, "seconds": time.perf_counter() - t0, "all_pass": all(r["pass"] for r in rows)}


def table(result: dict) -> str:
    """The rows of :func:`verify` as a plain-text table with a summary line."""
    rows = result["claims"]
    width = max(len(r["claim"]) for r in rows)
    lines = [f"{'claim':<{width}}  {'N':>3}  {'max abs err':>11}  {'bound':>8}  {'ratio':>8}  {'search':>8}  result"]
    for r in rows:
        found = "-" if r["search_worst_ratio"] is None else f"{r['search_worst_ratio']:.2e}"
        lines.append(f"{r['claim']:<{width}}  {r['N']:>3}  {r['max_abs_error']:>11.3e}  {r['bound']:>8.1e}  "
                     f"{r['worst_ratio']:>8.1e}  {found:>8}  {'pass' if r['pass'] else 'FAIL'}")
    s = result["search"]
    lines.append(f"{sum(r['pass'] for r in rows)}/{len(rows)} claims pass ({result['contexts']} random contexts "
                 f"each; ratio = worst error / documented bound; search = worst ratio a "
                 f"{'wide' if s['wide'] else 'short'} hunt found; {result['seconds']:.1f} s)")
    return "\n".join(lines)
