"""`icalign run precision`: float32 against bfloat16 matmuls (``ModelConfig.precision``) on
the tf-vs-gd task. The same seeds (same initialisation and data stream) train once in each
precision; the result holds both training curves and the held-out normalised MSE per t, and
two agreement claims, paired by seed (:func:`icalign.analysis.claims.agreement`): the final
training loss and the final error agree within margins fixed in the config before the data
(``loss_margin``, ``nmse_margin``). Wiring only: train
(icalign.training), evaluate (icalign.analysis.evaluate), judge (icalign.analysis.precision_claims),
draw (icalign.viz.precision)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from icalign import model as M
from icalign import training as T
from icalign.analysis import claims, precision_claims
from icalign.analysis.evaluate import transformer_curves
from icalign.analysis.health import WINDOW, run_gate
from icalign.core import keys
from icalign.core.stats import summarise
from icalign.core.tasks import sample_contexts
from icalign.core.validate import check_int, check_positive
from icalign.experiment import check_seed, config_record, publish, result_path, runner, train_or_load
from icalign.experiments import tf_vs_gd
from icalign.io import hardware
from icalign.viz.precision import precision_figure

NAME = "precision"
DESCRIPTION = "float32 vs bfloat16 matmuls: training curves and normalised MSE of the same seeds"
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
    model: M.ModelConfig = tf_vs_gd.QUICK.model
    # the published protocol (one rate, fixed steps): a grid would choose a rate per precision and
    # break the pairing of the same training in two formats
    train: T.TrainConfig = dataclasses.replace(tf_vs_gd.QUICK.train, lr_grid=(), stop="budget")
    contexts: int = 256  # held-out evaluation contexts
    seeds: int = 5
    seed: int = 0
    # Equivalence margins, fixed before the data (never from these seeds' spread): the largest
    # difference bfloat16 may make and still count as the same model. Training loss: 0.05, a
    # third of a percent of the PL loss (about 15 at N = 20 candidates in either format).
    # Held-out error: 0.02 of normalised MSE 1 - cos, 2% of a random direction's error (1).
    loss_margin: float = 0.05
    nmse_margin: float = 0.02

    def __post_init__(self):
        check_seed(self.seed)
        check_int("contexts", self.contexts, minimum=2)
        check_positive("loss_margin", self.loss_margin)
        check_positive("nmse_margin", self.nmse_margin)
        check_int("seeds", self.seeds, minimum=2)  # a seed spread needs two seeds
        if self.model.precision != "float32":  # it would be ignored: both precisions are trained
            raise ValueError(f"model.precision must stay 'float32' here (the experiment trains both 'float32' and "
                             f"'bfloat16'), got {self.model.precision!r}")


# quick: the tf-vs-gd quick model at its former rate; full: the published base config
QUICK = Config()
FULL = Config(model=M.BASE, train=T.TrainConfig())


def figures(res: dict) -> dict:
    return {"": precision_figure(res)}


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, "precision", force)
    seeds = tuple(range(cfg.seed, cfg.seed + cfg.seeds))
    k_ctx, _ = keys.eval_keys(cfg.seed, 2)
    ctx = sample_contexts(k_ctx, cfg.contexts, cfg.model.d, cfg.model.n, cfg.train.queries, cfg.train.query_corr)
    res = {"experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
           "model_config": cfg.model.to_dict(), "train_config": cfg.train.to_dict(), "seeds": list(seeds),
           "eval_contexts": cfg.contexts, "window": min(WINDOW, cfg.train.steps)}
    for precision in PRECISIONS:
        model = dataclasses.replace(cfg.model, precision=precision)
        t0 = time.perf_counter()
        trained = train_or_load(model, cfg.train, seeds=seeds, run_root=run_root, progress=progress)
        seconds = time.perf_counter() - t0
        curves = transformer_curves(trained.params, model, ctx, ctx.r_true[:, None, :])
        nmse_seed = curves.nmse[:, 0].mean(axis=1)  # (seeds, T): each seed's mean over the contexts
        losses = np.asarray(trained.losses)
        final_loss = losses[:, -res["window"]:].mean(axis=1)
        res["t"] = [int(t) for t in curves.t]
        res[precision] = {
            "train_loss_per_seed": losses, "final_train_loss": final_loss, "final_nmse": nmse_seed[:, -1],
            "nmse": summarise(curves.nmse[:, 0], "seeds", keep=True),  # keep: every seed on every context
            "health": run_gate(trained, ctx),
            "train_seconds": seconds, "train_loaded": trained.loaded,
            "run_folder": None if trained.run_dir is None else trained.run_dir.name}
    res["hardware"] = hardware()
    res["claims"] = precision_claims.claims(res)
    res = publish(path, res, figures=figures, markdown=lambda r: "\n".join(claims.line(c) for c in r["claims"]))
    for c in res["claims"]:
        print(claims.line(c))
    return res
