"""Shared test set-up.

Rank promotion raises, so an accidental broadcast of a (N,) against a (B, N) array is a
failure, not a silent bug. Identity checks run in float64 through the ``x64`` fixture, which
scopes double precision to one test (the rest of the suite, training included, stays float32).
"""


import jax
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


