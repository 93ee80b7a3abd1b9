"""Every theorem-as-code claim, checked numerically in float64 (``icalign verify``).

Each row compares two independent computations (hand-built transformer through
``model.apply`` vs the closed-form step of :mod:`icalign.theory.gd` vs ``jax.grad`` of
:mod:`icalign.core.losses`) over many random contexts and reports the max abs error against
the claim's bound. :func:`verify` returns the rows; the CLI prints them and exits 1 if any
claim fails.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core import losses
from icalign.theory import construct, gd

__all__ = ["claims", "verify", "table", "EXACT"]

EXACT = 1e-9  # "exact" claims: equal up to float64 rounding through dozens of layers


def _spec(n, d, key, **kw):
    return construct.spec_for(n, d, np.asarray(jax.random.normal(key, (d, d), jnp.float64)), **kw)


def _closed_form(spec, ctx, mask=None):
    """Batched closed-form reference: T GD steps on W with step eta / ||x||^2, seen at x."""
    @jax.jit
    @jax.vmap
    def one(x, ys, r):
        eta_w = spec.eta / jnp.dot(x, x)
        W = gd.gradient_descent(jnp.asarray(spec.W0), x, ys, r, eta_w, spec.steps, "sqdist", spec.beta, mask)
        return W @ x
    return one(ctx.x, ctx.ys, ctx.rewards)


def _autodiff(spec, ctx, mask=None):
    @jax.jit
    @jax.vmap
    def one(x, ys, r):
        loss = lambda y: losses.plackett_luce(losses.sqdist_reward(y, ys, spec.beta), r, mask)
        y = jnp.asarray(spec.W0) @ x
        for _ in range(spec.steps):
            y = y - spec.eta * jax.grad(loss)(y)
        return y
    return one(ctx.x, ctx.ys, ctx.rewards)


def _err(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def claims(key, contexts: int):
    """Yield (claim, N, max abs error, bound) rows."""
    d = 3
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
    yield "softmax identity: sqdist weights = biased dot-product attention", n, _err(lhs, rhs), 1e-12
    for reward in losses.REWARDS:
        closed = jax.jit(jax.vmap(lambda W, x, ys, r: gd.pl_gradient(W, x, ys, r, reward)))(W, x, ys, r)
        auto = jax.jit(jax.vmap(jax.grad(lambda W, x, ys, r: losses.plackett_luce(
            losses.reward_scores(W @ x, ys, reward), r))))(W, x, ys, r)
        yield f"dL_PL/dW closed form = jax.grad ({reward})", n, _err(closed, auto), 1e-10
        bt_c = jax.jit(jax.vmap(lambda W, x, ys: gd.bt_gradient(W, x, ys[0], ys[1], reward)))(W, x, ys)
        bt_a = jax.jit(jax.vmap(jax.grad(lambda W, x, ys: losses.bradley_terry(
            *losses.reward_scores(W @ x, ys[:2], reward)))))(W, x, ys)
        yield f"dL_BT/dW closed form = jax.grad ({reward})", 2, _err(bt_c, bt_a), 1e-10
    s2 = jax.random.normal(next(k), (contexts, 2), jnp.float64) * 3
    r2 = jax.random.uniform(next(k), (contexts, 2), jnp.float64)
    win = (r2[:, 0] > r2[:, 1])
    bt = losses.bradley_terry(jnp.where(win, s2[:, 0], s2[:, 1]), jnp.where(win, s2[:, 1], s2[:, 0]))
    yield "PL with N = 2 equals BT", 2, _err(losses.plackett_luce(s2, r2), bt), 1e-12

    # --- constructions (docs/theory.md section 3) ---
    for n, steps, causal, label in [
        (2, 1, False, "BT: 1 softmax layer = one GD step"),
        (4, 1, False, "PL: N-1 blocks = one GD step, any reward order"),
        (8, 1, False, "PL: N-1 blocks = one GD step, any reward order"),
        (16, 1, False, "PL: N-1 blocks = one GD step, any reward order"),
        (4, 3, False, "PL: 3 groups of N-1 blocks = 3 GD steps"),
    ]:
        spec = _spec(n, d, next(k), steps=steps, eta=0.2, beta=0.8)
        ctx = construct.separated_contexts(next(k), contexts, n, d)
        out = construct.run(spec, ctx)
        yield f"{label} (vs closed form)", n, _err(out, _closed_form(spec, ctx)), EXACT
        yield f"{label} (vs jax.grad)", n, _err(out, _autodiff(spec, ctx)), EXACT

    n = 8
    spec = _spec(n, d, next(k), causal=True, eta=0.2)
    ctx = construct.separated_contexts(next(k), contexts, n, d, best_first=True)
    rows = construct.run(spec, ctx)  # (B, N + 1, D)
    # Reference for every prefix length i = 1..N at once: the closed form with mask j < i.
    masks = jnp.arange(n)[None, :] < jnp.arange(1, n + 1)[:, None]
    eta_w = spec.eta / jnp.sum(ctx.x * ctx.x, -1)
    step = lambda x, ys, r, e, m: gd.gradient_descent(jnp.asarray(spec.W0), x, ys, r, e, 1, "sqdist",
                                                        spec.beta, m) @ x
    per_ctx = jax.vmap(step, in_axes=(0, 0, 0, 0, None))
    refs = jax.jit(jax.vmap(per_ctx, in_axes=(None, None, None, None, 0)))(
        ctx.x, ctx.ys, ctx.rewards, eta_w, masks)  # (N, B, D)
    worst = _err(rows[:, 1:], jnp.swapaxes(refs, 0, 1))
    yield "causal PL: token i = one GD step on online PL over candidates <= i", n, worst, EXACT

    # Soft selection: B * gap = 4, the documented bound must hold per context.
    spec = _spec(n, d, next(k), B=4.0 / (0.5 / n), M=2 * 4.0 / (0.5 / n) + 50.0)
    ctx = construct.separated_contexts(next(k), contexts, n, d)
    out, ref = construct.run(spec, ctx), _closed_form(dataclasses.replace(spec), ctx)
    errs = np.max(np.abs(np.asarray(out - ref)), axis=-1)
    bounds = np.array([construct.error_bound(spec, jax.tree_util.tree_map(lambda a: a[i], ctx))
                       for i in range(contexts)])
    yield "soft selection (B*gap = 4): error <= documented bound, worst ratio", n, float(np.max(errs / bounds)), 1.0

    tied = ctx.replace(rewards=ctx.rewards.at[:, 1].set(ctx.rewards[:, 0]))
    try:
        construct.run(spec, tied)
        detected = 1.0
    except ValueError:
        detected = 0.0
    yield "tied rewards are rejected before running (0 = rejected)", n, detected, 0.0


def verify(seed: int = 0, contexts: int = 64, progress: bool = False) -> dict:
    """Check every claim on ``contexts`` random contexts each (float64). Returns
    {"claims": rows, "contexts", "seconds", "all_pass"}; each row has claim, N, dtype,
    max_abs_error, bound and pass."""
    t0 = time.perf_counter()
    rows = []
    from tqdm.auto import tqdm

    with jax.enable_x64(True):
        rows_in = tqdm(claims(jax.random.PRNGKey(seed), contexts), desc="verify", unit="claim", disable=not progress)
        for claim, n, err, bound in rows_in:
            rows.append({"claim": claim, "N": n, "dtype": "float64", "max_abs_error": err,
                         "bound": bound, "pass": bool(err <= bound)})
    return {"claims": rows, "contexts": contexts, "seconds": time.perf_counter() - t0,
            "all_pass": all(r["pass"] for r in rows)}


def table(result: dict) -> str:
    """The rows of :func:`verify` as a plain-text table with a summary line."""
    rows = result["claims"]
    width = max(len(r["claim"]) for r in rows)
    lines = [f"{'claim':<{width}}  {'N':>3}  {'dtype':<7}  {'max abs err':>11}  {'bound':>8}  result"]
    for r in rows:
        lines.append(f"{r['claim']:<{width}}  {r['N']:>3}  {r['dtype']:<7}  {r['max_abs_error']:>11.3e}  "
                     f"{r['bound']:>8.0e}  {'pass' if r['pass'] else 'FAIL'}")
    lines.append(f"{sum(r['pass'] for r in rows)}/{len(rows)} claims pass ({result['contexts']} random "
                 f"contexts each, {result['seconds']:.1f} s)")
    return "\n".join(lines)
