"""Input checks run at the API edge, before anything is traced.

Every message names the argument, the value received and what is allowed. Values that are
JAX tracers (a level swept with ``vmap`` inside ``jit``) cannot be inspected; they pass
through unchecked, and the caller's concrete inputs are checked where they enter.
"""

from __future__ import annotations

import dataclasses
import numbers
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


def check_level(name: str, value, low: float | None, high: float | None) -> None:
    """A scalar or array of levels within [low, high] (None: unbounded on that side)."""
    if _is_traced(value):
        return
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
