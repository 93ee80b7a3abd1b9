"""`icalign bench figure1`: the published Figure-1 grid trained as grouped programs.

The grid: depth 1/2/5/10/15/20; heads 1/2/3/4/6 at fixed width and at fixed head dimension;
linear attention; no FFN; no LayerNorm; the base trained on a noisy critic at 5 levels; 5 seeds
each. Architectures that share shapes are gated variants of one super architecture and train
in one vmapped program (:mod:`icalign.training.group`), chunked to the memory available.

Every program of the grid is compiled and timed for a few steps (after its compilation); the
wall time of the whole grid is their sum, compile + steps x seconds per step. Nothing is
trained to the end: the printed JSON holds the measured parts and the arithmetic. It also
gives the same estimate with one program per architecture (the grid before grouping), the
fraction of the matmul peak measured in the same run, and peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

import jax
import numpy as np

from icalign import model as M
from icalign import training as T
from icalign.analysis import ablations as A
from icalign.benchmarks._common import emit, peak_matmul_gflops, time_chunk
from icalign.benchmarks.train_step import model_flops
from icalign.model import gates as G
from icalign.training.group import max_runs_per_program, prepare

DESCRIPTION = "the Figure-1 grid (depth, heads x2, attention, FFN, LN, reward noise; 5 seeds) as grouped programs"
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIZES = {  # base architecture and batch; steps is the published 3000 in both
    "full": dict(base=M.BASE, batch=256),
    "cpu": dict(base=M.ModelConfig(n_layers=20, n_heads=3, d_model=24), batch=8),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="cpu" if jax.default_backend() == "cpu" else "full",
                   help="full: the published base (batch 256); cpu: width 24, batch 8 (default on a CPU)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per model (default 5, the published number)")
    p.add_argument("--steps", type=int, default=3000, help="training steps the estimate is for (default 3000)")
    p.add_argument("--timed-steps", type=int, default=2, help="calls timed per program after compiling (default 2)")
    p.add_argument("--steps-per-call", type=int, default=5,
                   help="steps per compiled call (default 5; training runs 50): each call ends with one extra "
                        "forward pass checking its last update, spread over these steps")
    p.add_argument("--ungrouped", action="store_true", help="also time one program per architecture")


def grid_rows(base: M.ModelConfig, seeds: int, depths=A.DEPTHS, heads=A.HEADS) -> list:
    """(architecture, run settings) of every model of the grid."""
    archs = list(A.unique_configs(A.grid(base, depths=depths, heads=heads)))
    rows = [(a, {"seed": s, "lr": 1e-4, "noise": 0.0}) for a in archs for s in range(seeds)]
    canon = A.canonical(base)
    rows += [(canon, {"seed": s, "lr": 1e-4, "noise": lv}) for lv in LEVELS[1:] for s in range(seeds)]
    return rows


def _programs(rows, batch: int, grouped: bool) -> list:
    """Lists of rows that train as one program each: by shape group (grouped) or by
    architecture, chunked to the memory a program may use."""
    keyed: dict = {}
    for arch, run in rows:
        key = tuple(getattr(arch, f) for f in G.SHAPE_FIELDS) if grouped else arch
        keyed.setdefault(key, []).append((arch, run))
    out = []
    for members in keyed.values():
        sup = G.super_config([a for a, _ in members])
        size = max_runs_per_program(sup, batch)
        out += [(sup, members[i:i + size]) for i in range(0, len(members), size)]
    return out


def _time_program(sup, rows, train_cfg, timed_steps, per_call):
    objective, runs_R, initial = prepare(sup, rows, train_cfg)
    state = T.states_from(initial, runs_R, objective)
    jax.block_until_ready(state)
    compile_s, times, _ = time_chunk(state, runs_R, objective, timed_steps, per_call)
    return compile_s, float(np.median(times))


def _peak_memory() -> dict:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats:
        return {"device_peak_bytes": stats.get("peak_bytes_in_use"), "what": "device peak bytes in use"}
    return {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "what": "host peak resident set size (this process)"}


def _estimate(programs, train_cfg, steps, timed_steps, per_call, label):
    total, per = 0.0, []
    for sup, rows in programs:
        compile_s, step_s = _time_program(sup, rows, train_cfg, timed_steps, per_call)
        useful = sum(model_flops(a, train_cfg.batch)["step"] for a, _ in rows)
        executed = model_flops(sup, train_cfg.batch)["step"] * len(rows)
        seconds = compile_s + steps * step_s
        total += seconds
        per.append({"super_config": {k: getattr(sup, k) for k in ("n_layers", "n_heads", "head_size", "d_model")},
                    "models": len(rows), "architectures": len({a for a, _ in rows}), "compile_seconds": compile_s,
                    "seconds_per_step": step_s, "useful_gflop_per_step": useful / 1e9,
                    "executed_gflop_per_step": executed / 1e9, "useful_gflops": useful / step_s / 1e9,
                    "estimated_seconds": seconds})
        print(f"[figure1 {label}] {len(per)}/{len(programs)}: {len(rows)} models, {step_s:.3f} s/step, "
              f"compile {compile_s:.1f} s", file=sys.stderr, flush=True)
    return total, per


def run(args) -> int:
    for flag in ("seeds", "steps", "timed_steps", "steps_per_call"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    size = SIZES[args.size]
    base, batch = size["base"], size["batch"]
    train_cfg = T.TrainConfig(batch=batch, steps=args.steps, chunk=1, checkpoint_every=1)
    rows = grid_rows(base, args.seeds)
    peak = peak_matmul_gflops()
    load_before = os.getloadavg()
    record = {"benchmark": "figure1", "size": args.size, "base_config": base.to_dict(), "batch": batch,
              "seeds": args.seeds, "steps": args.steps, "models": len(rows),
              "architectures": len({a for a, _ in rows}), "timed_steps": args.timed_steps,
              "steps_per_call": args.steps_per_call,
              "matmul_peak_gflops": peak["best"], "devices": jax.device_count()}
    plans = {"grouped": _programs(rows, batch, grouped=True)}
    if args.ungrouped:
        plans["one_program_per_architecture"] = _programs(rows, batch, grouped=False)
    for label, programs in plans.items():
        total, per = _estimate(programs, train_cfg, args.steps, args.timed_steps, args.steps_per_call, label)
        step_times = [p["seconds_per_step"] for p in per]
        useful = sum(p["useful_gflop_per_step"] for p in per)
        record[label] = {
            "programs": len(programs), "estimated_wall_seconds": total, "estimated_wall_minutes": total / 60,
            "models_per_hour": len(rows) / (total / 3600), "median_seconds_per_step": float(np.median(step_times)),
            "fraction_of_matmul_peak": useful / sum(step_times) / peak["best"], "per_program": per}
    if "one_program_per_architecture" in record:
        record["grouping_speedup"] = (record["one_program_per_architecture"]["estimated_wall_seconds"]
                                      / record["grouped"]["estimated_wall_seconds"])
    # the published grid at full size, for an estimate on other hardware: its model FLOPs
    full_rows = grid_rows(M.BASE, args.seeds)
    record["published_grid"] = {"models": len(full_rows), "batch": 256, "steps": 3000,
                                "model_tflop": sum(model_flops(a, 256)["step"] for a, _ in full_rows) * 3000 / 1e12}
    record.update(peak_memory=_peak_memory(), loadavg_before_after=[list(load_before), list(os.getloadavg())])
    emit(record)
    return 0
