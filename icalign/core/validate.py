"""Input checks run at the API edge, before anything is traced.

Every message names the argument, the value received and what is allowed. Values that are
JAX tracers (a level swept with ``vmap`` inside ``jit``) cannot be inspected; they pass
through unchecked, and the caller's concrete inputs are checked where they enter.
"""

from __future__ import annotations

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
