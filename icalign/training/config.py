"""Training hyper-parameters and the per-run settings trained together."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icalign.core import keys
from icalign.core.losses import LOSSES
from icalign.core.tasks import CORRUPTIONS, QUERIES, check_corruption_levels, check_query_corr
from icalign.core.validate import check_choice, check_int, check_seed

__all__ = ["TrainConfig", "RunSpec", "make_runs", "run_settings", "runs_from_keys", "select_run"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the published defaults). ``noise`` is the default level of
    the ``corruption`` model applied to the shown rewards (0: clean critic); per-run learning
    rates and noise levels given to ``train`` override ``lr`` and ``noise``.
    ``chunk`` steps run per compiled call (and per log line); checkpoints every
    ``checkpoint_every`` steps (a multiple of ``chunk``). ``queries`` picks the task
    (``tasks.QUERIES``): "shared" (published) or "per_triplet" (each triplet at its own
    query, correlated ``query_corr`` with the test query; stacked token layout only;
    docs/theory.md section 7). ``microbatches`` splits each step's batch into that many
    equal slices whose gradients are averaged (gradient accumulation): the same gradient up
    to float rounding, computed on arrays small enough to stay in a CPU's cache (on the
    2-core CPU, 8 made the base-config step about a quarter faster; keep 1 on a GPU). It
    changes the rounding, so it is part of a run's identity; 1 is the published way.
    ``loss`` names the ranking loss of the objective (``losses.LOSSES``: "cosine_pl", the
    published one, "sqdist_pl", "cosine_bt", or one added with ``losses.register_loss``)."""

    lr: float = 1e-4
    batch: int = 256
    steps: int = 3000
    min_seen: int = 2
    corruption: str = "replace"
    noise: float = 0.0
    chunk: int = 50
    checkpoint_every: int = 500
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    queries: str = "shared"
    query_corr: float = 0.0
    microbatches: int = 1
    loss: str = "cosine_pl"

    def __post_init__(self):
        for name, minimum in (("batch", 1), ("steps", 1), ("min_seen", 1), ("chunk", 1),
                              ("checkpoint_every", 1), ("microbatches", 1)):
            try:
                check_int(name, getattr(self, name), minimum)
            except ValueError as e:
                raise ValueError(f"TrainConfig.{e}") from None
        if self.checkpoint_every % self.chunk:
            raise ValueError(
                f"TrainConfig.checkpoint_every={self.checkpoint_every} must be a multiple of "
                f"chunk={self.chunk} (checkpoints are taken between compiled chunks)")
        if self.batch % self.microbatches:
            raise ValueError(f"TrainConfig.microbatches={self.microbatches} must divide batch={self.batch} "
                             "(the batch is split into equal slices)")
        for name in ("lr", "b1", "b2", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("b1", "b2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"TrainConfig.{name} must be < 1, got {getattr(self, name)!r}")
        check_choice("TrainConfig.corruption", self.corruption, CORRUPTIONS)
        check_choice("TrainConfig.loss", self.loss, LOSSES)
        check_choice("TrainConfig.queries", self.queries, QUERIES)
        check_query_corr("TrainConfig.query_corr", self.query_corr, self.queries)
        check_corruption_levels(self.corruption, self.noise)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@struct.dataclass
class RunSpec:
    """What differs between runs trained together (each field has a leading run axis when
    several runs train at once): the init, data and corruption keys, the learning rate, the
    reward-noise level (0 where a model has no corruption) and, for a group of architecture
    variants trained in one program, each run's gates (:mod:`icalign.model.gates`)."""

    k_init: jax.Array
    k_data: jax.Array
    k_corrupt: jax.Array
    lr: jax.Array
    noise: jax.Array
    gates: Any = None  # icalign.model.gates.Gates when the runs are variants of one super model


def select_run(tree, i: int):
    """Run i of a pytree with a leading run axis."""
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _broadcast(seeds, lrs, noise):
    R = max(len(seeds), len(lrs), len(noise))
    for name, vals in (("seeds", seeds), ("lrs", lrs), ("noise_levels", noise)):
        if len(vals) not in (1, R):
            raise ValueError(f"{name} has {len(vals)} values; give 1 or {R} (one per run)")
    return [v * R if len(v) == 1 else v for v in (seeds, lrs, noise)]


def _check_lrs(lrs):
    for lr in lrs:
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rates must be finite numbers > 0, got {lrs}")


def run_settings(seeds: Sequence[int], lrs=None, noise_levels=None, train_cfg: TrainConfig = TrainConfig()) -> list:
    """Validate and broadcast per-run settings (nothing computed on a device): the list of
    {"seed", "lr", "noise"} dicts, one per run. A length-1 (or scalar) setting is shared."""
    seeds = [check_seed("seed", s) for s in np.atleast_1d(np.asarray(seeds, dtype=object)).tolist()]
    lrs = [train_cfg.lr] if lrs is None else np.atleast_1d(np.asarray(lrs, dtype=float)).tolist()
    noise = [train_cfg.noise] if noise_levels is None else np.atleast_1d(np.asarray(noise_levels, dtype=float)).tolist()
    seeds, lrs, noise = _broadcast(seeds, lrs, noise)
    _check_lrs(lrs)
    check_corruption_levels(train_cfg.corruption, noise)
    return [{"seed": s, "lr": lr, "noise": nz} for s, lr, nz in zip(seeds, lrs, noise)]


def make_runs(seeds: Sequence[int], lrs=None, noise_levels=None, train_cfg: TrainConfig = TrainConfig()):
    """Validate and broadcast per-run settings (:func:`run_settings`). Returns (RunSpec with
    leading axis R, the settings). The keys are the seed's INIT, DATA and CORRUPT streams
    (:mod:`icalign.core.keys`)."""
    runs = run_settings(seeds, lrs, noise_levels, train_cfg)
    seeds, lrs, noise = ([r[k] for r in runs] for k in ("seed", "lr", "noise"))
    spec = RunSpec(
        k_init=jnp.stack([keys.stream(s, keys.INIT) for s in seeds]),
        k_data=jnp.stack([keys.stream(s, keys.DATA) for s in seeds]),
        k_corrupt=jnp.stack([keys.stream(s, keys.CORRUPT) for s in seeds]),
        lr=jnp.asarray(lrs, jnp.float32),
        noise=jnp.asarray(noise, jnp.float32),
    )
    return spec, runs


def runs_from_keys(init_keys, data_keys, lrs) -> RunSpec:
    """A RunSpec for models whose init and data keys come from elsewhere than a seed's
    streams (the latent-concept model and the necessity fits), with no reward corruption."""
    init_keys, data_keys = jnp.asarray(init_keys), jnp.asarray(data_keys)
    lrs = np.atleast_1d(np.asarray(lrs, dtype=float)).tolist()
    _check_lrs(lrs)
    R = init_keys.shape[0]
    if data_keys.shape[0] != R or len(lrs) not in (1, R):
        raise ValueError(f"init_keys, data_keys and lrs must have one entry per run; got {R}, "
                         f"{data_keys.shape[0]} and {len(lrs)}")
    lrs = lrs * R if len(lrs) == 1 else lrs
    return RunSpec(k_init=init_keys, k_data=data_keys, k_corrupt=data_keys,
                   lr=jnp.asarray(lrs, jnp.float32), noise=jnp.zeros((R,), jnp.float32))
