"""icalign: a JAX sandbox for self-correction as in-context alignment."""

__version__ = "0.1.0"
