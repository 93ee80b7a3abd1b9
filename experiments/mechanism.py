"""`icalign run mechanism`: does the trained transformer run GD on the ranking loss, or only
reach the same error? (docs/theory.md section 7.) Wiring only: train (icalign.training),
study (icalign.analysis.mechanism), verdicts (icalign.analysis.mechanism_claims), publish
(icalign.experiment), draw (icalign.viz.mechanism)."""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from typing import Optional

import jax
import numpy as np

from icalign import model as M
from icalign import training as T
from icalign.analysis import attention as AT
from icalign.analysis import battery as BT
from icalign.analysis import battery_internal as BI
from icalign.analysis import battery_jacobian as BJ
from icalign.analysis import comparators as CMP
from icalign.analysis import battery_outputs as BO
from icalign.analysis import claims as CL
from icalign.analysis.health import WINDOW, reference_nmse, run_gate
from icalign.analysis.mechanism import halves, shared_study, triplet_study
from icalign.analysis.mechanism_claims import claims
from icalign.core import keys
from icalign.core.tasks import sample_contexts
from icalign.core.validate import check_int
from icalign.experiment import EvalConfig, check_seed, config_record, publish, result_path, runner, train_or_load
from icalign.io import hardware
from icalign.viz import mechanism as V

NAME = "mechanism"
DESCRIPTION = "mechanism: distance to reference learners, layers vs GD steps, probes, invariances, implicit W"
ETAS = tuple(float(f"{10 ** (e / 2):.4g}") for e in range(-8, 5))  # 1e-4 .. 1e2, half-decade steps


@dataclasses.dataclass(frozen=True)
class Config:
    model: M.ModelConfig = M.ModelConfig(token_layout="stacked")
    train: T.TrainConfig = T.TrainConfig()
    triplet_train: T.TrainConfig = T.TrainConfig(queries="per_triplet", query_corr=0.7)
    eval: EvalConfig = EvalConfig(contexts=512)
    seed: int = 0
    seeds: int = 1  # trained models seed, seed + 1, ...: each is studied on the same contexts
    depths: tuple[int, ...] = ()  # the battery's depth sweep: model.n_layers set to each (() = none)
    train_noise: tuple[float, ...] = ()  # models trained on a noisy critic (train.corruption at each level)
    triplets: bool = True
    etas: tuple[float, ...] = ETAS
    k_max: int = 32
    minimiser_steps: int = 300
    intervention_contexts: int = 64
    implicit_queries: int = 20
    battery_contexts: int = 256  # the battery's contexts: the first of the study's (every test's cost grows with them)
    jacobian_contexts: int = 64  # the battery's Jacobian and Newton tests (their cost grows with the contexts)
    dampings: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # damped Newton's grid (the comparators' test)

    def __post_init__(self):
        check_seed(self.seed + check_int("Config.seeds", self.seeds, minimum=1) - 1)
        for L in self.depths:
            check_int("Config.depths (each)", L, minimum=1)
        if len(set(self.depths)) != len(self.depths) or list(self.depths) != sorted(self.depths):
            raise ValueError(f"Config.depths must be distinct and increasing, got {list(self.depths)}")
        if self.depths and len(self.depths) < 2:
            raise ValueError(f"Config.depths needs at least two depths to sweep (or none), got {list(self.depths)}")
        for p in self.train_noise:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
                raise ValueError(f"Config.train_noise must hold corruption levels in (0, 1] (the clean model is "
                                 f"always trained), got {list(self.train_noise)}")
        for name, low in (("k_max", 1), ("minimiser_steps", 1), ("intervention_contexts", 2), ("jacobian_contexts", 4),
                          ("battery_contexts", 4),
                          ("implicit_queries", self.model.d + 1)):  # an affine fit in d dimensions
            check_int(f"Config.{name}", getattr(self, name), minimum=low)
        if self.intervention_contexts > self.eval.contexts // 2:
            raise ValueError(f"Config.intervention_contexts must be <= eval.contexts // 2 = {self.eval.contexts // 2} "
                             f"(they are held-out contexts), got {self.intervention_contexts}")
        for name in ("etas", "dampings"):
            v = getattr(self, name)
            if not v or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0
                                for e in v):
                raise ValueError(f"Config.{name} must be a non-empty list of finite numbers > 0, got {v!r}")
        if not self.jacobian_contexts <= self.battery_contexts <= self.eval.contexts:
            raise ValueError(f"Config.jacobian_contexts <= battery_contexts <= eval.contexts must hold (the battery reads "
                             f"the first of the study's contexts), got {self.jacobian_contexts}, {self.battery_contexts} "
                             f"and {self.eval.contexts}")
        for name, tc in (("train", self.train), ("triplet_train", self.triplet_train)):  # the references are its
            if tc.loss != "cosine_pl":  # minimiser and GD: studying another loss needs them rebuilt for it
                raise ValueError(f"Config.{name}.loss must be 'cosine_pl' (the published loss), got {tc.loss!r}")
        if self.train.queries != "shared":
            raise ValueError(f"Config.train.queries must be 'shared' (the published task), got {self.train.queries!r}")
        if self.triplets and (self.triplet_train.queries != "per_triplet" or self.model.token_layout != "stacked"):
            raise ValueError("with triplets=true, triplet_train.queries must be 'per_triplet' and model.token_layout "
                             f"'stacked'; got {self.triplet_train.queries!r} and {self.model.token_layout!r}")


# quick: four layers (so that layers can be matched to GD steps) at the quick tf-vs-gd width,
# the stacked layout (per-triplet queries need it); per-triplet queries correlated 0.7 with
# the test query: with independent ones (0) the quick-size model stayed on the initial loss
# plateau (1500-3000 steps, lr 3e-4 to 3e-3, 2 or 4 layers), and at 0.5 it reached only
# 0.78 normalised MSE after 2000 steps (Adam: 0.45).
# Five seeds, each architecture's rate chosen from a grid on validation contexts, plateau
# stopping (the fair protocol, docs/theory.md "Training protocol"). The grid is two rates a
# factor 3 apart: 1e-3 trained every mechanism model before, and 3e-4 was chosen by none of the
# 22 fair-protocol choices of the committed quick results (tf-vs-gd, reward-noise, ablations,
# self-correction: 3e-3 or 1e-3 each time); the battery's
# depth sweep trains depths 1, 2 and 4 (the base) the same way, and a noisy-critic model
# (replace p = 0.5). Depth 8 is left to the full size: by layer count it alone would add about
# half again to the quick run's training on a 2-core CPU.
_GRID = dict(lr_grid=(1e-3, 3e-3), stop="plateau")
QUICK = Config(model=M.ModelConfig(n_layers=4, n_heads=2, d_model=32, token_layout="stacked"),
               train=T.TrainConfig(batch=64, steps=1500, chunk=50, checkpoint_every=250, **_GRID),
               triplet_train=T.TrainConfig(batch=64, steps=2000, chunk=50, checkpoint_every=250,
                                           queries="per_triplet", query_corr=0.7, **_GRID),
               eval=EvalConfig(contexts=256), k_max=64, seeds=5, depths=(1, 2, 4), train_noise=(0.5,),
               battery_contexts=128)  # 2-core CPU time: each test on 128 contexts, Jacobians on 64
FULL = Config(k_max=64, intervention_contexts=128, seeds=5, depths=(1, 2, 4, 8, 20), train_noise=(0.5,))


def figures(res: dict) -> dict:
    names = (("battery",) if res.get("battery") else ()) + ("distances", "layers", "probes", "invariance") + (
        ("triplets",) if "triplet" in res else ())
    return {k: getattr(V, k)(res) for k in names}


def _record(trained, seconds: float, ctx) -> dict:
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


def _studied(trained, rows, study) -> dict:
    """Seed 0's full study (the figures) with every seed's per-context values (``per_seed``,
    what the claims pair) for the runs ``rows`` of ``trained``."""
    runs = [study(trained.params_of(i)) for i in rows]
    return {**runs[0], "seeds": [trained.runs[i]["seed"] for i in rows], "per_seed": [_per_seed(r) for r in runs]}


def trained_models(cfg: Config, run_root, progress: bool = True) -> dict:
    """Every model the study reads, trained or loaded from ``run_root`` (one call each, in this
    order, so that a separate call trains them ahead): "shared" (the base model, every seed),
    "depths" ({depth: models}, the base at its own depth; the others under the same protocol on
    the same seeds), "noisy" (seeds x ``train_noise`` levels, level-major) and "triplet"."""
    seeds = tuple(range(cfg.seed, cfg.seed + cfg.seeds))
    train = lambda model_cfg, tc, **kw: train_or_load(model_cfg, tc, run_root=run_root, progress=progress, **kw)
    out = {"shared": train(cfg.model, cfg.train, seeds=seeds)}
    out["depths"] = {L: out["shared"] if L == cfg.model.n_layers else
                     train(dataclasses.replace(cfg.model, n_layers=L), cfg.train, seeds=seeds) for L in cfg.depths}
    if cfg.train_noise:
        levels = list(cfg.train_noise)
        out["noisy"] = train(cfg.model, cfg.train, seeds=[s for _ in levels for s in seeds],
                             noise_levels=[p for p in levels for _ in seeds])
    if cfg.triplets:
        out["triplet"] = train(cfg.model, cfg.triplet_train, seeds=seeds)
    return out


def _learner(trained, i: int):
    return BT.transformer_learner(trained.params_of(i), trained.model_config)


def _stacked_claim(text: str, per: list, high: str, low: str, health, metric: str) -> dict:
    """The engine's claim that ``high`` is above ``low`` over seeds, from each seed's
    per-context values (``per[s][high]``, ``per[s][low]`` on the same contexts): seeds x
    contexts blocks; both arms are the trained model's (its health withholds the claim)."""
    get = lambda k: np.asarray([p[k] for p in per], float)
    return CL.claim(text, CL.cells(high, get(high), health=health), CL.cells(low, get(low), health=health),
                    metric=metric)


def battery(cfg: Config, family: dict, ctx, key, depths: Optional[dict] = None) -> dict:
    """The mechanism battery (docs/theory.md 7.1) on one trained model family (``family``: its
    TrainResult, every seed studied on ``ctx``): each test's verdict over the seeds
    (:func:`icalign.analysis.battery.combine`) and, beside them, the attention and null-model
    probe checks, which are claims, not GD-or-minimiser verdicts. ``depths`` ({depth:
    TrainResult}, the same seeds) adds the depth sweep."""
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
        per["rank redraw"].append(BO.rank_redraw(learner, ctx, k(4), cfg.etas, cap, minimiser_steps=cfg.minimiser_steps))
        per["permutation"].append(BO.permutation(learner, ctx, k(5), cfg.etas, cap, minimiser_steps=cfg.minimiser_steps))
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


def _corrupted(key, ctx, corruption: str, p: float):
    """The contexts with their shown rewards corrupted at level ``p`` (a noisy critic)."""
    from icalign.analysis.evaluate import corrupted_rewards
    return ctx.replace(rewards=corrupted_rewards(key, ctx, corruption, [p])[:, 0])


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, "mechanism", force)
    t0 = time.perf_counter()
    k_ctx, k_study, k_ctx3, k_study3, k_noise, k_bat = keys.eval_keys(cfg.seed, 6)
    res = {"experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
           "model_config": cfg.model.to_dict(), "seed": cfg.seed, "hardware": hardware()}
    m, d, n = cfg.model, cfg.model.d, cfg.model.n
    seeds = tuple(range(cfg.seed, cfg.seed + cfg.seeds))
    models = trained_models(cfg, run_root, progress)
    trained = models["shared"]
    res["n_params"] = M.param_count(trained.params_of(0))
    t1 = time.perf_counter()
    ctx = sample_contexts(k_ctx, cfg.eval.contexts, d, n)
    # every seed is studied on the same contexts with the same study key (same interventions)
    study = lambda params, c: shared_study(params, m, c, k_study, cfg.etas, cfg.k_max, cfg.minimiser_steps,
                                           cfg.intervention_contexts)
    res["shared"] = {**_record(trained, t1 - t0, ctx),
                     **_studied(trained, range(len(seeds)), lambda p: study(p, ctx))}
    res["seconds"] = {"shared": time.perf_counter() - t0}
    t2 = time.perf_counter()
    depth_health = {str(L): (res["shared"]["health"] if t is trained else run_gate(t, ctx))
                    for L, t in models["depths"].items()}
    res["depths"] = {L: {"health": h, "protocol": models["depths"][int(L)].selection} for L, h in depth_health.items()}
    res["battery"] = {"clean-trained": battery(cfg, {"trained": trained, "health": res["shared"]["health"],
                                                     "depth_health": depth_health}, ctx, k_bat, models["depths"])}
    res["seconds"]["battery"] = time.perf_counter() - t2
    if cfg.train_noise:
        t2, levels = time.perf_counter(), list(cfg.train_noise)
        noisy = models["noisy"]
        res["noisy"] = {}
        for j, p in enumerate(levels):
            rows = list(range(j * len(seeds), (j + 1) * len(seeds)))
            c_p = _corrupted(jax.random.fold_in(k_noise, j), ctx, cfg.train.corruption, p)
            one = dataclasses.replace(noisy, params=jax.tree_util.tree_map(lambda a: a[np.asarray(rows)], noisy.params),
                                      losses=np.asarray(noisy.losses)[rows], runs=[noisy.runs[i] for i in rows])
            # the battery (below) is its study: the reference distances of the clean model's study
            # are what the battery's tests replace
            res["noisy"][f"{p:g}"] = {**_record(one, time.perf_counter() - t2, c_p), "level": p,
                                      "corruption": cfg.train.corruption, "seeds": list(seeds)}
            corrupt = partial(_corrupted, jax.random.fold_in(k_noise, 100 + j), corruption=cfg.train.corruption, p=p)
            res["battery"][f"noisy-trained (p = {p:g})"] = battery(
                cfg, {"trained": one, "health": res["noisy"][f"{p:g}"]["health"], "corrupt": corrupt}, c_p, k_bat)
        res["seconds"]["noisy"] = time.perf_counter() - t2
    if cfg.triplets:
        t2 = time.perf_counter()
        tt = cfg.triplet_train
        trained3 = models["triplet"]
        ctx3 = sample_contexts(k_ctx3, cfg.eval.contexts, d, n, tt.queries, tt.query_corr)
        res["triplet"] = {**_record(trained3, time.perf_counter() - t2, ctx3), **_studied(
            trained3, range(len(seeds)), lambda p: triplet_study(p, m, ctx3, k_study3, cfg.etas, tt.query_corr,
                                                                cfg.k_max, cfg.minimiser_steps, cfg.implicit_queries))}
        res["seconds"]["triplet"] = time.perf_counter() - t2
    res["seconds"]["total"] = time.perf_counter() - t0
    res["claims"] = claims(res)
    res = publish(path, res, figures=figures)
    for name, st in _models(res):
        h = st["health"]
        print(f"  {name} model(s), training health: {h['status']}" + (f" ({h['reason']})" if h["reason"] else ""))
    print(V.battery_table(res))
    for c in res["claims"]:
        print(f"  {c['claim']}: {c['verdict']} ({c['values']}; {c['sample']})")
    return res


def _models(res: dict):
    """(name, study) of every trained model family in a result."""
    yield "shared", res["shared"]
    for p, st in (res.get("noisy") or {}).items():
        yield f"noisy-trained (p = {p})", st
    if "triplet" in res:
        yield "triplet", res["triplet"]
