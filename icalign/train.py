"""Training the transformer on in-context alignment (THEORY.md section 4).

Objective (published): online Plackett-Luce with the cosine reward. The prediction after n
seen triplets, y_hat_n, scores every candidate by s_nj = cos(y_hat_n, y_j); row n of the loss
is PL over candidates 0..n-1 ranked by their *shown* rewards
(``losses.prefix_plackett_luce``); the loss is the mean over rows n >= ``min_seen`` (2) and
the batch. The ground truth y* never enters. Adam (lr 1e-4), batch 256, 3000 steps, fresh
contexts every step.

Mechanics:

* One run's step is a pure function of (state, step index, run spec). Its data come from
  ``fold_in(k_data, step)`` (and ``fold_in(k_corrupt, step)`` for reward corruption), with
  ``k_data``, ``k_corrupt`` and ``k_init`` split off the run's seed, so any step's batch can
  be regenerated (:func:`batch_for_step`).
* Steps are grouped ``chunk`` at a time in one ``lax.scan`` inside one ``jit`` call, so
  Python only runs between chunks (progress bar, log, NaN check, checkpoint).
* Several runs of one architecture (seeds, learning rates, noise levels) train at once:
  the state carries a leading run axis and the chunk is ``vmap``-ed over it.
* Every ``checkpoint_every`` steps the state is written with ``flax.serialization``
  (msgpack; no pickle), atomically, into ``run_root/run-<hash>``, the hash covering the
  model config, the train config and the runs. Chunks always start at multiples of
  ``chunk`` counted from step 0, so a resumed run executes exactly the same compiled calls
  on exactly the same (bitwise restored) state as an uninterrupted one: its final params
  are bit-identical.
* With ``shard=True`` (the default) the run axis of the state and of the RunSpec is split
  over the visible devices (:mod:`icalign.sharding`): the compiled chunk then runs each
  device's runs on that device, with no communication. On one device nothing changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from icalign import model as M
from icalign._validate import check_choice, check_int
from icalign.losses import cosine_reward, prefix_plackett_luce
from icalign.sharding import shard_leading, sweep_mesh, to_host
from icalign.tasks import CORRUPTIONS, Context, check_corruption_levels, corrupt, sample_contexts

__all__ = [
    "TrainConfig",
    "TrainState",
    "RunSpec",
    "TrainResult",
    "RunExistsError",
    "NonFiniteLossError",
    "loss_fn",
    "batch_for_step",
    "make_runs",
    "init_state",
    "make_train_step",
    "train",
    "train_or_load",
    "load_run",
    "run_dir_for",
    "select_run",
]


class RunExistsError(FileExistsError):
    """A finished run is already in the run folder (pass force=True to retrain)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the published defaults). ``noise`` is the default level of
    the ``corruption`` model applied to the shown rewards (0: clean critic); per-run learning
    rates and noise levels given to :func:`train` override ``lr`` and ``noise``.
    ``chunk`` steps run per compiled call (and per log line); checkpoints every
    ``checkpoint_every`` steps (a multiple of ``chunk``)."""

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

    def __post_init__(self):
        for name, minimum in (("batch", 1), ("steps", 1), ("min_seen", 1), ("chunk", 1),
                              ("checkpoint_every", 1)):
            try:
                check_int(name, getattr(self, name), minimum)
            except ValueError as e:
                raise ValueError(f"TrainConfig.{e}") from None
        if self.checkpoint_every % self.chunk:
            raise ValueError(
                f"TrainConfig.checkpoint_every={self.checkpoint_every} must be a multiple of "
                f"chunk={self.chunk} (checkpoints are taken between compiled chunks)")
        for name in ("lr", "b1", "b2", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("b1", "b2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"TrainConfig.{name} must be < 1, got {getattr(self, name)!r}")
        check_choice("TrainConfig.corruption", self.corruption, CORRUPTIONS)
        check_corruption_levels(self.corruption, self.noise)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@struct.dataclass
class RunSpec:
    """What differs between runs trained together (each field has a leading run axis)."""

    k_init: jax.Array
    k_data: jax.Array
    k_corrupt: jax.Array
    lr: jax.Array
    noise: jax.Array


@struct.dataclass
class TrainState:
    params: M.Params
    opt_state: optax.OptState


@dataclasses.dataclass
class TrainResult:
    params: M.Params            # leading run axis R
    losses: np.ndarray          # (R, steps_done) training loss per run and step
    model_config: M.ModelConfig
    train_config: TrainConfig
    runs: list                  # [{"seed", "lr", "noise"}] per run
    run_dir: Optional[Path]
    finished: bool

    def params_of(self, i: int) -> M.Params:
        return select_run(self.params, i)


def select_run(tree, i: int):
    """Run i of a pytree with a leading run axis."""
    return jax.tree_util.tree_map(lambda a: a[i], tree)


# ---------------------------------------------------------------------------------------------
# Loss and data
# ---------------------------------------------------------------------------------------------


def loss_fn(params: M.Params, ctx: Context, model_cfg: M.ModelConfig, min_seen: int = 2) -> jax.Array:
    """Online PL with the cosine reward, averaged over rows n >= min_seen and the batch.

    L = mean_{b, n >= min_seen} sum_{i=1..n} [ -s_tau(i) + log sum_{j>=i} exp s_tau(j) ],
    s_j = cos(y_hat_n, y_j), tau = candidates 0..n-1 sorted by shown reward.
    """
    y_hat_BxNxD = M.predict(params, ctx, model_cfg)
    scores_BxNxN = cosine_reward(y_hat_BxNxD, ctx.ys[..., None, :, :])
    rows_BxN = prefix_plackett_luce(scores_BxNxN, ctx.rewards)
    return jnp.mean(rows_BxN[..., min_seen:])


def batch_for_step(run: RunSpec, step, model_cfg: M.ModelConfig, train_cfg: TrainConfig) -> Context:
    """The training batch of one run at ``step`` (regenerable from the run's keys)."""
    ctx = sample_contexts(jax.random.fold_in(run.k_data, step), train_cfg.batch, model_cfg.d, model_cfg.n)
    shown = corrupt(train_cfg.corruption, jax.random.fold_in(run.k_corrupt, step), ctx.r_true, run.noise)
    return ctx.replace(rewards=shown)


def make_runs(seeds: Sequence[int], lrs=None, noise_levels=None, train_cfg: TrainConfig = TrainConfig()):
    """Validate and broadcast per-run settings. Returns (RunSpec with leading axis R, list of
    {"seed", "lr", "noise"} dicts). A length-1 (or scalar) setting is shared by all runs."""
    seeds = [check_int("seed", s) for s in np.atleast_1d(np.asarray(seeds, dtype=object)).tolist()]
    lrs = [train_cfg.lr] if lrs is None else np.atleast_1d(np.asarray(lrs, dtype=float)).tolist()
    noise = [train_cfg.noise] if noise_levels is None else np.atleast_1d(np.asarray(noise_levels, dtype=float)).tolist()
    R = max(len(seeds), len(lrs), len(noise))
    for name, vals in (("seeds", seeds), ("lrs", lrs), ("noise_levels", noise)):
        if len(vals) not in (1, R):
            raise ValueError(f"{name} has {len(vals)} values; give 1 or {R} (one per run)")
    seeds, lrs, noise = (v * R if len(v) == 1 else v for v in (seeds, lrs, noise))
    for lr in lrs:
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rates must be finite numbers > 0, got {lrs}")
    check_corruption_levels(train_cfg.corruption, noise)
    roots = [jax.random.PRNGKey(s) for s in seeds]
    # Separate streams for init, data and corruption: changing one never shifts the others.
    spec = RunSpec(
        k_init=jnp.stack([jax.random.fold_in(k, 0) for k in roots]),
        k_data=jnp.stack([jax.random.fold_in(k, 1) for k in roots]),
        k_corrupt=jnp.stack([jax.random.fold_in(k, 2) for k in roots]),
        lr=jnp.asarray(lrs, jnp.float32),
        noise=jnp.asarray(noise, jnp.float32),
    )
    return spec, [{"seed": s, "lr": lr, "noise": nz} for s, lr, nz in zip(seeds, lrs, noise)]


def _optimizer(lr, train_cfg: TrainConfig):
    # Built per call so that lr may be a traced, per-run (vmapped) value.
    return optax.adam(lr, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps)


def init_state(run: RunSpec, model_cfg: M.ModelConfig, train_cfg: TrainConfig) -> TrainState:
    """Initial state of ONE run (vmap it over a RunSpec with a run axis)."""
    params = M.init(run.k_init, model_cfg)
    return TrainState(params=params, opt_state=_optimizer(run.lr, train_cfg).init(params))


def make_train_step(model_cfg: M.ModelConfig, train_cfg: TrainConfig) -> Callable:
    """step(state, step_index, run) -> (state, loss) for ONE run: sample the step's batch,
    take the gradient of :func:`loss_fn`, apply one Adam update. Pure; jit/vmap/scan it."""

    def step(state: TrainState, i, run: RunSpec):
        ctx = batch_for_step(run, i, model_cfg, train_cfg)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, ctx, model_cfg, train_cfg.min_seen)
        updates, opt_state = _optimizer(run.lr, train_cfg).update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


def _step_key(train_cfg: TrainConfig) -> TrainConfig:
    """The train config with the fields a compiled step does not depend on set to fixed values
    (lr and noise are per-run arrays; steps and checkpoints are Python-side), so runs that
    differ only in those reuse one compilation."""
    return dataclasses.replace(train_cfg, lr=1.0, noise=0.0, steps=1, chunk=1, checkpoint_every=1)


@partial(jax.jit, static_argnames=("model_cfg", "train_cfg", "length"), donate_argnums=(0,))
def _run_chunk(state_R: TrainState, runs_R: RunSpec, start, model_cfg, train_cfg, length: int):
    """``length`` steps from ``start`` for every run: scan over steps, vmap over runs.
    ``train_cfg`` must be passed through :func:`_step_key`."""
    step = make_train_step(model_cfg, train_cfg)

    def one_run(state, run):
        return jax.lax.scan(lambda s, i: step(s, i, run), state, start + jnp.arange(length))

    if jax.tree_util.tree_leaves(runs_R)[0].shape[0] == 1:
        # One run: call it directly. A vmap over a run axis of size 1 turns every dense matmul
        # into a batched one, which XLA's CPU backend ran 25-30% slower (base config, batch
        # 256: 7.5 s vs 5.7 s per step).
        state, losses = one_run(*jax.tree_util.tree_map(lambda a: a[0], (state_R, runs_R)))
        return jax.tree_util.tree_map(lambda a: a[None], (state, losses))
    return jax.vmap(one_run)(state_R, runs_R)  # state, losses (R, length)


_init_states = jax.jit(jax.vmap(init_state, in_axes=(0, None, None)), static_argnums=(1, 2))


# ---------------------------------------------------------------------------------------------
# Run folders and checkpoints
# ---------------------------------------------------------------------------------------------


def run_dir_for(model_cfg: M.ModelConfig, train_cfg: TrainConfig, runs: list, run_root="runs") -> Path:
    """``run_root/run-<hash>``: the hash covers the model config, train config and runs."""
    return Path(run_root) / f"run-{M.config_hash(model_cfg, train_cfg, runs)}"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_meta(run_dir: Path, meta: dict) -> None:
    _atomic_write(run_dir / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())


def _read_meta(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / "meta.json").read_text())
    except FileNotFoundError:
        return None


def _save_checkpoint(run_dir: Path, step: int, state: TrainState, losses: np.ndarray) -> None:
    # to_host: the whole state on the host even when it is sharded (across hosts too).
    payload = {"step": int(step), "state": to_host(state), "losses": np.asarray(losses)}
    _atomic_write(run_dir / "checkpoint.msgpack", serialization.to_bytes(payload))


def _load_checkpoint(run_dir: Path, template: TrainState):
    """(step, state, losses) from the run folder, or None. Shapes checked against template."""
    path = Path(run_dir) / "checkpoint.msgpack"
    if not path.exists():
        return None
    raw = serialization.msgpack_restore(path.read_bytes())
    state = serialization.from_state_dict(jax.device_get(template), raw["state"])
    want = jax.tree_util.tree_map(np.shape, jax.device_get(template))
    got = jax.tree_util.tree_map(np.shape, state)
    if want != got:
        raise ValueError(f"checkpoint {path} does not match the configs (shapes differ); "
                         "delete the run folder or pass force=True")
    state = jax.tree_util.tree_map(jnp.asarray, state)
    return int(raw["step"]), state, np.asarray(raw["losses"], np.float32)


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log lines up to ``step`` (a killed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", math.inf) <= step:
            keep.append(line)
    _atomic_write(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _chunk_bounds(start: int, total: int, chunk: int):
    """Chunks on the fixed grid of multiples of ``chunk`` from step 0."""
    s = start
    while s < total:
        e = min((s // chunk + 1) * chunk, total)
        yield s, e
        s = e


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(model_cfg: M.ModelConfig, train_cfg: TrainConfig = TrainConfig(), seeds: Sequence[int] = (0,),
          lrs=None, noise_levels=None, *, run_root="runs", force: bool = False, progress: bool = True,
          checkpoint: bool = True, callback: Optional[Callable[[int, np.ndarray], None]] = None,
          shard: bool = True) -> TrainResult:
    """Train one architecture for every run (seed / lr / noise level) at once.

    Resumes from the run folder's checkpoint if one exists; refuses (RunExistsError) if the
    run there already finished, unless ``force`` (then it retrains from step 0).
    ``callback(step, losses_RxC)`` is called after each chunk (after its checkpoint).
    Raises NonFiniteLossError naming the first step whose loss is NaN or inf.
    ``checkpoint=False`` trains in memory only (no run folder).
    ``shard=True`` splits the runs over the largest number of visible devices that divides
    their count (:func:`icalign.sharding.sweep_mesh`); the returned params stay sharded.
    """
    if not isinstance(model_cfg, M.ModelConfig):
        raise ValueError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    runs_R, runs = make_runs(seeds, lrs, noise_levels, train_cfg)
    R = len(runs)
    state = _init_states(runs_R, model_cfg, _step_key(train_cfg))
    start, losses = 0, np.zeros((R, 0), np.float32)

    run_dir = None
    if checkpoint:
        run_dir = run_dir_for(model_cfg, train_cfg, runs, run_root)
        meta = _read_meta(run_dir)
        if force and run_dir.exists():
            for name in ("checkpoint.msgpack", "metrics.jsonl", "meta.json"):
                (run_dir / name).unlink(missing_ok=True)
        elif meta is not None and meta.get("status") == "finished":
            raise RunExistsError(
                f"{run_dir} holds a finished run ({meta.get('steps_done')} steps); pass "
                "force=True (--force) to retrain it, or load it with icalign.train.load_run")
        else:
            restored = _load_checkpoint(run_dir, state)
            if restored is not None:
                start, state, losses = restored
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(run_dir / "metrics.jsonl", start)
        meta = {"status": "running", "steps_done": start, "model_config": model_cfg.to_dict(),
                "train_config": train_cfg.to_dict(), "runs": runs, "jax": jax.__version__}
        _write_meta(run_dir, meta)

    if shard:
        # After the restore, so a fresh and a resumed state are placed alike. Runs are
        # independent: each device trains its slice of them, no collective is compiled in.
        mesh = sweep_mesh(R)
        if mesh.size > 1:
            # (A one-device mesh would change nothing but jit's cache key: the same program
            # compiled a second time next to unsharded calls.)
            state, runs_R = shard_leading((state, runs_R), mesh)

    from tqdm.auto import tqdm

    bar = tqdm(total=train_cfg.steps, initial=start, disable=not progress, unit="step",
               desc=f"train{'' if run_dir is None else ' ' + run_dir.name} x{R}")
    history = [losses]
    last_ck = start if start > 0 else None
    try:
        for s, e in _chunk_bounds(start, train_cfg.steps, train_cfg.chunk):
            t0 = time.perf_counter()
            state, chunk_losses = _run_chunk(state, runs_R, jnp.asarray(s, jnp.int32), model_cfg,
                                             _step_key(train_cfg), e - s)
            chunk_losses = to_host(chunk_losses)
            dt = time.perf_counter() - t0
            bad = ~np.isfinite(chunk_losses)
            if bad.any():
                r, i = np.argwhere(bad)[np.argsort(np.argwhere(bad)[:, 1], kind="stable")[0]]
                ck = (f"; the last checkpoint (step {last_ck}) is kept in {run_dir}"
                      if run_dir is not None and last_ck is not None else "")
                if run_dir is not None:
                    _write_meta(run_dir, {**meta, "status": f"failed: non-finite loss at step {s + i}"})
                raise NonFiniteLossError(
                    f"training loss is {chunk_losses[r, i]} at step {s + i} (0-based) of run {r} "
                    f"{runs[r]}: stopping{ck}")
            history.append(chunk_losses)
            bar.update(e - s)
            bar.set_postfix(loss=f"{chunk_losses[:, -1].mean():.4f}")
            if run_dir is not None:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": e, "loss_mean": chunk_losses.mean(axis=1).tolist(),
                                        "loss_last": chunk_losses[:, -1].tolist(),
                                        "sec_per_step": dt / (e - s)}) + "\n")
                if e % train_cfg.checkpoint_every == 0 or e == train_cfg.steps:
                    _save_checkpoint(run_dir, e, state, np.concatenate(history, axis=1))
                    last_ck = e
                    meta = {**meta, "steps_done": e}
                    if e == train_cfg.steps:
                        meta["status"] = "finished"
                    _write_meta(run_dir, meta)
            if callback is not None:
                callback(e, chunk_losses)
    finally:
        bar.close()
    return TrainResult(params=state.params, losses=np.concatenate(history, axis=1), model_config=model_cfg,
                       train_config=train_cfg, runs=runs, run_dir=run_dir, finished=True)


def load_run(run_dir) -> TrainResult:
    """Load a run folder (finished or not) written by :func:`train`."""
    run_dir = Path(run_dir)
    meta = _read_meta(run_dir)
    if meta is None:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no meta.json)")
    model_cfg = M.ModelConfig(**meta["model_config"])
    train_cfg = TrainConfig(**meta["train_config"])
    runs = meta["runs"]
    runs_R, _ = make_runs([r["seed"] for r in runs], [r["lr"] for r in runs],
                          [r["noise"] for r in runs], train_cfg)
    template = jax.eval_shape(lambda: _init_states(runs_R, model_cfg, _step_key(train_cfg)))
    template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
    restored = _load_checkpoint(run_dir, template)
    if restored is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    step, state, losses = restored
    return TrainResult(params=state.params, losses=losses, model_config=model_cfg, train_config=train_cfg,
                       runs=runs, run_dir=run_dir, finished=meta.get("status") == "finished"
                       and step == train_cfg.steps)


def train_or_load(model_cfg: M.ModelConfig, train_cfg: TrainConfig = TrainConfig(), seeds=(0,), lrs=None,
                  noise_levels=None, *, run_root="runs", force: bool = False, progress: bool = True) -> TrainResult:
    """Load the finished run with these settings if there is one (and not ``force``);
    otherwise train (resuming a partial run)."""
    runs_R, runs = make_runs(seeds, lrs, noise_levels, train_cfg)
    run_dir = run_dir_for(model_cfg, train_cfg, runs, run_root)
    meta = _read_meta(run_dir)
    if not force and meta is not None and meta.get("status") == "finished":
        return load_run(run_dir)
    return train(model_cfg, train_cfg, seeds, lrs, noise_levels, run_root=run_root, force=force,
                 progress=progress)
