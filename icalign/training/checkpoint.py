"""Run folders: ``meta.json`` (status, settings, identity), ``checkpoints/`` (the training state
and the losses so far, at the last two checkpoint steps) and ``metrics.jsonl`` (one line per
chunk).

Checkpoints are written by orbax's ``CheckpointManager`` (the ecosystem's standard: atomic
per step, multi-host safe, sharded arrays saved as they are) and keep two generations. After
each save, a manifest of the step's files with their SHA-256 is written through the one writer
(:mod:`icalign.io`) into ``manifests/<step>.json``. A restore walks back from the newest
step: a step whose files do not match its manifest (truncated, bit-flipped, missing) or whose
contents do not fit the run (shapes, a loss count other than its step) is skipped with a
warning naming the file, and the previous one is used; when none is valid, a clear error
names the files. Restores are bitwise: a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from icalign import io

__all__ = ["CHECKPOINTS", "META", "LOG", "CheckpointError", "write_meta", "read_meta", "save_checkpoint",
           "load_checkpoint", "truncate_log", "chunk_bounds", "clean_temporaries"]

CHECKPOINTS, MANIFESTS, META, LOG, DAMAGED = "checkpoints", "manifests", "meta.json", "metrics.jsonl", "damaged"
KEEP = 2  # generations: a damaged newest checkpoint falls back to the one before


class CheckpointError(ValueError):
    """No valid checkpoint in a run folder that has checkpoints (the message names the files)."""


def write_meta(run_dir: Path, meta: dict) -> None:
    io.write_json(Path(run_dir) / META, meta)


def read_meta(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the run folder is damaged: delete it or "
                              "retrain with force=True (--force)") from None


def _manager(run_dir: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options)


def _files(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under a step's folder, by relative path."""
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
            if m.stem not in kept:
                m.unlink(missing_ok=True)


def _check_manifest(run_dir: Path, step: int) -> str:
    """'' if the step's files match its manifest; else what is wrong, naming the file."""
    manifest = run_dir / MANIFESTS / f"{step}.json"
    step_dir = run_dir / CHECKPOINTS / str(step)
    try:
        want = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        return f"{manifest} is missing (the run was killed while saving step {step})"
    except (json.JSONDecodeError, KeyError):
        return f"{manifest} is damaged"
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

    manager = _manager(run_dir)
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


def load_checkpoint(run_dir: Path, template):
    """(step, state, losses) from the newest valid checkpoint of the run folder, or None if it
    has none. ``template`` is a state of the right structure, shapes, dtypes and shardings."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.is_dir() else []
    problems = []
    for step in steps:
        problem = _check_manifest(run_dir, step)
        if not problem:
            try:
                state, losses = _restore(run_dir, step, template)
                if problems:
                    _set_aside(run_dir, [p for p in steps if p > step])
                    warnings.warn(f"resuming from step {step}: skipped {'; '.join(problems)} (set aside in "
                                  f"{run_dir / DAMAGED})", stacklevel=2)
                return step, state, losses
            except Exception as err:  # noqa: BLE001  (orbax raises many types on damaged data)
                problem = f"{root / str(step)} cannot be restored: {err}"
        problems.append(problem)
    if problems:
        raise CheckpointError(f"no valid checkpoint in {run_dir}: {'; '.join(problems)}. Delete the run folder or "
                              "retrain with force=True (--force)")
    return None


def _set_aside(run_dir: Path, steps: list[int]) -> None:
    """Move damaged steps out of orbax's folder (it would refuse to save those steps again)."""
    if not io.is_writer():
        return
    for step in steps:
        dest = run_dir / DAMAGED / str(step)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir / CHECKPOINTS / str(step)), str(dest))
        (run_dir / MANIFESTS / f"{step}.json").unlink(missing_ok=True)


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
    """Keep only log lines up to ``step`` (a killed run may have logged past its checkpoint)."""
    path = Path(path)
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
    io.write_text(path, "\n".join(keep) + "\n" if keep else "")


def chunk_bounds(start: int, total: int, chunk: int):
    """Chunks on the fixed grid of multiples of ``chunk`` from step 0, so a resumed run
    executes exactly the compiled calls of an uninterrupted one."""
    s = start
    while s < total:
        e = min((s // chunk + 1) * chunk, total)
        yield s, e
        s = e
