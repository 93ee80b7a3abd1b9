"""Benchmark: training the ablation grid (quick size) as compiled, vmapped sweeps.

Prints one JSON object:

* the wall time of training every distinct architecture of the grid with its seeds vmapped
  (compilation included: it is part of what a sweep costs), per architecture too;
* trained models per minute (architectures x seeds / wall minutes);
* the speed-up of vmapped multi-seed training over training the same seeds one after another
  in the same process, both timed after compilation (a warm-up run compiles each program
  first), on the base architecture and on the deepest one of the grid.

Nothing is written to disk (``checkpoint=False``); the numbers come from ``icalign.train``'s
own compiled chunks, the code the experiments run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax

from icalign import model as M
from icalign import training as T
from icalign.analysis import ablations as A
from icalign.io import hardware

DESCRIPTION = "ablation grid (quick size): wall time, models/minute, vmapped vs sequential seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="seeds per architecture (default 3)")
    p.add_argument("--factors", default=None, help=f"subset of {','.join(A.FACTORS)} (default: all)")
    p.add_argument("--speedup-steps", type=int, default=200,
                   help="timed steps for the vmapped-vs-sequential comparison (default 200)")


def _train(cfg, train_cfg, seeds):
    res = T.train(cfg, train_cfg, seeds=seeds, checkpoint=False, progress=False)
    jax.block_until_ready(res.params)
    return res


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speedup(cfg: M.ModelConfig, train_cfg: T.TrainConfig, seeds) -> dict:
    """Post-compile seconds for the seeds vmapped in one program vs one after another."""
    warm = dataclasses.replace(train_cfg, steps=train_cfg.chunk, checkpoint_every=train_cfg.chunk)
    _train(cfg, warm, seeds)         # compiles the R-run program
    _train(cfg, warm, seeds[:1])     # compiles the 1-run program
    vmapped = _timed(lambda: _train(cfg, train_cfg, seeds))
    sequential = _timed(lambda: [_train(cfg, train_cfg, (s,)) for s in seeds])
    return {"n_layers": cfg.n_layers, "seeds": len(seeds), "steps": train_cfg.steps,
            "vmapped_seconds": vmapped, "sequential_seconds": sequential, "speedup": sequential / vmapped}


def run(args) -> int:
    from icalign.experiments.ablations import QUICK

    spec = {"base": QUICK.model, "depths": QUICK.depths, "heads": QUICK.heads, "train": QUICK.train}
    n_seeds = getattr(args, "seeds", 3)
    if n_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {n_seeds}")
    steps_sp = getattr(args, "speedup_steps", 200)
    if steps_sp < 1:
        raise ValueError(f"--speedup-steps must be >= 1, got {steps_sp}")
    factors = getattr(args, "factors", None)
    factors = None if factors is None else [f.strip() for f in factors.split(",") if f.strip()]
    variants = A.grid(spec["base"], factors, spec["depths"], spec["heads"])
    configs = list(A.unique_configs(variants))
    seeds = tuple(range(n_seeds))
    train_cfg = spec["train"]
    load_before = os.getloadavg()

    per = []
    t0 = time.perf_counter()
    for cfg in configs:
        per.append({"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "head_dim": cfg.head_size,
                    "attention": cfg.attention, "ffn": cfg.ffn, "layer_norm": cfg.layer_norm,
                    "seconds": _timed(lambda: _train(cfg, train_cfg, seeds))})
    wall = time.perf_counter() - t0

    sp_cfg = dataclasses.replace(train_cfg, steps=steps_sp,
                                 chunk=min(train_cfg.chunk, steps_sp), checkpoint_every=min(train_cfg.chunk, steps_sp))
    deepest = max(configs, key=lambda c: c.n_layers)
    out = {
        "benchmark": "sweep",
        "grid": "ablations, quick size (icalign.experiments.ablations.QUICK)",
        "base_config": spec["base"].to_dict(),
        "train_config": train_cfg.to_dict(),
        "architectures": len(configs),
        "seeds_per_architecture": n_seeds,
        "models_trained": len(configs) * n_seeds,
        "wall_seconds": wall,
        "wall_includes": "compilation of every architecture's program (part of a sweep's cost)",
        "models_per_minute": len(configs) * n_seeds / (wall / 60),
        "per_architecture": per,
        "vmapped_vs_sequential": [speedup(spec["base"], sp_cfg, seeds)] + (
            [speedup(deepest, sp_cfg, seeds)] if deepest.n_layers != spec["base"].n_layers else []),
        "loadavg_before_after": [list(load_before), list(os.getloadavg())],
        "hardware": hardware(),
    }
    print(json.dumps(out, indent=1))
    return 0
