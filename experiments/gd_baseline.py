"""`icalign run gd-baseline`: the GD baseline of the published protocol (docs/theory.md
section 4).

Mixed-linear contexts (d = 5, N = 20); shown rewards corrupted at every level of a corruption
model (the published one: random replacement at p in {0, 0.25, 0.5, 0.75, 1}); for every t a
linear policy is fitted on cosine PL over the first t candidates, by Adam (the published
baseline: lr 0.1, always 50 steps) and by plain GD (same loss, init and steps); scored by
normalised MSE against y*. Every (learner, level, context, t) problem runs in one compiled
call per learner. The published sweep is already CPU-sized: quick and full are the same.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from icalign.core import stats, tasks
from icalign.core.validate import check_int, python_numbers
from icalign.experiment import EvalConfig, check_seed, config_record, publish, result_path, runner
from icalign.io import hardware
from icalign.theory import gd
from icalign.viz.gd import curves_by_level

NAME = "gd-baseline"
DESCRIPTION = "published GD baseline: Adam and plain GD, normalised MSE vs t per reward-noise level"
LABELS = {"adam": "Adam, lr 0.1, 50 steps (published)", "gd": "plain GD, lr 1.0, 50 steps"}


@dataclasses.dataclass(frozen=True)
class Config:
    eval: EvalConfig = EvalConfig(contexts=256)
    corruption: str = "replace"
    t_min: int = 2
    t_max: int = 15
    d: int = 5
    n: int = 20
    seed: int = 0

    def __post_init__(self):
        python_numbers(self)
        check_seed(self.seed)
        tasks.check_corruption_levels(self.corruption, 0.0)
        check_int("d", self.d, minimum=1)
        check_int("n", self.n, minimum=2)
        if check_int("t_min", self.t_min) < 2:
            raise ValueError(f"t_min must be >= 2, got {self.t_min}: a fit on t = 1 candidate has nothing to rank "
                             "(its PL loss is 0 and it returns its init)")
        if not self.t_min <= check_int("t_max", self.t_max) <= self.n:
            raise ValueError(f"t_max must lie in [t_min = {self.t_min}, n = {self.n}], got {self.t_max}")


QUICK = FULL = Config()


def figures(res: dict) -> dict:
    p = res["protocol"]
    return {"": curves_by_level(res, f"GD baseline: {p['contexts']} contexts, d={p['d']}, N={p['n']}, "
                                     f"{res['corruption']} corruption")}


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, "gd_baseline", force)
    levels = tasks.DEFAULT_LEVELS[cfg.corruption]
    ts = np.arange(cfg.t_min, cfg.t_max + 1)
    key = jax.random.PRNGKey(cfg.seed)
    ctx = tasks.sample_contexts(jax.random.fold_in(key, 0), cfg.eval.contexts, cfg.d, cfg.n)
    learners = {}
    for name, label in LABELS.items():
        t0 = time.perf_counter()
        nmse, _ = gd.baseline_sweep(jax.random.fold_in(key, 1), ctx, levels, ts, cfg.corruption, name,
                                    cfg.eval.gd_steps)
        nmse = np.asarray(nmse)  # (L, B, T)
        secs = time.perf_counter() - t0
        print(f"[{NAME}] {name}: {nmse.size} fits of {cfg.eval.gd_steps} steps in {secs:.2f} s (incl. compile)")
        curves = {}
        for i, level in enumerate(levels):
            mean, low, high = stats.mean_ci(nmse[i], axis=0)
            curves[f"{level:g}"] = {"mean": mean, "low": low, "high": high}
        learners[name] = {"label": label, "lr": gd.LEARNERS[name][1], "steps": cfg.eval.gd_steps, "levels": curves,
                          "seconds_incl_compile": secs}
    res = {
        "experiment": NAME, **config_record(cfg),
        "protocol": {"d": cfg.d, "n": cfg.n, "contexts": cfg.eval.contexts, "reward": "cosine",
                     "loss": "PL over first t", "init": "U(-1/sqrt(d), 1/sqrt(d))", "seed": cfg.seed},
        "corruption": cfg.corruption, "level_name": tasks.LEVEL_NAMES[cfg.corruption], "levels": list(levels),
        "ts": ts, "metric": "normalised MSE = 1 - cos(y_hat, y*), mean over contexts with 95% t-interval",
        "learners": learners, "hardware": hardware(),
    }
    res = publish(path, res, figures=figures)
    for name in learners:
        for level, c in res["learners"][name]["levels"].items():
            print(f"  {name:4s} {res['level_name']}={level:<5s} t={ts[0]}: {c['mean'][0]:.3f}  "
                  f"t={ts[-1]}: {c['mean'][-1]:.3f}")
    return res
