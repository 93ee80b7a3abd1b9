"""The PRNG streams of a seed: one place defines which ``fold_in`` index feeds what.

A run's root key is ``PRNGKey(seed)``. Training folds in 0, 1 and 2 for its init, data and
reward-corruption streams (:func:`icalign.training.make_runs`); every experiment's
evaluation contexts and GD inits come from stream 3; the fair training protocol's validation
contexts, on which a learning rate is chosen, from stream 4 (never evaluated on). Changing one stream never shifts the
others, and an evaluation never reuses a training batch.
"""

from __future__ import annotations

import jax

from icalign.core.validate import check_int

__all__ = ["INIT", "DATA", "CORRUPT", "EVAL", "VALID", "stream", "eval_keys"]

INIT, DATA, CORRUPT, EVAL, VALID = 0, 1, 2, 3, 4


def stream(seed: int, which: int) -> jax.Array:
    """The key of stream ``which`` (INIT, DATA, CORRUPT, EVAL or VALID) of ``seed``."""
    seed = check_int("seed", seed)
    if which not in (INIT, DATA, CORRUPT, EVAL, VALID):
        raise ValueError(f"which must be one of INIT=0, DATA=1, CORRUPT=2, EVAL=3, VALID=4, got {which!r}")
    return jax.random.fold_in(jax.random.PRNGKey(seed), which)


def eval_keys(seed: int, n: int) -> jax.Array:
    """``n`` independent keys of the evaluation stream (contexts, corruption draws, GD inits)."""
    return jax.random.split(stream(seed, EVAL), check_int("n", n, minimum=1))
