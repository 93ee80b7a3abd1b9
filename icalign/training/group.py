"""Training many architectures in one program: the variants of a sweep that share shapes
(depths, head counts at one head size, softmax or linear attention, FFN and LayerNorm on or
off) are trained as gated variants of one super architecture (:mod:`icalign.model.gates`),
all variants x seeds x noise levels in one vmapped, sharded program.

Each run starts from its variant's own init (the seed's INIT stream, as
:func:`icalign.training.train` would use) embedded in the super shapes, and reads the same
data, so a grouped run is its standalone run up to float rounding. Groups larger than the
memory allows are split into chunks of runs. A group is one run folder (resumable) whose
hash covers every variant, the training config, the runs and the identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.core.losses import DEFAULT_LOSS
from icalign.core.validate import available_memory
from icalign.model import gates as G
from icalign.training.config import TrainConfig, make_runs, run_settings, select_run
from icalign.training.ica import (PROTOCOL_DEFAULTS, ICAObjective, TrainResult, _check_configs, identity_parts,
                                  stopping_rule, training_bytes)
from icalign.training.loop import fit, load_finished, run_identity

__all__ = ["groups", "train_group", "max_runs_per_program", "prepare"]


def groups(configs: Sequence[M.ModelConfig]) -> list[list[M.ModelConfig]]:
    """``configs`` partitioned into groups that can share one program (same shapes), in
    first-seen order."""
    out: dict = {}
    for c in configs:
        out.setdefault(tuple(getattr(c, f) for f in G.SHAPE_FIELDS), []).append(c)
    return list(out.values())


def max_runs_per_program(sup: M.ModelConfig, batch: int, microbatches: int = 1) -> int:
    """How many runs of ``sup`` fit in memory at once (at least 1)."""
    return max(1, int(0.6 * available_memory() // training_bytes(sup, batch, 1, microbatches)))


def train_group(variants: Sequence[M.ModelConfig], train_cfg: TrainConfig, seeds: Sequence[int], noise_levels=None,
                *, run_root: Optional[Path] = "runs", checkpoint: bool = True, force: bool = False,
                progress: bool = True, max_runs: Optional[int] = None) -> list[TrainResult]:
    """Train every variant x seed (x noise level, paired with the seeds as in
    :func:`icalign.training.train`) of ``variants`` (configs that share shapes) in as few
    programs as memory allows. Returns one TrainResult per variant, with that variant's own
    config and params (leading run axis over its seeds)."""
    variants = list(dict.fromkeys(variants))
    sup = G.super_config(variants)
    per_variant = run_settings(seeds, None, noise_levels, train_cfg)
    for v in variants:
        _check_configs(v, train_cfg, 1)
    rows = [(v, r) for v in variants for r in per_variant]
    size = max_runs or max_runs_per_program(sup, train_cfg.batch, train_cfg.microbatches)
    results: dict = {v: [] for v in variants}
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        params, losses, run_dir = _train_chunk(sup, chunk, train_cfg, run_root if checkpoint else None, force,
                                               progress)
        for i, (v, _) in enumerate(chunk):
            results[v].append((G.extract(select_run(params, i), v, sup), losses[i], run_dir))
    out = []
    for v in variants:
        ps, ls, dirs = zip(*results[v])
        out.append(TrainResult(params=jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ps), losses=np.stack(ls),
                               model_config=v, train_config=train_cfg, runs=per_variant, run_dir=dirs[0],
                               finished=True))
    return out


def prepare(sup: M.ModelConfig, rows: list, train_cfg: TrainConfig):
    """(objective, RunSpec with gates, initial params) of one program: ``rows`` are
    (variant config, run settings) pairs, every variant a gated variant of ``sup``."""
    runs_R, _ = make_runs([r["seed"] for _, r in rows], [r["lr"] for _, r in rows], [r["noise"] for _, r in rows],
                          train_cfg, distinct=False)  # rows of other variants share seeds
    runs_R = runs_R.replace(gates=G.stack_gates([G.gates_for(v, sup) for v, _ in rows]))
    # each run's own init: the variant's standalone params (same INIT key), in the super shapes
    initial = [G.embed(M.init(runs_R.k_init[i], v), v, sup) for i, (v, _) in enumerate(rows)]
    initial = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *initial)
    return ICAObjective.of(sup, train_cfg, gated=True), runs_R, initial


def _train_chunk(sup, rows, train_cfg, run_root, force, progress):
    objective, runs_R, initial = prepare(sup, rows, train_cfg)
    described = [{**r, "variant": v.to_dict()} for v, r in rows]
    run_dir = None
    # the published loss and protocol: the names groups had before those fields existed
    parts = identity_parts(train_cfg, {"loss": DEFAULT_LOSS, **PROTOCOL_DEFAULTS})
    if run_root is not None:
        run_dir = Path(run_root) / f"group-{M.config_hash(sup, *parts, described, run_identity(len(rows)))}"
    meta = {"super_config": sup.to_dict(), "train_config": train_cfg.to_dict(), "grouped": True}
    done = None if force else load_finished(objective, runs_R, described, steps=train_cfg.steps, run_dir=run_dir,
                                            meta=meta, initial=initial)
    if done is not None:  # loaded instead of trained again (an unfinished or damaged one is resumed by fit)
        return done.state.params, done.losses, run_dir
    res = fit(objective, runs_R, described, steps=train_cfg.steps,
              chunk=train_cfg.chunk, checkpoint_every=train_cfg.checkpoint_every, run_dir=run_dir, force=force,
              meta=meta, progress=progress, desc=f"group of {len({v for v, _ in rows})} archs", initial=initial,
              stop=stopping_rule(train_cfg), tolerate_diverged=bool(train_cfg.lr_grid))
    return res.state.params, res.losses, run_dir
