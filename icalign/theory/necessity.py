"""Necessity of each component: the best error a reduced architecture reaches on the PL step.

The target map is one GD step on the Plackett-Luce loss (squared-distance reward), the map the
full construction of :mod:`icalign.construct` computes exactly: y+ = y0 + eta beta sum_i
(y_tau(i) - ybar_i), y0 = W0 x, on random contexts whose rewards meet the construction's
preconditions. Each architecture (the construction's config with one factor toggled) is
trained directly on that target by Adam on the squared error, several seeds at once (vmap),
and scored on held-out contexts by the relative error

    rel = E ||f(ctx) - y+||^2 / E ||y+ - y0||^2,

the fraction of the GD update the model misses (1 = no better than answering y0, which the
model can do by copying the read-in). docs/theory.md section 3 predicts a floor > 0 for each
reduced architecture and ~0 for the full one. :func:`claims` states, per reduced architecture
and N, whether the data resolve that prediction, from :func:`compare` (one small function, so
the paired statistics of issue 15 can replace it).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icalign import model
from icalign.theory import construct, gd
from icalign.training import NonFiniteLossError, Objective, fit, runs_from_keys

__all__ = ["VARIANTS", "variant_configs", "target", "relative_error", "PLStepObjective", "fit_variant",
           "HELD_OUT", "seed_summary", "compare", "claims", "ALPHA"]

VARIANTS = ("full", "linear attention", "one head", "no FFN", "half the blocks")
HELD_OUT = 10_000  # the held-out batch is fold_in(k_data, steps + HELD_OUT): never a training step


def variant_configs(spec: construct.PLConstruction, d_model: int = 64, head_dim: int = 16,
                    ffn_width: int = 128) -> dict[str, model.ModelConfig]:
    """The construction's architecture (2 softmax heads, ReLU FFN, N-1 blocks, no LayerNorm,
    no positions, stacked tokens) at a trainable width, and each reduced architecture (one
    factor changed). The width is not the construction's minimal 4d+6: at that width Adam
    from a random init stalls (relative error ~0.2-0.4 after 1500 steps at N = 4, against
    ~0.02 at width 64), and a floor caused by the optimiser would say nothing about the
    architecture."""
    full = dataclasses.replace(spec.config(), d_model=d_model, head_dim=head_dim, ffn_width=ffn_width,
                               ffn=True)
    return {
        "full": full,
        "linear attention": dataclasses.replace(full, attention="linear"),
        # One head with the same total attention width (head_dim doubled): only the head count changes.
        "one head": dataclasses.replace(full, n_heads=1, head_dim=2 * full.head_size),
        "no FFN": dataclasses.replace(full, ffn=False),
        "half the blocks": dataclasses.replace(full, n_layers=max(1, full.n_layers // 2)),
    }


def target(spec: construct.PLConstruction, ctx) -> tuple[jax.Array, jax.Array]:
    """(y0, y+) for a batch of contexts: the start and one closed-form PL GD step."""
    return _target(jnp.asarray(spec.W0, ctx.ys.dtype), spec.eta, spec.beta, ctx)


def _target(W0, eta, beta, ctx):
    y0 = jnp.einsum("ij,bj->bi", W0, ctx.x)
    eta_w = eta / jnp.sum(ctx.x * ctx.x, -1)  # the step in W-space that moves y by eta (see construct)
    step = jax.vmap(lambda x, ys, r, e: gd.gd_step(W0, x, ys, r, e, "sqdist", beta) @ x)
    return y0, step(ctx.x, ctx.ys, ctx.rewards, eta_w)


def relative_error(pred, y0, y_plus) -> jax.Array:
    return jnp.sum((pred - y_plus) ** 2) / jnp.sum((y_plus - y0) ** 2)


def _query_output(params, ctx, cfg):
    return model.apply(params, model.tokenize(ctx, cfg), cfg)[..., 0, :]


@dataclasses.dataclass(frozen=True)
class PLStepObjective(Objective):
    """Train ``cfg`` on the PL-step target of the construction ``spec``: squared error of the
    query-token output against y+, on fresh precondition-meeting float32 contexts every
    step; Adam after clipping the global gradient norm to 1."""

    cfg: model.ModelConfig
    W0: tuple  # spec.W0 as nested tuples: hashable, like every field of an objective
    eta: float
    beta: float
    n: int
    d: int
    batch_size: int

    @classmethod
    def of(cls, spec: construct.PLConstruction, cfg: model.ModelConfig, batch: int) -> "PLStepObjective":
        return cls(cfg, tuple(map(tuple, np.asarray(spec.W0, float).tolist())), float(spec.eta),
                   float(spec.beta), spec.n, spec.d, batch)

    def data(self, key):
        ctx = construct.separated_contexts(key, self.batch_size, self.n, self.d, dtype=jnp.float32)
        y0, yp = _target(jnp.asarray(self.W0, jnp.float32), self.eta, self.beta, ctx)
        return ctx, y0, yp

    def init(self, run):
        return model.init(run.k_init, self.cfg)

    def batch(self, run, step):
        return self.data(jax.random.fold_in(run.k_data, step))

    def loss(self, params, batch):
        ctx, _, yp = batch
        return jnp.mean(jnp.sum((_query_output(params, ctx, self.cfg) - yp) ** 2, -1))

    def optimizer(self, lr):
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


@partial(jax.jit, static_argnums=0)
def _held_out(objective, params_R, k_data_R, steps):
    def one(params, k_data):
        ctx, y0, yp = objective.data(jax.random.fold_in(k_data, steps + HELD_OUT))
        return relative_error(_query_output(params, ctx, objective.cfg), y0, yp)

    return jax.vmap(one)(params_R, k_data_R)


def fit_variant(key, spec: construct.PLConstruction, cfg: model.ModelConfig, seeds: int, steps: int,
                batch: int = 64, lr: float = 3e-3, *, chunk: int = 100, run_dir: Optional[Path] = None,
                force: bool = False, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Train ``seeds`` random inits of ``cfg`` on the PL-step target at once (the one loop,
    vmapped over seeds; ``run_dir`` makes it resumable).

    Returns (held-out relative error per seed, training-loss curves (seeds, steps)). A run
    whose loss or parameters become non-finite makes every seed NaN: the architecture
    diverged at this learning rate (a result, reported as such, not a crash)."""
    pairs = jax.vmap(jax.random.split)(jax.random.split(key, seeds))  # (seeds, 2): init, data
    runs_R = runs_from_keys(pairs[:, 0], pairs[:, 1], lr)
    objective = PLStepObjective.of(spec, cfg, batch)
    try:
        out = fit(objective, runs_R, [{"seed_index": i, "lr": lr} for i in range(seeds)], steps=steps,
                  chunk=min(chunk, steps), checkpoint_every=min(chunk, steps), run_dir=run_dir, force=force,
                  progress=progress, desc="necessity",
                  meta={"objective": "PL step", "config": cfg.to_dict(), "steps": steps, "batch": batch})
    except NonFiniteLossError:
        nan = np.full(seeds, np.nan)
        return nan, np.full((seeds, steps), np.nan)
    rel = _held_out(objective, out.state.params, runs_R.k_data, steps)
    return np.asarray(rel), np.asarray(out.losses)


ALPHA = 0.05  # one-sided level of every necessity claim


def seed_summary(rel) -> dict:
    """Median and best over seeds of the held-out relative error; a diverged seed (NaN) is
    counted, not hidden, and makes :func:`compare` answer "not trained"."""
    rel = np.asarray(rel, float)
    finite = rel[np.isfinite(rel)]
    nan = float("nan")
    return {"median": float(np.median(finite)) if finite.size else nan,
            "best": float(finite.min()) if finite.size else nan, "diverged_seeds": int(rel.size - finite.size)}


def compare(reduced, full) -> dict:
    """Is the reduced architecture's error larger than the full one's? Exact one-sided
    Mann-Whitney U (rank) tests on the per-seed errors, both directions. Rank-based, so one lucky
    or unlucky seed cannot carry it, and with 5 seeds per side the smallest attainable p is 1/252.
    Returns the two p-values and the verdict "needed" (reduced worse at ALPHA), "not needed"
    (reduced better at ALPHA), "not resolved", or "not trained" when a seed of either side
    diverged: a run that failed to train says nothing about what the architecture can express,
    so it is never counted as evidence (no p-values then)."""
    from scipy import stats

    a, b = np.asarray(reduced, float), np.asarray(full, float)
    bad = int((~np.isfinite(a)).sum()), int((~np.isfinite(b)).sum())
    if any(bad):
        return {"p_worse": None, "p_better": None, "median_difference": None,
                "verdict": "not trained", "diverged_seeds": {"reduced": bad[0], "full": bad[1]}}
    worse = float(stats.mannwhitneyu(a, b, alternative="greater", method="exact").pvalue)
    better = float(stats.mannwhitneyu(a, b, alternative="less", method="exact").pvalue)
    verdict = "needed" if worse <= ALPHA else "not needed" if better <= ALPHA else "not resolved"
    return {"p_worse": worse, "p_better": better, "verdict": verdict,
            "median_difference": float(np.median(a) - np.median(b)),
            "diverged_seeds": {"reduced": 0, "full": 0}}


_CLAIM = {"linear attention": "softmax attention is needed (linear attention is worse)",
          "one head": "multi-head attention is needed (one head of the same total width is worse)",
          "no FFN": "the FFN is needed (no FFN is worse)",
          "half the blocks": "N - 1 blocks are needed (half the blocks is worse)"}


def claims(results: dict) -> list[dict]:
    """One statement per (N, reduced architecture) against the full one, from :func:`compare`.
    ``results``: {N: {"variants": {name: {"rel_error_per_seed": [...]}}}}."""
    out = []
    for n, row in results.items():
        full = row["variants"].get("full")
        for name, entry in row["variants"].items():
            if name == "full" or full is None:
                continue
            c = compare(entry["rel_error_per_seed"], full["rel_error_per_seed"])
            out.append({"n": int(n), "variant": name, "claim": _CLAIM[name], **c,
                        "statistic": f"exact one-sided Mann-Whitney U over seeds, level {ALPHA}"})
    return out
