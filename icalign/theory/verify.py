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

__all__ = ["claims", "verify", "table", "EXACT", "WIDE_SHAPES", "SOFT_TOL"]

EXACT = 1e-9  # analytic identities: equal up to float64 rounding
# jax.grad through the eps-smoothed cosine in float64 (N terms of size <= 2), and the smoothing
# itself: on unit vectors it moves each score by <= 2 eps^2 = 2e-16
COSINE_SLACK = 1e-12
# Soft selection's looser guarantee: with B * gap = 4 the bound is at most this fraction of the step
SOFT_TOL = 0.1
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


def _rel(out, ref, y0, has_step, bound):
    """(worst ||out - ref|| / ||step||, worst bound / ||step||) over the rows with a step, the
    step being the reference's ref - y0."""
    step = np.linalg.norm(np.asarray(ref - y0), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(has_step, np.linalg.norm(np.asarray(out - ref), axis=-1) / step, 0.0)
        b_s = np.where(has_step, bound / step, 0.0)
    return float(np.max(rel)), float(np.max(b_s))


def _keep(ctx, *specs):
    """The contexts every spec accepts (random contexts can have a step too small for rel_tol:
    those are refused by name, and the row says how many were kept)."""
    valid = np.all([bounds.analyse(s, ctx).valid for s in specs], axis=0)
    return jax.tree_util.tree_map(lambda a: a[valid], ctx), int(valid.sum())


def _rows(label, spec, ctx, out=None):
    """Two rows (vs closed form, vs jax.grad) with the documented per-context bound, the worst
    relative error and the worst bound / step, on the contexts the spec accepts."""
    total = ctx.x.shape[0]
    if out is None:
        ctx, kept = _keep(ctx, spec)
        if not kept:  # nothing to compare: a failing row, not an empty maximum
            yield _row(f"{label} (no context accepted)", spec.n, np.nan, np.nan, np.inf, accepted=f"0/{total}")
            return
        out = construct.run(spec, ctx)
    else:
        kept = total
    a = bounds.analyse(spec, ctx)
    y0 = ctx.x @ jnp.asarray(spec.W0).T
    y0 = y0[:, None, :] if spec.causal else y0
    for name, ref in zip(("closed form", "jax.grad"), _references(spec, ctx)):
        err = np.max(np.abs(np.asarray(out - ref)), axis=-1)
        yield _row(f"{label} (vs {name})", spec.n, float(err.max()), float(np.max(a.bound)),
                   float(np.max(err / a.bound)), *_rel(out, ref, y0, a.step > 0, a.bound), spec.rel_tol,
                   accepted=f"{kept}/{total}")


def _row(claim, n, err, bound, ratio, rel=None, bound_step=None, rel_tol=None, search=None, accepted=None):
    return dict(claim=claim, N=n, max_abs_error=err, bound=bound, worst_ratio=ratio, rel_error=rel,
                bound_step=bound_step, rel_tol=rel_tol, search=search, accepted=accepted)


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
            yield {**row, "search": name}
    n = 8
    spec = _spec(n, next(k), causal=True, eta=0.2)
    for row in _rows(search.CLAIMS["causal"].label, spec, construct.separated_contexts(next(k), contexts, n, D,
                                                                                      best_first=True)):
        yield {**row, "search": "causal"}
    n = 6
    spec = _spec(n, next(k), causal=True, any_order=True, eta=0.2)
    for row in _rows(search.CLAIMS["causal any order"].label, spec, construct.separated_contexts(next(k), contexts,
                                                                                                n, D)):
        yield {**row, "search": "causal any order"}
    n = 4
    two = _spec(n, next(k), eta=0.2, beta=0.8)
    one = dataclasses.replace(two, heads_per_layer=1)
    ctx, kept = _keep(construct.separated_contexts(next(k), contexts, n, D), one, two)
    out1 = construct.run(one, ctx)
    a1, a2 = bounds.analyse(one, ctx), bounds.analyse(two, ctx)
    b = a1.bound + a2.bound
    out2 = construct.run(two, ctx)
    err = np.max(np.abs(np.asarray(out1 - out2)), -1)
    label = search.CLAIMS["heads<->depth"].label
    yield _row(f"{label} (vs two heads)", n, float(err.max()), float(b.max()), float(np.max(err / b)),
               *_rel(out1, out2, ctx.x @ jnp.asarray(two.W0).T, a1.step > 0, b), one.rel_tol, "heads<->depth",
               f"{kept}/{contexts}")
    for row in _rows(label, one, ctx, out1):
        yield {**row, "search": "heads<->depth", "accepted": f"{kept}/{contexts}"}
    # Soft selection: B * gap = 4, the documented bound must hold per context, and its looser
    # guarantee is a number: the bound is at most SOFT_TOL of the step.
    n = 8
    spec = _spec(n, next(k), selection=4.0, rel_tol=SOFT_TOL)
    for row in list(_rows(f"soft selection (B*gap = 4): error within the documented bound, bound <= "
                          f"{SOFT_TOL:g} of the step", spec, construct.separated_contexts(next(k), contexts, n, D)))[:1]:
        yield {**row, "search": "PL"}

    # Cosine reward on unit vectors (docs/theory.md section 3.8): with beta = 1 the construction
    # forms the cosine-PL softmax exactly; its step's tangent part is the cosine GD step.
    n = 6
    q = np.linalg.qr(np.asarray(jax.random.normal(next(k), (D, D), jnp.float64)))[0]
    spec = construct.spec_for(n, D, q, beta=1.0, eta=0.2)
    ctx = construct.separated_contexts(next(k), contexts, n, D)
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    ctx, kept = _keep(ctx.replace(x=unit(ctx.x), ys=unit(ctx.ys)), spec)
    y0 = ctx.x @ q.T  # unit: q is orthogonal
    step = construct.run(spec, ctx) - y0
    tangent = step - y0 * jnp.sum(y0 * step, -1, keepdims=True)
    grad = jax.jit(jax.vmap(jax.grad(lambda y, ys, r: losses.plackett_luce(losses.cosine_reward(y, ys), r))))(
        y0, ctx.ys, ctx.rewards)
    err = np.max(np.abs(np.asarray(tangent + spec.eta * grad)), -1)
    b = bounds.analyse(spec, ctx).bound + COSINE_SLACK
    rel, b_s = _rel(tangent, -spec.eta * grad, 0.0, np.ones(err.shape, bool), b)
    yield _row("cosine PL, unit vectors: tangent part of the construction's step (beta = 1) = -eta dL_cos/dy "
               "(jax.grad)", n, float(err.max()), float(b.max()), float(np.max(err / b)), rel, b_s, spec.rel_tol, "PL",
               f"{kept}/{contexts}")

    # --- latent concept (docs/theory.md section 5) ---
    for row in concept_checks.checks(next(k), contexts):
        yield _fixed(*row)

    # --- refusals: inputs outside the preconditions raise before anything runs, naming the
    # precondition (a refusal for another reason, e.g. a shape error, does not count) ---
    ctx = construct.separated_contexts(next(k), contexts, 4, D)
    tied = ctx.replace(rewards=ctx.rewards.at[:, 1].set(ctx.rewards[:, 0]))
    yield _fixed("tied rewards are rejected before running (0 = rejected)", 4, _refused(two, tied, "reward gap"), 0.0)
    repro = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ctx.replace(
        x=jnp.array([0.5, -0.3, 0.2]), ys=50 * jnp.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]),
        rewards=jnp.array([0.2, 0.9, 0.45, 0.7]), r_true=jnp.zeros(4), y_star=jnp.zeros(3)))
    yield _fixed("far candidates (50 e_i, W0 = I): the sink leak is refused (0 = refused)", 4,
                 _refused(construct.spec_for(4, 3, np.eye(3)), repro, "sink margin"), 0.0)
    yield _fixed("x = 0 (no W-space step eta / ||x||^2) is refused (0 = refused)", 4,
                 _refused(two, ctx.replace(x=jnp.zeros_like(ctx.x)), "query norm"), 0.0)
    U, V = (np.linalg.qr(np.asarray(jax.random.normal(next(k), (D, D), jnp.float64)))[0] for _ in range(2))
    ill = 1e12 * U @ np.diag([1.0, 1e-6, 1e-12]) @ V.T  # ||W0 x|| = 1 along V e_3, rounding at 1e12 eps
    yield _fixed("W0 of condition 1e12, x along its weakest direction: bound > rel_tol of the step, "
                 "refused (0 = refused)", 4, _refused(dataclasses.replace(two, W0=ill), ctx.replace(
                     x=jnp.broadcast_to(jnp.asarray(V[:, -1]), ctx.x.shape)), "step tolerance"), 0.0)


def _fixed(claim, n, err, bound):
    return _row(claim, n, err, bound, err / bound if bound > 0 else (0.0 if err == 0 else np.inf))


def _err(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def _refused(spec, ctx, precondition: str) -> float:
    """0 when ``run`` refuses ``ctx`` naming ``precondition``, 1 otherwise."""
    try:
        construct.run(spec, ctx)
        return 1.0
    except ValueError as e:
        return 0.0 if f"precondition '{precondition}'" in str(e) else 1.0


# The short hunt leaves out the long-run family: its deeper model is one more compilation per
# claim, which the wide hunt (--search) pays.
SHORT_FAMILIES = tuple(f for f in search.FAMILIES if f != "long run")


def _hunts(seed: int, contexts: int, wide: bool, names, progress) -> dict:
    """Per construction claim, what the hunt found per family: a short hunt at the verify
    sizes (SHORT_FAMILIES, no local search), or the wide one (every family of search.FAMILIES,
    N up to 32, d up to 16, one spec per family and shape, one round of local search)."""
    out = {}
    for i, name in enumerate(names):
        claim = search.CLAIMS[name]
        shapes = WIDE_SHAPES if wide else ((4 if name != "causal any order" else 6, D),)
        res = search.hunt(claim, seed=seed + i, shapes=shapes, specs=1, batch=16 if wide else contexts,
                          rounds=1 if wide else 0, progress=progress,
                          families=search.FAMILIES if wide else SHORT_FAMILIES)
        out[name] = {k: v for k, v in res.items() if k != "example"}
    return out


def families(hunts: dict) -> dict:
    """Per family of the hunt, summed over claims: tried, accepted (valid), the fraction of
    tries it produced that were accepted, accepted contexts over their bound and over their
    tolerance, worst error / bound, worst relative error / rel_tol, worst bound / step."""
    out = {}
    for h in hunts.values():
        for f, st in h["families"].items():
            o = out.setdefault(f, dict(tried=0, valid=0, over_bound=0, over_tolerance=0, worst_ratio=0.0,
                                       worst_tolerance=0.0, worst_bound_step=0.0))
            for key in ("tried", "valid", "over_bound", "over_tolerance"):
                o[key] += st[key]
            for key in ("worst_ratio", "worst_tolerance", "worst_bound_step"):
                o[key] = max(o[key], st[key])
    for o in out.values():
        o["accepted_fraction"] = o["valid"] / o["tried"] if o["tried"] else 0.0
    return out


def verify(seed: int = 0, contexts: int = 64, progress: bool = False, search_wide: bool = False) -> dict:
    """Check every claim on ``contexts`` random contexts each (float64) and hunt for
    counterexamples to each construction claim. Returns {"claims": rows, "search", "contexts",
    "seconds", "all_pass"}; each row has claim, N, dtype, max_abs_error, bound, worst_ratio,
    rel_error and bound_step (worst relative error and bound / step; construction rows),
    rel_tol, search_worst_ratio and search_worst_tolerance (None for rows without a hunt), and
    pass: the bound holds (ratio <= 1), the bound is within rel_tol of the step, and the hunt
    found no accepted context over its bound or its tolerance."""
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    with jax.enable_x64(True):
        raw = list(tqdm(claims(jax.random.PRNGKey(seed), contexts), desc="verify", unit="claim",
                        disable=not progress))
        t_claims = time.perf_counter() - t0
        names = list(dict.fromkeys(r["search"] for r in raw if r["search"]))
        hunts = _hunts(seed, contexts, search_wide, names, None)
    rows = []
    for r in raw:
        name = r.pop("search")
        found = hunts[name]["worst_ratio"] if name else None
        tol = hunts[name]["worst_tolerance"] if name else None
        ok = r["worst_ratio"] <= 1 and (r["bound_step"] is None or r["bound_step"] <= r["rel_tol"])
        ok = ok and (found is None or (found <= 1 and tol <= 1))
        rows.append({**r, "dtype": "float64", "search_worst_ratio": found, "search_worst_tolerance": tol,
                     "pass": bool(ok)})
    return {"claims": rows, "search": {"wide": search_wide, "claims": hunts, "families": families(hunts),
                                       "seconds": time.perf_counter() - t0 - t_claims},
            "contexts": contexts, "seconds": time.perf_counter() - t0, "all_pass": all(r["pass"] for r in rows)}


def table(result: dict) -> str:
    """The rows of :func:`verify` as a plain-text table, the hunt per family, and a summary."""
    rows = result["claims"]
    width = max(len(r["claim"]) for r in rows)
    opt = lambda v, f: "-" if v is None else format(v, f)
    lines = [f"{'claim':<{width}}  {'N':>3}  {'max abs err':>11}  {'bound':>8}  {'ratio':>8}  {'rel err':>8}  "
             f"{'bound/step':>10}  {'rel_tol':>7}  {'search':>8}  result"]
    for r in rows:
        lines.append(f"{r['claim']:<{width}}  {r['N']:>3}  {r['max_abs_error']:>11.3e}  {r['bound']:>8.1e}  "
                     f"{r['worst_ratio']:>8.1e}  {opt(r['rel_error'], '.1e'):>8}  {opt(r['bound_step'], '.1e'):>10}  "
                     f"{opt(r['rel_tol'], 'g'):>7}  {opt(r['search_worst_ratio'], '.2e'):>8}  "
                     f"{'pass' if r['pass'] else 'FAIL'}")
    s = result["search"]
    lines.append(f"\nhunt per family ({'wide' if s['wide'] else 'short'}; summed over the construction claims):")
    lines.append(f"{'family':<20} {'tried':>7} {'accepted':>8} {'fraction':>8} {'>bound':>6} {'>tol':>5} "
                 f"{'worst err/bound':>15} {'worst rel err/tol':>17} {'worst bound/step':>16}")
    for f, o in s["families"].items():
        lines.append(f"{f:<20} {o['tried']:>7} {o['valid']:>8} {o['accepted_fraction']:>8.2f} {o['over_bound']:>6} "
                     f"{o['over_tolerance']:>5} {o['worst_ratio']:>15.2e} {o['worst_tolerance']:>17.2e} "
                     f"{o['worst_bound_step']:>16.2e}")
    kept = [tuple(map(int, r["accepted"].split("/"))) for r in rows if r.get("accepted")]
    lines.append(f"construction rows: {sum(k for k, _ in kept)}/{sum(n for _, n in kept)} drawn contexts accepted "
                 f"(the rest refused by name, e.g. a step too small for rel_tol)")
    lines.append(f"{sum(r['pass'] for r in rows)}/{len(rows)} claims pass ({result['contexts']} random contexts "
                 f"each; ratio = worst error / documented bound; rel err = worst ||error|| / ||step||; a claim "
                 f"passes when ratio <= 1 and bound/step <= rel_tol; search = worst ratio the hunt found; "
                 f"{result['seconds']:.1f} s)")
    return "\n".join(lines)
