"""Every precondition of the constructions, checked before running, and the error bound that
holds wherever they pass (docs/theory.md sections 3.3 and 3.4).

:func:`analyse` computes, per context, the margin of each precondition (>= 0 means it holds)
and the documented bound on ||constructed - exact||, from the context and the spec alone (no
forward pass, no GD: the bound is an a-priori statement). :func:`check_preconditions` raises a
ValueError naming the first violated precondition, its measured margin and where (context,
viewer, GD step, block); :func:`error_bound` refuses the same way rather than return a number
that would not bound anything.

The bound, for each viewer (the query token; with ``causal`` every candidate token, whose
window is candidates 1..i) and each GD step t, adds over the blocks k = 1..N-1

* head A (selection): the weight it leaks off the selected token, at most
  sum_{j != top} e^{logit_j - logit_top} (each leaking token's distance to y_top, or ||y_top||
  for the sink), and the same sums give |RMAX - r_top|, which must stay within the
  elimination's tolerance (gap/4, or gap/5 with the comparator) so that the remaining sets are
  exactly the ideal ones;
* head B (PL softmax): the weight leaked to eliminated tokens (logit - M) and to the sink
  (-M/2, value 0), at most e^{logit - max alive logit} each, times the window's diameter
  (or ||y|| for the sink); the PL logits at step t are bracketed by those at y_hat_0 plus or
  minus beta ||y_j|| times a bound on ||y_hat_t - y_hat_0||;
* rounding: a floating-point model in which a sum of n terms has error <= n eps times the sum
  of their magnitudes (constants rounded up by a factor 16), for the logits (whose magnitude is
  ~2M; a logit error rho moves the weights by at most e^{2 rho} - 1 in l1), the mixing, the
  residual additions, the read-out, and the float64 reference itself; the read-in's W0 x and the
  reference's W_t x round at the scale || |W0| |x| || (<= ||W0|| ||x||), which follows the
  conditioning of W0, not at ||W0 x||;

and carries the error of step t into step t + 1 with the Lipschitz constant
1 + eta beta^2 (m - 1) D^2 / 4 of the ideal step map (m candidates in the window, D their
diameter; the covariance of a distribution on a set of diameter D is at most D^2 / 4).

Two context-level conditions close the loop (docs/theory.md sections 3.3 and 3.4): ||x||^2 and
eta / ||x||^2 must be normal floats ("query norm"), and the bound must be at most ``rel_tol``
times the exact step's size ("step tolerance"; the step map iterated in numpy), so that an
accepted context's output is the GD step to that relative accuracy, not merely within a bound
larger than the step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from icalign.theory import blocks

__all__ = ["Analysis", "analyse", "check_preconditions", "error_bound", "PRECONDITIONS"]

EPS = float(np.finfo(np.float64).eps)
PRECONDITIONS = {
    "finite": "every input (x, candidates, rewards, W0) and every derived logit is finite",
    "query norm": "||x||^2 and the W-space step eta / ||x||^2 are nonzero, finite, normal floats",
    "reward range": "rewards lie in [0, r_cap]",
    "reward gap": "rewards are distinct with smallest gap >= gap",
    "order": "causal=True without any_order needs best-first candidates",
    "elimination": "|RMAX - r_top| <= tolerance (gap/4; gap/5 with the comparator) at every block",
    "sink margin": "the largest alive PL logit stays >= leak_margin above the sink's -M/2",
    "dead margin": "eliminated tokens' PL logits (minus M) stay >= leak_margin below the largest alive one",
    "empty-window margin": "in a window with no alive candidate, eliminated PL logits stay >= leak_margin below M/2",
    "step tolerance": "the bound is at most rel_tol times the exact step's size (every output row whose window "
                      "holds >= 2 candidates)",
}
TINY, HUGE = float(np.finfo(np.float64).tiny), float(np.finfo(np.float64).max)


@dataclasses.dataclass
class Analysis:
    """Per context (leading axis B): ``margins[name]`` (B,) the smallest margin of each
    precondition (>= 0: holds), ``where[name]`` a readable location of that minimum, and
    ``bound`` (B,) or (B, N + 1) for causal rows, ``step`` the same shape: the exact step's
    size ||y_hat_T - y_hat_0|| (0 for rows whose window holds < 2 candidates: no step).
    ``valid`` (B,): every margin >= 0."""

    margins: dict
    where: dict
    bound: np.ndarray
    valid: np.ndarray
    step: np.ndarray


def _fields(spec, ctx):
    x, ys, r = (np.asarray(a, dtype=np.float64) for a in (ctx.x, ctx.ys, ctx.rewards))
    if ys.ndim < 2 or ys.shape[-2:] != (spec.n, spec.d):
        raise ValueError(f"ctx.ys must have shape (..., n={spec.n}, d={spec.d}), got {ys.shape}")
    if x.shape[-1:] != (spec.d,) or r.shape[-1:] != (spec.n,) or x.shape[:-1] != ys.shape[:-2] \
            or r.shape[:-1] != ys.shape[:-2]:
        raise ValueError(f"ctx.x (..., {spec.d}) and ctx.rewards (..., {spec.n}) must match ctx.ys "
                         f"{ys.shape}; got {x.shape} and {r.shape}")
    lead = ys.shape[:-2]
    return x.reshape(-1, spec.d), ys.reshape(-1, spec.n, spec.d), r.reshape(-1, spec.n), lead


def _viewers(spec, n):
    """(V, N) windows: the query sees all candidates, or causal token i sees 1..i."""
    if spec.causal:
        return np.arange(n)[None, :] <= np.arange(n)[:, None]
    return np.ones((1, n), bool)


def analyse(spec, ctx) -> Analysis:
    """Margins of every precondition and the documented bound, per context (module docstring)."""
    with np.errstate(all="ignore"):  # contexts that fail a check may overflow; they get no bound
        return _analyse(spec, ctx)


def _analyse(spec, ctx) -> Analysis:
    x, ys, r, lead = _fields(spec, ctx)
    nb, n, d = ys.shape
    win = _viewers(spec, n)  # (V, N)
    V = win.shape[0]
    m = win.sum(-1)  # (V,) window sizes
    margins, where = {}, {}

    def record(name, values, loc):
        margins[name], where[name] = values, loc

    finite = np.isfinite(x).all(-1) & np.isfinite(ys).all((-1, -2)) & np.isfinite(r).all(-1)
    y2 = np.sum(ys * ys, -1)  # (B, N)
    y0 = x @ np.asarray(spec.W0, float).T  # (B, D)
    l0 = spec.beta * (np.einsum("bnd,bd->bn", ys, y0) - 0.5 * y2)  # PL logits at y_hat_0
    dist = np.linalg.norm(ys[:, :, None, :] - ys[:, None, :, :], axis=-1)  # (B, N, N)
    finite &= np.isfinite(l0).all(-1) & np.isfinite(dist).all((-1, -2))
    record("finite", np.where(finite, 0.0, -np.inf), np.array(["" if f else "non-finite input or overflow"
                                                                for f in finite]))
    # The W-space step is eta / ||x||^2: it needs ||x||^2 (and the step) to be normal floats.
    x2 = np.sum(x * x, -1)
    with np.errstate(divide="ignore"):
        norm_ok = np.minimum.reduce([np.log10(x2 / TINY), np.log10(HUGE / x2),
                                     np.log10(spec.eta / x2 / TINY), np.log10(HUGE * x2 / spec.eta)])
    norm_ok = np.where(np.isnan(norm_ok), -np.inf, norm_ok)
    record("query norm", np.where(finite, norm_ok, np.inf), np.array([f"||x||^2 = {v:.4g}" for v in x2]))
    finite &= norm_ok >= 0
    # Conditioning: the read-in and the W-space reference form W0 x (and W_t x) as sums whose
    # rounding scales with || |W0| |x| || (<= ||W0||_F ||x||), not with ||W0 x||.
    w0x = np.linalg.norm(np.abs(x) @ np.abs(np.asarray(spec.W0, float)).T, axis=-1)
    ok = finite[:, None]
    w0x = np.where(finite, w0x, 0.0)
    r = np.where(ok, r, 0.0)
    ys, y2, l0, dist = (np.where(ok[..., None] if a.ndim == 3 else ok, a, 0.0) for a in (ys, y2, l0, dist))
    y0 = np.where(ok, y0, 0.0)
    ynorm = np.sqrt(y2)
    record("reward range", np.minimum(r.min(-1), spec.r_cap - r.max(-1)), np.array([""] * nb))
    gaps = np.diff(np.sort(r, -1), axis=-1)
    record("reward gap", gaps.min(-1) - spec.gap, np.array([""] * nb))
    if spec.causal and not spec.any_order:
        record("order", np.where(np.all(np.diff(r, axis=-1) < 0, -1), 0.0, -1.0), np.array([""] * nb))
    # Ranks inside each viewer's window (0 = best); ties cannot pass the gap check.
    higher = (r[:, None, :] > r[:, :, None])  # (B, N_j, N_l): r_l > r_j
    rank = np.einsum("bjl,vl->bvj", higher.astype(float), win.astype(float))  # (B, V, N)
    inwin = np.broadcast_to(win[None], rank.shape)
    ymax = np.max(np.where(inwin, ynorm[:, None, :], 0.0), -1)  # (B, V)
    diam = np.max(np.where(win[None, :, :, None] & win[None, :, None, :], dist[:, None], 0.0), (-1, -2))
    R = np.maximum(diam, ymax)
    tol = spec.gap / (5.0 if spec.any_order else 4.0)
    B, M, bt = spec.B, spec.M, spec.eta * spec.beta
    n_hats = max(len(blocks.hat_grid(spec)) - 2, 0)
    width, dh = spec.slots.width, blocks.head_dim(spec)
    acc = width + dh + n + 3  # terms in the longest sum of one layer
    depth = 3 - spec.heads_per_layer
    if spec.any_order:  # hat codes: cancellation in (relu - 2 relu + relu) / w, w = gap / 5
        code = (spec.r_cap + 2 * spec.gap) / (spec.gap / 5) * n_hats * 4
    else:  # the alive flag's ramp, scaled by L / (gap / 2)
        code = (5 * spec.r_cap + spec.gap) / (spec.gap / 2)
    elim_min = np.full(nb, np.inf)
    elim_at = np.full(nb, "", dtype=object)
    marg = {k: (np.full(nb, np.inf), np.full(nb, "", dtype=object))
            for k in ("sink margin", "dead margin", "empty-window margin")}
    tw = 2 * d + 3  # token width: the read-in's sum for Y_HAT = W0 x
    err = np.broadcast_to(16 * EPS * tw * w0x[:, None], (nb, V)).copy()  # read-in rounding
    rad = np.zeros((nb, V))  # bound on ||y_hat_t - y_hat_0|| per viewer
    lip = 1.0 + bt * spec.beta * np.maximum(m - 1, 0)[None, :] * diam ** 2 / 4
    yh0 = np.linalg.norm(y0, axis=-1)[:, None]

    def keep_min(pair, vals, label):
        """Track the smallest margin per context and where it occurs (over viewers)."""
        cur, at = pair
        worst = vals.min(-1)
        better = worst < cur
        cur[better] = worst[better]
        idx = vals.argmin(-1)
        for b in np.nonzero(better)[0]:
            at[b] = label(idx[b])

    loc = lambda t, k: (lambda v: f"GD step {t + 1}, block {k + 1}" + (f", token {v + 1}" if spec.causal else ""))
    for t in range(spec.steps):
        yh = yh0 + rad
        logit_mag = max(B * spec.r_cap, 0.0) + 2 * M + spec.beta * (yh + ymax[:, :]) ** 2 / 2  # (B, V)
        rho = 16 * EPS * (acc * logit_mag + M * code)  # logit rounding
        lo = l0[:, None, :] - spec.beta * rad[..., None] * ynorm[:, None, :]
        hi = l0[:, None, :] + spec.beta * rad[..., None] * ynorm[:, None, :]
        step_err = np.zeros((nb, V))
        for k in range(n - 1):
            alive, dead = inwin & (rank >= k), inwin & (rank < k)
            top = inwin & (rank == k)
            has = top.any(-1)  # (B, V)
            r_top = np.sum(np.where(top, r[:, None, :], 0.0), -1)
            # --- head A: leak weights relative to the top (or to the sink when empty) ---
            ref = np.where(has, B * r_top, -M / 2)[..., None]
            la = np.where(alive & ~top, B * r[:, None, :], np.where(dead, B * r[:, None, :] - M, -np.inf))
            wa = np.exp(np.minimum(la - ref, 0.0))
            ws = np.where(has, np.exp(-M / 2 - B * r_top), 0.0)
            dev = np.sum(wa * np.abs(r[:, None, :] - r_top[..., None]), -1) + ws * r_top
            d_top = np.einsum("bvl,bjl->bvj", top.astype(float), dist)
            err_a = np.sum(wa * np.where(has[..., None], d_top, ynorm[:, None, :]), -1) \
                + ws * np.sum(np.where(top, ynorm[:, None, :], 0.0), -1)
            if k < n - 2:  # this block eliminates: the remaining sets must stay exact
                slack = tol - (dev + np.expm1(2 * rho) * spec.r_cap + 16 * EPS * acc * spec.r_cap)
                keep_min((elim_min, elim_at), slack, loc(t, k))
            # --- head B: PL logits of the alive set vs dead tokens and the sink ---
            lmax = np.max(np.where(alive, lo, -np.inf), -1)  # (B, V); -inf when empty
            dhi = np.max(np.where(dead, hi, -np.inf), -1)
            keep_min(marg["sink margin"], np.where(has, lmax + M / 2 - spec.leak_margin, np.inf), loc(t, k))
            keep_min(marg["dead margin"], np.where(has & dead.any(-1), M - (dhi - lmax) - spec.leak_margin, np.inf),
                     loc(t, k))
            keep_min(marg["empty-window margin"], np.where(~has & dead.any(-1), M / 2 - dhi - spec.leak_margin,
                                                           np.inf), loc(t, k))
            refb = np.where(has, lmax, -M / 2)[..., None]
            wd = np.where(dead, np.exp(np.minimum(hi - M - refb, 700.0)), 0.0)
            wsb = np.where(has, np.exp(np.minimum(-M / 2 - lmax, 700.0)), 0.0)
            err_b = np.where(has, np.sum(wd, -1) * diam + wsb * ymax, np.sum(wd * ynorm[:, None, :], -1))
            # --- rounding in this block: logits (-> weights), mixing, residual additions ---
            g_mag = np.maximum(m - 1, 0)[None, :] * diam + ymax
            rnd = np.expm1(2 * rho) * (R + spec.r_cap) + 16 * EPS * acc * (ymax + g_mag)  # exact, not 2 rho
            step_err += bt * (err_a + err_b + depth * rnd)
        # read-out, refresh and the float64 reference (logits up to logit_mag, N terms)
        step_err += 16 * EPS * acc * (yh + bt * np.maximum(m - 1, 0)[None, :] * diam) \
            + bt * np.maximum(m - 1, 0)[None, :] * 2 * 16 * EPS * (n + d) * logit_mag * diam
        # the reference's W_t x: W_t's entries carry t + 1 roundings at the scale |W0| |x| + rad
        step_err += 16 * EPS * (d + t + 2) * (w0x[:, None] + rad)
        err = lip * err + step_err
        rad = rad + bt * np.maximum(m - 1, 0)[None, :] * diam + step_err
    if n > 2:
        record("elimination", elim_min, elim_at)
    for name, (vals, at) in marg.items():
        record(name, vals, at)
    checked = np.all([np.asarray(v) >= 0 for v in margins.values()], axis=0)
    step = np.linalg.norm(_ideal_step(spec, ys, y2, y0, rank, inwin), axis=-1)  # (B, V)
    with np.errstate(all="ignore"):
        rel = np.where(m[None, :] >= 2, err / step, 0.0)
    rel = np.where(np.isnan(rel), np.inf, rel)
    at = rel.argmax(-1)
    record("step tolerance", np.where(checked, spec.rel_tol - rel.max(-1), np.inf),
           np.array([f"bound/step = {rel[b, v]:.3g}" + (f", token {v + 1}" if spec.causal else "")
                     for b, v in enumerate(at)]))
    valid = checked & (margins["step tolerance"] >= 0)
    bound = np.where(valid[:, None], err, np.nan)
    if spec.causal:  # row 0 (the query) sees no candidate: y_hat_0 up to read-in/out rounding
        row0 = 16 * EPS * acc * (yh0 + w0x[:, None])
        bound = np.concatenate([np.where(valid[:, None], row0, np.nan), bound], axis=-1)
        step = np.concatenate([np.zeros((nb, 1)), step], axis=-1)
    else:
        bound, step = bound[:, 0], step[:, 0]
    margins = {k: np.asarray(v, float).reshape(lead) for k, v in margins.items()}
    where = {k: np.asarray(v, object).reshape(lead) for k, v in where.items()}
    return Analysis(margins, where, bound.reshape(lead + bound.shape[1:]), valid.reshape(lead),
                    step.reshape(lead + step.shape[1:]))


def _ideal_step(spec, ys, y2, y0, rank, inwin):
    """y_hat_T - y_hat_0 per viewer (B, V, D): the exact PL step map of docs/theory.md section
    3.1 iterated in float64 numpy. Only its size is used: the denominator of bound / step."""
    y = np.repeat(y0[:, None, :], rank.shape[1], axis=1)
    for _ in range(spec.steps):
        logit = spec.beta * (np.einsum("bnd,bvd->bvn", ys, y) - 0.5 * y2[:, None, :])
        g = np.zeros_like(y)
        for k in range(spec.n - 1):
            alive, top = inwin & (rank >= k), inwin & (rank == k)
            la = np.where(alive, logit, -np.inf)
            w = np.exp(la - np.max(la, -1, keepdims=True))
            w = np.where(alive, w, 0.0) / np.maximum(np.sum(np.where(alive, w, 0.0), -1, keepdims=True), 1e-300)
            g += np.einsum("bvn,bnd->bvd", np.where(top, 1.0, 0.0) - np.where(top.any(-1, keepdims=True), w, 0.0), ys)
        y = y + spec.eta * spec.beta * g
    return y - y0[:, None, :]


def _first_violation(spec, a: Analysis):
    for name in PRECONDITIONS:
        if name not in a.margins:
            continue
        vals = np.atleast_1d(a.margins[name])
        if np.all(vals >= 0):
            continue
        i = int(np.argmin(vals))
        where = np.atleast_1d(a.where[name])[i]
        ctx_txt = f"context {i}" if vals.size > 1 else "the context"
        return name, float(vals[i]), f"{ctx_txt}{', ' + where if where else ''}"
    return None


def check_preconditions(spec, ctx) -> None:
    """Raise ValueError naming the first violated precondition (docs/theory.md section 3.3),
    its measured margin and where; return None when every one holds for every context."""
    if not hasattr(ctx, "ys") or not hasattr(ctx, "x"):
        raise ValueError("check_preconditions needs the whole context (x, candidates and rewards): "
                         "the preconditions involve the candidates' logits, not only the rewards")
    hit = _first_violation(spec, analyse(spec, ctx))
    if hit is None:
        return
    name, slack, where = hit
    need = spec.leak_margin if name.endswith("margin") else 0.0
    margin = slack + need
    extra = {
        "reward range": f" (r_cap = {spec.r_cap:g})",
        "reward gap": f" (the elimination is built for gap = {spec.gap:g}" + (
            "; tied rewards)" if slack <= -spec.gap else ")"),
        "order": "; sort the context best-first, or use any_order=True",
        "sink margin": f" (M = {spec.M:g}: raise M, or shrink the candidates' norms / beta)",
        "dead margin": f" (M = {spec.M:g})",
        "empty-window margin": f" (M = {spec.M:g})",
        "elimination": f" (raise B = {spec.B:g}, or the context's smallest reward gap)",
        "query norm": f" (normal floats: [{TINY:.4g}, {HUGE:.4g}]; eta = {spec.eta:g})",
        "step tolerance": f" (rel_tol = {spec.rel_tol:g}: the output would not be the GD step to that accuracy)",
    }.get(name, "")
    unit = f" nats (>= {need:g} required)" if need else {"query norm": " decades"}.get(name, "")
    raise ValueError(f"precondition '{name}' violated: {PRECONDITIONS[name]}{extra}; measured margin "
                     f"{margin:.4g}{unit} at {where}")


def error_bound(spec, ctx):
    """The documented bound on ||constructed - exact|| (module docstring): a float for one
    context, an array for a batch (causal: one value per row 0..N). Refuses (ValueError)
    where a precondition fails, since no bound is claimed there."""
    check_preconditions(spec, ctx)
    b = analyse(spec, ctx).bound
    return float(b) if np.ndim(b) == 0 else b
