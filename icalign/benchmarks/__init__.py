"""Benchmarks: one module each, run as `icalign bench NAME`; each prints one JSON object."""
