"""Input checks run at the API edge, before anything is traced, and on the files a command reads.

Every message names the argument, the value received and what is allowed. Values that are
JAX tracers (a level swept with ``vmap`` inside ``jit``) cannot be inspected; they pass
through unchecked, and the caller's concrete inputs are checked where they enter.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import stat
from pathlib import Path
from typing import Iterable

import numpy as np
import jax


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _refuse_non_numbers(name: str, value) -> None:
    """None, text, booleans, complex numbers and objects are not numbers (numpy would turn
    "0.5" into 0.5 in one place and fail deep in another, and drop an imaginary part)."""
    arr = np.asarray(value) if not isinstance(value, (str, bytes)) and value is not None else None
    if arr is None or arr.dtype.kind not in "iuf" and not jax.dtypes.issubdtype(arr.dtype, jax.numpy.floating):
        what = type(value).__name__ if arr is None else f"dtype {arr.dtype}"
        raise ValueError(f"{name} must be a real number or an array of real numbers, got {value!r} ({what})")


def check_level(name: str, value, low: float | None, high: float | None) -> None:
    """A scalar or array of levels within [low, high] (None: unbounded on that side)."""
    if _is_traced(value):
        return
    _refuse_non_numbers(name, value)
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    lo_txt = "-inf" if low is None else f"{low:g}"
    hi_txt = "inf" if high is None else f"{high:g}"
    if (low is not None and np.any(arr < low)) or (high is not None and np.any(arr > high)):
        raise ValueError(f"{name} must lie in [{lo_txt}, {hi_txt}], got {value!r}")


def check_positive(name: str, value) -> None:
    if _is_traced(value):
        return
    _refuse_non_numbers(name, value)
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_choice(name: str, value, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_last_axis(name: str, array, n: int, other: str) -> None:
    """``array``'s last axis must have length ``n`` (the length of ``other``)."""
    shape = np.shape(array)
    if len(shape) == 0 or shape[-1] != n:
        raise ValueError(
            f"{name} must have last axis of length {n} to match {other}, got shape {shape}"
        )


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}"
        )


def check_key(name: str, key, batched: bool = False) -> None:
    """A PRNG key: ``jax.random.PRNGKey(seed)`` (uint32, shape (2,)) or ``jax.random.key(seed)``
    (a typed key, shape ()); with ``batched``, a leading axis of keys. Not a seed: integers,
    floats and None are refused with a hint, so a key is never silently mistaken for data."""
    if _is_traced(key):
        return
    hint = f"{name} must be a PRNG key (jax.random.PRNGKey(seed)" + (", split to one per item" if batched else "") + ")"
    if key is None or isinstance(key, (bool, numbers.Number)):
        raise ValueError(f"{hint}, got {key!r}")
    typed = hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    shape = np.shape(key)
    want = (() if typed else (2,))
    ok_dtype = typed or np.dtype(getattr(key, "dtype", np.float64)) == np.uint32
    ok_shape = shape[1:] == want and len(shape) == len(want) + 1 if batched else shape == want
    if not (ok_dtype and ok_shape):
        got = f"an array of shape {shape} and dtype {getattr(key, 'dtype', type(key).__name__)}"
        raise ValueError(f"{hint}, got {got}" + (" (a batch of keys: pass one key)" if not batched and ok_dtype
                                                 and len(shape) > len(want) else ""))


def check_finite(name: str, value) -> None:
    """Every entry of a concrete array is finite (NaN or inf would pass silently through a
    sort or a softmax into a finite-looking answer)."""
    if _is_traced(value):
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{name} must be finite, got {arr[tuple(bad)]} at index {bad}")


def check_real_array(name: str, value, integers: bool = False):
    """``value`` as an array of finite real floating numbers, checked where it enters the API
    (before any tracing): a list or tuple of numbers becomes a numpy array; None, text,
    booleans, complex numbers and objects are refused by name, and integer arrays too unless
    ``integers`` (then they become the default float dtype). A tracer (a call under
    ``jit``/``vmap`` by the library itself) is checked by dtype only: its values cannot be
    read, and reading them would cost a device sync in every compiled step."""
    if value is None or isinstance(value, (str, bytes, dict)):
        raise ValueError(f"{name} must be an array of real floating numbers, got {value!r} ({type(value).__name__})")
    traced = _is_traced(value)
    arr = value
    if not traced and not hasattr(value, "dtype"):  # a list or a Python number: JAX's default float
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(jax.dtypes.canonicalize_dtype(arr.dtype))
    dtype = np.dtype(arr.dtype)
    if dtype.kind in "iu" and integers:
        if traced:
            return arr
        arr = np.asarray(arr).astype(jax.dtypes.canonicalize_dtype(np.float64))
    elif not jax.dtypes.issubdtype(dtype, jax.numpy.floating):
        kinds = {"b": "booleans", "i": "integers", "u": "integers", "c": "complex numbers"}
        kind = kinds.get(dtype.kind, "not numbers")
        raise ValueError(f"{name} must be an array of real floating numbers (such as float32), got dtype {dtype} "
                         f"({kind})" + (": convert them with .astype(float) if that is meant" if kind == "integers"
                                        else ""))
    check_finite(name, arr)
    return arr


def check_int_values(name: str, value, low: int, high: int) -> np.ndarray | None:
    """Concrete integer entries (a Python int, an integer array, or floats with integral values
    are refused: 2.5 candidates means nothing) all within [low, high]. Returns them as numpy
    (None when traced)."""
    if _is_traced(value):
        return None
    arr = np.asarray(value)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers in [{low}, {high}], got {np.asarray(value).tolist()!r} "
                         f"(dtype {arr.dtype})")
    if arr.size and (arr.min() < low or arr.max() > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {arr.tolist()}")
    return arr


def check_bool_array(name: str, value) -> None:
    if _is_traced(value):
        return
    if np.asarray(value).dtype != bool:
        raise ValueError(f"{name} must be a boolean array, got dtype {np.asarray(value).dtype}")


def check_learning_rate(name: str, value) -> None:
    """A step size must be a finite number > 0: 0 is a no-op, a negative one is ascent."""
    check_positive(name, value)


def python_numbers(obj) -> None:
    """Replace numpy scalars in the fields of the frozen dataclass ``obj`` by the Python int,
    float or bool they hold, so ``TrainConfig(lr=np.float32(1e-3))`` is accepted like
    ``lr=1e-3`` and is stored, hashed and written to TOML/JSON as a Python number. Call it
    first in ``__post_init__``; values of other types are left for the field checks."""
    import dataclasses

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.generic) and v.dtype.kind in "biuf":
            object.__setattr__(obj, f.name, v.item())


def check_distinct(name: str, items: list, describe=repr) -> None:
    """No two entries of ``items`` are equal (two identical runs in one call are one run
    trained twice, and would be counted as two seeds)."""
    seen: dict = {}
    for i, item in enumerate(items):
        key = repr(item)
        if key in seen:
            raise ValueError(f"{name}: entry {i} repeats entry {seen[key]} ({describe(item)}); give distinct values")
        seen[key] = i


def check_input_file(what: str, path, max_bytes: int) -> Path:
    """A file a command reads must be a regular file of at most ``max_bytes``: a folder, a
    FIFO (reading one waits for a writer forever), a device or a socket is refused after a
    ``stat``, without opening it. ``what`` names the flag or command (for the message)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} {path}: is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise ValueError(f"{what} {path}: is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{what} {path}: is {st.st_size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:g} MiB "
                         "such a file may have; is it the right file?")
    return path


def read_input_text(what: str, path, max_bytes: int) -> str:
    """The text of a file a command reads (:func:`check_input_file`), as UTF-8."""
    path = check_input_file(what, path, max_bytes)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot be read ({err.strerror})") from None
    if len(data) > max_bytes:  # it grew after the stat
        raise ValueError(f"{what} {path}: is more than {max_bytes / 2**20:g} MiB; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path}: is not UTF-8 text (byte {err.start})") from None


def parse_input_file(what: str, path, max_bytes: int, parse, fmt: str, errors):
    """``parse(text)`` of a file a command reads (:func:`read_input_text`); a parse error (one
    of ``errors``, or a recursion too deep, as 100k nested ``[`` give) names the file and the
    format ``fmt``."""
    text = read_input_text(what, path, max_bytes)
    try:
        return parse(text)
    except errors as err:
        raise ValueError(f"{what} {path}: not valid {fmt} ({err})") from None
    except RecursionError:
        raise ValueError(f"{what} {path}: not valid {fmt} (nested too deeply to parse)") from None


def check_seed(name: str, seed) -> int:
    """A seed is a non-negative integer below 2**32 (what PRNGKey takes losslessly)."""
    seed = check_int(name, seed, minimum=0)
    if seed >= 2**32:
        raise ValueError(f"{name} must be < 2**32, got {seed}")
    return seed


def available_memory() -> int:
    """Bytes the default device can still hold: the accelerator's free memory, or the host's
    available physical memory on a CPU."""
    dev = jax.devices()[0]
    stats = getattr(dev, "memory_stats", lambda: None)() if dev.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def check_memory(what: str, nbytes: float, knobs: str) -> None:
    """Refuse, before any work, a request whose estimated size exceeds the memory available
    (it would fail deep inside XLA, or swap and hang): name the estimate and the knobs."""
    avail = available_memory()
    if nbytes > 0.8 * avail:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB "
                         f"available on {jax.devices()[0].platform}; reduce {knobs}")


def described(default, help: str = "", choices=None):
    """A config field with its help text and allowed values in its metadata, which
    ``icalign run NAME --help`` and ``--show-config`` print (``choices`` may be a function,
    for a registry that grows at run time)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})
