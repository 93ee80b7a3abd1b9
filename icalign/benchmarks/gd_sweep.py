"""`icalign bench gd-sweep`: the whole published GD-baseline sweep as one compiled call.

256 contexts x 5 reward-noise levels x 14 context lengths (t = 2..15) x 50 optimiser steps,
for the Adam baseline and plain GD. Reference: the published PyTorch code takes about 0.5 s
per context per noise level on a 2-core CPU, about 10 minutes for this sweep.

The contexts are spread over the visible devices as ``gd.baseline_sweep`` spreads them; on a
CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` makes each core a device (the
sweep's loop fusions otherwise run on one core). The device count is recorded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icalign.core import tasks
from icalign.core.sharding import shard_contexts
from icalign.theory import gd
from icalign.benchmarks._common import compile_timed, emit, median_seconds, peak_matmul_gflops, xla_flops

DESCRIPTION = "Adam/GD baseline sweep (256 ctx x 5 levels x 14 t x 50 steps): time after compile"


def add_arguments(p):
    p.add_argument("--repeats", type=int, default=5, help="timed calls after compilation (median)")


def run(args) -> int:
    contexts, steps = 256, 50
    levels = jnp.asarray(tasks.DEFAULT_LEVELS["replace"], jnp.float32)
    ts = jnp.arange(2, 16)
    ctx = shard_contexts(tasks.sample_contexts(jax.random.PRNGKey(0), contexts), contexts)
    key = jax.random.PRNGKey(1)
    peak = peak_matmul_gflops()["best"]
    record = {
        "benchmark": "gd-sweep",
        "devices": jax.device_count(),
        "counts": {"contexts": contexts, "levels": int(levels.size), "context_lengths": int(ts.size),
                   "optimiser_steps": steps,
                   "fits": contexts * int(levels.size) * int(ts.size)},
        "matmul_peak_gflops": peak,
        "published_reference_seconds": 0.5 * contexts * int(levels.size),
    }
    for learner in gd.LEARNERS:
        lr = jnp.asarray(gd.LEARNERS[learner][1], jnp.float32)
        compiled, compile_s = compile_timed(gd._sweep, key, ctx, levels, ts, lr,
                                            corruption="replace", learner=learner, steps=steps,
                                            n_used=int(ts.max()))
        secs, times = median_seconds(lambda: compiled(key, ctx, levels, ts, lr), repeats=args.repeats)
        # XLA's cost analysis counts a loop body once: this is about one optimiser step of
        # all fits (plus the set-up), so the achieved rate is estimated as flops * steps.
        flops_body = xla_flops(compiled)
        flops = None if flops_body is None else flops_body * steps
        record[learner] = {
            "seconds": secs,
            "seconds_all": times,
            "compile_seconds": compile_s,
            "xla_flops_loop_body_once": flops_body,
            "flops_estimate": flops,
            "achieved_gflops": None if flops is None else flops / secs / 1e9,
            "fraction_of_matmul_peak": None if flops is None else flops / secs / 1e9 / peak,
            "speedup_vs_published": record["published_reference_seconds"] / secs,
        }
    record["seconds"] = record["adam"]["seconds"]
    record["compile_seconds"] = record["adam"]["compile_seconds"]
    emit(record)
    return 0
