"""Benchmark: one training step of the published base config, against this machine's peak.

Prints one JSON object: median seconds per train step after compilation, compile time, the
model FLOPs per step (analytic, see :func:`model_flops`), achieved GFLOP/s, the fp32 matmul
peak measured in the same run with a large jitted matmul, and their ratio. The step timed is
the one training runs (``icalign.train``'s compiled chunk, ``--steps-per-call`` steps per call),
on the whole batch and split into ``--microbatches`` slices (``TrainConfig.microbatches``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M
from icalign.benchmarks._common import median_seconds, peak_matmul_gflops, time_chunk
from icalign import training as T
from icalign.io import hardware

DESCRIPTION = "seconds, FLOPs and fraction of matmul peak of one train step (base config, batch 256)"


def model_flops(config: M.ModelConfig, batch: int) -> dict:
    """Matmul FLOPs of one train step, counted from the shapes (2 per multiply-add).

    Per token and layer, forward: q, k, v and output projections 2 d_model (4 H dh); FFN
    2 * 2 d_model F; attention scores and mixing 2 * 2 T H dh (the full T x T products are
    computed, the causal mask only zeroes half). Plus read-in and read-out. Backward = 2 x
    forward (gradients for inputs and weights), so a step is 3 x forward ("model FLOPs").
    The remat policy also recomputes the attention products in the backward pass: that is
    counted separately as ``recompute`` (executed, not model, FLOPs). Elementwise work
    (norms, GELU, softmax, Adam) is not counted.
    """
    L, H, dh, dm, F = config.n_layers, config.n_heads, config.head_size, config.d_model, config.ffn_size
    T_ = M.seq_len(config)
    tokens = batch * T_
    proj = 2 * dm * 4 * H * dh
    ffn = 2 * 2 * dm * F if config.ffn else 0
    attn = 2 * 2 * T_ * H * dh
    io = 2 * M.token_dim(config) * dm + 2 * dm * config.d
    forward = tokens * (L * (proj + ffn + attn) + io)
    return {"forward": forward, "step": 3 * forward, "recompute": tokens * L * attn}


def dense_only_step(config: M.ModelConfig, batch: int):
    """The train step with everything but its dense layers removed, as ``(fn, args, flops)``.

    Per layer ``h <- ((h Wq) * (h Wk) + h Wv) Wo + (h W1) W2`` on a (batch * T, d_model) array,
    scanned over the layers, and its gradient with respect to every W and h by autodiff: the
    same dense products as the train step, forward and backward, on the same shapes, plus a
    few elementwise ops; no attention products, norms, activation, read-in/out or optimizer.
    ``flops`` counts the products (2 per multiply-add).
    """
    L, H, dh, dm, F = config.n_layers, config.n_heads, config.head_size, config.d_model, config.ffn_size
    rows = batch * M.seq_len(config)
    keys = jax.random.split(jax.random.PRNGKey(0), 7)
    normal = lambda k, shape: 0.02 * jax.random.normal(k, shape, jnp.float32)
    ws = {"q": normal(keys[0], (L, dm, H * dh)), "k": normal(keys[1], (L, dm, H * dh)),
          "v": normal(keys[2], (L, dm, H * dh)), "o": normal(keys[3], (L, H * dh, dm))}
    if config.ffn:
        ws.update(w1=normal(keys[4], (L, dm, F)), w2=normal(keys[5], (L, F, dm)))
    h0 = jax.random.normal(keys[6], (rows, dm), jnp.float32)

    def loss(ws, h):
        def layer(h, w):
            # q * k, not q + k: with a sum, q, k and v would share one cotangent and XLA
            # would merge their backward products.
            out = ((h @ w["q"]) * (h @ w["k"]) + h @ w["v"]) @ w["o"]
            return (out + (h @ w["w1"]) @ w["w2"] if config.ffn else out), None
        # A squared loss, not a plain mean: a constant cotangent would let XLA turn the last
        # layer's backward products into reductions.
        return jnp.mean(jnp.square(jax.lax.scan(layer, h, ws)[0]))

    flops = 3 * 2 * rows * L * (4 * dm * H * dh + (2 * dm * F if config.ffn else 0))
    return jax.jit(jax.grad(loss, argnums=(0, 1))), (ws, h0), flops


def dense_matmul_floor(config: M.ModelConfig, batch: int, reps: int = 3) -> dict:
    """Median seconds of :func:`dense_only_step`: no formulation that leaves the dense
    products to XLA can make the train step faster than this on the same machine."""
    fn, args, flops = dense_only_step(config, batch)
    sec, _ = median_seconds(fn, *args, repeats=reps)
    return {"seconds": sec, "gflop": flops / 1e9, "gflops": flops / sec / 1e9}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=3, help="timed calls after compilation (default 3)")
    p.add_argument("--steps-per-call", type=int, default=5,
                   help="steps per compiled call (default 5; training runs 50): each call ends with one "
                        "extra forward pass checking its last update, spread over these steps")
    p.add_argument("--quick", action="store_true", help="2 timed calls of 2 steps (same base config)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256, the published one)")
    p.add_argument("--microbatches", type=int, default=8,
                   help="also time the step with the batch split into this many slices "
                        "(TrainConfig.microbatches; default 8, the CPU setting; 1 skips it)")


def time_step(model_cfg: M.ModelConfig, batch: int, steps: int, microbatches: int = 1, per_call: int = 1) -> dict:
    """Compile seconds and per-step seconds (after one untimed warm-up call) of the train step
    that training runs: ``icalign.training``'s compiled chunk, ``per_call`` steps per call."""
    train_cfg = T.TrainConfig(batch=batch, steps=(steps + 1) * per_call, chunk=per_call,
                              checkpoint_every=per_call, microbatches=microbatches)
    objective = T.ICAObjective.of(model_cfg, train_cfg)
    runs, _ = T.make_runs((0,), train_cfg=train_cfg)
    state = T.init_states(runs, objective)
    jax.block_until_ready(state)
    compile_s, times, loss = time_chunk(state, runs, objective, steps, per_call)
    if not np.all(np.isfinite(np.asarray(loss))):
        raise SystemExit(f"benchmark step produced a non-finite loss: {np.asarray(loss)}")
    return {"compile_seconds": compile_s, "seconds_per_step_median": float(np.median(times)),
            "seconds_per_step_all": times}


def run(args) -> int:
    quick = getattr(args, "quick", False)
    steps = 2 if quick else getattr(args, "steps", 3)
    per_call = 2 if quick else getattr(args, "steps_per_call", 5)
    batch = getattr(args, "batch", 256)
    micro = getattr(args, "microbatches", 8)
    if steps < 1 or batch < 1 or per_call < 1:
        raise SystemExit("--steps, --steps-per-call and --batch must be >= 1")
    if micro < 1 or batch % micro:
        raise SystemExit(f"--microbatches must be >= 1 and divide --batch={batch}, got {micro}")
    load_before = os.getloadavg()
    flops = model_flops(M.BASE, batch)
    out = {
        "benchmark": "train-step", "config": M.BASE.to_dict(), "batch": batch, "steps_per_call": per_call,
        "tokens_per_context": M.seq_len(M.BASE), "n_params": M.config_param_count(M.BASE),
        "model_gflop_per_step": flops["step"] / 1e9, "recompute_gflop_per_step": flops["recompute"] / 1e9,
        "flops_counted": "analytic matmul FLOPs, 3 x forward (icalign.benchmarks.train_step.model_flops)",
    }
    if micro > 1:
        out["microbatched"] = {"microbatches": micro}
    # float32 and bfloat16 (ModelConfig.precision) side by side, each against the matmul peak
    # of its own operand type, both measured in this run; the whole batch and the
    # microbatched step (TrainConfig.microbatches) back to back, so they see the same machine.
    for precision in ("float32", "bfloat16"):
        cfg = dataclasses.replace(M.BASE, precision=precision)
        peak = peak_matmul_gflops(precision=precision)
        for k in ((1, micro) if micro > 1 else (1,)):
            timing = time_step(cfg, batch, steps, k, per_call)
            achieved = flops["step"] / timing["seconds_per_step_median"] / 1e9
            row = {**timing, "achieved_gflops": achieved, "peak_matmul_gflops": peak["best"],
                   "peak_matmul_gflops_median": peak["median"], "peak_matmul_n": peak["n"],
                   "fraction_of_peak": achieved / peak["best"]}
            (out if k == 1 else out["microbatched"])[precision] = row
        if micro > 1:
            out["microbatched"][f"speedup_{precision}"] = (out[precision]["seconds_per_step_median"]
                                                           / out["microbatched"][precision]["seconds_per_step_median"])
    floor = dense_matmul_floor(M.BASE, batch)
    if micro > 1:
        # the microbatched step runs its dense products on slices: their floor is k slices
        slice_floor = dense_matmul_floor(M.BASE, batch // micro)
        out["microbatched"]["dense_matmul_floor_seconds"] = micro * slice_floor["seconds"]
    out.update(dense_matmul_floor_seconds=floor["seconds"], dense_matmul_floor_gflop=floor["gflop"],
               dense_matmul_floor_gflops=floor["gflops"],
               step_over_dense_floor=out["float32"]["seconds_per_step_median"] / floor["seconds"],
               bf16_speedup=out["float32"]["seconds_per_step_median"] / out["bfloat16"]["seconds_per_step_median"],
               loadavg_before_after=[list(load_before), list(os.getloadavg())], hardware=hardware())
    print(json.dumps(out, indent=1))
    return 0
