"""Per-round metrics of the self-correction loop, and their summaries over contexts
(means with 95% intervals, correlations of the gain with the critic's accuracy).

Per round: normalised MSE 1 - cos(y_hat_t, y*); gain over round 0; the change
1 - cos(y_hat_t, y_hat_{t-1}) and the round from which it stays below a tolerance; the
entropy of the learner's PL choice distribution over the candidates; the spread of y_hat_t
across critic-noise draws; the critic's pairwise ranking accuracy.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.metrics import normalised_mse, unit
from icalign.core.stats import mean_ci
from icalign.core.validate import check_positive
from icalign.selfcorrect.critics import pairwise_accuracy
from icalign.selfcorrect.loop import Trajectory, sweep

__all__ = ["direction_spread", "convergence_round", "round_metrics", "choice_entropies", "summarise_setting",
           "critic_sweep", "combine_seeds", "metric_notes"]


def direction_spread(y_hat: jax.Array, axis: int) -> jax.Array:
    """Spread of answers across ``axis`` (critic-noise draws): 1 - |mean of unit vectors|, the
    circular variance of their directions (0: all draws agree, 1: no agreement)."""
    u = unit(y_hat)
    return 1.0 - jnp.linalg.norm(jnp.mean(u, axis=axis), axis=-1)


def convergence_round(change: np.ndarray, tol: float) -> np.ndarray:
    """First round t >= 1 from which ``change`` stays below ``tol`` up to the last round.

    ``change`` (..., T): entry k is the change between rounds k and k + 1. Returns an int
    array (...); T + 1 means "not converged within T rounds"."""
    check_positive("tol", tol)
    change = np.asarray(change)
    T = change.shape[-1]
    below = change < tol
    tail = np.flip(np.cumprod(np.flip(below, -1), -1), -1).astype(bool)  # below from k to the end
    first = np.argmax(tail, axis=-1)
    return np.where(tail.any(-1), first + 1, T + 1)


def round_metrics(traj: Trajectory, y_star, tol: float = 1e-3, ys0=None, betas=()) -> dict[str, np.ndarray]:
    """Per-round metrics of a ``sweep`` result (leading axes (S, B, M), rounds last).

    nmse (S, B, M, T+1); gain = nmse_0 - nmse_t; change (S, B, M, T) = 1 - cos(y_hat_t,
    y_hat_{t-1}); conv_round (S, B, M); spread (S, B, T+1) across draws; entropy,
    entropy_all (S, B, M, T+1); loop_accuracy (S, B, M): the critic's pairwise accuracy over
    pairs with at least one answer in the final context; with the initial candidates ``ys0``
    (B, N0, D), ``entropy_b<beta>`` for each beta of ``betas``: the choice entropy over them
    at that inverse temperature (:func:`choice_entropies`)."""
    y_hat = traj.y_hat
    nmse = normalised_mse(y_hat, y_star[None, :, None, None, :])
    gain = nmse[..., :1] - nmse
    change = normalised_mse(y_hat[..., 1:, :], y_hat[..., :-1, :])
    n_slots = traj.final.rewards.shape[-1]
    rounds = y_hat.shape[-2] - 1
    answers = jnp.arange(n_slots) >= n_slots - (rounds + 1)
    loop_acc = pairwise_accuracy(traj.final.rewards, traj.final_r_true,
                                 jnp.broadcast_to(answers, traj.final.rewards.shape))
    out = {
        "nmse": nmse,
        "gain": gain,
        "change": change,
        "spread": direction_spread(y_hat, axis=2),
        "entropy": traj.entropy,
        "entropy_all": traj.entropy_all,
        "loop_accuracy": loop_acc,
        "r_true": traj.r_true,
    }
    for beta in betas:
        out[f"entropy_b{beta:g}"] = choice_entropies(y_hat, ys0, beta)
    out = {k: np.asarray(v) for k, v in out.items()}
    out["conv_round"] = convergence_round(out["change"], tol)
    return out


def choice_entropies(y_hat, ys0, beta) -> jax.Array:
    """Entropy (nats) of softmax_j(beta cos(y_hat, y_j)) over the N0 initial candidates
    ``ys0`` (B, N0, D), for answers ``y_hat`` (S, B, M, T+1, D) -> (S, B, M, T+1). At beta = 1
    it stays within a few percent of its maximum log N0 whatever the answer (|cos| <= 1); a
    larger beta lets it fall when the answer singles out a candidate."""
    cos = jnp.einsum("sbmtd,bnd->sbmtn", unit(y_hat), unit(ys0))
    logp = jax.nn.log_softmax(beta * cos, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _ci(values, axis=0):
    mean, low, high = mean_ci(values, axis=axis)
    return {"mean": mean, "low": low, "high": high}


def summarise_setting(m: dict, acc: np.ndarray, i: int, rounds: int, tol: float, null: int | None = None) -> dict:
    """Summary of critic setting i of :func:`round_metrics` output: every per-round metric as
    a mean with its 95% interval over contexts (each context's critic draws averaged first:
    contexts are the samples), the gain after the last round and, against setting ``null``
    (the null critic), the excess gain (gain - the null critic's gain, paired per context),
    convergence rounds, and the critic's accuracy on the candidates (``acc``) and on the loop's
    answers."""
    nmse = m["nmse"][i]  # (B, M, T+1)
    per_ctx = lambda a: a.mean(axis=1)
    gain_T = nmse[..., 0] - nmse[..., -1]
    conv = m["conv_round"][i].ravel()
    mean_curve = per_ctx(nmse).mean(0)
    mean_change = np.abs(np.diff(mean_curve))
    out = {
        "nmse": _ci(per_ctx(nmse)),
        "gain": _ci(per_ctx(m["gain"][i])),
        "gain_T": {k: float(v) for k, v in _ci(per_ctx(gain_T)).items()},
        "entropy": _ci(per_ctx(m["entropy"][i])),
        "entropy_all": _ci(per_ctx(m["entropy_all"][i])),
        "spread": _ci(m["spread"][i]),
        "change": _ci(per_ctx(m["change"][i])),
        "conv_round": {"median": float(np.median(conv)), "mean": float(conv.mean()),
                       "frac_converged": float(np.mean(conv <= rounds)),
                       "mean_curve": int(convergence_round(mean_change[None], tol)[0])},
        "critic_accuracy": float(np.mean(acc[i])),
        "loop_accuracy": float(np.nanmean(m["loop_accuracy"][i])),
    }
    for key in (k for k in m if k.startswith("entropy_b")):
        out[key] = _ci(per_ctx(m[key][i]))
    if null is not None:
        excess = per_ctx(m["gain"][i] - m["gain"][null])
        out["excess_gain"] = _ci(excess)
        out["excess_gain_T"] = {k: float(v) for k, v in _ci(excess[:, -1]).items()}
    return out


def _units(m: dict, names: list) -> dict:
    """Per-context values (draws averaged) of what the claims pair: the normalised MSE and
    every entropy at round 0 and after the last round, per critic setting."""
    keys = ["nmse"] + [k for k in m if k.startswith("entropy_b")]
    return {k: {f"{n}@{r}": m[k][i][..., r].mean(axis=1).tolist() for i, n in enumerate(names) for r in (0, -1)}
            for k in keys}


def critic_sweep(key, learner, ctx, critics, names: list, rounds: int, draws: int, tol: float,
                 null: str | None = None, betas=()) -> dict:
    """The loop for every critic setting (:func:`icalign.selfcorrect.loop.sweep`), summarised
    per setting (against the null critic ``null``, one of ``names``, when given), with the
    Pearson correlation of the gain after ``rounds`` rounds with the critic's accuracy, over
    settings and pooled over (setting, context) pairs: once for the accuracy on the
    candidates (a property of the critic alone) and once on the loop's own answers (what the
    first paper's self-checking accuracy measures, but endogenous). ``units``: the per-context
    values that claims pair (:func:`_units`); ``betas``: extra choice-entropy temperatures."""
    from scipy.stats import pearsonr

    if null is not None and null not in names:
        raise ValueError(f"null must be one of the critic names {names}, got {null!r}")
    t0 = time.perf_counter()
    traj, acc = sweep(key, ctx, critics, learner, rounds=rounds, draws=draws)
    m = round_metrics(traj, ctx.y_star, tol=tol, ys0=ctx.ys, betas=betas)
    acc = np.asarray(acc)
    secs = time.perf_counter() - t0
    i0 = None if null is None else names.index(null)
    settings = {n: summarise_setting(m, acc, i, rounds, tol, i0) for i, n in enumerate(names)}
    y = np.array([settings[n]["gain_T"]["mean"] for n in names])
    gain_ctx = (m["nmse"][..., 0] - m["nmse"][..., -1]).mean(axis=2)  # (S, B)
    corr = {}
    for which, per_ctx in (("critic_accuracy", acc), ("loop_accuracy", np.nanmean(m["loop_accuracy"], axis=2))):
        x = np.array([settings[n][which] for n in names])
        r, p = pearsonr(x, y)
        ok = np.isfinite(per_ctx)
        rc, pc = pearsonr(per_ctx[ok], gain_ctx[ok])
        corr[which] = {"r": float(r), "p": float(p), "n": len(names), "pooled_r": float(rc),
                       "pooled_p": float(pc), "pooled_n": int(ok.sum())}
    return {"settings": settings, "correlation": corr, "seconds_incl_compile": secs, "null": null,
            "units": {"unit": "contexts", **_units(m, names)}}


def combine_seeds(per_seed: list[dict]) -> dict:
    """One result from :func:`critic_sweep` results of several trained seeds of a model:
    seeds are the unit, so every summary becomes the mean over seeds of each seed's mean over
    contexts, with its 95% interval over seeds; the units are every seed's per-context values
    (seeds, contexts), from which the claims form their seeds x contexts interval."""
    first = per_seed[0]
    settings = {}
    for n, s in first["settings"].items():
        out = {}
        for key, v in s.items():
            if isinstance(v, dict) and "mean" in v and "low" in v:
                means = np.stack([np.asarray(r["settings"][n][key]["mean"], float) for r in per_seed])
                ci = _ci(means)
                out[key] = {k: float(x) for k, x in ci.items()} if np.ndim(v["mean"]) == 0 else ci
            elif key in ("critic_accuracy", "loop_accuracy"):
                out[key] = float(np.mean([r["settings"][n][key] for r in per_seed]))
            else:
                out[key] = v  # convergence rounds: the first seed's (reported per seed elsewhere)
        settings[n] = out
    # every seed's value on every context (S, C): the claims' seeds x contexts interval needs them
    units = {k: {c: [[float(x) for x in r["units"][k][c]] for r in per_seed] for c in v}
             for k, v in first["units"].items() if k != "unit"}
    from scipy.stats import pearsonr

    y = [settings[n]["gain_T"]["mean"] for n in settings]
    corr = {}
    for which in first["correlation"]:
        r, p = pearsonr([settings[n][which] for n in settings], y)
        corr[which] = {"r": float(r), "p": float(p), "n": len(settings), "pooled": "per seed: per_seed_correlation"}
    return {"settings": settings, "correlation": corr, "null": first["null"],
            "seconds_incl_compile": float(sum(r["seconds_incl_compile"] for r in per_seed)),
            "units": {"unit": "seeds", **units}, "per_seed_correlation": [r["correlation"] for r in per_seed]}


def metric_notes(tol: float) -> dict:
    """What each summarised metric is (stored with the results)."""
    return {
        "nmse": "1 - cos(y_hat_t, y*), mean over contexts (draws averaged first), 95% t-interval",
        "gain_T": "nmse_0 - nmse_T per context",
        "excess_gain": "gain - the null critic's gain (scores independent of the answer), paired per context",
        "entropy": "entropy of softmax_j cos(y_hat, y_j) over the N0 initial candidates (nats; saturated near log N0)",
        "entropy_b<beta>": "entropy of softmax_j beta cos(y_hat, y_j) over the N0 initial candidates (nats)",
        "spread": "1 - |mean unit y_hat| across critic-noise draws",
        "conv_round": f"first round from which 1 - cos(y_hat_t, y_hat_t-1) < {tol} stays below; "
                      "rounds + 1 = not converged",
        "critic_accuracy": "critic pairwise ranking accuracy on the N0 candidates (fresh draws)",
        "loop_accuracy": "critic pairwise ranking accuracy over pairs with at least one of the loop's answers",
    }
