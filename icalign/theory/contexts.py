"""The import path of the constructions' random contexts and specs, kept for notebooks and
tests: both live in :mod:`icalign.theory.construct`."""

from icalign.theory.construct import separated_contexts, spec_for  # noqa: F401  (public path)

__all__ = ["separated_contexts", "spec_for"]
