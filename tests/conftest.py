"""Shared test set-up.

Rank promotion raises, so an accidental broadcast of a (N,) against a (B, N) array is a
failure, not a silent bug. Identity checks run in float64 through the ``x64`` fixture, which
scopes double precision to one test (the rest of the suite, training included, stays float32).

The suite is compile-bound (hundreds of small programs, each compiled once), so XLA's CPU backend
compiles them at LLVM's cheapest optimisation level: it cuts compile time by about a third.
Results move only by float rounding (measured against the default level: 3e-8 on a model's
outputs, 5e-7 on 20 training losses, 4e-5 after 50 Adam steps of a GD fit); no test compares
with numbers computed elsewhere. Set ICALIGN_TEST_XLA_FLAGS to change it.

The test processes (two xdist workers and the subprocesses some tests start) share compiled
programs through JAX's persistent compilation cache in .pytest_cache/jax (not tracked): a
program that one process compiled is loaded, not compiled again, by the others. The cache holds
what XLA would compile anyway, keyed by the program, the jax version and the flags, so it
changes no result. Set JAX_COMPILATION_CACHE_DIR to put it elsewhere.
"""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), os.environ.get(
    "ICALIGN_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")]))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program: most take < 1 s
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402  (after XLA_FLAGS: the CPU backend reads them when it starts)
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def _enable_x64():
    if hasattr(jax, "enable_x64"):  # jax >= 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


@pytest.fixture
def x64():
    with _enable_x64():
        yield


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer tests (still run in CI)")


