"""Result files: atomic writes, and no silent overwrite of a finished run.

A results JSON is written to a temporary file in the same folder and renamed into place, so
an interrupted run never leaves a half-written file. An experiment calls
``claim_output(path, force)`` before it starts computing: if a finished result is already
there, it stops with a clear message unless ``--force`` was given.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import jax
import numpy as np

__all__ = ["claim_output", "write_text", "write_json", "read_json", "hardware", "to_jsonable"]


class ResultExistsError(FileExistsError):
    pass


def claim_output(path: Path, force: bool) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise ResultExistsError(
            f"{path} already holds a finished result; pass --force to overwrite it, "
            "or --out DIR to write elsewhere"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_text(path: Path, text: str) -> Path:
    """Atomically write ``text`` (temp file in the same folder, then rename): a reader never
    sees a half-written file, and a killed writer leaves the old file intact. In a
    multi-host run only process 0 writes (every process holds the same gathered result)."""
    path = Path(path)
    if jax.process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        # mkstemp creates 0600 files; a results file gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj) -> Path:
    """Atomically write ``obj`` as indented JSON (arrays become lists)."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=1) + "\n")


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def hardware() -> dict:
    """What the numbers were measured on (written into every results file)."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
    }
