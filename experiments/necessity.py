"""`icalign run necessity`: is each component needed to compute one PL gradient step?

For every N, the construction's architecture and each reduced one (linear attention, one head,
no FFN, half the blocks) train on the one-step PL target (icalign.analysis.necessity), reported
by the median and best held-out relative error over seeds; each reduced one gets a statement
(needed / not needed / not resolved / not trained) from a rank test over seeds against the full
one (icalign.analysis.necessity_claims); no ranking-objective health gate (icalign.viz.necessity.GATE_NOTE).
The construction's float64 error is the reference. Progress is saved after every (N, variant)."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from icalign.analysis import health as H, necessity as study, necessity_claims
from icalign.config import short_hash
from icalign.core.validate import check_int, check_positive
from icalign.experiment import Progress, check_seed, check_seeds, config_record, publish, result_path, runner
from icalign.io import hardware
from icalign.theory import construct, necessity
from icalign.viz.necessity import necessity as necessity_figure

NAME = "necessity"
DESCRIPTION = "error floor of reduced architectures (linear attn, 1 head, no FFN, fewer blocks) vs N"


@dataclasses.dataclass(frozen=True)
class Config:
    ns: tuple[int, ...] = (4, 8, 16)
    variants: tuple[str, ...] = necessity.VARIANTS
    d: int = 3
    eta: float = 0.2
    beta: float = 1.0
    seeds: int = 5
    steps: int = 2000
    batch: int = 64
    lr: float = 3e-3
    construction_contexts: int = 256
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        if not self.ns:
            raise ValueError("ns must list at least one number of candidates")
        if not self.variants or any(v not in necessity.VARIANTS for v in self.variants):
            raise ValueError(f"variants must be a non-empty subset of {list(necessity.VARIANTS)}, "
                             f"got {list(self.variants)}")
        for n in self.ns:
            check_int("ns", n, minimum=2)
        check_seeds(self.seeds)
        for name in ("d", "steps", "batch", "construction_contexts"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("eta", "beta", "lr"):
            check_positive(name, getattr(self, name))


QUICK = Config(steps=800)
FULL = Config()


def _construction(cfg: Config, n: int, key):
    k_w, k_fit, k_eval = jax.random.split(jax.random.fold_in(key, n), 3)
    W0 = np.asarray(jax.random.normal(k_w, (cfg.d, cfg.d))) / np.sqrt(cfg.d)
    spec = construct.spec_for(n, cfg.d, W0, eta=cfg.eta, beta=cfg.beta)
    with jax.enable_x64(True):
        ctx = construct.separated_contexts(k_eval, cfg.construction_contexts, n, cfg.d)
        y0, yp = necessity.target(spec, ctx)
        built = float(necessity.relative_error(construct.run(spec, ctx), y0, yp))
    return spec, k_fit, built


def figures(res: dict) -> dict:
    return {"": necessity_figure(res)}


@runner
def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, NAME, force)
    key = jax.random.PRNGKey(cfg.seed)
    saved = Progress(out, NAME, cfg, force)
    t_start = time.perf_counter()
    for n in cfg.ns:
        spec, k_fit, built = _construction(cfg, n, key)
        for name, arch in necessity.variant_configs(spec).items():
            if name not in cfg.variants:
                continue
            if (n, name) in saved:
                print(f"[{NAME}] N={n:2d} {name:16s} resumed from {saved.path}")
                continue
            t0 = time.perf_counter()
            run_dir = None if run_root is None else run_root / f"necessity-{saved_key(cfg, n, name)}"
            rel, curves = study.fit_variant(k_fit, spec, arch, cfg.seeds, cfg.steps, cfg.batch, cfg.lr,
                                            run_dir=run_dir, progress=progress)
            saved.put((n, name), {
                "n": n, "variant": name, "construction_rel_error_float64": built,
                "rel_error_per_seed": rel, **necessity_claims.seed_summary(rel),  # a diverged seed (NaN) is reported
                "n_layers": arch.n_layers, "n_heads": arch.n_heads, "head_dim": arch.head_size,
                "attention": arch.attention, "ffn": arch.ffn, "final_train_loss": curves[:, -H.WINDOW:].mean(axis=1),
                "seconds": time.perf_counter() - t0})
            s = saved.get((n, name))
            # float(): a diverged variant's summary is NaN, which the saved JSON holds as "nan"
            print(f"[{NAME}] N={n:2d} {name:16s} best {float(s['best']):.3e}  median {float(s['median']):.3e}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    table = {}
    for entry in saved.entries.values():
        row = table.setdefault(str(entry["n"]), {"construction_rel_error_float64":
                                                 entry["construction_rel_error_float64"], "variants": {}})
        row["variants"][entry["variant"]] = {k: v for k, v in entry.items() if k not in ("n", "variant",
                                                                                        "construction_rel_error_float64")}
    res = {
        "experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
        "size": None if out is None else out.name,
        "protocol": {"d": cfg.d, "eta": cfg.eta, "beta": cfg.beta, "seeds": cfg.seeds, "adam_steps": cfg.steps,
                     "batch": cfg.batch, "lr": cfg.lr,
                     "metric": f"held-out E||f - y+||^2 / E||y+ - y0||^2 over one batch of {cfg.batch} contexts",
                     "construction_metric": f"the same on {cfg.construction_contexts} contexts, float64",
                     "summary": "median and best over seeds", "target": "one PL GD step, sqdist reward",
                     "seed": cfg.seed},
        "results": table, "claims": necessity_claims.claims(table), "seconds": time.perf_counter() - t_start,
        "hardware": hardware()}
    res = publish(path, res, figures=figures)
    saved.done()
    return res


def saved_key(cfg: Config, n: int, name: str) -> str:
    return f"{short_hash(cfg)}-n{n}-{name.replace(' ', '_')}"
