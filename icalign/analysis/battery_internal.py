"""The mechanism battery's tests of the model's internals (docs/theory.md section 7.1: causal
patching and the null model): is a probe's success the trained model's, and does the model *use* the
gradient a probe reads?

* :func:`probe_selectivity` (Hewitt and Liang 2019): every probe of
  :data:`icalign.analysis.probes.QUANTITIES` fitted per layer on the trained model and on a
  random-init model of the same architecture (the null model), both on the fitting half, both
  scored on the test half. Selectivity = R^2(trained) - R^2(null). A ridge probe on a wide
  random residual can read a lot of what the tokens carry, so a probe result counts only where
  the trained model's R^2 is surely above the null's.
* :func:`patch_gradient` (activation patching): a linear probe of the PL gradient at y0 is
  fitted on the fitting half at one layer; on the test half the residual at the read-out
  position of t is moved by the minimum-norm change whose decoded gradient changes by dG, and
  the model runs on from there (``model.resume``). A model that runs GD on what it decoded
  moves its answer by -eta dG; a patch along a random residual direction of the same norm is
  the control.

Both take the model's answer with no triplet as y0 (where the PL weights and gradients are
taken, as in :func:`icalign.analysis.probes.quantities`), choose and fit on contexts
[0, half), judge on [half, B), and keep per-context values so that seeds can be stacked.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.analysis import battery as BT
from icalign.analysis import claims as CL
from icalign.analysis import probes as P
from icalign.core.metrics import unit
from icalign.core.stats import summarise
from icalign.core.tasks import Context
from icalign.core.validate import check_choice, check_int, check_key, check_positive

__all__ = ["MIN_SEEN", "GRADIENTS", "PATCH_PREDICTIONS", "probe_selectivity", "patch_gradient"]

MIN_SEEN = 2  #: the battery reports t >= MIN_SEEN: before two triplets there is nothing to rank
GRADIENTS = ("PL gradient (cosine)", "PL gradient (sqdist)")  #: the probe quantities a patch can edit
PATCH_PREDICTIONS = {
    "GD": "the answer moves along -dG (cosine near 1 on the answer's tangent), and far more so than under a random "
          "residual patch of the same norm",
    "minimiser": "the minimiser reads no gradient: the answer does not move systematically along -dG (mean cosine "
                 "near 0, as under a random patch)",
    "neither": "no systematic alignment with -dG (mean cosine near 0, as under a random patch)",
}


def _check(params, config, ctx, y0, ts, half, l2) -> tuple[np.ndarray, int]:
    """Bad input fails here, naming the argument, before anything is traced."""
    check_positive("l2", l2)
    if not isinstance(config, M.ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    M.check_params(params, config)
    if not isinstance(ctx, Context) or ctx.xs is not None:
        raise ValueError("ctx must be a batch of shared-query contexts (tasks.sample_contexts(..., queries='shared'))")
    if ctx.x.ndim != 2 or (ctx.n, ctx.d) != (config.n, config.d):
        raise ValueError(f"ctx must be a batch of contexts with (N, D) = ({config.n}, {config.d}), got x "
                         f"{ctx.x.shape} and ys {ctx.ys.shape}")
    B = ctx.x.shape[0]
    if np.shape(y0) != (B, config.d) or not np.all(np.isfinite(np.asarray(y0))):
        raise ValueError(f"y0 must be finite, of shape (B, D) = ({B}, {config.d}) (the answer with no triplet), got "
                         f"shape {np.shape(y0)}")
    t = np.asarray(ts)
    if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "iu" or np.any(np.diff(t) <= 0) \
            or t[0] < MIN_SEEN or t[-1] > config.n - 1:
        raise ValueError(f"ts must be a non-empty increasing 1-D list of integers in {MIN_SEEN}..{config.n - 1} "
                         f"(t >= MIN_SEEN triplets seen), got {ts!r}")
    check_int("half", half, minimum=2)
    if half > B - 2:
        raise ValueError(f"half must be in 2..{B - 2} (two contexts at least on each side of the split), got {half}")
    return t, B


@partial(jax.jit, static_argnames="config")
def _residuals(params, ctx: Context, config: M.ModelConfig):
    """(out (B, S, D), residuals (L + 1, B, S, W)) at every token position S."""
    return M.apply(params, M.tokenize(ctx, config), config, capture=True)


def _per_context(a_LxM, B: int) -> np.ndarray:
    """(L, B * T) per example -> (L, B) summed over each context's t."""
    a = np.asarray(a_LxM, np.float64)
    return a.reshape(a.shape[0], B, -1).sum(-1)


def _in_sample_r2(key, h_fit, y_fit) -> np.ndarray:
    """(L,) R^2 of each layer's probe on the examples it was fitted to: the fitting half's
    choice of layer (the rule of :mod:`icalign.analysis.mechanism`'s probes)."""
    sse, _, sst = P.probe_layers(key, h_fit, y_fit, h_fit, y_fit)
    return 1.0 - np.asarray(sse, np.float64).sum(1) / np.asarray(sst, np.float64).sum(1)


def probe_selectivity(key, params, params_null, config: M.ModelConfig, ctx: Context, y0, ts, half: int,
                      l2: float = 1e-3, health: Optional[dict] = None) -> dict:
    """Selectivity of every probe quantity per layer: R^2(trained) - R^2(null) on the test half.

    ``params_null``: the null model, a random init of ``config`` (``model.init`` with another
    key). Both models' probes have the same targets and the same fitting mean, so the test
    half's SST is common and the selectivity is the mean over test contexts c of
    e_null(c) - e_trained(c), e(c) = C SSE(c) / SST (each context's share of 1 - R^2): the
    interval is the claim engine's Student-t interval over these paired per-context
    contributions (SST held fixed). The layer of the verdict is the one with the trained
    model's highest in-sample R^2 on the fitting half; the claim "the probe result counts"
    is supported only when the selectivity's interval there lies above 0. ``cells``: the
    per-context contributions at that layer, to stack seeds."""
    check_key("key", key)
    t, B = _check(params, config, ctx, y0, ts, half, l2)
    M.check_params(params_null, config)
    pos = jnp.asarray(M.readout_positions(config)[t])
    q = P.quantities(ctx, jnp.asarray(y0), jnp.asarray(t))  # (B, T, Q, D), the same targets for both models
    hs = {name: _residuals(p, ctx, config)[1][:, :, pos] for name, p in (("trained", params), ("null", params_null))}
    L1, W = config.n_layers + 1, config.d_model
    out = {}
    for i, name in enumerate(P.QUANTITIES):
        k = jax.random.fold_in(key, i)
        y_fit, y_eval = q[:half, :, i].reshape(-1, config.d), q[half:, :, i].reshape(-1, config.d)
        sse, r2, share = {}, {}, {}
        for model, h in hs.items():
            h_fit, h_eval = h[:, :half].reshape(L1, -1, W), h[:, half:].reshape(L1, -1, W)
            e, _, s = P.probe_layers(k, h_fit, y_fit, h_eval, y_eval, l2)
            sse[model], sst = _per_context(e, B - half), _per_context(s, B - half)
        if not np.all(sst.sum(1) > 0):  # e.g. y* where the contexts do not define it: R^2 means nothing
            out[name] = {"claim": CL.unresolvable(f"{name}: the trained model's probe beats the null model's",
                                                  "null model (random init)", "trained model", "not resolved",
                                                  "the target does not vary on the test half (R^2 undefined)"),
                         "counts": False}
            continue
        for model in hs:
            r2[model] = P.r2_interval(sse[model][..., None], sst[..., None], i)
            share[model] = (B - half) * sse[model] / sst.sum(1, keepdims=True)  # (L, C): mean = 1 - R^2
        r2_fit = _in_sample_r2(k, hs["trained"][:, :half].reshape(L1, -1, W), y_fit)
        eff = [CL.effect(CL.cells("null", share["null"][l]), CL.cells("trained", share["trained"][l]), power=False)
               for l in range(L1)]
        layer = int(np.argmax(r2_fit))
        claim = CL.claim(f"{name}: the trained model's probe at layer {layer} beats the null model's (R^2 above)",
                         CL.cells("null model (random init)", share["null"][layer]),
                         CL.cells("trained model", share["trained"][layer], health=health),
                         metric="share of 1 - R^2 per context")
        out[name] = {"layer": {"chosen_on": "fit", "layer": layer, "rule": "highest in-sample R^2 of the trained "
                               "model's probe", "r2_fit": r2_fit.tolist()},
                     "r2": r2["trained"], "r2_null": r2["null"],
                     "selectivity": {k_: [float(e[k_]) for e in eff] for k_ in ("effect", "low", "high")},
                     "claim": claim, "counts": claim["verdict"] == "supported",
                     "cells": {m: share[m][layer].tolist() for m in share}}
    return {"test": "probe selectivity", "null": "random init of the same architecture", "t": t.tolist(),
            "halves": {"fit": [0, half], "test": [half, B]},
            "interval": "Student-t over test contexts of the paired per-context contributions C SSE(c) / SST "
                        "(null - trained; SST common to both models and held fixed)",
            "quantities": out}


# ---------------------------------------------------------------------------------- patching
def _decoder(probe: P.Ridge):
    """(A (W, D), A^+ (D, W)): the probe's decoded change is dh @ A, and dq @ A^+ is the
    minimum-norm residual change dh with dh @ A = dq. Features the fitting half never varied
    are left out of A: the probe has no evidence about them, and their floored sd would make
    them the cheapest (and meaningless) place to patch."""
    varied = probe.sd > 1e-4 * jnp.max(probe.sd)
    A = jnp.where(varied[:, None], probe.w / probe.sd[:, None], 0.0)
    return A, jnp.linalg.pinv(A)


def _tangent(v, u):
    """v projected on the tangent of the unit answer u (the cosine reward sees directions)."""
    return v - jnp.sum(v * u, -1, keepdims=True) * u


def _patch(key, params, h_SxW, out_SxD, pos, A_pinv, size, config: M.ModelConfig, layer: int, draws: int):
    """One context: for each read-out position p_t and draw, the answer's change under the
    gradient patch (decoded gradient + dG, |dG| = size) and under a random residual patch of
    the same norm, as (cos to -dG, gain along -dG) each, on the answer's tangent: (2, 2, T, R)."""
    T, (S, W), D = pos.shape[0], h_SxW.shape, out_SxD.shape[-1]
    kg, kr = jax.random.split(key)
    dG = size * unit(jax.random.normal(kg, (T, draws, D), h_SxW.dtype))
    dh = -dG @ A_pinv  # the probe reads the descent direction -grad: the gradient moves by dG
    dh_rand = jnp.linalg.norm(dh, axis=-1, keepdims=True) * unit(jax.random.normal(kr, (T, draws, W), h_SxW.dtype))
    u = unit(out_SxD[pos])[:, None]  # (T, 1, D)
    want = _tangent(-dG, u)

    def moved(delta_TxRxW):
        edit = jnp.zeros((T, draws, S, W), h_SxW.dtype).at[jnp.arange(T), :, pos].set(delta_TxRxW)
        new = M.resume(params, h_SxW[None, None] + edit, config, layer)  # (T, R, S, D)
        change = _tangent(new[jnp.arange(T), :, pos] - out_SxD[pos][:, None], u)
        cos = jnp.sum(change * want, -1) / (jnp.linalg.norm(change, axis=-1) * jnp.linalg.norm(want, axis=-1) + 1e-30)
        return jnp.stack([cos, jnp.sum(change * want, -1) / jnp.sum(want * want, -1)])

    return jnp.stack([moved(dh), moved(dh_rand)])


@partial(jax.jit, static_argnames=("config", "layer", "draws"))
def _patch_all(keys, params, h_CxSxW, out_CxSxD, pos, A_pinv, size, config: M.ModelConfig, layer: int, draws: int):
    """:func:`_patch` for every test context, one at a time: (C, 2, 2, T, R)."""
    one = lambda a: _patch(a[0], params, a[1], a[2], pos, A_pinv, size, config, layer, draws)
    return jax.lax.map(one, (keys, h_CxSxW, out_CxSxD))


def patch_gradient(key, params, config: M.ModelConfig, ctx: Context, y0, ts, half: int, layer: Optional[int],
                   scale: float = 0.25, quantity: str = "PL gradient (cosine)", draws: int = 8, l2: float = 1e-3,
                   health: Optional[dict] = None) -> dict:
    """Causal patching of the decoded PL gradient (module docstring), as a battery record.

    ``layer``: the residual row patched (0: after the read-in .. n_layers: after the last
    block), or None to choose on the fitting half the row 1..n_layers whose probe has the
    highest in-sample R^2. ``quantity``: which of :data:`GRADIENTS` the probe decodes.
    |dG| = ``scale`` x the median norm of that gradient over the fitting half (fixed before
    any patch); ``draws`` random directions dG per test context and t. Per context and t, the
    cosine between the answer's change and -dG, both on the tangent of the unit answer, for
    the gradient patch and for a random residual patch of the same norm; "gain" is the
    change's length along -dG over |dG| (GD: eta). ``d_gd`` = 1 - mean cosine, ``d_min`` =
    |mean cosine| per test context (means over draws and t); the margin is half the
    hypotheses' separation (GD predicts cosine 1, the minimiser 0). ``claim``: the gradient
    patch moves the answer along -dG more than the random patch (paired by context).

    The claim is weak evidence on its own: a random-init model's probe and read-out are both
    linear maps of the same residual, so its answer can follow the decoded direction by chance,
    with a sign fixed by the model (a 2-layer, width-32 random init at D = 3 gave mean cosines
    of -0.22 and +0.10 for the two gradients, 64 test contexts). The verdict's margin
    (cosine within 0.5 of 1) is what separates GD; run the null model too (``params`` of a
    random init) to see how far chance goes."""
    check_key("key", key)
    t, B = _check(params, config, ctx, y0, ts, half, l2)
    check_choice("quantity", quantity, GRADIENTS)
    if layer is not None:
        check_int("layer", layer, minimum=0)
        if layer > config.n_layers:
            raise ValueError(f"layer must be in 0..{config.n_layers} (n_layers) or None, got {layer}")
    check_positive("scale", scale)  # |dG| over the typical gradient norm
    check_int("draws", draws, minimum=2)
    pos = jnp.asarray(M.readout_positions(config)[t])
    q = P.quantities(ctx, jnp.asarray(y0), jnp.asarray(t))[:, :, P.QUANTITIES.index(quantity)]  # (B, T, D)
    out, h = _residuals(params, ctx, config)
    W, y_fit = config.d_model, q[:half].reshape(-1, config.d)
    h_fit = h[:, :half][:, :, pos].reshape(config.n_layers + 1, -1, W)
    r2_fit = _in_sample_r2(key, h_fit, y_fit)
    chosen = layer is None
    layer = int(1 + np.argmax(r2_fit[1:])) if chosen else int(layer)
    probe = P.fit_ridge(h_fit[layer], y_fit, l2)
    A, A_pinv = _decoder(probe)
    norm = float(jnp.median(jnp.linalg.norm(q[:half], axis=-1)))
    size = jnp.asarray(scale * norm, h.dtype)
    keys = jax.random.split(jax.random.fold_in(key, 1), B - half)
    res = np.asarray(_patch_all(keys, params, h[layer, half:], out[half:], pos, A_pinv, size, config, layer, draws),
                     np.float64)  # (C, 2 patches, 2 measures, T, R)
    cos_g, cos_r = res[:, 0, 0].mean(-1), res[:, 1, 0].mean(-1)  # (C, T), means over draws
    d_gd, d_min = 1.0 - cos_g.mean(1), np.abs(cos_g.mean(1))
    margin = BT.half_separation(np.ones(half), np.zeros(half), lambda a, b: np.abs(a - b))
    decoded = A_pinv @ A  # (D, D): the identity when every patch's decoded change is exactly its dq
    claim = CL.claim("the gradient patch moves the answer along -dG more than a random patch of the same norm",
                     CL.cells("random residual patch", 1.0 - cos_r.mean(1)),
                     CL.cells("gradient patch", 1.0 - cos_g.mean(1), health=health), metric="1 - cos(change, -dG)")
    return {"test": "gradient patching", "predictions": dict(PATCH_PREDICTIONS), "t": t.tolist(),
            "per_t": {"cos_gradient_patch": summarise(cos_g, "contexts"), "cos_random_patch": summarise(cos_r, "contexts"),
                      "gain_gradient_patch": summarise(res[:, 0, 1].mean(-1), "contexts"),
                      "gain_random_patch": summarise(res[:, 1, 1].mean(-1), "contexts")},
            "fit": {"chosen_on": "fit", "layer": layer, "layer_rule": "highest in-sample probe R^2 over rows "
                    "1..n_layers" if chosen else "given", "probe_r2_fit": r2_fit.tolist(), "quantity": quantity,
                    "median_gradient_norm": norm, "scale": float(scale), "patch_size": float(size),
                    "decode_error": float(jnp.max(jnp.abs(decoded - jnp.eye(config.d, dtype=decoded.dtype)))),
                    "draws": draws},
            "d_gd": d_gd.tolist(), "d_min": d_min.tolist(), "margin": float(margin),
            "margin_rule": "half the hypotheses' separation: GD predicts mean cosine 1, the minimiser 0",
            "separates": "GD from not-GD only: the minimiser and neither predict the same (no alignment), so a "
                         "verdict 'minimiser' here means 'minimiser or neither'",
            "claim": claim}
