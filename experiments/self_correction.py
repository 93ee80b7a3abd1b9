"""`icalign run self-correction`: multi-round self-correction (docs/theory.md section 5).

Part 1, critic sweep (icalign.selfcorrect.metrics.critic_sweep): mixed-linear contexts with
N0 clean candidates, T rounds; each round the learner answers, a critic scores the answer and
it is appended. Learners: the published Adam baseline, plain GD, and a small transformer
trained here on the published task (``seeds`` seeds, the unit of its claims, after the
training-health gate). Critics: the null critic (random scores), exact, Gaussian noise, flips,
bias. Claims (icalign.analysis.selfcorrect_claims): a critic's gain minus the null critic's, and the
choice entropy at ``entropy_beta``.
Part 2, latent concept (icalign.selfcorrect.concept_study): a transformer trained on the family
mixture, per-layer probes, the loop against the exact Bayes posterior, with contrary instructions.
"""

from __future__ import annotations

import dataclasses
import time

from icalign import model as M
from icalign import training as T
from icalign.analysis import health as H
from icalign.analysis.selfcorrect_claims import loop_claims
from icalign.core import keys, tasks
from icalign.core.validate import check_int, check_positive
from icalign.experiment import check_seed, check_seeds, config_record, publish, result_path, runner, train_or_load
from icalign.io import hardware
from icalign.selfcorrect import CRITIC_SETTINGS, NULL_CRITIC, critic_sweep, gd_learner, make_critics, transformer_learner
from icalign.selfcorrect.concept_study import ConceptConfig, concept_study
from icalign.selfcorrect.metrics import combine_seeds, metric_notes
from icalign.viz.selfcorrect import figures, health_text  # noqa: F401  (figures: this experiment's figures)

NAME = "self-correction"
DESCRIPTION = "self-correction rounds: critic sweep (GD + transformer), latent concept vs Bayes posterior"
STEM = "self_correction"


@dataclasses.dataclass(frozen=True)
class Config:
    contexts: int = 64
    draws: int = 4
    rounds: int = 10
    n0: int = 9
    gd_steps: int = 50
    tolerance: float = 1e-3
    entropy_beta: float = 10.0  # beta = 1 saturates the choice entropy near log N0
    transformer: bool = True
    seeds: int = 3
    model: M.ModelConfig = M.ModelConfig(n_layers=3, n_heads=2, d_model=32, n=20, token_layout="stacked")
    train: T.TrainConfig = T.TrainConfig(lr=1e-3, batch=64, steps=500, chunk=50, checkpoint_every=500)
    concept: ConceptConfig = ConceptConfig()
    injections: tuple[int, ...] = (2, 5, 8)
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        for name in ("contexts", "draws", "rounds", "gd_steps"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("n0", self.n0, minimum=2)
        check_positive("tolerance", self.tolerance)
        check_positive("entropy_beta", self.entropy_beta)
        check_seeds(self.seeds)
        if self.train.loss != "cosine_pl":  # the loop's GD learners and critics rank with the published loss
            raise ValueError(f"Config.train.loss must be 'cosine_pl' (the published loss), got {self.train.loss!r}")
        if self.model.n != self.n0 + self.rounds + 1 or self.model.d != 5:
            raise ValueError(f"model.n must be n0 + rounds + 1 = {self.n0 + self.rounds + 1} and model.d 5 "
                             f"(the transformer reads the whole loop), got n={self.model.n}, d={self.model.d}")
        for t in self.injections:
            if not 0 <= check_int("injections", t) <= self.concept.rounds:
                raise ValueError(f"injections must lie in [0, concept.rounds = {self.concept.rounds}], got {t}")


# quick: 5 seeds under the fair protocol (docs/theory.md, "Training protocol"), rates around the former 1e-3
QUICK = Config(seeds=5, train=dataclasses.replace(Config.train, checkpoint_every=250, lr_grid=(3e-4, 1e-3, 3e-3), stop="plateau"))
FULL = Config(contexts=256, draws=8, model=M.ModelConfig(n_layers=8, n_heads=4, d_model=64, n=20, token_layout="stacked"),
              train=T.TrainConfig(lr=3e-4, batch=256, steps=3000, chunk=50, checkpoint_every=3000),
              concept=ConceptConfig(n_layers=6, n_heads=4, d_model=64, steps=4000, batch=128, lr=5e-4,
                                    probe_contexts=2048, loop_contexts=1024))


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    t_start = time.perf_counter()
    path = result_path(out, STEM, force)
    # the seed's evaluation stream (core.keys): never a training run's init, data or corruption key
    k_ctx, k_sweep, k_eval, k_concept = keys.eval_keys(cfg.seed, 4)
    ctx = tasks.sample_contexts(k_ctx, cfg.contexts, 5, cfg.n0)
    names, critics = make_critics()
    sweep = lambda learner: critic_sweep(k_sweep, learner, ctx, critics, names, cfg.rounds, cfg.draws, cfg.tolerance,
                                         null=NULL_CRITIC, betas=(cfg.entropy_beta,))
    learners, claims = {}, []
    for kind, label in (("adam", f"Adam baseline (lr 0.1, {cfg.gd_steps} steps)"),
                        ("gd", f"plain GD (lr 1.0, {cfg.gd_steps} steps)")):
        learners[kind] = {"label": label, **sweep(gd_learner(kind, cfg.gd_steps))}
        claims += loop_claims(learners[kind], kind, cfg.entropy_beta, cfg.n0, cfg.contexts)
    concept_res = None
    if cfg.transformer:
        t0, seeds = time.perf_counter(), tuple(cfg.seed + i for i in range(cfg.seeds))
        trained = train_or_load(cfg.model, cfg.train, seeds=seeds, run_root=run_root, progress=progress)
        health = H.run_gate(trained, tasks.sample_contexts(k_eval, 256, cfg.model.d, cfg.model.n))
        print(f"[{NAME}] transformer {health_text(health)}")  # the gate's label beside the trivial predictors
        info = {"model_config": cfg.model.to_dict(), "train_config": cfg.train.to_dict(), "train_loaded": trained.loaded,
                "seconds": time.perf_counter() - t0, "run_folder": None if trained.run_dir is None else trained.run_dir.name,
                "first_train_loss": trained.losses[:, :H.WINDOW].mean(1),
                "final_train_loss": trained.losses[:, -H.WINDOW:].mean(1), "health": health}
        m, tf = cfg.model, transformer_learner(trained.params_of(0), cfg.model)  # one learner: one compile
        learners["transformer"] = {
            "label": f"transformer ({m.n_layers} layers, width {m.d_model}, {cfg.train.steps} steps, stacked; "
                     f"{cfg.seeds} seeds)", "train": info,
            **combine_seeds([sweep(dataclasses.replace(tf, params=trained.params_of(i))) for i in range(cfg.seeds)])}
        claims += loop_claims(learners["transformer"], "transformer", cfg.entropy_beta, cfg.n0, cfg.contexts, health)
        cc = cfg.concept
        concept_res = concept_study(
            k_concept, cc.task(), cc.model(), steps=cc.steps, batch=cc.batch, lr=cc.lr, beta=cc.beta,
            probe_contexts=cc.probe_contexts, loop_contexts=cc.loop_contexts, rounds=cc.rounds,
            injections=cfg.injections, progress=progress, log=lambda s: print(f"[{NAME}] {s}"),
            run_dir=None if run_root is None else run_root / f"concept-{config_record(cfg)['config_hash']}")
    res = {
        "experiment": NAME, "name": None if out is None else out.name, "size": None if out is None else out.name,
        **config_record(cfg), "seed": cfg.seed,
        "sizes": {"contexts": cfg.contexts, "draws": cfg.draws, "c_loop_contexts": cfg.concept.loop_contexts},
        "rounds": cfg.rounds, "n0": cfg.n0, "concept_rounds": cfg.concept.rounds, "injections": list(cfg.injections),
        "tolerance": cfg.tolerance, "critic_names": names, "critic_settings": dict(CRITIC_SETTINGS),
        "null_critic": NULL_CRITIC, "entropy_beta": cfg.entropy_beta, "metrics": metric_notes(cfg.tolerance),
        "learners": learners, "claims": claims, "concept": concept_res, "wall_seconds": time.perf_counter() - t_start,
        "hardware": hardware(),
    }
    res = publish(path, res, figures=figures)
    for c in res["claims"]:
        print(f"  {c['claim']}: {c['verdict']} ({c['effect']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}])")
    return res
