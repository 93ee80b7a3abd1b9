"""The latent-concept study of the self-correction experiment (docs/theory.md section 5):
train the concept model, fit per-layer probes, run the loop with the task's critic and with
the wrong concept's critic, with and without contrary instructions, and measure how the
probe tracks the exact Bayes posterior.

Everything that turns loop outputs into numbers lives here, so it can be tested and
imported; ``experiments/self_correction.py`` only wires it to a config and a results file.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from icalign import model as M
from icalign.core.stats import mean_ci
from icalign.core.validate import check_int, check_positive
from icalign.theory.bayes import posterior_rounds
from icalign.selfcorrect.concept import ConceptTask, sample_concept
from icalign.selfcorrect.concept_model import (concept_config, concept_learner, concept_loop, fit_layer_probes,
                                               train_concept)
from icalign.selfcorrect.critics import make_critics

__all__ = ["ConceptConfig", "LOOP_CRITICS", "concept_study", "tracking", "injection_dips"]

@dataclasses.dataclass(frozen=True)
class ConceptConfig:
    """The latent-concept part: its task (icalign.selfcorrect.concept.ConceptTask fields), its
    model (n_layers, n_heads, d_model), its training and its loop."""

    n: int = 16
    n_layers: int = 3
    n_heads: int = 2
    d_model: int = 32
    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    beta: float = 5.0
    probe_contexts: int = 512
    loop_contexts: int = 256
    rounds: int = 10
    strength: float = 0.7
    critic_sigma: float = 0.5
    critic_flip: float = 0.0
    spread: float = 0.5
    instr_prob: float = 0.5
    prior: float = 0.5

    def task(self) -> ConceptTask:
        return ConceptTask(n=self.n, strength=self.strength, critic_sigma=self.critic_sigma,
                           critic_flip=self.critic_flip, spread=self.spread, instr_prob=self.instr_prob,
                           prior=self.prior)

    def model(self) -> M.ModelConfig:
        return concept_config(self.task(), n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model)

    def __post_init__(self):
        self.model()  # validates the task and the model
        for name in ("steps", "batch", "probe_contexts", "loop_contexts", "rounds"):
            check_int(name, getattr(self, name), minimum=1)
        check_positive("lr", self.lr)
        check_positive("beta", self.beta)
        if self.n - self.rounds - 1 < 2:
            raise ValueError(f"concept n - rounds - 1 (the loop's initial candidates) must be >= 2, "
                             f"got n={self.n}, rounds={self.rounds}")



#: the loop's critics: the task's critic scoring towards the true concept's family, and the
#: same critic towards the other family (the other concept's critic: evidence for the wrong
#: concept).
LOOP_CRITICS = (("task critic", "target"), ("wrong-concept critic", "other"))


def _ci(values, axis=0):
    mean, low, high = mean_ci(values, axis=axis)
    return {"mean": mean, "low": low, "high": high}


def _condition(out: dict, best: int, names: list) -> dict:
    summary = {}
    for i, name in enumerate(names):
        pl = out["probe_logit"][best, i]
        summary[name] = {
            "bayes_post": _ci(out["bayes_post"][i]), "bayes_logit": _ci(out["bayes_logit"][i]),
            "probe_prob": _ci(1 / (1 + np.exp(-pl))), "probe_logit": _ci(pl),
            "probe_cos": _ci(out["probe_cos"][best, i]), "nmse": _ci(out["nmse"][i]),
            "entropy": _ci(out["entropy"][i]), "mutual_info": _ci(out["mutual_info"][i]),
            "instruction": _ci(out["instructions"]),
        }
    return summary


def injection_dips(plain: dict, injected: dict, i: int, best: int, injections: Sequence[int], rounds: int) -> dict:
    """Change of the Bayes and probe log-odds (mean over contexts) at each injection round
    and the round after it, injected minus plain, for loop critic i."""
    dips = {}
    for t in injections:
        nxt = min(t + 1, rounds)
        change = lambda key, layer, r: float(
            (injected[key][layer, i] if layer is not None else injected[key][i])[:, r].mean()
            - (plain[key][layer, i] if layer is not None else plain[key][i])[:, r].mean())
        dips[str(t)] = {"bayes_logit_change": change("bayes_logit", None, t),
                        "probe_logit_change": change("probe_logit", best, t),
                        "bayes_logit_change_next": change("bayes_logit", None, nxt),
                        "probe_logit_change_next": change("probe_logit", best, nxt)}
    return dips


def tracking(plain: dict, i: int, best: int, rounds: int) -> dict:
    """Does the probe track the Bayes posterior? Correlations of the probe's and the Bayes
    log-odds over (context, round) pairs (plain instructions, loop critic i), per layer too,
    and the per-round slope of the Bayes log-odds (the measured Delta)."""
    from scipy.stats import pearsonr, spearmanr

    bl, pl = plain["bayes_logit"][i], plain["probe_logit"][best, i]
    per_layer = [float(np.corrcoef(bl.ravel(), plain["probe_logit"][l, i].ravel())[0, 1])
                 for l in range(plain["probe_logit"].shape[0])]
    r, p = pearsonr(bl.ravel(), pl.ravel())
    rho, p_rho = spearmanr(bl.ravel(), pl.ravel())
    r_prob, _ = pearsonr(plain["bayes_post"][i].ravel(), (1 / (1 + np.exp(-pl))).ravel())
    return {"corr": float(r), "p": float(p), "spearman": float(rho), "spearman_p": float(p_rho),
            "corr_prob": float(r_prob), "corr_per_layer": per_layer,
            "bayes_logit_mean": bl.mean(0), "probe_logit_mean": pl.mean(0),
            "bayes_slope_per_round": float(np.polyfit(np.arange(rounds + 1), bl.mean(0), 1)[0]),
            "probe_round_corr": float(np.corrcoef(bl.mean(0), pl.mean(0))[0, 1])}


def concept_study(key, task: ConceptTask, cfg, *, steps: int, batch: int, lr: float, beta: float,
                  probe_contexts: int, loop_contexts: int, rounds: int, injections: Sequence[int],
                  run_dir: Optional[Path] = None, progress: bool = True, log=print) -> dict:
    """The whole concept part; returns its results dict (see the module docstring)."""
    k_train, k_probe, k_loop, k_ctx = jax.random.split(key, 4)
    t0 = time.perf_counter()
    params, losses = train_concept(k_train, task, cfg, steps=steps, batch=batch, lr=lr, beta=beta,
                                   run_dir=run_dir, progress=progress)
    t_train = time.perf_counter() - t0
    probes, rep = fit_layer_probes(k_probe, params, cfg, task, probe_contexts)
    best = int(np.argmax(rep["corr_bayes"]))  # the layer whose probe tracks Bayes best (held out)
    log(f"concept model: {t_train:.0f} s training; probe accuracy per layer "
        f"{np.round(rep['accuracy'], 3).tolist()} (Bayes {rep['bayes_accuracy']:.3f}); "
        f"r(probe, Bayes) {np.round(rep['corr_bayes'], 3).tolist()}")

    n0 = task.n - rounds - 1
    _, task_critic = make_critics({"task": (task.critic_sigma, 0.0, 0.0)})
    names = [name for name, _ in LOOP_CRITICS]
    loop_batch = sample_concept(k_ctx, task, loop_contexts, n=n0, instr_prob=0.0)
    learner = concept_learner(params, cfg)
    raw = {}
    for cond, inj in (("plain", ()), ("injected", tuple(injections))):
        outs = [concept_loop(k_loop, params, cfg, task, task_critic, loop_batch, rounds, probes, injections=inj,
                             critic_towards=towards, learner=learner) for _, towards in LOOP_CRITICS]
        # probe arrays carry the layer axis first, so critics stack on axis 1
        axis = {"probe_logit": 1, "probe_cos": 1, "instructions": None}
        raw[cond] = {k: outs[0][k] if axis.get(k, 0) is None else np.concatenate([o[k] for o in outs], axis.get(k, 0))
                     for k in outs[0]}
    conditions = {cond: _condition(out, best, names) for cond, out in raw.items()}
    track = {}
    for i, name in enumerate(names):
        track[name] = {**tracking(raw["plain"], i, best, rounds),
                       "injection": injection_dips(raw["plain"], raw["injected"], i, best, injections, rounds)}
    # the corrected analytic law with the measured start and per-round steps
    l0 = float(raw["plain"]["bayes_logit"][0][:, 0].mean())
    curves = {f"{n}: Delta = {track[n]['bayes_slope_per_round']:+.2f}":
              np.asarray(posterior_rounds(l0, track[n]["bayes_slope_per_round"], rounds)) for n in names}
    curves["Delta = -0.5 (locks in C-)"] = np.asarray(posterior_rounds(l0, -0.5, rounds))
    return {
        "task": task.to_dict(), "model_config": cfg.to_dict(),
        "train": {"steps": steps, "batch": batch, "lr": lr, "beta": beta,
                  "loss": "full-context PL on true rewards (beta * cosine)", "seconds": t_train,
                  "first_train_loss": float(losses[:50].mean()), "final_train_loss": float(losses[-50:].mean())},
        "probes": {**rep, "best_layer": best},
        "critic_names": names, "n0": n0,
        "conditions": conditions, "tracking": track,
        "analytic": {"l0": l0, "curves": curves},
    }
