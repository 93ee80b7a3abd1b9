"""`icalign run mechanism`: does the trained transformer run GD on the ranking loss, or only
reach the same error? (docs/theory.md section 7.) Wiring only: train (icalign.training),
study (icalign.analysis.mechanism), verdicts (icalign.analysis.mechanism_claims), publish
(icalign.experiment), draw (icalign.viz.mechanism)."""

from __future__ import annotations

import dataclasses
import math
import time

import jax

from icalign import model as M
from icalign import training as T
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
    triplets: bool = True
    etas: tuple[float, ...] = ETAS
    k_max: int = 32
    minimiser_steps: int = 300
    intervention_contexts: int = 64
    implicit_queries: int = 20

    def __post_init__(self):
        check_seed(self.seed)
        for name, low in (("k_max", 1), ("minimiser_steps", 1), ("intervention_contexts", 2),
                          ("implicit_queries", self.model.d + 1)):  # an affine fit in d dimensions
            check_int(f"Config.{name}", getattr(self, name), minimum=low)
        if self.intervention_contexts > self.eval.contexts // 2:
            raise ValueError(f"Config.intervention_contexts must be <= eval.contexts // 2 = {self.eval.contexts // 2} "
                             f"(they are held-out contexts), got {self.intervention_contexts}")
        if not self.etas or not all(isinstance(e, (int, float)) and math.isfinite(e) and e > 0 for e in self.etas):
            raise ValueError(f"Config.etas must be a non-empty list of finite numbers > 0, got {self.etas!r}")
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
QUICK = Config(model=M.ModelConfig(n_layers=4, n_heads=2, d_model=32, token_layout="stacked"),
               train=T.TrainConfig(lr=1e-3, batch=64, steps=1500, chunk=50, checkpoint_every=250),
               triplet_train=T.TrainConfig(lr=1e-3, batch=64, steps=2000, chunk=50, checkpoint_every=250,
                                           queries="per_triplet", query_corr=0.7),
               eval=EvalConfig(contexts=256), k_max=64)
FULL = Config(k_max=64, intervention_contexts=128)


def figures(res: dict) -> dict:
    names = ("distances", "layers", "probes", "invariance") + (("triplets",) if "triplet" in res else ())
    return {k: getattr(V, k)(res) for k in names}


def _record(trained, seconds: float, ctx) -> dict:
    """Training, its health (on all of ``ctx``) and both trivial predictors' errors per t (test half)."""
    lo, hi = halves(ctx.x.shape[0])["test"]
    test = jax.tree_util.tree_map(lambda a: a[lo:hi], ctx)
    trivial = reference_nmse(test, test.rewards[:, None, :], [("replace", 0.0)])
    return {"train_config": trained.train_config.to_dict(), "train_loaded": trained.loaded, "train_seconds": seconds,
            "run_folder": None if trained.run_dir is None else trained.run_dir.name,
            "first_train_loss": trained.losses[:, :WINDOW].mean(1), "final_train_loss": trained.losses[:, -WINDOW:].mean(1),
            "health": run_gate(trained, ctx), "trivial_nmse": {p: v["replace"]["0.0"] for p, v in trivial.items()}}


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, "mechanism", force)
    t0 = time.perf_counter()
    k_ctx, k_study, k_ctx3, k_study3 = keys.eval_keys(cfg.seed, 4)
    res = {"experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
           "model_config": cfg.model.to_dict(), "seed": cfg.seed, "hardware": hardware()}
    m, d, n = cfg.model, cfg.model.d, cfg.model.n
    trained = train_or_load(m, cfg.train, seeds=(cfg.seed,), run_root=run_root, progress=progress)
    res["n_params"] = M.param_count(trained.params_of(0))
    t1 = time.perf_counter()
    ctx = sample_contexts(k_ctx, cfg.eval.contexts, d, n)
    res["shared"] = {**_record(trained, t1 - t0, ctx), **shared_study(
        trained.params_of(0), m, ctx, k_study, cfg.etas, cfg.k_max, cfg.minimiser_steps, cfg.intervention_contexts)}
    res["seconds"] = {"shared": time.perf_counter() - t0}
    if cfg.triplets:
        t2 = time.perf_counter()
        tt = cfg.triplet_train
        trained = train_or_load(m, tt, seeds=(cfg.seed,), run_root=run_root, progress=progress)
        ctx = sample_contexts(k_ctx3, cfg.eval.contexts, d, n, tt.queries, tt.query_corr)
        res["triplet"] = {**_record(trained, time.perf_counter() - t2, ctx), **triplet_study(
            trained.params_of(0), m, ctx, k_study3, cfg.etas, tt.query_corr, cfg.k_max, cfg.minimiser_steps,
            cfg.implicit_queries)}
        res["seconds"]["triplet"] = time.perf_counter() - t2
    res["seconds"]["total"] = time.perf_counter() - t0
    res["claims"] = claims(res)
    res = publish(path, res, figures=figures)
    for study in (k for k in ("shared", "triplet") if k in res):
        h, st = res[study]["health"], res[study]
        print(f"  {study} model, training health: {h['status']}" + (f" ({h['reason']})" if h["reason"] else "")
              + f"; error at t = {st['t'][-1]}: transformer {st['nmse']['transformer']['mean'][-1]:.3f}, "
              + ", ".join(f"{p} {v[-1]:.3f}" for p, v in st["trivial_nmse"].items()))
    for c in res["claims"]:
        print(f"  {c['claim']}: {c['verdict']} ({c['values']}; {c['sample']})")
    return res
