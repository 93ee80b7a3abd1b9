"""Training health: does a trained model count as evidence? A failed training run is a result
about the optimiser, not about the architecture, and no claim may rest on it.

The gate measures training on the objective training minimises, on CLEAN shown rewards
whatever the training noise (:mod:`icalign.analysis.objective`: per run and per evaluation
context, the model's objective, the reward-blind reference's and the per-context optimum).
Under noisy training a lower noisy loss is not a better model, so the noisy training loss
never decides a label. Each run (seed) gets one label:

* **failed**: its predictions are not finite, or its clean objective is not below the
  reward-blind reference's (mean of the seen candidates), or it does not use the rewards it
  reads: its normalised MSE at the largest t does not rise when each context's rewards are
  shuffled (:func:`icalign.analysis.objective.shuffled`). Each test is one-sided, paired over
  the contexts, at 95%: the mean difference must exceed the margin t_0.95(C - 1) * sd /
  sqrt(C). Why shuffling and not "error below the mean of candidates": the objective is not
  minimised at y* (its minimiser leans from y* towards y* - eps), and on short contexts the
  per-context optimum itself has a higher error than the mean of the candidates, so that
  comparison would fail a perfectly trained model.
* **under-converged**: not failed, but its training loss still falls. Plateau test on the
  last quarter of its training curve (each step's loss is on fresh contexts): the OLS slope
  is significantly below 0 (its one-sided 95% upper bound < 0) AND the fitted drop across
  that quarter is more than ``PLATEAU_FRACTION`` (5%) of the whole training drop (the mean
  of the first 1% of steps minus the fitted end). Why both: with a constant learning rate
  Adam's loss creeps down for very long, so significance alone would call nearly every long
  run under-converged; a last quarter that still holds more than 5% of all that training
  achieved is still descending in a way that matters. Fixed before looking at any result.
* **converged**: neither.
* **unknown**: its training curve (at least ``MIN_STEPS`` finite steps) or its per-context
  values are not available; never filled in with another run's or the seeds' mean.

A variant is failed if any run failed, else under-converged if any run is, else unknown if
any run is, else converged. Only "failed" withholds a claim's verdict. Reported beside the
labels: the fraction of the gap between the reward-blind reference and the optimum that the
model closes, mean_c(L_blind - L_model) / mean_c(L_blind - L_opt), with a 95% interval over
the contexts per run (delta method) and over the runs for the variant (Student t; the run's
context interval when there is one run), and both trivial predictors' normalised MSE at the
largest t beside the model's.

Results stored before this gate (status "trained" / "not trained", a gate on the noisy
training loss) read as "unknown" (:func:`legacy`), with what the old gate said.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np
from scipy import stats

from icalign.analysis import objective as O
from icalign.analysis.objective import predictions
from icalign.core.metrics import normalised_mse
from icalign.core.tasks import Context
# the plateau test lives with training, whose plateau stopping rule (TrainConfig.stop) it also is
from icalign.training.config import MIN_STEPS, PLATEAU_FRACTION, plateau
from icalign.training.protocol import run_label

__all__ = ["PREDICTORS", "STATUSES", "WINDOW", "MIN_STEPS", "PLATEAU_FRACTION", "predictions", "reference_nmse",
           "judge", "plateau", "run_gate", "runs_slice", "legacy", "stored", "variant_gate", "blind_error", "describe",
           "final_train_loss"]

PREDICTORS = ("mean of candidates", "best shown candidate")
STATUSES = ("converged", "under-converged", "failed", "unknown")
WINDOW = 50  #: steps averaged into a run's stored training loss (``final_train_loss``)
LEVEL = 0.95
_OLD = "stored before the gate measured training"
_BLIND_SEED = 17  #: fold_in index of blind_error's contexts (an evaluation-only stream)


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


def _below(worse_C, better_C) -> tuple[bool, float]:
    """(mean(worse - better) > margin, margin): one-sided paired test over the contexts."""
    d = np.asarray(worse_C, float) - np.asarray(better_C, float)
    margin = float(stats.t.ppf(LEVEL, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return bool(d.mean() > margin), margin


def _gap(model_C, blind_C, opt_C) -> dict:
    """Fraction of the gap closed, with a 95% delta-method interval over the contexts."""
    num, den = blind_C - model_C, blind_C - opt_C
    if not den.mean() > 0:
        return {"mean": None, "low": None, "high": None}
    g = num.mean() / den.mean()
    half = stats.t.ppf(0.5 + LEVEL / 2, len(num) - 1) * (num - g * den).std(ddof=1) / den.mean() / np.sqrt(len(num))
    return {"mean": float(g), "low": float(g - half), "high": float(g + half)}


def _run(i: int, v: dict, curve, t: int) -> dict:
    obj = {k: float(np.mean(v[k] if k != "model" else v["model"][i])) for k in ("model", "blind", "optimum")}
    ok_obj, m_obj = _below(v["blind"], v["model"][i])
    nm = v["nmse"]
    ok_use, m_use = _below(nm["shuffled"][i], nm["model"][i])
    why = []
    if not v["finite"][i]:
        why.append("its predictions are NaN or inf")
    if not ok_obj:
        why.append(f"clean objective {obj['model']:.3f} is not below the reward-blind {obj['blind']:.3f} by the "
                   f"margin {m_obj:.3f}")
    if not ok_use:
        why.append(f"error at t = {t} with the rewards shuffled {nm['shuffled'][i].mean():.3f} is not above its error "
                   f"with them in order {nm['model'][i].mean():.3f} by the margin {m_use:.3f} (it does not use them)")
    p = None if curve is None else plateau(curve)
    if why:
        status = "failed"
    elif p is None:
        status, why = "unknown", [f"no training curve of at least {MIN_STEPS} finite steps"]
    elif p["falling"]:
        status = "under-converged"
        why = [f"training loss still falls: slope {p['slope']:.2e}/step over the last {p['window']} steps (95% upper "
               f"bound {p['slope_upper']:.2e} < 0), a drop of {p['window_drop']:.3f} there, more than "
               f"{PLATEAU_FRACTION:.0%} of the whole drop {p['total_drop']:.3f}"]
    else:
        status = "converged"
    return {"status": status, "reason": "; ".join(why), "objective": obj, "objective_margin": m_obj,
            "gap_closed": _gap(v["model"][i], v["blind"], v["optimum"]),
            "nmse": {"model": float(nm["model"][i].mean()), "shuffled": float(nm["shuffled"][i].mean()),
                     "margin": m_use}, "plateau": p}


def judge(values: dict, curves_RxS=None, labels=None) -> dict:
    """The health dict of a variant from :func:`icalign.analysis.objective.measure`'s
    ``values`` and its runs' training curves (R, steps) (None, or a None row: not stored).
    ``labels`` name the runs by what was swept ("seed 0, lr 0.001"; default "run i")."""
    R = values["model"].shape[0]
    labels = [f"run {i}" for i in range(R)] if labels is None else list(labels)
    curves = [None] * R if curves_RxS is None else list(curves_RxS)
    if len(curves) != R:
        raise ValueError(f"curves_RxS has {len(curves)} runs but the values {R}")
    runs = [_run(i, values, curves[i], values["t"]) for i in range(R)]
    labels = [r["status"] for r in runs]
    status = next((s for s in ("failed", "under-converged", "unknown") if s in labels), "converged")
    gaps = np.array([np.nan if r["gap_closed"]["mean"] is None else r["gap_closed"]["mean"] for r in runs])
    if R > 1 and np.all(np.isfinite(gaps)):
        half = stats.t.ppf(0.5 + LEVEL / 2, R - 1) * gaps.std(ddof=1) / np.sqrt(R)
        gap = {"mean": float(gaps.mean()), "low": float(gaps.mean() - half), "high": float(gaps.mean() + half)}
    else:
        gap = runs[0]["gap_closed"] if R == 1 else {"mean": None, "low": None, "high": None}
    for r, label in zip(runs, labels):
        r["label"] = label
    bad = [f"{r['label']}: {r['reason']}" for r in runs if r["status"] == status and r["reason"]]
    closed = ("gap closed (reward-blind -> optimum of the clean objective) "
              + ("not available" if gap["mean"] is None else f"{gap['mean']:.2f} [{gap['low']:.2f}, {gap['high']:.2f}]")
              + f" over {R} run(s)")
    reason = "; ".join(bad) if status != "converged" else f"every run on a plateau; {closed}"
    nm = values["nmse"]
    return {"status": status, "reason": reason, "runs": runs, "gap_closed": {**gap, "n_runs": R},
            "references": {"t": int(values["t"]), "model": float(np.mean(nm["model"])),
                           **{p: float(np.mean(nm[p])) for p in PREDICTORS}},
            "n_contexts": int(values["model"].shape[1]), "loss": values["loss"], "min_seen": values["min_seen"],
            "optimum": values["method"],
            "rules": {"level": LEVEL, "min_steps": MIN_STEPS, "plateau_window": "last quarter of the steps",
                      "plateau_fraction": PLATEAU_FRACTION}}


def runs_slice(trained, start: int, stop: int):
    """``trained`` (an ``icalign.training.TrainResult``) reduced to its runs start..stop-1
    (e.g. one training level's seeds of a program that trained several)."""
    return dataclasses.replace(trained, params=jax.tree_util.tree_map(lambda a: a[start:stop], trained.params),
                               losses=np.asarray(trained.losses)[start:stop], runs=list(trained.runs)[start:stop])


def run_gate(trained, ctx: Context) -> dict:
    """The health dict (:func:`judge`) of every run of ``trained`` (an
    ``icalign.training.TrainResult``: params with a leading run axis, ``losses`` (R, steps)),
    measured on the evaluation contexts ``ctx`` with their CLEAN rewards, on the objective of
    its own training config (loss and min_seen). A run whose predictions are not finite fails."""
    from icalign.training import TrainResult

    if not isinstance(trained, TrainResult):
        raise ValueError(f"trained must be an icalign.training.TrainResult, got {type(trained).__name__}")
    if not isinstance(ctx, Context) or ctx.ys.ndim != 3 or ctx.ys.shape[1] != trained.model_config.n:
        raise ValueError(f"ctx must be a batch of contexts with n={trained.model_config.n} candidates")
    tc = trained.train_config
    values = O.measure(O.model_predictions(trained.params, trained.model_config), ctx, tc.min_seen, tc.loss)
    losses = np.asarray(trained.losses, float)
    R = len(values["finite"])
    runs = list(trained.runs)
    # each run named by what differs between the runs (a learning-rate sweep's runs are not "seeds")
    swept = [k for k in ("seed", "lr", "noise") if len({r.get(k) for r in runs}) > 1] or ["seed"]
    labels = [run_label(r, swept) for r in runs] if len(runs) == R else None
    return judge(values, [losses[i] if losses.ndim == 2 and len(losses) == R else None for i in range(R)], labels)


def legacy(health: dict | None) -> dict:
    """A stored health dict in the current labels: one of the old gate ("trained" / "not
    trained", decided on the noisy training loss) reads "unknown", with what it said."""
    if health is None:
        return {"status": "unknown", "reason": f"{_OLD}; no gate stored"}
    if health.get("status") in STATUSES:
        return health
    said = health.get("status", "?") + (f" ({health['reason']})" if health.get("reason") else "")
    return {"status": "unknown", "reason": f"{_OLD}; old gate said: {said}", "old": health}


def stored(record: dict, key: str = "health") -> dict:
    """:func:`legacy` of the health dict a result record stores under ``key`` (None if none)."""
    return legacy(record.get(key))


def variant_gate(train_loss, train_config: dict, model_config: dict, level=None, nmse_per_seed=None,
                 nmse_mean=None) -> dict:
    """The answer for a run known only by what an old file stored (no training curve, no
    parameters): "unknown", except that a seed whose stored error at the largest t is not
    below the reward-blind predictor's on the same task (:func:`blind_error`) is "failed": it
    does not use what it reads. A seed mean is never judged for its seeds."""
    unknown = {"status": "unknown", "reason": f"{_OLD}: no per-run training curve or parameters were stored"}
    if nmse_per_seed is None or not model_config:
        return unknown
    last = np.asarray(nmse_per_seed, float)[:, -1]
    blind = blind_error(int(model_config["d"]), int(model_config["n"]), train_config.get("queries", "shared"),
                        float(train_config.get("query_corr", 0.0)))
    bad = [f"run {i}: error at the largest t {x:.3f} is not below the reward-blind predictor's {blind:.3f}"
           for i, x in enumerate(last) if not x < blind]
    return {"status": "failed", "reason": f"{_OLD}; " + "; ".join(bad)} if bad else unknown


@functools.lru_cache(maxsize=16)
def blind_error(d: int, n: int, queries: str = "shared", query_corr: float = 0.0) -> float:
    """The reward-blind predictor's (mean of the seen candidates) normalised MSE at the largest
    t on 2048 fresh contexts of the task (a fixed evaluation-only key)."""
    from icalign.core.tasks import sample_contexts

    ctx = sample_contexts(jax.random.fold_in(jax.random.PRNGKey(0), _BLIND_SEED), 2048, d, n, queries, query_corr)
    y = predictions(ctx)["mean of candidates"][:, -1]
    return float(np.mean(np.asarray(normalised_mse(y, ctx.y_star))))


def describe(health: dict) -> str:
    """"status (reason)" of a (possibly stored, old) health dict, for markdown."""
    h = legacy(health)
    return f"{h['status']}" + (f" ({h['reason']})" if h.get("reason") else "")


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
