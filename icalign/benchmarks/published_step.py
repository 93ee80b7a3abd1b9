"""Benchmark: one training step of the published PyTorch code, for the train-step table.

``icalign bench published-step --code DIR`` imports the published synthetic experiment from a
checkout of its repository (DIR holds ``synthetic_experiment/``; icalign does not ship it) and
times its training step on the base config (GPT-2 backbone, 20 layers, 3 heads, width 96,
batch 256, 20 triplets) on this machine, as its ``train.py`` runs it: sample the data and the
task, then ``train_step`` (zero_grad, forward, the Plackett-Luce loss of ``tasks.py``,
backward, Adam step). ``train.py`` itself imports wandb and quinine at module level, so its
five-line ``train_step`` is repeated here rather than imported. Prints one JSON object:
median seconds per step after one warm-up step, the thread count and the package versions.

Needs torch and transformers, plus scikit-learn, xgboost and tqdm (which the published
``models.py`` imports); none of them is an icalign dependency.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

DESCRIPTION = "seconds per train step of the published PyTorch code (base config), given a checkout of it"

NEEDS = ("torch", "transformers", "sklearn", "xgboost", "tqdm")
BASE = dict(family="gpt2", n_dims=5, n_positions=20, n_embd=96, n_layer=20, n_head=3)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--code", required=True,
                   help="a checkout of the published repository (the folder holding synthetic_experiment/)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256, the published one)")


def _check(args) -> Path:
    src = Path(args.code) / "synthetic_experiment"
    missing = [f for f in ("models.py", "tasks.py", "samplers.py") if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"--code {args.code!r}: no synthetic_experiment/{', '.join(missing)} there; give a checkout "
                         "of the published repository")
    if args.steps < 1 or args.batch < 1:
        raise SystemExit("--steps and --batch must be >= 1")
    absent = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if absent:
        raise SystemExit(f"the published code needs {', '.join(absent)} (not icalign dependencies): "
                         f"pip install {' '.join('scikit-learn' if m == 'sklearn' else m for m in absent)}")
    return src


def _fingerprint(src: Path) -> dict:
    """sha256 (first 16 hex digits) of each published file the step runs: which code was timed."""
    return {f: hashlib.sha256((src / f).read_bytes()).hexdigest()[:16] for f in ("models.py", "tasks.py", "samplers.py")}


def run(args) -> int:
    src = _check(args)
    sys.path.insert(0, str(src))
    import torch
    import transformers

    models, samplers, tasks = (importlib.import_module(m) for m in ("models", "samplers", "tasks"))
    torch.manual_seed(0)
    model = models.build_model(SimpleNamespace(**BASE))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = samplers.get_data_sampler("mixed_gaussian", n_dims=BASE["n_dims"])
    task_sampler = tasks.get_task_sampler("mixed_linear_alignment", BASE["n_dims"], args.batch)

    def step():
        xs, epsilons, rs = data.sample_xs(BASE["n_positions"], args.batch, BASE["n_dims"])
        task = task_sampler()
        ini_ys, ys = task.evaluate(xs, epsilons, rs)
        loss_func = task.get_training_metric()
        optimizer.zero_grad()  # train.py's train_step, on the CPU tensors
        output = model(xs, ys, rs)
        loss = loss_func(output, ys, rs, ini_ys)
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    load_before = os.getloadavg()
    step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out = {"benchmark": "published-step", "config": {**BASE, "batch": args.batch},
           "seconds_per_step_median": statistics.median(times), "seconds_per_step_all": times,
           "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "published_files_sha256": _fingerprint(src),
           "loadavg_before_after": [list(load_before), list(os.getloadavg())]}
    print(json.dumps(out, indent=1))
    return 0
