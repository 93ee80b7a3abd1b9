"""Training the transformer on in-context alignment (docs/theory.md section 4).

Objective (published; ``TrainConfig.loss`` picks another of ``losses.LOSSES``): online
Plackett-Luce with the cosine reward. The prediction after n seen triplets, y_hat_n, scores
every candidate by s_nj = cos(y_hat_n, y_j); row n of the loss is PL over candidates 0..n-1
ranked by their *shown* rewards (``losses.online_rows``); the loss is the mean over rows
n >= ``min_seen`` (2) and the batch. The ground truth y* never enters. Adam (lr 1e-4), batch 256, 3000 steps, fresh
contexts every step, from ``fold_in(k_data, step)`` (and ``fold_in(k_corrupt, step)`` for
reward corruption), so any step's batch can be regenerated (:func:`batch_for_step`).

Run folders are ``run_root/run-<hash>``, the hash covering the model config, the train
config and the runs; the loop itself is :func:`icalign.training.loop.fit`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icalign import model as M
from icalign.core.losses import DEFAULT_LOSS, LOSSES, online_rows
from icalign.core.tasks import CORRUPTIONS, Context, corrupt, sample_contexts, scored_candidates
from icalign.core.validate import check_memory
from icalign.training import checkpoint as ck
from icalign.training.config import (RunSpec, TrainConfig, check_objective, make_runs, plateau_stop, run_settings,
                                     select_run)
from icalign.training.checkpoint import check_same_run, finished_run
from icalign.training.loop import Objective, fit, init_states, run_identity

__all__ = ["ICAObjective", "TrainResult", "context_objective", "loss_fn", "batch_for_step", "train", "train_or_load", "load_run",
           "run_dir_for", "identity_parts", "training_bytes"]


def loss_fn(params: M.Params, ctx: Context, model_cfg: M.ModelConfig, min_seen: int = 2, gates=None,
            loss: str = DEFAULT_LOSS) -> jax.Array:
    """The online objective (``losses.online_rows`` of the named ``loss``), averaged over rows
    n >= min_seen and the batch. For the published ``cosine_pl``:

    L = mean_{b, n >= min_seen} sum_{i=1..n} [ -s_tau(i) + log sum_{j>=i} exp s_tau(j) ],
    s_j = cos(y_hat_n, y_j), tau = candidates 0..n-1 sorted by shown reward. With per-triplet
    queries the y_j scored are the candidates at the test query (``tasks.scored_candidates``).
    """
    return jnp.mean(context_objective(M.predict(params, ctx, model_cfg, gates), ctx, min_seen, loss))


def context_objective(y_hat_BxNxD: jax.Array, ctx: Context, min_seen: int = 2, loss: str = DEFAULT_LOSS) -> jax.Array:
    """(B,) the objective of each context: rows n >= min_seen of ``losses.online_rows`` of the
    named ``loss`` (row n: the prediction after n seen triplets, ranking candidates 0..n-1 of
    ``tasks.scored_candidates`` by ``ctx.rewards``), averaged. The one definition: training
    (:func:`loss_fn`, its mean over the batch) and the training-health gate
    (:mod:`icalign.analysis.health`, on clean rewards) both call it."""
    rows_BxN = online_rows(loss, y_hat_BxNxD, scored_candidates(ctx), ctx.rewards)
    return jnp.mean(rows_BxN[..., min_seen:], axis=-1)


def batch_for_step(run: RunSpec, step, model_cfg: M.ModelConfig, train_cfg: TrainConfig) -> Context:
    """The training batch of one run at ``step`` (regenerable from the run's keys)."""
    ctx = sample_contexts(jax.random.fold_in(run.k_data, step), train_cfg.batch, model_cfg.d, model_cfg.n,
                          train_cfg.queries, train_cfg.query_corr)
    shown = corrupt(train_cfg.corruption, jax.random.fold_in(run.k_corrupt, step), ctx.r_true, run.noise)
    return ctx.replace(rewards=shown)


@dataclasses.dataclass(frozen=True)
class ICAObjective(Objective):
    """The published training objective for ``model`` with ``train``'s batch, loss and Adam.
    ``train`` is normalised (:meth:`of`) so that runs differing only in lr, noise, steps or
    checkpointing share one compiled chunk."""

    model: M.ModelConfig
    train: TrainConfig
    gated: bool = False  # the runs are gated variants of ``model`` (their gates ride in the batch)

    @classmethod
    def of(cls, model_cfg: M.ModelConfig, train_cfg: TrainConfig, gated: bool = False) -> "ICAObjective":
        return cls(model_cfg, dataclasses.replace(train_cfg, lr=1.0, noise=0.0, steps=1, chunk=1,
                                                  checkpoint_every=1), gated)

    def init(self, run):
        return M.init(run.k_init, self.model)

    def batch(self, run, step):
        ctx = batch_for_step(run, step, self.model, self.train)
        return (ctx, run.gates) if self.gated else ctx

    def loss(self, params, batch):
        ctx, gates = batch if self.gated else (batch, None)
        return loss_fn(params, ctx, self.model, self.train.min_seen, gates, self.train.loss)

    def value_and_grad(self, params, batch):
        """Loss and gradient of the step; with ``train.microbatches`` = k > 1, the mean of
        the k equal slices' losses and gradients, which is the whole batch's (the loss is a
        mean over contexts with the same number of rows each) up to float rounding."""
        k = self.train.microbatches
        if k == 1:
            return jax.value_and_grad(self.loss)(params, batch)
        ctx, gates = batch if self.gated else (batch, None)
        slices = jax.tree_util.tree_map(lambda a: a.reshape(k, a.shape[0] // k, *a.shape[1:]), ctx)

        def add_slice(total, ctx_slice):
            part = (ctx_slice, gates) if self.gated else ctx_slice
            return jax.tree_util.tree_map(jnp.add, total, jax.value_and_grad(self.loss)(params, part)), None

        first = jax.tree_util.tree_map(lambda a: a[0], slices)
        loss_shape = jax.eval_shape(self.loss, params, (first, gates) if self.gated else first)
        zero = (jnp.zeros((), loss_shape.dtype), jax.tree_util.tree_map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add_slice, zero, slices)
        return jax.tree_util.tree_map(lambda a: a / k, total)

    def optimizer(self, lr):
        return optax.adam(lr, b1=self.train.b1, b2=self.train.b2, eps=self.train.eps)


@dataclasses.dataclass
class TrainResult:
    params: M.Params            # leading run axis R
    losses: np.ndarray          # (R, steps_done) training loss per run and step
    model_config: M.ModelConfig
    train_config: TrainConfig
    runs: list                  # [{"seed", "lr", "noise"}] per run
    run_dir: Optional[Path]
    finished: bool
    loaded: bool = False        # True when a finished run was loaded instead of trained now
    stopped: str = "budget"     # why training ended: "budget" or the plateau rule's reason (TrainConfig.stop)
    selection: Optional[dict] = None  # the protocol's record (icalign.training.protocol), where one chose

    def params_of(self, i: int) -> M.Params:
        return select_run(self.params, i)


def identity_parts(train_cfg: TrainConfig, later: dict) -> list:
    """What a run folder's hash covers of the training config: the config without the fields
    of ``later`` ({field: value}) that still hold the value they had before the field existed
    (so older folders keep their names), followed, if the loss or the corruption model is a
    user-registered one, by the hash of its function (:func:`icalign.core.registry.source_hash`)."""
    left_out = {k for k, v in later.items() if getattr(train_cfg, k) == v}
    if "queries" in left_out:  # query_corr means nothing with shared queries
        left_out.add("query_corr")
    train_part = train_cfg
    if left_out:
        train_part = {"__type__": "TrainConfig", **{k: v for k, v in dataclasses.asdict(train_cfg).items()
                                                    if k not in left_out}}
    sources = {f"{field} source": reg.identity(getattr(train_cfg, field))
               for field, reg in (("loss", LOSSES), ("corruption", CORRUPTIONS))}
    sources = {k: v for k, v in sources.items() if v is not None}
    return [train_part] + ([sources] if sources else [])


#: the fields of the training protocol at the published protocol's values: a run folder's
#: hash leaves them out there, so folders written before the fields existed keep their names
PROTOCOL_DEFAULTS = {"lr_grid": (), "stop": "budget", "valid_contexts": 256}


def run_dir_for(model_cfg: M.ModelConfig, train_cfg: TrainConfig, runs: list, run_root="runs",
                shard: bool = True) -> Path:
    """``run_root/run-<hash>``: the hash covers the model config, the train config (with a
    user-registered loss's or corruption's function source), the runs trained together and
    their identity (float64 mode, devices, package versions), so that a run that would give
    other numbers never shares a folder."""
    # Fields added later stay out of the hash at their original behaviour (shared queries,
    # one microbatch, the published loss), so the dict hashes exactly as the dataclass did
    # without them.
    train_part, *sources = identity_parts(train_cfg, {"queries": "shared", "microbatches": 1, "loss": DEFAULT_LOSS,
                                                      **PROTOCOL_DEFAULTS})
    identity = run_identity(len(runs), shard)
    return Path(run_root) / f"run-{M.config_hash(model_cfg, train_part, runs, identity, *sources)}"


def _check_configs(model_cfg, train_cfg, n_runs: int = 1):
    if not isinstance(model_cfg, M.ModelConfig):
        raise ValueError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    check_objective(model_cfg.n, train_cfg.min_seen)
    if train_cfg.queries == "per_triplet" and model_cfg.token_layout != "stacked":
        raise ValueError("TrainConfig.queries='per_triplet' needs ModelConfig.token_layout='stacked', got "
                         f"{model_cfg.token_layout!r}")
    check_memory(f"training {n_runs} run(s) of {model_cfg.n_layers} layers x width {model_cfg.d_model} at batch "
                 f"{train_cfg.batch}", training_bytes(model_cfg, train_cfg.batch, n_runs, train_cfg.microbatches),
                 "train.batch, the number of runs (seeds x levels) or the model size")


def training_bytes(model_cfg: M.ModelConfig, batch: int, n_runs: int = 1, microbatches: int = 1) -> float:
    """A rough float32 footprint of training, per run: params and Adam's two moments, the
    residual stream the backward pass keeps between blocks (each block is recomputed), and
    one block's recomputed activations and attention weights, all on one slice of the batch
    (``TrainConfig.microbatches``). Good to a small factor: enough to refuse what cannot fit."""
    c = model_cfg
    tokens = batch // microbatches * M.seq_len(c)
    saved = (c.n_layers + 1) * tokens * c.d_model
    block = tokens * (4 * c.n_heads * c.head_size + 2 * c.d_model + (c.ffn_size if c.ffn else 0))
    attention = batch // microbatches * c.n_heads * M.seq_len(c) ** 2
    return 4.0 * n_runs * (3 * M.config_param_count(c) + saved + 2 * block + 2 * attention)


def train(model_cfg: M.ModelConfig, train_cfg: TrainConfig = TrainConfig(), seeds: Sequence[int] = (0,),
          lrs=None, noise_levels=None, *, run_root="runs", force: bool = False, progress: bool = True,
          checkpoint: bool = True, callback: Optional[Callable[[int, np.ndarray], None]] = None,
          shard: bool = True) -> TrainResult:
    """Train one architecture for every run (seed / lr / noise level) at once.

    Resumes from the run folder's checkpoint if one exists; refuses (RunExistsError) if the
    run there already finished, unless ``force`` (then it retrains from step 0).
    ``checkpoint=False`` trains in memory only (no run folder). ``callback(step, losses_RxC)``
    is called after each chunk. Raises NonFiniteLossError naming the first step whose loss
    is NaN or inf. ``shard=True`` splits the runs over the largest number of visible devices
    that divides their count; the returned params stay sharded.
    """
    _check_configs(model_cfg, train_cfg, len(run_settings(seeds, lrs, noise_levels, train_cfg)))
    runs_R, runs = make_runs(seeds, lrs, noise_levels, train_cfg)
    run_dir = run_dir_for(model_cfg, train_cfg, runs, run_root, shard) if checkpoint else None
    out = fit(ICAObjective.of(model_cfg, train_cfg), runs_R, runs, steps=train_cfg.steps, chunk=train_cfg.chunk,
              checkpoint_every=train_cfg.checkpoint_every, run_dir=run_dir, force=force, meta=_meta(model_cfg, train_cfg),
              progress=progress, shard=shard, callback=callback, stop=stopping_rule(train_cfg),
              tolerate_diverged=bool(train_cfg.lr_grid))  # a grid's largest rate may diverge
    return TrainResult(params=out.state.params, losses=out.losses, model_config=model_cfg, train_config=train_cfg,
                       runs=runs, run_dir=run_dir, finished=True, stopped=out.stopped)


def stopping_rule(train_cfg: TrainConfig):
    """The loop's stopping rule of ``train_cfg.stop`` (None: the budget)."""
    return plateau_stop if train_cfg.stop == "plateau" else None


def load_run(run, run_root="runs") -> TrainResult:
    """Load a training run (finished or not) written by :func:`train`, as params (leading run
    axis) plus its configs and losses: ``run`` is a run folder, or a run folder's name under
    ``run_root`` (e.g. a result's ``run_folder``). Refused (RunIdentityError, naming the
    fields) when the folder was trained under another identity (float64 mode, devices,
    package versions); a run marked finished loads only its final checkpoint, verified
    against its manifest (CheckpointError naming the damaged file otherwise)."""
    run_dir = Path(run)
    if not run_dir.is_dir() and (Path(run_root) / run_dir).is_dir():
        run_dir = Path(run_root) / run_dir
    meta = ck.read_meta(run_dir)
    if meta is None:
        raise FileNotFoundError(f"{run} is not a run folder (no meta.json), neither as a path nor under "
                                f"run_root={str(run_root)!r}")
    try:
        model_cfg = M.ModelConfig(**meta["model_config"])
        train_cfg = TrainConfig(**meta["train_config"])
        runs = meta["runs"]
        runs_R, _ = make_runs([r["seed"] for r in runs], [r["lr"] for r in runs], [r["noise"] for r in runs],
                              train_cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise ck.CheckpointError(f"{run_dir / ck.META} does not describe a run of icalign.train.train "
                                 f"({type(err).__name__}: {err}): the run folder is damaged or of another kind") from None
    check_same_run(run_dir, meta, {"identity": run_identity(len(runs))})
    finished = meta.get("status") == "finished"
    objective = ICAObjective.of(model_cfg, train_cfg)
    template = jax.eval_shape(lambda: init_states(runs_R, objective))
    template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
    final = ck.final_step(meta, train_cfg.steps)
    restored = ck.load_checkpoint(run_dir, template, final if finished else None)
    if restored is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    step, state, losses = restored
    return TrainResult(params=state.params, losses=losses, model_config=model_cfg, train_config=train_cfg,
                       runs=runs, run_dir=run_dir, finished=finished and step == final, loaded=True,
                       stopped=meta.get("stopped") or "budget")


def train_or_load(model_cfg: M.ModelConfig, train_cfg: TrainConfig = TrainConfig(), seeds=(0,), lrs=None,
                  noise_levels=None, *, run_root="runs", force: bool = False, progress: bool = True) -> TrainResult:
    """Load the finished run with these settings if there is one (and not ``force``): its
    folder must hold these settings and identity (RunIdentityError otherwise) and its final
    checkpoint must verify; otherwise train (resuming a partial or damaged run). ``run_root=None`` trains in memory
    (no run folder)."""
    if run_root is None:
        return train(model_cfg, train_cfg, seeds, lrs, noise_levels, checkpoint=False, progress=progress)
    runs = run_settings(seeds, lrs, noise_levels, train_cfg)
    _check_configs(model_cfg, train_cfg, len(runs))
    run_dir = run_dir_for(model_cfg, train_cfg, runs, run_root)
    want = {**_meta(model_cfg, train_cfg), "runs": runs, "identity": run_identity(len(runs))}
    if not force and finished_run(run_dir, want, train_cfg.steps):
        return load_run(run_dir)
    return train(model_cfg, train_cfg, seeds, lrs, noise_levels, run_root=run_root, force=force,
                 progress=progress)


def _meta(model_cfg: M.ModelConfig, train_cfg: TrainConfig) -> dict:
    return {"model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict()}
