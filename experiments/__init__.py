"""Experiments: one small module each, run as `icalign run NAME`; they compose the library."""
