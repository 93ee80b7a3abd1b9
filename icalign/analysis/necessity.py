"""Training the necessity study's architectures (:mod:`icalign.theory.necessity`) on the PL step.

Each architecture is trained directly on the one-step PL target by Adam on the squared error
of its query-token output, several seeds at once through the one training loop (vmap over
seeds), and scored on held-out contexts by the relative error
:func:`icalign.theory.necessity.relative_error`. The verdicts are
:mod:`icalign.analysis.necessity_claims`.
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
from icalign.theory import construct
from icalign.theory import necessity as N
from icalign.training import NonFiniteLossError, Objective, fit, runs_from_keys

__all__ = ["PLStepObjective", "fit_variant", "HELD_OUT"]

HELD_OUT = 10_000  # the held-out batch is fold_in(k_data, steps + HELD_OUT): never a training step


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
        y0, yp = N.target_from(jnp.asarray(self.W0, jnp.float32), self.eta, self.beta, ctx)
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
        return N.relative_error(_query_output(params, ctx, objective.cfg), y0, yp)

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
