"""The one training loop. Every trained model goes through :func:`fit`: the in-context
alignment transformer (:mod:`icalign.training.ica`), the latent-concept model and the
necessity fits. Each brings an :class:`Objective` (its init, batch, loss and optimizer); all
get the same non-finite check naming the step, progress bar, metrics log, and checkpoints
with bit-identical resume.

Mechanics:

* One run's step is a pure function of (state, step index, run spec): its batch comes from
  the run's keys folded with the step index, so any step's batch can be regenerated.
* Steps are grouped ``chunk`` at a time in one ``lax.scan`` inside one ``jit`` call, so
  Python only runs between chunks (progress bar, log, non-finite check, checkpoint).
* Several runs (seeds, learning rates, noise levels) train at once: the state carries a
  leading run axis and the chunk is ``vmap``-ed over it.
* Chunks always start at multiples of ``chunk`` counted from step 0, so a resumed run
  executes exactly the same compiled calls on exactly the same (bitwise restored) state as
  an uninterrupted one: its final params are bit-identical.
* With ``shard=True`` the run axis is split over the visible devices (:mod:`icalign.core.sharding`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from icalign import io
from icalign.core.sharding import shard_leading, sweep_mesh, to_host
from icalign.training import checkpoint as ck
from icalign.training.checkpoint import RunIdentityError, check_same_run
from icalign.training.config import RunSpec

__all__ = ["Objective", "TrainState", "LoopResult", "RunExistsError", "RunIdentityError", "NonFiniteLossError", "load_finished",
           "fit", "init_states", "states_from", "run_chunk", "run_identity"]


class RunExistsError(FileExistsError):
    """A finished run is already in the run folder (pass force=True to retrain)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss, or the parameters after an update, became NaN or inf."""


class Objective:
    """What a trained model brings to the loop. Subclasses are frozen dataclasses of static
    settings (configs), so an objective is hashable by value and is the compiled chunk's
    static argument: two objectives with equal settings share one compilation."""

    def init(self, run: RunSpec):
        """Initial params of ONE run."""
        raise NotImplementedError

    def batch(self, run: RunSpec, step):
        """The training batch of ONE run at ``step`` (a pure function of its keys)."""
        raise NotImplementedError

    def loss(self, params, batch) -> jax.Array:
        raise NotImplementedError

    def value_and_grad(self, params, batch):
        """(loss, gradient) of one step; an objective may override it (e.g. to accumulate
        the gradient over slices of the batch)."""
        return jax.value_and_grad(self.loss)(params, batch)

    def optimizer(self, lr) -> optax.GradientTransformation:
        """Built per call so that ``lr`` may be a traced, per-run (vmapped) value."""
        return optax.adam(lr)


@struct.dataclass
class TrainState:
    params: Any
    opt_state: optax.OptState


@dataclasses.dataclass
class LoopResult:
    state: TrainState           # leading run axis R
    losses: np.ndarray          # (R, steps_done)
    run_dir: Optional[Path]
    stopped: str = "budget"     # why training ended: "budget", or the stopping rule's reason


def _init_state(run: RunSpec, objective: Objective) -> TrainState:
    params = objective.init(run)
    return TrainState(params=params, opt_state=objective.optimizer(run.lr).init(params))


init_states = jax.jit(jax.vmap(_init_state, in_axes=(0, None)), static_argnums=1)


@partial(jax.jit, static_argnums=2)
def states_from(params_R, runs_R: RunSpec, objective: Objective) -> TrainState:
    """Initial states (leading run axis) from given params: each run's optimizer state."""
    opt = lambda params, run: TrainState(params=params, opt_state=objective.optimizer(run.lr).init(params))
    return jax.vmap(opt)(params_R, runs_R)


def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]))


@partial(jax.jit, static_argnames=("objective", "length"), donate_argnums=(0,))
def run_chunk(state_R: TrainState, runs_R: RunSpec, start, objective: Objective, length: int):
    """``length`` steps from ``start`` for every run: scan over steps, vmap over runs.
    Returns (state, losses (R, length), healthy (R,): the params after the last update are
    finite and give a finite loss)."""

    def step(state: TrainState, i, run: RunSpec):
        batch = objective.batch(run, i)
        loss, grads = objective.value_and_grad(state.params, batch)
        updates, opt_state = objective.optimizer(run.lr).update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    def one_run(state, run):
        state, losses = jax.lax.scan(lambda s, i: step(s, i, run), state, start + jnp.arange(length))
        # The chunk's last update is not followed by a loss of its own: check its params, and
        # the loss they give on the last batch (params of 1e30 are finite but break the model).
        after = objective.loss(state.params, objective.batch(run, start + length - 1))
        return state, losses, _finite(state.params) & jnp.isfinite(after)

    if jax.tree_util.tree_leaves(runs_R)[0].shape[0] == 1:
        # One run: call it directly. A vmap over a run axis of size 1 turns every dense matmul
        # into a batched one, which XLA's CPU backend ran 25-30% slower (base config, batch
        # 256: 7.5 s vs 5.7 s per step).
        out = one_run(*jax.tree_util.tree_map(lambda a: a[0], (state_R, runs_R)))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.vmap(one_run)(state_R, runs_R)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _open_run_dir(run_dir: Path, force: bool, template: TrainState, meta: dict, steps: int):
    """Open the (locked) run folder: restore its newest valid checkpoint. Returns (restored
    or None, the meta written). Refuses a finished run (unless ``force``: then it starts
    over) and a folder of other settings or another identity (float64 mode, devices, package
    versions: they change a run's numbers). A run is finished only when its final checkpoint
    verifies: otherwise it resumes from its newest valid step, saying so."""
    io.check_inside(run_dir) if run_dir.exists() or run_dir.is_symlink() else None
    writable = not run_dir.exists() or io.writable(run_dir)
    if writable:
        ck.clean_temporaries(run_dir)
    restored, note = None, ""
    if force and run_dir.exists():
        if not writable:
            raise ValueError(f"{run_dir} is not writable: retraining it (force) writes there")
        if io.is_writer():
            for name in (ck.CHECKPOINTS, ck.MANIFESTS, ck.LOG, ck.META):
                _remove(run_dir / name)
    elif run_dir.exists():
        old = ck.read_meta(run_dir)
        if old is None and ck.steps_saved(run_dir):
            raise ck.CheckpointError(f"{run_dir / ck.META} is missing, so the checkpoints in {run_dir} cannot be "
                                     "told apart from another run's: delete the folder or retrain with force=True (--force)")
        if old is not None:
            check_same_run(run_dir, old, meta)
        final = ck.final_step(old, steps)
        if old is not None and old.get("status") == "finished":
            note = ck.verify_step(run_dir, final)
            if not note:
                raise RunExistsError(
                    f"{run_dir} holds a finished run ({old.get('steps_done')} steps); pass force=True "
                    "(--force) to retrain it, or load it (icalign.train.load_run)")
        found = ck.newest_checkpoint(run_dir, template)
        skipped = found[3] if found else []
        problems = ([note] if note and final not in [s for s, _ in skipped] else []) + [p for _, p in skipped]
        if note and problems:
            problems[0] = f"the run was marked finished, but {problems[0]}: it is not finished"
        if not writable:
            at = f"resuming from step {found[0]}" if found else "training from step 0"
            raise ck.CheckpointError(f"{run_dir} is not writable, and {at} writes there" +
                                     (f" ({'; '.join(problems)})" if problems else "") + ": make it writable and run again")
        if found is not None:
            restored = found[:3]
        if skipped:
            ck.set_aside(run_dir, [s for s, _ in skipped])
        if problems:
            aside = f" (set aside in {run_dir / ck.DAMAGED})" if skipped else ""
            warnings.warn(f"resuming {run_dir} from step {found[0] if found else 0}: {'; '.join(problems)}{aside}",
                          stacklevel=3)
    start = restored[0] if restored else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    ck.truncate_log(run_dir / ck.LOG, start)
    meta = {**meta, "status": "running", "steps_done": start, "jax": jax.__version__}
    ck.write_meta(run_dir, meta)
    return restored, meta


def fit(objective: Objective, runs_R: RunSpec, runs: list, *, steps: int, chunk: int,
        checkpoint_every: Optional[int] = None, run_dir: Optional[Path] = None, force: bool = False,
        meta: Optional[dict] = None, progress: bool = True, desc: str = "train", shard: bool = True,
        callback: Optional[Callable[[int, np.ndarray], None]] = None, initial=None,
        stop: Optional[Callable[[np.ndarray], Optional[str]]] = None, tolerate_diverged: bool = False) -> LoopResult:
    """Train every run of ``runs_R`` (leading axis R; ``runs`` describes each, JSON-able)
    for ``steps`` steps of ``objective``.

    ``run_dir=None`` trains in memory. Otherwise the run resumes from the folder's checkpoint
    if one exists, refuses (RunExistsError) if the run there finished unless ``force`` (then
    it restarts from step 0), checkpoints every ``checkpoint_every`` steps (a multiple of
    ``chunk``; default: only at the end) and logs every chunk; ``meta`` is stored with it.
    ``callback(step, losses_RxC)`` runs after each chunk (after its checkpoint).
    Raises NonFiniteLossError naming the first step whose loss is NaN or inf, or the chunk
    after which a run's parameters are. ``initial`` (params with a leading run axis) replaces
    ``objective.init`` (e.g. each variant's own init, embedded in a gated group's shapes).
    ``tolerate_diverged`` (a learning-rate grid): a run turning non-finite is marked diverged
    (warning, ``meta["diverged"]``, NaN losses) and the others go on, untouched under vmap;
    the error is raised only when every run has diverged."""
    R = len(runs)
    checkpoint_every = checkpoint_every or steps
    state = init_states(runs_R, objective) if initial is None else states_from(initial, runs_R, objective)
    start, losses = 0, np.zeros((R, 0), np.float32)
    mesh = sweep_mesh(R) if shard else None
    if run_dir is None:
        return _fit(objective, runs_R, runs, state, start, losses, mesh, steps, chunk, checkpoint_every, None, meta,
                    progress, desc, callback, stop, tolerate_diverged)
    run_dir = Path(run_dir)
    meta = {**(meta or {}), "runs": runs, "identity": run_identity(R, shard)}
    io.lock_folder(run_dir)  # one training run per folder: a second is refused with this one's pid
    try:
        restored, meta = _open_run_dir(run_dir, force, state, meta, steps)
        if restored is not None:
            start, state, losses = restored
            # orbax gives arrays committed to a device; the fresh state is uncommitted, and
            # jit compiles the chunk anew for committed inputs (10 s of a tiny run's resume)
            state = jax.device_get(state)
        return _fit(objective, runs_R, runs, state, start, losses, mesh, steps, chunk, checkpoint_every, run_dir,
                    meta, progress, desc, callback, stop, tolerate_diverged)
    finally:
        io.release(run_dir)


def load_finished(objective: Objective, runs_R: RunSpec, runs: list, *, steps: int, run_dir: Optional[Path],
                  meta: Optional[dict] = None, shard: bool = True, initial=None) -> Optional[LoopResult]:
    """The finished run of these settings in ``run_dir`` (the arguments :func:`fit` would
    get), loaded instead of trained again; None when there is none or it is unfinished (then
    :func:`fit` resumes it). A folder of other settings or another identity is refused."""
    if run_dir is None:
        return None
    want = {**(meta or {}), "runs": runs, "identity": run_identity(len(runs), shard)}
    if not ck.finished_run(Path(run_dir), want, steps):
        return None
    template = init_states(runs_R, objective) if initial is None else states_from(initial, runs_R, objective)
    old = ck.read_meta(Path(run_dir))
    _, state, losses = ck.load_checkpoint(Path(run_dir), template, ck.final_step(old, steps))
    return LoopResult(state=state, losses=losses, run_dir=Path(run_dir), stopped=old.get("stopped") or "budget")


def _stop_at(stop, e: int, steps: int, checkpoint_every: int, history) -> Optional[str]:
    """The stopping rule's reason to end after step ``e`` (asked at checkpoint steps only),
    over the runs that have not diverged."""
    if stop is None or e >= steps or e % checkpoint_every:
        return None
    alive = [h for h in np.concatenate(history, axis=1) if np.all(np.isfinite(h))]
    return stop(np.asarray(alive)) or None if alive else None


def _fit(objective, runs_R, runs, state, start, losses, mesh, steps, chunk, checkpoint_every, run_dir, meta, progress,
         desc, callback, stop=None, tolerate_diverged=False) -> LoopResult:
    R = len(runs)
    dead = ~np.all(np.isfinite(losses), axis=1) if losses.shape[1] else np.zeros(R, bool)  # diverged before a resume
    if mesh is not None:
        if mesh.size > 1:
            # (A one-device mesh would change nothing but jit's cache key: the same program
            # compiled a second time next to unsharded calls.)
            state, runs_R = shard_leading((state, runs_R), mesh)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, disable=not progress, unit="step",
               desc=f"{desc}{'' if run_dir is None else ' ' + run_dir.name} x{R}")
    history = [losses]
    last_ck = start if start > 0 else None
    # a run killed between its last checkpoint and recording that its rule stopped it
    stopped = _stop_at(stop, start, steps, checkpoint_every, history) if start > 0 else None
    try:
        for s, e in ([] if stopped else ck.chunk_bounds(start, steps, chunk)):
            t0 = time.perf_counter()
            state, chunk_losses, finite = run_chunk(state, runs_R, jnp.asarray(s, jnp.int32), objective, e - s)
            chunk_losses, finite = to_host((chunk_losses, finite))
            dt = time.perf_counter() - t0
            bad = ~(np.all(np.isfinite(chunk_losses), axis=1) & np.asarray(finite, bool)) & ~dead
            problem = _nonfinite(np.where(dead[:, None], 0.0, chunk_losses), finite | dead, s, e, runs)
            if problem and tolerate_diverged and not np.all(dead | bad):
                dead |= bad
                warnings.warn(f"{problem}: that run is marked diverged and the others go on", stacklevel=3)
                meta = {**(meta or {}), "diverged": [*((meta or {}).get("diverged") or []), problem]}
                problem = ""
            chunk_losses = np.where(dead[:, None], np.nan, chunk_losses)
            if problem:
                kept = (f"; the last checkpoint (step {last_ck}) is kept in {run_dir}"
                        if run_dir is not None and last_ck is not None else "")
                if run_dir is not None:
                    ck.write_meta(run_dir, {**meta, "status": f"failed: {problem}"})
                raise NonFiniteLossError(f"{problem}: stopping{kept}")
            history.append(chunk_losses)
            bar.update(e - s)
            bar.set_postfix(loss=f"{np.nanmean(chunk_losses[:, -1]) if not dead.all() else np.nan:.4f}")
            if run_dir is not None:
                io.append_text(run_dir / ck.LOG, json.dumps({
                    "step": e, "loss_mean": chunk_losses.mean(axis=1).tolist(),
                    "loss_last": chunk_losses[:, -1].tolist(), "sec_per_step": dt / (e - s)}) + "\n")
                if e % checkpoint_every == 0 or e == steps:
                    ck.save_checkpoint(run_dir, e, state, np.concatenate(history, axis=1))
                    last_ck = e
                    meta = {**meta, "steps_done": e, **({"status": "finished"} if e == steps else {})}
                    ck.write_meta(run_dir, meta)
            if callback is not None:
                callback(e, chunk_losses)
            stopped = _stop_at(stop, e, steps, checkpoint_every, history)
            if stopped:
                break
        if stopped and run_dir is not None:
            done = int(sum(h.shape[1] for h in history))  # its checkpoint was saved at this step
            meta = {**meta, "steps_done": done, "status": "finished", "stopped": stopped}
            ck.write_meta(run_dir, meta)
        if run_dir is not None and meta.get("status") != "finished":
            # Reached when a run killed after its last checkpoint (before its status was
            # written) is opened again: its checkpoint holds every step, so it is finished.
            meta = {**meta, "steps_done": steps, "status": "finished"}
            ck.write_meta(run_dir, meta)
    finally:
        bar.close()
    return LoopResult(state=state, losses=np.concatenate(history, axis=1), run_dir=run_dir,
                      stopped=stopped or "budget")


def run_identity(n_runs: int, shard: bool = True) -> dict:
    """The identity of a group of ``n_runs`` runs trained together (:func:`icalign.io.identity`
    with the number of devices they are sharded over)."""
    return io.identity(sweep_mesh(n_runs).size if shard else 1)


def _nonfinite(losses_RxC: np.ndarray, finite_R: np.ndarray, s: int, e: int, runs: list) -> str:
    """'' if every loss and every run's params are finite; else which step and run broke."""
    bad = ~np.isfinite(losses_RxC)
    if bad.any():
        where = np.argwhere(bad)
        r, i = where[np.argsort(where[:, 1], kind="stable")[0]]
        return f"training loss is {losses_RxC[r, i]} at step {s + i} (0-based) of run {r} {runs[r]}"
    if not np.all(finite_R):
        r = int(np.argmin(finite_R))
        return (f"parameters after the update of step {e - 1} (0-based) of run {r} {runs[r]} are not finite "
                "or give a non-finite loss (the loss before that update was finite)")
    return ""
