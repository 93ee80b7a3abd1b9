"""Run folders: ``meta.json`` (status, settings, identity), ``checkpoints/`` (the training state
and the losses so far, at the last two checkpoint steps) and ``metrics.jsonl`` (one line per
chunk).

Checkpoints are written by orbax's ``CheckpointManager`` (the ecosystem's standard: atomic
per step, multi-host safe, sharded arrays saved as they are) and keep two generations. After
each save, a manifest of the step's files with their SHA-256 is written through the one writer
(:mod:`icalign.io`) into ``manifests/<step>.json``; it covers every file of the step folder,
which is everything a restore reads (orbax keeps no checksums of its own). A restore walks back
from the newest step: a step whose files do not match its manifest (truncated, bit-flipped,
missing, a manifest that is damaged) or whose contents do not fit the run (shapes, a loss count
other than its step) is skipped, naming the file, and the previous one is used; when none is
valid, a clear error names the files. Loading changes nothing on disk; resuming
(:func:`icalign.training.loop.fit`) sets the damaged steps aside in ``damaged/``. Restores are
bitwise: a resumed run is bit-identical to an uninterrupted one.

A run is finished only when ``meta.json`` says so and its final checkpoint verifies: a damaged
final checkpoint makes it unfinished again (it resumes from its newest valid step; it is never
loaded in its place). Every load and resume compares the folder's ``meta.json`` (configs, runs,
identity) with the caller's and refuses a difference, naming the fields.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from icalign import io

__all__ = ["CHECKPOINTS", "META", "LOG", "CheckpointError", "RunIdentityError", "check_same_run", "finished_run", "write_meta", "read_meta", "save_checkpoint", "verify_step",
           "steps_saved", "newest_checkpoint", "load_checkpoint", "set_aside", "truncate_log", "chunk_bounds",
           "clean_temporaries"]

CHECKPOINTS, MANIFESTS, META, LOG, DAMAGED = "checkpoints", "manifests", "meta.json", "metrics.jsonl", "damaged"
KEEP = 2  # generations: a damaged newest checkpoint falls back to the one before


class CheckpointError(ValueError):
    """No valid checkpoint in a run folder that has checkpoints (the message names the files)."""


class RunIdentityError(ValueError):
    """A run folder holds a run of other settings or another identity (x64, devices, versions)."""


def write_meta(run_dir: Path, meta: dict) -> None:
    io.write_json(Path(run_dir) / META, meta)


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} {what}; the run folder is damaged: delete it or retrain with force=True (--force)")


def read_meta(run_dir: Path) -> Optional[dict]:
    """The run folder's ``meta.json`` (None when there is none); a damaged one is named."""
    path = Path(run_dir) / META
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise _damaged(path, "is not a regular file")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _damaged(path, f"cannot be read as JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("status", ""), str):
        raise _damaged(path, "does not hold a run's record (a JSON object with a status)")
    return meta


def _flat(x, prefix: str = "") -> dict:
    """A JSON record as {"a.b[0].c": leaf}, so that differences name the field."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _flat(val, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _flat(val, f"{prefix}[{i}]").items()} or {prefix: []}
    return {prefix: x}


def check_same_run(run_dir: Path, old: dict, want: dict) -> None:
    """Refuse (RunIdentityError, listing the differing fields) a run folder whose record
    ``old`` (its meta.json) differs from ``want`` in any field ``want`` names: configs, runs,
    identity (float64 mode, devices, package versions). A field inside a config that the
    record lacks was added to the code after the folder was written (the folder's hash, its
    path, covers it) and is not compared."""
    want = json.loads(json.dumps(io.to_jsonable(want)))
    diff = []
    for key, value in want.items():
        new_f, old_f = _flat(value, key), _flat(old.get(key, "(missing)"), key)
        added_since = isinstance(value, dict) and isinstance(old.get(key), dict) and key != "identity"
        diff += [f"{k}: {old_f.get(k, '(missing)')!r} -> {new_f.get(k, '(missing)')!r}"
                 for k in sorted(set(new_f) | set(old_f))
                 if old_f.get(k, "(missing)") != new_f.get(k, "(missing)") and not (added_since and k not in old_f)]
    if diff:
        raise RunIdentityError(
            f"{run_dir} holds a run of other settings or another identity ({'; '.join(diff)}; its meta.json -> "
            "this call): its numbers are not this run's. Use it under its own settings, or retrain with force=True "
            "(--force)")


def final_step(meta: Optional[dict], steps: int) -> int:
    """The step a finished run ended at: ``steps``, or earlier when its stopping rule
    (``TrainConfig.stop="plateau"``) ended it (its meta records ``stopped`` and ``steps_done``)."""
    if meta and meta.get("status") == "finished" and meta.get("stopped") and isinstance(meta.get("steps_done"), int):
        return meta["steps_done"]
    return steps


def finished_run(run_dir: Path, want: dict, steps: int) -> bool:
    """True when ``run_dir`` holds a finished run of ``want``'s settings and identity whose
    final checkpoint (step ``steps``) verifies against its manifest; False when it holds no
    run or an unfinished one (a damaged final checkpoint makes a run unfinished: the loop
    resumes it from its newest valid step). A folder of other settings, another identity or a
    damaged meta.json is refused, naming the fields or the file."""
    run_dir = Path(run_dir)
    if not run_dir.exists() and not run_dir.is_symlink():
        return False
    io.check_inside(run_dir)
    old = read_meta(run_dir)
    if old is None:
        return False
    check_same_run(run_dir, old, want)
    return old.get("status") == "finished" and not verify_step(run_dir, final_step(old, steps))


def _manager(run_dir: Path, read_only: bool = False):
    import orbax.checkpoint as ocp

    # for a restore: nothing created or cleaned (orbax's own read_only mode logs warnings on each load)
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else KEEP, create=not read_only,
                                           enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options)


def _files(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under a step's folder, by relative path: every file a restore
    reads (orbax keeps no checksums of its own, so this manifest is the only integrity check)."""
    return {str(p.relative_to(step_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(step_dir.rglob("*")) if p.is_file()}


def save_checkpoint(run_dir: Path, step: int, state, losses: np.ndarray) -> None:
    """Save (state, losses) at ``step``; keep the last two steps, each with its manifest."""
    import orbax.checkpoint as ocp

    run_dir = Path(run_dir)
    manager = _manager(run_dir)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              losses=ocp.args.JsonSave(np.asarray(losses, np.float32).tolist()))
    manager.save(int(step), args=args, force=True)
    manager.wait_until_finished()
    manager.close()
    if io.is_writer():
        step_dir = run_dir / CHECKPOINTS / str(int(step))
        io.write_json(run_dir / MANIFESTS / f"{int(step)}.json", {"step": int(step), "files": _files(step_dir)})
        kept = {p.name for p in (run_dir / CHECKPOINTS).iterdir() if p.name.isdigit()}
        for m in (run_dir / MANIFESTS).glob("*.json"):
            if m.stem not in kept and m.is_file():
                m.unlink(missing_ok=True)


def verify_step(run_dir: Path, step: int) -> str:
    """'' if checkpoint ``step`` exists and its files match its manifest; else what is wrong,
    naming the file (a manifest that is missing, not a file, or not a manifest counts too)."""
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFESTS / f"{step}.json"
    step_dir = run_dir / CHECKPOINTS / str(step)
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    if not manifest.exists():
        return f"{manifest} is missing (the run was killed while saving step {step})"
    try:
        want = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest} is damaged ({type(err).__name__}: {err})"
    if not isinstance(want, dict) or not all(isinstance(v, str) for v in want.values()):
        return f"{manifest} is damaged (its files are not a table of checksums)"
    got = _files(step_dir)
    for name, digest in want.items():
        if name not in got:
            return f"{step_dir / name} is missing"
        if got[name] != digest:
            return f"{step_dir / name} does not match its checksum in {manifest} (truncated or corrupted)"
    extra = sorted(set(got) - set(want))
    return f"{step_dir / extra[0]} is not in {manifest}" if extra else ""


def _restore(run_dir: Path, step: int, template):
    import jax
    import orbax.checkpoint as ocp

    manager = _manager(run_dir, read_only=True)  # a restore changes nothing (the folder may be read-only)
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template),
                                                            losses=ocp.args.JsonRestore()))
    finally:
        manager.close()
    want = jax.tree_util.tree_map(lambda a: (np.shape(a), np.dtype(a.dtype)), template)
    got = jax.tree_util.tree_map(lambda a: (np.shape(a), np.dtype(a.dtype)), out["state"])
    if want != got:
        raise ValueError("its shapes or dtypes do not match the run's configs")
    losses = np.asarray(out["losses"], np.float32)
    if losses.ndim != 2 or losses.shape[1] != step:
        raise ValueError(f"it holds {losses.shape[-1] if losses.ndim else 0} losses per run, not {step}")
    return out["state"], losses


def steps_saved(run_dir: Path) -> list[int]:
    """The checkpoint steps in the run folder, newest first."""
    root = Path(run_dir) / CHECKPOINTS
    return sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.is_dir() else []


def newest_checkpoint(run_dir: Path, template, step: Optional[int] = None):
    """(step, state, losses, skipped) from the newest valid checkpoint (only ``step``, a
    finished run's final one, if given), or None if the folder has none; ``skipped`` lists (step, what is wrong) of the newer
    damaged ones. Changes nothing on disk. ``template`` is a state of the right structure,
    shapes, dtypes and shardings. Raises CheckpointError naming the files when none is valid."""
    run_dir = Path(run_dir)
    steps = steps_saved(run_dir) if step is None else [step]
    skipped = []
    for s in steps:
        problem = verify_step(run_dir, s)
        if not problem:
            try:
                return (s, *_restore(run_dir, s, template), skipped)
            except Exception as err:  # noqa: BLE001  (orbax raises many types on damaged data)
                problem = f"{run_dir / CHECKPOINTS / str(s)} cannot be restored: {err}"
        skipped.append((s, problem))
    if skipped and step is not None:
        raise CheckpointError(f"{run_dir} is marked finished, but {skipped[0][1]}: the run is not finished. Train it "
                              "again with the same settings (icalign.train.train_or_load, or the same icalign run) to "
                              "resume it from its newest valid step")
    if skipped:
        raise CheckpointError(f"no valid checkpoint in {run_dir}: {'; '.join(p for _, p in skipped)}. Delete the "
                              "run folder or retrain with force=True (--force)")
    return None


def load_checkpoint(run_dir: Path, template, step: Optional[int] = None):
    """(step, state, losses) of :func:`newest_checkpoint`, read only (nothing is set aside),
    warning about each damaged newer step it skipped."""
    found = newest_checkpoint(run_dir, template, step)
    if found is None:
        return None
    s, state, losses, skipped = found
    if skipped:
        warnings.warn(f"loading step {s} of {run_dir}: skipped {'; '.join(p for _, p in skipped)}", stacklevel=2)
    return s, state, losses


def set_aside(run_dir: Path, steps: list[int]) -> Path:
    """Move damaged steps out of orbax's folder (it would refuse to save those steps again)
    into ``damaged/``; returns that folder."""
    run_dir = Path(run_dir)
    if io.is_writer():
        for step in steps:
            dest = run_dir / DAMAGED / str(step)
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if (run_dir / CHECKPOINTS / str(step)).exists():
                shutil.move(str(run_dir / CHECKPOINTS / str(step)), str(dest))
            manifest = run_dir / MANIFESTS / f"{step}.json"
            shutil.rmtree(manifest) if manifest.is_dir() and not manifest.is_symlink() else manifest.unlink(missing_ok=True)
    return run_dir / DAMAGED


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove what killed writers left: the one writer's ``.*.tmp`` files and orbax's
    unfinished step folders. Returns what was removed."""
    run_dir = Path(run_dir)
    removed = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    removed += [p for p in (run_dir / CHECKPOINTS).glob("*") if p.is_dir() and not p.name.isdigit()] \
        if (run_dir / CHECKPOINTS).is_dir() else []
    if io.is_writer():
        for p in removed:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def truncate_log(path: Path, step: int) -> None:
    """Keep only log lines up to ``step`` (a killed run may have logged past its checkpoint);
    lines that are not a chunk's record (cut by a kill, or edited) are dropped."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (the run's log); remove it and run again")
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and type(rec.get("step")) is int and rec["step"] <= step:
            keep.append(line)
    io.write_text(path, "\n".join(keep) + "\n" if keep else "")


def chunk_bounds(start: int, total: int, chunk: int):
    """Chunks on the fixed grid of multiples of ``chunk`` from step 0, so a resumed run
    executes exactly the compiled calls of an uninterrupted one."""
    s = start
    while s < total:
        e = min((s // chunk + 1) * chunk, total)
        yield s, e
        s = e
