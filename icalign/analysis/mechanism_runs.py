"""The mechanism study and battery over every trained seed (docs/theory.md section 7): the
records the experiment keeps per model family, each seed's study reduced to what the claims pair,
and the battery (:mod:`icalign.analysis.battery` and its tests) with its checks. Wiring of
analyses only; ``experiments/mechanism.py`` trains and publishes."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Optional

import jax
import numpy as np

from icalign import model as M
from icalign.analysis import attention as AT
from icalign.analysis import battery as BT
from icalign.analysis import battery_internal as BI
from icalign.analysis import battery_invariance as BINV
from icalign.analysis import battery_jacobian as BJ
from icalign.analysis import battery_outputs as BO
from icalign.analysis import claims as CL
from icalign.analysis import comparators as CMP
from icalign.analysis.evaluate import corrupted_rewards
from icalign.analysis.health import WINDOW, reference_nmse, run_gate
from icalign.analysis.mechanism import halves
from icalign.core.validate import check_int, check_seed

__all__ = ["check_config", "record", "studied", "battery", "clean", "noisy", "null", "corrupted"]


def check_config(cfg) -> None:
    """The mechanism experiment's Config (``experiments/mechanism.py``), checked field by field:
    bad input fails here, naming the field, before anything is trained."""
    check_seed("Config.seed", cfg.seed + check_int("Config.seeds", cfg.seeds, minimum=1) - 1)
    for L in cfg.depths:
        check_int("Config.depths (each)", L, minimum=1)
    if len(set(cfg.depths)) != len(cfg.depths) or list(cfg.depths) != sorted(cfg.depths):
        raise ValueError(f"Config.depths must be distinct and increasing, got {list(cfg.depths)}")
    if cfg.depths and len(cfg.depths) < 2:
        raise ValueError(f"Config.depths needs at least two depths to sweep (or none), got {list(cfg.depths)}")
    for p in cfg.train_noise:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"Config.train_noise must hold corruption levels in (0, 1] (the clean model is "
                             f"always trained), got {list(cfg.train_noise)}")
    for name, low in (("k_max", 1), ("minimiser_steps", 1), ("intervention_contexts", 2), ("jacobian_contexts", 4),
                      ("battery_contexts", 4),
                      ("implicit_queries", cfg.model.d + 1)):  # an affine fit in d dimensions
        check_int(f"Config.{name}", getattr(cfg, name), minimum=low)
    if cfg.intervention_contexts > cfg.eval.contexts // 2:
        raise ValueError(f"Config.intervention_contexts must be <= eval.contexts // 2 = {cfg.eval.contexts // 2} "
                         f"(they are held-out contexts), got {cfg.intervention_contexts}")
    for name in ("etas", "dampings"):
        v = getattr(cfg, name)
        if not v or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0
                            for e in v):
            raise ValueError(f"Config.{name} must be a non-empty list of finite numbers > 0, got {v!r}")
    if not cfg.jacobian_contexts <= cfg.battery_contexts <= cfg.eval.contexts:
        raise ValueError(f"Config.jacobian_contexts <= battery_contexts <= eval.contexts must hold (the battery reads "
                         f"the first of the study's contexts), got {cfg.jacobian_contexts}, {cfg.battery_contexts} "
                         f"and {cfg.eval.contexts}")
    for name, tc in (("train", cfg.train), ("triplet_train", cfg.triplet_train)):  # the references are its
        if tc.loss != "cosine_pl":  # minimiser and GD: studying another loss needs them rebuilt for it
            raise ValueError(f"Config.{name}.loss must be 'cosine_pl' (the published loss), got {tc.loss!r}")
    if cfg.train.queries != "shared":
        raise ValueError(f"Config.train.queries must be 'shared' (the published task), got {cfg.train.queries!r}")
    if cfg.triplets and (cfg.triplet_train.queries != "per_triplet" or cfg.model.token_layout != "stacked"):
        raise ValueError("with triplets=true, triplet_train.queries must be 'per_triplet' and model.token_layout "
                         f"'stacked'; got {cfg.triplet_train.queries!r} and {cfg.model.token_layout!r}")


def record(trained, seconds: float, ctx) -> dict:
    """Training, its health (on all of ``ctx``) and both trivial predictors' errors per t (test half)."""
    lo, hi = halves(ctx.x.shape[0])["test"]
    test = jax.tree_util.tree_map(lambda a: a[lo:hi], ctx)
    trivial = reference_nmse(test, test.rewards[:, None, :], [("replace", 0.0)])
    return {"train_config": trained.train_config.to_dict(), "protocol": trained.selection,
            "train_loaded": trained.loaded, "train_seconds": seconds,
            "run_folder": None if trained.run_dir is None else trained.run_dir.name,
            "first_train_loss": trained.losses[:, :WINDOW].mean(1), "final_train_loss": trained.losses[:, -WINDOW:].mean(1),
            "health": run_gate(trained, ctx), "trivial_nmse": {p: v["replace"]["0.0"] for p, v in trivial.items()}}


def _per_seed(study: dict) -> dict:
    """What the claims pair across seeds from one seed's study: its per-context test values
    (references, layers, interventions) and its fitting half's choices."""
    out = {"cells": study["cells"], "selection": study["selection"]}
    if "interventions" in study:  # the shared-query study (the per-triplet one has neither)
        out["interventions"] = {k: {n: v["values"] for n, v in d.items() if isinstance(v, dict) and "values" in v}
                                for k, d in study["interventions"].items()}
        out["layer_nmse"] = {str(r["layer"]): r["own"]["nmse"]["values"] for r in study["layers"]}
    return out


def studied(trained, study) -> dict:
    """Seed 0's full study (the figures) with every seed's per-context values (``per_seed``,
    what the claims pair) for every run of ``trained``; ``study(params)`` studies one model."""
    runs = [study(trained.params_of(i)) for i in range(len(trained.runs))]
    return {**runs[0], "seeds": [r["seed"] for r in trained.runs], "per_seed": [_per_seed(r) for r in runs]}


def _learner(trained, i: int):
    return BT.transformer_learner(trained.params_of(i), trained.model_config)


def _stacked_claim(text: str, per: list, high: str, low: str, health, metric: str) -> dict:
    """The engine's claim that ``high`` is above ``low`` over seeds, from each seed's
    per-context values (``per[s][high]``, ``per[s][low]`` on the same contexts): seeds x
    contexts blocks; both arms are the trained model's (its health withholds the claim)."""
    get = lambda k: np.asarray([p[k] for p in per], float)
    return CL.claim(text, CL.cells(high, get(high), health=health), CL.cells(low, get(low), health=health),
                    metric=metric)


def battery(cfg, family: dict, ctx, key, depths: Optional[dict] = None) -> dict:
    """The mechanism battery (docs/theory.md 7.1) on one trained model family (``family``: its
    TrainResult, every seed studied on ``ctx``): each test's verdict over the seeds
    (:func:`icalign.analysis.battery.combine`) and, beside them, the attention and null-model
    probe checks, which are claims, not GD-or-minimiser verdicts. ``depths`` ({depth:
    TrainResult}, the same seeds) adds the depth sweep. ``cfg``: the experiment's settings
    (``etas``, ``minimiser_steps``, ``battery_contexts``, ``jacobian_contexts``, ``dampings``)."""
    trained, health = family["trained"], family["health"]
    ctx = jax.tree_util.tree_map(lambda a: a[:cfg.battery_contexts], ctx)
    S, m, B = len(trained.runs), trained.model_config, ctx.x.shape[0]
    half, ts = B // 2, np.arange(BI.MIN_SEEN, m.n)
    k = lambda i: jax.random.fold_in(key, i)  # one key per test, the same for every seed
    slow, slow_info = BO.slow_contexts(k(0), 4 * B, m.d, m.n, cfg.etas, m.n_layers, minimiser_steps=cfg.minimiser_steps)
    if "corrupt" in family:  # a noisy-critic model is judged on contexts shown as it was trained
        slow = family["corrupt"](slow)
    per = {name: [] for name in ("depth sweep", "initial point", "slow contexts", "Jacobian", "higher-order comparators",
                                 "rank redraw", "permutation", "causal patching")}
    extra = {"attention": [], "selectivity": []}
    cap = m.n_layers  # GD's step count is bounded by what the depth can hold: one step per layer
    sub = jax.tree_util.tree_map(lambda a: a[:cfg.jacobian_contexts], ctx)  # the costly tests' contexts
    for i in range(S):
        learner = _learner(trained, i)
        y0 = learner(ctx)[:, 0]
        if depths:
            per["depth sweep"].append(BO.depth_sweep({L: _learner(t, i) for L, t in depths.items()}, ctx, k(1),
                                                     cfg.etas, minimiser_steps=cfg.minimiser_steps))
        per["initial point"].append(BO.initial_point(learner, ctx, k(2), cfg.etas, cap))
        per["slow contexts"].append(BO.distance_test(learner, slow, k(3), cfg.etas, cap,
                                                     minimiser_steps=cfg.minimiser_steps))
        per["Jacobian"].append(BJ.jacobian_test(learner, sub, k(9), cfg.etas, cap, minimiser_steps=cfg.minimiser_steps))
        per["higher-order comparators"].append(CMP.comparator_test(learner, sub, k(10), cfg.etas, cfg.dampings, cap,
                                                                   minimiser_steps=cfg.minimiser_steps))
        per["rank redraw"].append(BINV.rank_redraw(learner, ctx, k(4), cfg.etas, cap, minimiser_steps=cfg.minimiser_steps))
        per["permutation"].append(BINV.permutation(learner, ctx, k(5), cfg.etas, cap, minimiser_steps=cfg.minimiser_steps))
        params = trained.params_of(i)
        per["causal patching"].append(BI.patch_gradient(k(6), params, m, ctx, y0, ts, half, None, health=health))
        null = M.init(jax.random.fold_in(k(7), i), m)  # the null model: a random init of the same architecture
        extra["selectivity"].append(BI.probe_selectivity(k(8), params, null, m, ctx, y0, ts, half, health=health))
        extra["attention"].append(AT.best_candidate_attention(params, m, ctx))
    # the depth sweep reads every depth's models: a failed one withholds its verdict
    sick = [h for h in (family.get("depth_health") or {}).values() if CL.withheld(h)]
    verdicts = {name: BT.combine(name, rows, health=sick[0] if name == "depth sweep" and sick else health)
                for name, rows in per.items() if rows}
    att = [{"best": a["lift"], "uniform": [0.0] * len(a["lift"])} for a in extra["attention"]]
    checks = {"attention": {
        "heads": [a["fit"] for a in extra["attention"]],
        "claim": _stacked_claim("the head chosen on the fitting half attends to the best shown candidate more than "
                                "uniformly (lift = mass on the best - uniform mass, t >= 2)", att, "best", "uniform",
                                health, "attention mass"),
        "per_seed": [{k_: a[k_] for k_ in ("fit", "per_t", "heads", "predictions")} for a in extra["attention"]]}}
    dist = [r["distances"] for r in per["higher-order comparators"]]
    checks["newton"] = {"prediction": CMP.NEWTON_PREDICTION, "claim": _stacked_claim(
        f"the answers are closer to damped Newton than to GD (each fitted per t, at most {cap} steps)", dist, "gd",
        "newton", health, "1 - cos")}
    quantities = list(extra["selectivity"][0]["quantities"])
    checks["selectivity"] = {}
    for q in quantities:
        rows = [sel["quantities"][q] for sel in extra["selectivity"]]
        if not all("cells" in r for r in rows):
            checks["selectivity"][q] = {"claim": rows[0]["claim"], "counts": False}
            continue
        c = _stacked_claim(f"{q}: the trained model's probe beats the null model's (a random init)",
                           [r["cells"] for r in rows], "null", "trained", health, "share of 1 - R^2 per context")
        checks["selectivity"][q] = {"claim": c, "counts": c["verdict"] == "supported",
                                    "layers": [r["layer"]["layer"] for r in rows],
                                    "r2": [r["r2"] for r in rows], "r2_null": [r["r2_null"] for r in rows]}
    return {"verdicts": verdicts, "checks": checks, "slow_contexts": slow_info}


def corrupted(key, ctx, corruption: str, p: float):
    """The contexts with their shown rewards corrupted at level ``p`` (a noisy critic)."""
    return ctx.replace(rewards=corrupted_rewards(key, ctx, corruption, [p])[:, 0])


def clean(cfg, trained, depths: dict, ctx, health: dict, key) -> tuple[dict, dict]:
    """The clean-trained models' battery, with the depth sweep over ``depths`` ({depth:
    TrainResult}, ``trained`` at its own depth), and each depth's health and protocol (a depth
    that failed its gate withholds the sweep's verdict). Returns ({depth: record}, battery)."""
    h = {str(L): health if t is trained else run_gate(t, ctx) for L, t in depths.items()}
    bat = battery(cfg, {"trained": trained, "health": health, "depth_health": h}, ctx, key, depths)
    return {L: {"health": v, "protocol": depths[int(L)].selection} for L, v in h.items()}, bat


def noisy(cfg, trained, ctx, key, key_battery) -> tuple[dict, dict]:
    """The models trained on a noisy critic (``trained``: seeds x ``cfg.train_noise`` levels,
    level-major), each level judged on ``ctx`` shown as it was trained: its record, and its
    battery (its study: the clean model's reference distances are what the battery's tests
    replace). Returns ({level: record}, {family name: battery})."""
    S, records, bats = cfg.seeds, {}, {}
    for j, p in enumerate(cfg.train_noise):
        rows = np.arange(j * S, (j + 1) * S)
        one = dataclasses.replace(trained, params=jax.tree_util.tree_map(lambda a: a[rows], trained.params),
                                  losses=np.asarray(trained.losses)[rows], runs=[trained.runs[i] for i in rows])
        shown = partial(corrupted, jax.random.fold_in(key, 100 + j), corruption=cfg.train.corruption, p=p)
        c_p = corrupted(jax.random.fold_in(key, j), ctx, cfg.train.corruption, p)
        records[f"{p:g}"] = {**record(one, 0.0, c_p), "level": p, "corruption": cfg.train.corruption,
                             "seeds": [r["seed"] for r in one.runs]}
        bats[f"noisy-trained (p = {p:g})"] = battery(cfg, {"trained": one, "health": records[f"{p:g}"]["health"],
                                                            "corrupt": shown}, c_p, key_battery)
    return records, bats


def null(cfg, trained, ctx, key) -> dict:
    """The battery on the null models: a random initialisation of the same architecture per
    seed (the init ``trained`` would start from under another key), never trained. What the
    battery says of them is what it says of a model that has learnt nothing: the control its
    verdicts on trained models are read against. No health gate applies (nothing was trained)."""
    keys_ = [jax.random.fold_in(jax.random.PRNGKey(r["seed"]), 7919) for r in trained.runs]
    params = jax.tree_util.tree_map(lambda *a: jax.numpy.stack(a), *[M.init(k, trained.model_config) for k in keys_])
    untrained = dataclasses.replace(trained, params=params, losses=np.zeros((len(keys_), 0)), selection=None)
    return battery(cfg, {"trained": untrained, "health": None}, ctx, key)

