"""Shared test set-up.

Rank promotion raises, so an accidental broadcast of a (N,) against a (B, N) array is a
failure, not a silent bug. Identity checks run in float64 through the ``x64`` fixture, which
scopes double precision to one test (the rest of the suite, training included, stays float32).

The suite is compile-bound (hundreds of small programs, each compiled once), so XLA's CPU backend
compiles them at LLVM's cheapest optimisation level: it cuts compile time by about a third.
Results move only by float rounding (measured against the default level: 3e-8 on a model's
outputs, 5e-7 on 20 training losses, 4e-5 after 50 Adam steps of a GD fit); no test compares
with numbers computed elsewhere. Set ICALIGN_TEST_XLA_FLAGS to change it.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), os.environ.get(
    "ICALIGN_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")]))

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


