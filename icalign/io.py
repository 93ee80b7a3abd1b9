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

import atexit
import io as _io
import json
import os
import platform
import tempfile
from pathlib import Path

import jax
import numpy as np

__all__ = ["ResultExistsError", "ResultClaimedError", "claim_output", "lock_folder", "release", "write_bytes", "write_text",
           "write_json", "append_text", "check_inside", "writable", "save_figure", "figure_bytes", "read_json", "hardware", "identity", "to_jsonable",
           "is_writer"]


class ResultExistsError(FileExistsError):
    """A finished result is already where a run would write (pass force / --force)."""


class ResultClaimedError(FileExistsError):
    """Another live run is writing to the same result (its claim file names it)."""


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
    which readers of a log skip (``icalign.training.checkpoint.truncate_log``). A log that is
    a symbolic link is refused, never appended through (it could point anywhere)."""
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), _umask_mode())
    except OSError as err:
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}): refusing to append through "
                             "it; remove the link") from None
        raise
    with os.fdopen(fd, "a") as f:
        f.write(text)
    return path


def check_inside(folder: Path) -> None:
    """Refuse (ValueError naming the link and its target) a symbolic link in ``folder``, or
    ``folder`` itself, that leads out of it (dangling or not): writing through it would write
    elsewhere. Links inside the folder are harmless; links in linked folders are not followed."""
    folder = Path(folder)
    root = Path(os.path.realpath(folder))
    links = [folder] if folder.is_symlink() else []
    for top, dirs, files in os.walk(folder):
        links += [Path(top) / name for name in dirs + files if os.path.islink(os.path.join(top, name))]
    for link in links:
        target = Path(os.path.realpath(link))
        if link != folder and (target == root or root in target.parents):
            continue
        if link == folder and folder.parent.resolve() in target.parents:
            continue
        raise ValueError(f"{link} is a symbolic link to {os.readlink(link)}, outside {folder}: a run folder "
                         "writes only inside itself; remove the link")


def writable(folder: Path) -> bool:
    """Can this process create files in ``folder`` (tried, not guessed from permissions)?"""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def save_figure(fig, stem: Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Render a matplotlib Figure to ``stem``.png and ``stem``.pdf through :func:`write_bytes`
    (atomic, one process) and return the paths. The figure is left open: close it if it came
    from pyplot."""
    stem = Path(stem)
    return [write_bytes(stem.with_suffix(f".{fmt}"), figure_bytes(fig, fmt, dpi)) for fmt in formats]


def figure_bytes(fig, fmt: str = "png", dpi: int = 150) -> bytes:
    """A matplotlib Figure rendered in memory (no file): what :func:`save_figure` writes, and
    what a notebook displays (:class:`icalign.viz.style.NotebookFigure`)."""
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _claim_file(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.claim")


_HELD: dict[Path, dict] = {}  # claims this process holds: claim file -> its record


def _alive(record: dict) -> bool:
    """Is the claim's holder still running? Only answerable on the same host; a claim from
    another host counts as live (release it by hand, or pass force to take it over)."""
    if record.get("host") != platform.node():
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    # our own pid: live only if this process still holds it (a run in progress here); a claim
    # left by an earlier call in this process that failed before releasing it is stale
    return record.get("pid") != os.getpid() or Path(record.get("file", "")) in _HELD

def claim_output(path: Path, force: bool) -> Path:
    """Claim ``path`` for one run, before any work: refuse when a finished result is already
    there (unless ``force``), and take an exclusive claim file next to it, so a second run on
    the same output is refused with the holder's name while the first runs. A claim whose
    holder is dead (killed run) is detected and released. :func:`release` (called by
    ``icalign.experiment.publish`` and at process exit) gives it back."""
    path = Path(path)
    if path.exists() and not force:
        raise ResultExistsError(
            f"{path} already holds a finished result; pass --force to overwrite it, "
            "or --out DIR / --name NAME to write elsewhere")
    return _claim(path, force, "is being written by another run", "wait for it, or use --name / --out to write "
                  "elsewhere", "the output folder {folder} (--out)")


def lock_folder(folder: Path) -> Path:
    """Lock a run folder for training: the claim of :func:`claim_output` (a claim file next
    to the folder naming its holder; a stale one, whose holder died, is released), so a second
    run on the same folder is refused with the holder's pid instead of both writing into it.
    :func:`release` gives it back (and process exit)."""
    return _claim(Path(folder), False, "is being trained by another run", "wait for it to finish, then run "
                  "again (a finished run is loaded, not retrained)", "the folder {folder} that holds the run folder")


def _claim(path: Path, force: bool, busy: str, advice: str, where: str) -> Path:
    if not is_writer():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {where.format(folder=path.parent)}: {err.strerror}") from None
    claim = _claim_file(path)
    record = {"pid": os.getpid(), "host": platform.node(), "file": str(claim),
              "started": __import__("datetime").datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(claim.read_text())
            except (OSError, ValueError):
                holder = {}  # half-written by a run killed while claiming (or not a claim at all)
            if not isinstance(holder, dict):
                holder = {}
            if holder and _alive(holder) and not (force and holder.get("host") != platform.node()):
                raise ResultClaimedError(
                    f"{path} {busy} (pid {holder.get('pid')} on {holder.get('host')}, since "
                    f"{holder.get('started')}; claim file {claim}); {advice}") from None
            try:
                claim.unlink(missing_ok=True)  # stale: its holder is gone
            except IsADirectoryError:
                raise ValueError(f"{claim} is a directory, not a claim file: remove it") from None
            continue
        except OSError as err:
            raise ValueError(f"cannot write to {where.format(folder=path.parent)}: {err.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        _HELD[claim] = record
        return path
    raise ResultClaimedError(f"could not claim {path}: {claim} keeps reappearing")


def release(path: Path) -> None:
    """Give back this process's claim on ``path`` (no-op if it holds none)."""
    claim = _claim_file(Path(path))
    if _HELD.pop(claim, None) is not None:
        claim.unlink(missing_ok=True)


def _release_all() -> None:
    for claim in list(_HELD):
        _HELD.pop(claim, None)
        claim.unlink(missing_ok=True)


atexit.register(_release_all)


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
        "x64": bool(jax.config.jax_enable_x64),
    }


def identity(devices: int = 1) -> dict:
    """Everything besides a run's config and seed that changes its numbers: float64 mode, the
    backend and device kind, the number of devices its runs are sharded over, and the
    versions of the numerical packages. Stored with every run and result; a training run
    resumes only under the same identity."""
    import flax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return {"x64": bool(jax.config.jax_enable_x64), "backend": jax.default_backend(),
            "device_kind": getattr(dev, "device_kind", str(dev)), "devices": int(devices),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__}
