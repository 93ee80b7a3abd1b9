"""Shared measurement code for benchmarks: AOT compile timing, median wall time after
compilation, XLA's FLOP count, and the machine's matmul peak measured in the same process
(so achieved/peak is a ratio of two numbers from the same run, robust to a noisy machine)."""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp

from icalign import training as T
from icalign.io import hardware, to_jsonable

__all__ = ["compile_timed", "median_seconds", "time_chunk", "xla_flops", "peak_matmul_gflops", "emit"]


def compile_timed(jitted, *args, **kwargs):
    """Lower and compile ``jitted`` for these arguments; return (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def time_chunk(state, runs, objective, steps: int, length: int = 1) -> tuple[float, list[float], jax.Array]:
    """The training loop's compiled chunk (``icalign.training.run_chunk``) of ``length`` steps
    per call: compile seconds, the wall time per step (call time / ``length``) of each of
    ``steps`` calls after one untimed warm-up call (allocation), and the last losses. Each
    chunk also checks its last update with one extra forward pass, which training (``chunk``
    50 by default) spreads over 50 steps: time with ``length`` > 1 to spread it likewise.
    Each call starts at another step index, so no call is a repeat."""
    compiled, compile_s = compile_timed(T.run_chunk, state, runs, jnp.int32(0), objective, length)
    state, loss, _ = compiled(state, runs, jnp.int32(0))
    jax.block_until_ready(loss)
    times = []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        state, loss, _ = compiled(state, runs, jnp.int32(i * length))
        jax.block_until_ready(loss)
        times.append((time.perf_counter() - t0) / length)
    return compile_s, times, loss


def median_seconds(fn, *args, repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn(*args)`` (outputs blocked on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def xla_flops(compiled) -> float | None:
    """FLOPs of one call as counted by XLA's cost analysis (None if the backend has none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def peak_matmul_gflops(n: int | None = None, reps: int = 10, precision: str = "float32") -> dict:
    """GFLOP/s of a jitted n x n @ n x n (best and median of ``reps``): the machine's practical
    matmul peak, in float32 or with bfloat16 operands and float32 accumulation (the model's
    ``precision="bfloat16"``).

    ``n`` defaults to 2048 on a CPU and 8192 on an accelerator: a 2048 matmul takes about
    0.1 ms on an H200, too short to time, and measured 64-130 TFLOP/s there across runs."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    median, ts = median_seconds(f, a, b, repeats=reps, warmup=2)
    flops = 2.0 * n ** 3
    return {"n": n, "precision": precision, "best": flops / min(ts) / 1e9, "median": flops / median / 1e9}


def emit(record: dict) -> dict:
    """Print the benchmark record as one JSON object (with the hardware it ran on)."""
    record = {**record, "hardware": hardware()}
    print(json.dumps(to_jsonable(record), indent=1))
    return record
