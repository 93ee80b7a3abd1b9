"""`icalign run tf-vs-gd`: a trained transformer against GD learners on the same contexts
(docs/theory.md section 4): normalised MSE per number of in-context examples t, prediction
differences and input sensitivities. Wiring only: train (icalign.training), compare
(icalign.analysis.compare), publish (icalign.experiment), draw (icalign.viz.tf)."""

from __future__ import annotations

import dataclasses
import time

from icalign import model as M
from icalign import training as T
from icalign.analysis.compare import compare
from icalign.analysis.health import WINDOW, variant_gate
from icalign.core import keys
from icalign.core.tasks import sample_contexts
from icalign.experiment import EvalConfig, check_seed, config_record, publish, result_path, runner, train_or_load
from icalign.io import hardware
from icalign.viz.tf import tf_vs_gd

NAME = "tf-vs-gd"
DESCRIPTION = "trained transformer vs GD learners: normalised MSE per number of in-context examples"


@dataclasses.dataclass(frozen=True)
class Config:
    model: M.ModelConfig = M.BASE
    train: T.TrainConfig = T.TrainConfig()
    eval: EvalConfig = EvalConfig(contexts=256, sensitivity_contexts=32)
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)


# quick: a smaller model, batch and step count for a 2-core CPU, a higher learning rate, and
# the theory's stacked layout (one token per candidate): small interleaved models stayed on
# the initial loss plateau for the whole CPU budget (2 layers x 600 steps, 4 x 1000 and
# 3 x 2000 steps, lr 1e-3 to 1e-2), as they must first learn to route each reward to its
# response by position alone. full: the published base config and training protocol.
QUICK = Config(model=M.ModelConfig(n_layers=2, n_heads=2, d_model=32, token_layout="stacked"),
               train=T.TrainConfig(lr=1e-3, batch=64, steps=1000, chunk=50, checkpoint_every=250))
FULL = Config()


def figures(res: dict) -> dict:
    return {"": tf_vs_gd(res)}


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, "tf_vs_gd", force)
    t0 = time.perf_counter()
    trained = train_or_load(cfg.model, cfg.train, seeds=(cfg.seed,), run_root=run_root, progress=progress)
    t_train = time.perf_counter() - t0
    trend = T.loss_trend(trained.losses)  # a short factual note; the health gates are icalign.analysis.health
    if trend["warning"]:
        print(f"[{NAME}] warning: {trend['warning']}")
    k_ctx, k_gd = keys.eval_keys(cfg.seed, 2)
    ctx = sample_contexts(k_ctx, cfg.eval.contexts, cfg.model.d, cfg.model.n, cfg.train.queries,
                          cfg.train.query_corr)
    t1 = time.perf_counter()
    cmp = compare(trained.params_of(0), cfg.model, ctx, k_gd, gd_steps=cfg.eval.gd_steps, loss=cfg.train.loss,
                  n_sensitivity=cfg.eval.sensitivity_contexts, progress=progress)
    t_eval = time.perf_counter() - t1
    cmp["nmse"] = {k: {kk: vv for kk, vv in v.items() if kk != "per_context"} for k, v in cmp["nmse"].items()}
    res = {
        "experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
        "model_config": cfg.model.to_dict(), "train_config": cfg.train.to_dict(), "seed": cfg.seed,
        "n_params": M.param_count(trained.params_of(0)),
        # the run folder's name (its settings' hash) under the run root: no machine's paths
        "run_folder": None if trained.run_dir is None else trained.run_dir.name,
        "first_train_loss": trained.losses[:, :WINDOW].mean(1), "final_train_loss": trained.losses[:, -WINDOW:].mean(1),
        "training_health": trend,
        "train_loaded": trained.loaded,  # True: training time is a load, not a training run
        "seconds": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t0},
        "hardware": hardware(), "comparison": cmp,
    }
    # the training-health verdict, stored beside the numbers it judges (as every experiment's is)
    res["health"] = variant_gate(res["final_train_loss"], res["train_config"], res["model_config"],
                                 nmse_mean=cmp["nmse"]["transformer"]["mean"])
    res = publish(path, res, figures=figures)
    ts, nm = list(cmp["t"]), res["comparison"]["nmse"]
    for t in (1, 2, 5, 10, 15):
        if t in ts:
            i = ts.index(t)
            print(f"  t={t:2d}  normalised MSE  " + "  ".join(f"{k}={float(v['mean'][i]):.3f}" for k, v in nm.items()))
    return res
