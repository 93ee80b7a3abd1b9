"""The one writer: every file icalign writes (results, figures, checkpoints, logs) goes
through :func:`write_bytes` or :func:`append_text`.

* Atomic: bytes go to a temporary file in the same folder, are flushed to disk, and are
  renamed into place, so a reader never sees half a file and a killed writer leaves the old
  file intact. A failed write removes its temporary file.
* Normal permissions: the file gets ``0o666 & ~umask`` like any file the user creates
  (``mkstemp`` alone would leave it 0600).
* One process: on several hosts every process holds the same gathered values, so only
  process 0 writes (the others return without touching the disk). Run folders therefore
  need a file system that every host sees, as multi-host checkpointing always does.

Also here: refusing to overwrite a finished result (:func:`claim_output`), JSON conversion,
and the hardware stamp written into every result.
"""

from __future__ import annotations

import io as _io
import json
import os
import platform
import tempfile
from pathlib import Path

import jax
import numpy as np

__all__ = ["ResultExistsError", "claim_output", "write_bytes", "write_text", "write_json", "append_text",
           "save_figure", "read_json", "hardware", "to_jsonable", "is_writer"]


class ResultExistsError(FileExistsError):
    """A finished result is already where a run would write (pass force / --force)."""


def is_writer() -> bool:
    """True on the one process that writes files (process 0)."""
    return jax.process_index() == 0


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see the module docstring); returns ``path``."""
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def to_jsonable(obj):
    """Arrays become lists; non-finite floats become the strings "nan", "inf", "-inf" (JSON
    has no such numbers; :func:`icalign.viz.style.floats` reads them back)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_json(path: Path, obj) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=1) + "\n")


def append_text(path: Path, text: str) -> Path:
    """Append ``text`` to a log (process 0 only). Not atomic: a kill can cut the last line,
    which readers of a log skip (``icalign.training.checkpoint.truncate_log``)."""
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)
    return path


def save_figure(fig, stem: Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Render a matplotlib Figure to ``stem``.png and ``stem``.pdf through :func:`write_bytes`
    (atomic, one process) and return the paths. The figure is left open: close it if it came
    from pyplot."""
    stem = Path(stem)
    paths = []
    for fmt in formats:
        buf = _io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    return paths


def claim_output(path: Path, force: bool) -> Path:
    """Refuse to run when ``path`` already holds a finished result, unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise ResultExistsError(
            f"{path} already holds a finished result; pass --force to overwrite it, "
            "or --out DIR / --name NAME to write elsewhere")
    if is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


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
