"""Training-health gates: a trained model counts as evidence only if it beat trivial
predictors. A failed training run is a result about the optimiser, not about the
architecture, and no claim may rest on it.

Trivial predictors (no parameters, no training), each giving the prediction after n seen
triplets for every n, as a trained model does:

* **mean of candidates**: the mean of the n seen responses (ignores the rewards);
* **best shown candidate**: the seen response with the highest shown reward.

A run (one seed) is **trained** when all three hold:

1. its training loss (mean over the last ``window`` steps, fresh contexts every step, so it
   is a held-out estimate of the objective) is below the mean-of-candidates predictor's loss
   on the same objective, shown rewards corrupted as in training, by more than ``margin``;
2. the same against the best-shown-candidate predictor;
3. its held-out normalised MSE at the largest t is below its own value at t = 1: the model
   uses the examples it reads.

``margin`` is two standard errors of the difference of the two loss estimates (the
predictor's per-context loss sd stands in for the model's). A variant is *trained* when
every seed is; otherwise it is *not trained*, with each failing seed's reason.

The predictors' losses are computed with the run's own objective (``train_config["loss"]``,
through ``losses.online_rows``, the definition training uses).

Why the predictors are gated on the training loss and not on the normalised MSE: the
objective (cosine PL on the shown ranking) is not minimised at y*: its minimiser leans from y*
towards y* - eps, and its normalised MSE is measured, not quoted (``references.minimiser``, the
"minimiser" reference of the mechanism study), while copying the best shown candidate reaches
about 0.005 at t = 19 on clean rewards. Every learner of this project, GD included, "loses" to it in normalised MSE; that is
a property of the objective, reported next to the results (``reference``), not a training
failure.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icalign.core.losses import DEFAULT_LOSS, LOSSES, online_rows
from icalign.core.metrics import normalised_mse
from icalign.core.tasks import CORRUPTIONS, Context, check_corruption_levels, corrupt, sample_contexts
from icalign.core.validate import check_int

__all__ = ["PREDICTORS", "predictions", "trivial_losses", "reference_nmse", "gate", "variant_gate", "run_gate",
           "WINDOW", "final_train_loss"]

PREDICTORS = ("mean of candidates", "best shown candidate")
WINDOW = 50  #: steps averaged into a run's stored training loss (``final_train_loss``)
_N_BASELINE = 2048  #: contexts on which a predictor's loss is estimated
_BASELINE_SEED = 15  #: fold_in index of the baseline contexts' key (disjoint from every run's)


def predictions(ctx: Context) -> dict[str, jax.Array]:
    """{predictor: (..., N, D)}: row n is the prediction after n seen triplets (row 0 is 0)."""
    lead, (n, d) = ctx.ys.shape[:-2], ctx.ys.shape[-2:]
    ys, r = ctx.ys.reshape(-1, n, d), ctx.rewards.reshape(-1, n)
    seen = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # (row, candidate): candidate < row
    count = jnp.maximum(seen.sum(-1), 1).astype(ys.dtype)
    mean = jnp.einsum("rn,bnd->brd", seen.astype(ys.dtype), ys) / count[None, :, None]
    masked = jnp.where(seen[None], r[:, None, :], -jnp.inf)  # (B, row, N)
    best = jnp.take_along_axis(ys, jnp.argmax(masked, axis=-1)[..., None], axis=-2)
    best = jnp.where(jnp.any(seen, -1)[None, :, None], best, 0.0)
    return {"mean of candidates": mean.reshape(*lead, n, d), "best shown candidate": best.reshape(*lead, n, d)}


@partial(jax.jit, static_argnames=("d", "n", "corruption", "min_seen", "loss"))
def _losses(key, level, d: int, n: int, corruption: str, min_seen: int, loss: str):
    k_ctx, k_c = jax.random.split(key)
    ctx = sample_contexts(k_ctx, _N_BASELINE, d, n)
    ctx = ctx.replace(rewards=corrupt(corruption, k_c, ctx.r_true, level))
    out = {}
    for name, y in predictions(ctx).items():
        rows = online_rows(loss, y, ctx.ys, ctx.rewards)
        per_ctx = rows[..., min_seen:].mean(-1)
        out[name] = (per_ctx.mean(), per_ctx.std())
    return out


@lru_cache(maxsize=64)
def _trivial(d: int, n: int, corruption: str, level: float, min_seen: int, loss: str, sources) -> dict:
    key = jax.random.fold_in(jax.random.PRNGKey(0), _BASELINE_SEED)
    res = _losses(key, jnp.float32(level), d, n, corruption, min_seen, loss)
    return {k: {"loss": float(m), "sd": float(s)} for k, (m, s) in res.items()}


def trivial_losses(d: int, n: int, corruption: str = "replace", level: float = 0.0, min_seen: int = 2,
                   loss: str = DEFAULT_LOSS) -> dict:
    """{predictor: {"loss", "sd"}}: each trivial predictor's value of the training objective
    (online ``loss``, rows n >= min_seen, shown rewards corrupted by ``corruption`` at
    ``level``) on fresh contexts, and the sd of its per-context loss. Deterministic."""
    check_corruption_levels(corruption, [level])
    LOSSES.get_checked(loss, "loss")
    check_int("min_seen", min_seen, minimum=1)
    # The cache key carries the hash of a user-registered function: a replaced one is recomputed.
    sources = (LOSSES.identity(loss), CORRUPTIONS.identity(corruption))
    return _trivial(check_int("d", d, minimum=1), check_int("n", n, minimum=2), corruption, float(level), min_seen,
                    loss, sources)


def reference_nmse(ctx: Context, rewards_BxLxN, columns: Sequence[tuple[str, float]]) -> dict:
    """{predictor: {kind: {str(level): [mean normalised MSE at t = 1..N-1]}}} of each trivial
    predictor over the contexts, with the shown rewards of column c of ``rewards_BxLxN``
    being ``columns[c]`` = (corruption, level) (the layout of ``evaluate.by_level``)."""
    out: dict = {p: {} for p in PREDICTORS}
    for c, (kind, level) in enumerate(columns):
        for p, y in predictions(ctx.replace(rewards=rewards_BxLxN[:, c])).items():
            curve = normalised_mse(y[:, 1:], ctx.y_star[:, None]).mean(0)
            out[p].setdefault(kind, {})[str(level)] = np.asarray(curve).tolist()
    return out


def _margin(sd: float, batch: int, window: int) -> float:
    return 2.0 * sd * float(np.sqrt(1.0 / (window * batch) + 1.0 / _N_BASELINE))


def gate(train_loss, baselines: dict, batch: int, nmse_per_seed=None, nmse_mean=None,
         window: int = WINDOW) -> dict:
    """The health of one variant (see the module docstring).

    ``train_loss`` (S,): each seed's mean training loss over the last ``window`` steps;
    ``baselines``: :func:`trivial_losses` at the training corruption; ``batch``: training
    batch; ``nmse_per_seed`` (S, T): held-out normalised MSE per seed at t = 1..T, or, when
    a result stored none, ``nmse_mean`` (T,) for all seeds together. Returns {"status":
    "trained" | "not trained", "reason", "seeds": [{"ok", "why"}], "baselines", "margin"}.
    """
    loss = np.atleast_1d(np.asarray(train_loss, float))
    if nmse_per_seed is not None:
        curves = np.asarray(nmse_per_seed, float)
        if curves.shape[0] != loss.shape[0]:
            raise ValueError(f"nmse_per_seed has {curves.shape[0]} seeds but train_loss {loss.shape[0]}")
    else:
        curves = None if nmse_mean is None else np.broadcast_to(np.asarray(nmse_mean, float), (len(loss), len(nmse_mean)))
    seeds = []
    for s, ls in enumerate(loss):
        why = []
        beaten_by = [f"{name} {baselines[name]['loss']:.2f}" for name in PREDICTORS
                     if not ls < baselines[name]["loss"] - _margin(baselines[name]["sd"], batch, window)]
        if beaten_by:
            why.append(f"training loss {ls:.2f} not below {' or '.join(beaten_by)}")
        if curves is not None and not curves[s, -1] < curves[s, 0]:
            why.append(f"error at the largest t {curves[s, -1]:.3f} not below its t = 1 error {curves[s, 0]:.3f}")
        seeds.append({"ok": not why, "why": why})
    bad = [i for i, s in enumerate(seeds) if not s["ok"]]
    reason = "" if not bad else (f"{len(bad)} of {len(seeds)} seeds: " + "; ".join(
        f"seed {i}: {', '.join(seeds[i]['why'])}" for i in bad))  # seed i: the i-th of the variant's seeds
    if curves is not None and nmse_per_seed is None:
        reason += " (per-seed errors not stored: the t = 1 check used the mean over seeds)" if reason else ""
    return {"status": "not trained" if bad else "trained", "reason": reason, "seeds": seeds,
            "baselines": {k: dict(v) for k, v in baselines.items()},
            "margin": {k: _margin(v["sd"], batch, window) for k, v in baselines.items()}}


def variant_gate(train_loss, train_config: dict, model_config: dict, level: float | None = None,
                 nmse_per_seed=None, nmse_mean=None) -> dict:
    """:func:`gate` for a run stored in a result file: the trivial losses are computed for
    its task (d, n), training loss, training corruption and level (default:
    ``train_config["noise"]``)."""
    lv = float(train_config.get("noise", 0.0) if level is None else level)
    base = trivial_losses(int(model_config["d"]), int(model_config["n"]), train_config.get("corruption", "replace"),
                          lv, int(train_config.get("min_seen", 2)), train_config.get("loss", DEFAULT_LOSS))
    return gate(train_loss, base, int(train_config["batch"]), nmse_per_seed, nmse_mean)


def run_gate(trained, ctx: Context) -> dict:
    """:func:`variant_gate` of a clean-trained ``icalign.training.TrainResult`` (all its runs
    at ``train_config.noise``), its per-seed held-out errors measured on the contexts ``ctx``."""
    from icalign.analysis.evaluate import transformer_curves

    curves = transformer_curves(trained.params, trained.model_config, ctx, ctx.r_true[:, None, :])
    return variant_gate(trained.losses[:, -WINDOW:].mean(axis=1), trained.train_config.to_dict(),
                        trained.model_config.to_dict(), nmse_per_seed=curves.nmse[:, 0].mean(axis=1))


def final_train_loss(record: dict) -> list[float]:
    """A result record's final training loss, one per run (the mean of its last ``WINDOW``
    steps), stored as ``final_train_loss``; files written before it had one name stored it as
    ``train_loss_last50`` or ``loss_last50``, or as the second of ``train_loss_first_last``."""
    for key in ("final_train_loss", "train_loss_last50", "loss_last50"):
        if key in record:
            return [float(v) for v in np.ravel(np.asarray(record[key], float))]
    if "train_loss_first_last" in record:
        return [float(record["train_loss_first_last"][1])]
    raise KeyError(f"no final training loss in this record (keys: {', '.join(sorted(record))})")
