"""Mechanism, not only outcome: does a trained transformer run GD on the ranking loss?
(docs/theory.md section 7.) Two studies, each on one trained model and one batch of contexts
split in halves (``halves`` in the result): everything that is fitted or chosen (GD's step size
and count, read-outs, probes, the closest reference, the best layer, each probe's layer) is
fitted or chosen on the first half (fitting) and scored on the second (test), with 95%
Student-t intervals over the test contexts (one trained model: the intervals cover context
sampling, not training). ``cells`` keeps the per-context test values every claim pairs
(:mod:`icalign.analysis.mechanism_claims`); ``selection`` records what the fitting half chose.

* :func:`shared_study` (the published task): the distance of the transformer's answer to each
  reference learner per t (:mod:`icalign.analysis.references`), the per-layer read-out matched
  to GD's trajectory (Fu et al. 2023), probes of the construction's quantities
  (:mod:`icalign.analysis.probes`), and the interventions (:mod:`icalign.analysis.interventions`).
* :func:`triplet_study` (per-triplet queries): the same distances, and the implicit weights
  W_imp (Akyurek et al. 2022) compared with GD's W (:func:`implicit_weights`).

Distances are 1 - cos between two answers (the metric's own geometry: the cosine reward sees
directions only), 0 for the same direction, 1 for orthogonal ones.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.analysis import interventions as I
from icalign.analysis import probes as P
from icalign.analysis import references as R
from icalign.core.metrics import normalised_mse, unit
from icalign.core.stats import mean_ci, summarise
from icalign.core.tasks import Context
from icalign.core.validate import check_int

__all__ = ["REFERENCES", "halves", "choose_closest", "choose_layer", "implicit_weights", "query_posterior",
           "shared_study", "triplet_study"]

REFERENCES = ("minimiser", "gd_cosine", "gd_sqdist", "exact")


@partial(jax.jit, static_argnames="config")
def _forward(params, ctx: Context, config: M.ModelConfig):
    out, h = M.apply(params, M.tokenize(ctx, config), config, capture=True)
    pos = jnp.asarray(M.readout_positions(config))
    return out[..., pos, :], h[..., pos, :]  # (B, N, D), (L + 1, B, N, W)


def _check(config, ctx: Context, etas, k_max, minimiser_steps, per_triplet: bool):
    """Bad input fails here, naming the argument, before anything is traced."""
    if not isinstance(config, M.ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    if (ctx.xs is not None) != per_triplet:
        raise ValueError("shared_study needs shared-query contexts (ctx.xs is None); triplet_study needs per-triplet "
                         "ones (tasks.sample_contexts(..., queries='per_triplet'))")
    if ctx.x.ndim != 2 or ctx.x.shape[0] < 4 or (ctx.n, ctx.d) != (config.n, config.d):
        raise ValueError(f"ctx must be a batch of >= 4 contexts with (N, D) = ({config.n}, {config.d}), got x "
                         f"{ctx.x.shape} and ys {ctx.ys.shape}")
    e = np.asarray(etas, float)
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e) & (e > 0)):
        raise ValueError(f"etas must be a non-empty 1-D list of finite step sizes > 0, got {etas!r}")
    check_int("k_max", k_max, minimum=1)
    check_int("minimiser_steps", minimiser_steps, minimum=1)


def _ci(values_B, keep: bool = False) -> dict:
    """Mean and 95% interval over contexts, with the number of contexts and (``keep``) the
    per-context values themselves, which claims pair."""
    v = np.asarray(values_B, np.float64)
    m, lo, hi = mean_ci(v)
    return {"mean": float(m), "low": float(lo), "high": float(hi), "n": int(v.shape[0]), "unit": "contexts",
            **({"values": v.tolist()} if keep else {})}


def halves(B: int) -> dict:
    """The split of B contexts: [0, B // 2) fits and chooses, [B // 2, B) is where it is judged."""
    return {"contexts": B, "fit": [0, B // 2], "test": [B // 2, B], "rule": "fit and choose: fit; judge: test"}


def choose_closest(dist_B: dict, half: int) -> dict:
    """References ordered by the transformer's mean distance to them over the fitting half
    (contexts [0, half)) only; the test half cannot change the order."""
    fit = {r: float(np.mean(np.asarray(v, np.float64)[:half])) for r, v in dist_B.items()}
    return {"chosen_on": "fit", "order": sorted(fit, key=fit.get), "fit_mean": fit}


def choose_layer(err_LxB, layer_names, half: int) -> dict:
    """The inner layer with the lowest mean error over the fitting half. Rows are layers 0..L
    and the output: layer 0 reads only the tokens and layer L's read-out is the output."""
    fit = {str(n): float(np.mean(np.asarray(e, np.float64)[:half])) for n, e in zip(layer_names, err_LxB)}
    inner = [str(n) for n in layer_names[1:-2]]
    return {"chosen_on": "fit", "layer": min(inner, key=fit.get) if inner else None, "fit_mean": fit, "candidates": inner}


def _at_fit(grid, e_T, k_T):
    """(B, T, D) grid predictions at each t's fitted (step size, step count)."""
    t = jnp.arange(e_T.shape[0])
    return jnp.moveaxis(grid[e_T, k_T, :, t], 0, 1)


def _references(ctx: Context, y_tf, W0, ts, etas, k_max, half, minimiser_steps):
    """Every reference's answers (B, T, D), the fitted GD settings and the grids."""
    out, fitted, grids = {}, {}, {}
    for reward in ("cosine", "sqdist"):
        grids[reward] = R.gd_grid(W0, ctx, ts, etas, k_max, reward)
        e_T, k_T, _ = R.select(y_tf[:half], grids[reward][:, :, :half])
        out[f"gd_{reward}"] = _at_fit(grids[reward], e_T, k_T)
        fitted[reward] = {"eta": np.asarray(etas)[np.asarray(e_T)].tolist(), "steps": np.asarray(k_T).tolist(),
                          "chosen_on": "fit", "e": e_T, "k": k_T}
    out["minimiser"], grad_left = R.minimiser(ctx, ts, minimiser_steps)
    out["exact"] = R.recover(ctx, ts)
    return out, fitted, grids, grad_left


_fitted_record = lambda fitted: {r: {k: f[k] for k in ("eta", "steps", "chosen_on")} for r, f in fitted.items()}


def _distances(ctx, y_tf, refs, half, ts) -> dict:
    """Per t, every learner's error and the transformer's distance to each reference (test
    half); the per-context test values at the t the claims use (t = 2 and the last), and the
    references ordered by closeness on the fitting half at those t."""
    err = {n: np.asarray(normalised_mse(y, ctx.y_star[:, None])) for n, y in {"transformer": y_tf, **refs}.items()}
    dist = {n: np.asarray(normalised_mse(y_tf, y)) for n, y in refs.items()}
    ts = np.asarray(ts).tolist()
    claim_t = sorted({2, ts[-1]} & set(ts))
    at = lambda a, t: a[half:, ts.index(t)].tolist()
    return {"nmse": {k: summarise(v[half:], "contexts") for k, v in err.items()},
            "distance": {k: summarise(v[half:], "contexts") for k, v in dist.items()},
            "cells": {"half": "test", "t": claim_t, "distance": {k: [at(v, t) for t in claim_t] for k, v in dist.items()},
                      "nmse": {k: [at(v, t) for t in claim_t] for k, v in err.items()}},
            "selection": {"closest": {str(t): choose_closest({k: v[:, ts.index(t)] for k, v in dist.items()}, half)
                                      for t in claim_t}}}


def _match(y_layer, grid, keep, half, etas):
    """Each row of y_layer (R, B, T, D) against GD's grid (E, K+1, B, T, D), pooled over the
    kept t: the (step size, step count) closest on the fitting half, its held-out distance
    per context, and the best distance at every step count ((R, K+1), fitting half)."""
    g = grid[:, :, :, keep]
    per = jax.lax.map(lambda yl: jnp.mean(normalised_mse(g, yl[None, None, :, keep]), axis=-1), y_layer)  # (R,E,K+1,B)
    fit_mean = jnp.nan_to_num(jnp.mean(per[..., :half], -1), nan=jnp.inf)  # a diverged step size never fits
    R_, E, K1 = fit_mean.shape
    best = np.asarray(jnp.argmin(fit_mean.reshape(R_, -1), -1))
    picks = [(int(b) // K1, int(b) % K1) for b in best]
    return ([{"eta": float(etas[e]), "steps": k, "chosen_on": "fit", "distance_to_gd": _ci(per[r, e, k, half:])}
             for r, (e, k) in enumerate(picks)], np.asarray(jnp.min(fit_mean, axis=1)))


def _layers(params, config, h, y_tf, ctx, ts, grid, etas, half, refs, t_from: int = 2):
    """Two read-outs of every layer, pooled over t >= t_from: the model's own read-out
    (``model.readout``, nothing fitted) and a ridge read-out fitted on the first half to the
    answer's direction. Each is matched to GD's trajectory (:func:`_match`) and compared, on the
    held-out half, with the minimiser, exact recovery and y*. The last row is the output. The
    inner layer compared with the output is chosen on the fitting half's errors (:func:`choose_layer`)."""
    keep = np.asarray(ts) >= t_from
    L1, B, T, W = h.shape
    target = jnp.broadcast_to(unit(ctx.y_star)[:, None], (B, T, ctx.d))
    fit = lambda hl: P.fit_ridge(hl[:half, keep].reshape(-1, W), target[:half, keep].reshape(-1, ctx.d))
    reads = {"own": jnp.concatenate([M.readout(params, h, config), y_tf[None]]),
             "fitted": jnp.concatenate([jax.vmap(P.predict_ridge)(jax.vmap(fit)(h), h), y_tf[None]])}
    held = lambda a: a[half:][:, keep]  # held-out contexts, t >= t_from
    close = lambda a, b: _ci(jnp.mean(normalised_mse(held(a), b), -1))
    rows, profiles, errors = [{"layer": l if l < L1 else "output"} for l in range(L1 + 1)], {}, {}  # errors: (L+2, B)
    for kind, y_layer in reads.items():
        matched, profiles[kind] = _match(y_layer, grid, keep, half, etas)
        errors[kind] = np.asarray(jnp.mean(normalised_mse(y_layer[:, :, keep], ctx.y_star[None, :, None]), -1))
        for l, row in enumerate(rows):
            row[kind] = {**matched[l], "nmse": _ci(errors[kind][l, half:], keep=kind == "own"),
                         **{f"distance_to_{r}": close(y_layer[l], held(refs[r])) for r in ("minimiser", "exact")}}
    choice = choose_layer(errors["own"], [r["layer"] for r in rows], half)
    return rows, {k: v.tolist() for k, v in profiles.items()}, {**choice, "read_out": "own", "t_from": t_from}


def _probes(key, h, ctx, y0, ts, half, t_from: int = 2) -> dict:
    keep = np.asarray(ts) >= t_from
    q = P.quantities(ctx, y0, ts)[:, keep]  # (B, T', Q, D)
    hk = h[:, :, keep]
    L1, _, Tk, W = hk.shape
    out = {}
    for i, name in enumerate(P.QUANTITIES):
        k = jax.random.fold_in(key, i)
        fit = (hk[:, :half].reshape(L1, -1, W), q[:half, :, i].reshape(-1, ctx.d))
        sse, sse_ctrl, sst = P.probe_layers(k, *fit, hk[:, half:].reshape(L1, -1, W), q[half:, :, i].reshape(-1, ctx.d))
        sse_in, _, sst_in = P.probe_layers(k, *fit, *fit)  # in-sample on the fitting half: it chooses the layer
        r2_fit = 1.0 - np.asarray(sse_in, np.float64).sum(1) / np.asarray(sst_in, np.float64).sum(1)
        per_ctx = lambda a: np.asarray(a).reshape(L1, -1, Tk)
        out[name] = {"r2": P.r2_interval(per_ctx(sse), per_ctx(sst), i),
                     "r2_shuffled": P.r2_interval(per_ctx(sse_ctrl), per_ctx(sst), i),
                     "layer": {"chosen_on": "fit", "layer": int(np.argmax(r2_fit)), "r2_fit": r2_fit.tolist()}}
    return out


@partial(jax.jit, static_argnames=("k_max", "reward"))
def _gd_items(W0, c, t, eta, k, k_max: int, reward: str):
    """(W_k, W_k x) per item, each with its own t, step size and step count."""
    return jax.vmap(lambda *a: R.gd_point(*a, k_max, reward))(W0, c, t, eta, k)


@partial(jax.jit, static_argnames="steps")
def _minimiser_items(c, t, steps: int):
    one = lambda c1, t1: R.minimiser(jax.tree_util.tree_map(lambda a: a[None], c1), t1[None], steps)[0][0, 0]
    return jax.vmap(one)(c, t)


@jax.jit
def _exact_items(c, t):
    return jax.lax.map(lambda a: R.recover_one(*a), (c, t), batch_size=64)


def _learners_at(params, config, c_flat, t_flat, W0_flat, fitted, t_index, etas, k_max, minimiser_steps):
    """Every learner's answer on flattened (context, t') items; GD at the (step size, count)
    fitted for the original t (``t_index``), from the original W0."""
    rows = jnp.arange(t_flat.shape[0])
    out = {"transformer": _forward(params, c_flat, config)[0][rows, t_flat]}
    for reward in ("cosine", "sqdist"):
        eta, k = etas[fitted[reward]["e"][t_index]], fitted[reward]["k"][t_index]
        out[f"gd_{reward}"] = _gd_items(W0_flat, c_flat, t_flat, eta, k, k_max, reward)[1]
    out["minimiser"] = _minimiser_items(c_flat, t_flat, minimiser_steps)
    out["exact"] = _exact_items(c_flat, t_flat)
    return out


def _interventions(key, params, config, ctx, W0, ts, fitted, etas, k_max, minimiser_steps) -> dict:
    base_flat, t_flat = I.flatten(ctx, jnp.asarray(ts))
    W0_flat = jnp.repeat(W0, len(ts), axis=0)
    t_index = jnp.tile(jnp.arange(len(ts)), ctx.x.shape[0])
    args = (W0_flat, fitted, t_index, etas, k_max, minimiser_steps)
    base = _learners_at(params, config, base_flat, t_flat, *args)
    B, T = ctx.x.shape[0], len(ts)
    out = {}
    for i, kind in enumerate(I.INTERVENTIONS):
        changed, t_new, valid = I.intervene(kind, jax.random.fold_in(key, i), ctx, ts)
        after = _learners_at(params, config, changed, jnp.where(valid, t_new, t_flat), *args)
        ok = np.asarray(valid).reshape(B, T)
        cols = np.flatnonzero(ok.all(0))  # the t at which every context is valid
        out[kind] = {"t": np.asarray(ts)[cols].tolist()}
        for name in base:
            d = np.asarray(normalised_mse(base[name], after[name])).reshape(B, T)[:, cols]
            out[kind][name] = {**_ci(d.mean(1), keep=True), "per_t": summarise(d, "contexts")}
    return out


def shared_study(params, config: M.ModelConfig, ctx: Context, key, etas, k_max: int = 32,
                 minimiser_steps: int = 300, intervention_contexts: int = 64) -> dict:
    """The published task (shared queries): references, layers, probes and interventions."""
    _check(config, ctx, etas, k_max, minimiser_steps, per_triplet=False)
    B, half = ctx.x.shape[0], ctx.x.shape[0] // 2
    if check_int("intervention_contexts", intervention_contexts, minimum=2) > B - half:
        raise ValueError(f"intervention_contexts must be <= {B - half} (the held-out half), got {intervention_contexts}")
    ts = jnp.arange(1, config.n)
    etas = jnp.asarray(etas, ctx.ys.dtype)
    y_all, h_all = _forward(params, ctx, config)
    y_tf, h = y_all[:, 1:], h_all[:, :, 1:]
    W0 = R.init_weights(ctx, y_all[:, 0])  # GD starts where the transformer answers with no triplet
    refs, fitted, grids, grad_left = _references(ctx, y_tf, W0, ts, etas, k_max, half, minimiser_steps)
    res = {"t": np.asarray(ts).tolist(), "etas": np.asarray(etas).tolist(), "k_max": k_max, "halves": halves(B),
           "fitted_gd": _fitted_record(fitted), "minimiser_gradient_left": {
               "max": float(jnp.max(grad_left[:, 1:])), "median": float(jnp.median(grad_left))},
           **_distances(ctx, y_tf, refs, half, ts)}
    res["layers"], res["layer_profile"], res["selection"]["layer"] = _layers(params, config, h, y_tf, ctx, ts,
                                                                             grids["cosine"], etas, half, refs)
    res["probes"] = _probes(jax.random.fold_in(key, 0), h, ctx, y_all[:, 0], ts, half)
    res["halves"]["interventions"] = [half, half + intervention_contexts]  # the first test-half contexts
    ev = jax.tree_util.tree_map(lambda a: a[half:half + intervention_contexts], ctx)
    res["interventions"] = _interventions(jax.random.fold_in(key, 1), params, config, ev,
                                          W0[half:half + intervention_contexts], ts, fitted, etas, k_max,
                                          minimiser_steps)
    return res


def implicit_weights(queries_QxBxTxD, answers_QxBxTxD):
    """Akyurek et al.'s implicit linear weights: for every context and t, the least-squares
    affine fit answer ~ W query + b over the Q queries asked with the rest of the context
    fixed. W is how the answer moves with the query; b absorbs what the model infers from the
    triplets alone (with correlated queries the test query is partly predictable from them).
    Returns (W (B, T, D, D), b (B, T, D), R^2 (B, T) of the fit)."""
    X = jnp.moveaxis(queries_QxBxTxD, 0, 2)  # (B, T, Q, D)
    Y = jnp.moveaxis(answers_QxBxTxD, 0, 2)
    X1 = jnp.concatenate([X, jnp.ones(X.shape[:-1] + (1,), X.dtype)], -1)
    coef = jnp.einsum("btdq,btqe->btde", jnp.linalg.pinv(X1), Y)  # (B, T, D + 1, D)
    W, b = jnp.swapaxes(coef[..., :-1, :], -1, -2), coef[..., -1, :]
    sse = jnp.sum((Y - jnp.einsum("btdq,btqe->btde", X1, coef)) ** 2, axis=(2, 3))
    sst = jnp.sum((Y - jnp.mean(Y, 2, keepdims=True)) ** 2, axis=(2, 3))
    return W, b, 1.0 - sse / sst


def query_posterior(ctx: Context, rho: float):
    """Mean (B, N, D) and standard deviation (N,) of the test query x given the first t
    triplet queries, t = 0..N-1, when x_j = rho x + sqrt(1 - rho^2) xi (tasks.mixed_linear):
    the distribution W_imp's queries are drawn from, so that they are in distribution at t."""
    t = jnp.arange(ctx.ys.shape[-2])
    prec = 1.0 + t * rho**2 / (1.0 - rho**2)
    seen = jnp.cumsum(ctx.xs, axis=-2) - ctx.xs  # sum of x_j for j < t
    return rho / (1.0 - rho**2) * seen / prec.reshape((1,) * (seen.ndim - 2) + (-1, 1)), 1.0 / jnp.sqrt(prec)


@partial(jax.jit, static_argnames="config")
def _answers_at(params, ctx: Context, queries_QxBxNxD, config: M.ModelConfig):
    """answers[q, b, t] = the model's answer after t triplets when the test query is
    queries[q, b, t] (one forward pass per query and t)."""
    n = ctx.ys.shape[-2]

    def one(q_BxNxD):
        rows = jax.vmap(lambda t: _forward(params, ctx.replace(x=q_BxNxD[:, t]), config)[0][:, t])(jnp.arange(n))
        return jnp.moveaxis(rows, 0, 1)  # (B, N, D)

    return jax.lax.map(one, queries_QxBxNxD)


def _vec_cos(a, b):
    """Cosine between matrices flattened (..., D, D) -> (...); the scale of W is free under the
    cosine reward, so weights are compared by direction."""
    a, b = a.reshape(*a.shape[:-2], -1), b.reshape(*b.shape[:-2], -1)
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-30)


def triplet_study(params, config: M.ModelConfig, ctx: Context, key, etas, rho: float, k_max: int = 32,
                  minimiser_steps: int = 300, n_queries: int = 20) -> dict:
    """Per-triplet queries (correlation ``rho`` with the test query): references (GD from the
    transformer's own implicit W at t = 0) and W_imp against GD's W and the least-squares W*
    (exact recovery), per t."""
    _check(config, ctx, etas, k_max, minimiser_steps, per_triplet=True)
    check_int("n_queries", n_queries, minimum=ctx.d + 1)  # an affine fit in D dimensions
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be the contexts' query correlation in [0, 1), got {rho!r}")
    B, half = ctx.x.shape[0], ctx.x.shape[0] // 2
    ts = jnp.arange(1, config.n)
    etas = jnp.asarray(etas, ctx.ys.dtype)
    y_all = _forward(params, ctx, config)[0]
    y_tf = y_all[:, 1:]
    mean, std = query_posterior(ctx, rho)
    queries = mean[None] + std[None, None, :, None] * jax.random.normal(key, (n_queries,) + mean.shape, mean.dtype)
    W_imp, b_imp, fit_r2 = implicit_weights(queries, _answers_at(params, ctx, queries, config))  # t = 0..N-1
    W0 = W_imp[:, 0]
    refs, fitted, _, grad_left = _references(ctx, y_tf, W0, ts, etas, k_max, half, minimiser_steps)
    flat, t_flat = I.flatten(ctx, ts)
    t_index = jnp.tile(jnp.arange(len(ts)), B)
    f = fitted["cosine"]
    W_gd = _gd_items(jnp.repeat(W0, len(ts), 0), flat, t_flat, etas[f["e"][t_index]], f["k"][t_index], k_max,
                     "cosine")[0].reshape(B, len(ts), ctx.d, ctx.d)
    W_ls = R.recover_weights(ctx, ts)
    W_t, ev = W_imp[:, 1:], slice(half, None)
    weights = {
        "cos_imp_gd": _vec_cos(W_t, W_gd),
        "cos_update_imp_gd": _vec_cos(W_t - W0[:, None], W_gd - W0[:, None]),
        "cos_imp_ls": _vec_cos(W_t, W_ls),
        "cos_gd_ls": _vec_cos(W_gd, W_ls),
        "imp_fit_r2": fit_r2[:, 1:],
        # how much of the answer at x moves with the query: |W x| / (|W x| + |b|)
        "imp_query_share": jnp.linalg.norm(jnp.einsum("btde,be->btd", W_t, ctx.x), axis=-1) / (
            jnp.linalg.norm(jnp.einsum("btde,be->btd", W_t, ctx.x), axis=-1) + jnp.linalg.norm(b_imp[:, 1:], axis=-1)),
    }
    return {"t": np.asarray(ts).tolist(), "etas": np.asarray(etas).tolist(), "k_max": k_max, "n_queries": n_queries,
            "halves": halves(B), "fitted_gd": _fitted_record(fitted),
            "minimiser_gradient_left": {"max": float(jnp.max(grad_left[:, 1:])), "median": float(jnp.median(grad_left))},
            **_distances(ctx, y_tf, refs, half, ts),
            "weights": {k: summarise(v[ev], "contexts") for k, v in weights.items()},
            "imp_fit_r2_t0": _ci(fit_r2[ev, 0])}
