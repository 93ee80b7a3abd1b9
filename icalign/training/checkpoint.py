"""Run folders: ``meta.json`` (status, settings), ``checkpoint.msgpack`` (the training state
and the losses so far) and ``metrics.jsonl`` (one line per chunk).

Checkpoints are ``flax.serialization`` msgpack (no pickle), written through the one writer
(:mod:`icalign.io`), so they are atomic and written by process 0 only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from icalign import io
from icalign.core.sharding import to_host

__all__ = ["CHECKPOINT", "META", "LOG", "write_meta", "read_meta", "save_checkpoint", "load_checkpoint",
           "truncate_log", "chunk_bounds"]

CHECKPOINT, META, LOG = "checkpoint.msgpack", "meta.json", "metrics.jsonl"


def write_meta(run_dir: Path, meta: dict) -> None:
    io.write_json(Path(run_dir) / META, meta)


def read_meta(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / META).read_text())
    except FileNotFoundError:
        return None


def save_checkpoint(run_dir: Path, step: int, state, losses: np.ndarray) -> None:
    # to_host: the whole state on the host even when it is sharded (across hosts too).
    payload = {"step": int(step), "state": to_host(state), "losses": np.asarray(losses)}
    io.write_bytes(Path(run_dir) / CHECKPOINT, serialization.to_bytes(payload))


def load_checkpoint(run_dir: Path, template):
    """(step, state, losses) from the run folder, or None. Shapes checked against template."""
    path = Path(run_dir) / CHECKPOINT
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
