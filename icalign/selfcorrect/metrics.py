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

__all__ = ["direction_spread", "convergence_round", "round_metrics", "summarise_setting", "critic_sweep",
           "metric_notes"]


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


def round_metrics(traj: Trajectory, y_star, tol: float = 1e-3) -> dict[str, np.ndarray]:
    """Per-round metrics of a ``sweep`` result (leading axes (S, B, M), rounds last).

    nmse (S, B, M, T+1); gain = nmse_0 - nmse_t; change (S, B, M, T) = 1 - cos(y_hat_t,
    y_hat_{t-1}); conv_round (S, B, M); spread (S, B, T+1) across draws; entropy,
    entropy_all (S, B, M, T+1); loop_accuracy (S, B, M): the critic's pairwise accuracy over
    pairs with at least one answer in the final context."""
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
    out = {k: np.asarray(v) for k, v in out.items()}
    out["conv_round"] = convergence_round(out["change"], tol)
    return out


def _ci(values, axis=0):
    mean, low, high = mean_ci(values, axis=axis)
    return {"mean": mean, "low": low, "high": high}


def summarise_setting(m: dict, acc: np.ndarray, i: int, rounds: int, tol: float) -> dict:
    """Summary of critic setting i of :func:`round_metrics` output: every per-round metric as
    a mean with its 95% interval over contexts (each context's critic draws averaged first:
    contexts are the samples), the gain after the last round, convergence rounds, and the
    critic's accuracy on the candidates (``acc``) and on the loop's answers."""
    nmse = m["nmse"][i]  # (B, M, T+1)
    per_ctx = lambda a: a.mean(axis=1)
    gain_T = nmse[..., 0] - nmse[..., -1]
    conv = m["conv_round"][i].ravel()
    mean_curve = per_ctx(nmse).mean(0)
    mean_change = np.abs(np.diff(mean_curve))
    return {
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


def critic_sweep(key, learner, ctx, critics, names: list, rounds: int, draws: int, tol: float) -> dict:
    """The loop for every critic setting (:func:`icalign.selfcorrect.loop.sweep`), summarised
    per setting, with the Pearson correlation of the gain after ``rounds`` rounds with the
    critic's accuracy, over settings and pooled over (setting, context) pairs: once for the
    accuracy on the candidates (a property of the critic alone) and once on the loop's own
    answers (what the first paper's self-checking accuracy measures, but endogenous)."""
    from scipy.stats import pearsonr

    t0 = time.perf_counter()
    traj, acc = sweep(key, ctx, critics, learner, rounds=rounds, draws=draws)
    m = round_metrics(traj, ctx.y_star, tol=tol)
    acc = np.asarray(acc)
    secs = time.perf_counter() - t0
    settings = {n: summarise_setting(m, acc, i, rounds, tol) for i, n in enumerate(names)}
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
    return {"settings": settings, "correlation": corr, "seconds_incl_compile": secs}


def metric_notes(tol: float) -> dict:
    """What each summarised metric is (stored with the results)."""
    return {
        "nmse": "1 - cos(y_hat_t, y*), mean over contexts (draws averaged first), 95% t-interval",
        "gain_T": "nmse_0 - nmse_T per context",
        "entropy": "entropy of softmax_j cos(y_hat, y_j) over the N0 initial candidates (nats)",
        "spread": "1 - |mean unit y_hat| across critic-noise draws",
        "conv_round": f"first round from which 1 - cos(y_hat_t, y_hat_t-1) < {tol} stays below; "
                      "rounds + 1 = not converged",
        "critic_accuracy": "critic pairwise ranking accuracy on the N0 candidates (fresh draws)",
        "loop_accuracy": "critic pairwise ranking accuracy over pairs with at least one of the loop's answers",
    }
