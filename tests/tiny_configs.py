"""Tiny configs of every experiment, shared by the in-memory and the CLI tests: each
experiment in a few compiled calls (the claims those tests make are about wiring)."""

from __future__ import annotations

import dataclasses

from icalign import model as M
from icalign import train as T
from icalign.experiment import EvalConfig
from icalign.experiments import (ablations, gd_baseline, mechanism, necessity, precision, reward_noise,
                                 self_correction, tf_vs_gd, verify)

TINY = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=4)
TINY_TRAIN = T.TrainConfig(lr=3e-3, batch=8, steps=4, chunk=2, checkpoint_every=2)
TINY_CONFIGS = {
    "gd-baseline": gd_baseline.Config(eval=EvalConfig(contexts=8), t_max=4),
    "tf-vs-gd": tf_vs_gd.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8, sensitivity_contexts=2),
                                seeds=2),
    "reward-noise": reward_noise.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8), seeds=2,
                                        train_levels=(0.0, 0.5)),
    "ablations": ablations.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8), factors=("ffn",),
                                  depths=(1,), heads=(1, 2), seeds=2),
    "necessity": necessity.Config(ns=(3,), variants=("full", "no FFN"), d=2, seeds=2, steps=4, batch=8,
                                  construction_contexts=8),
    "self-correction": self_correction.Config(
        contexts=4, draws=2, rounds=2, n0=3, gd_steps=5, injections=(1,), seeds=2,
        model=dataclasses.replace(TINY, d=5, n=6), train=TINY_TRAIN,
        concept=self_correction.ConceptConfig(n=6, rounds=2, n_layers=1, d_model=8, steps=4, batch=4,
                                              probe_contexts=8, loop_contexts=4)),
    "mechanism": mechanism.Config(
        model=dataclasses.replace(TINY, n_layers=2, n=5), train=TINY_TRAIN, eval=EvalConfig(contexts=8),
        triplet_train=dataclasses.replace(TINY_TRAIN, queries="per_triplet", query_corr=0.7), etas=(0.01, 0.1),
        k_max=2, minimiser_steps=4, intervention_contexts=2, implicit_queries=6, seeds=2, depths=(1, 2), jacobian_contexts=8, battery_contexts=8,
        train_noise=(0.5,)),
    "precision": precision.Config(model=TINY, train=TINY_TRAIN, contexts=8, seeds=2),
}
MODULES = {"gd-baseline": gd_baseline, "tf-vs-gd": tf_vs_gd, "reward-noise": reward_noise, "ablations": ablations,
           "necessity": necessity, "self-correction": self_correction, "verify": verify, "mechanism": mechanism,
           "precision": precision}
