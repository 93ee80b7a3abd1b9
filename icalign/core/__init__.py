"""Layer 1: what every other layer builds on. Tasks and reward corruption (pure functions of a
PRNG key), reward models and ranking losses, metrics, statistics, PRNG streams, input checks
and the placement of sweeps on devices. Nothing here knows about transformers."""
