"""`icalign run ablations`: the one-factor ablation grid (docs/theory.md section 3).

Every variant changes one ModelConfig field of the base (icalign.analysis.ablations) and
keeps the causal mask; each distinct architecture trains its seeds together (vmap, sharded
over devices), then all are evaluated on the same clean contexts against the GD learners.
Progress is saved after every architecture, so a killed run resumes without retraining what
finished. Markdown with tables and verdicts, and figures, are drawn from the JSON.
"""

from __future__ import annotations

import dataclasses
import time

from icalign import model as M
from icalign import training as T
from icalign.analysis import ablations as A
from icalign.analysis import evaluate as E
from icalign.analysis import report
from icalign.core import keys
from icalign.core.sharding import describe, sweep_mesh
from icalign.core.stats import summarise
from icalign.core.tasks import sample_contexts
from icalign.experiment import EvalConfig, check_seeds, Progress, check_seed, config_record, publish, result_path
from icalign.io import hardware
from icalign.viz import sweeps

NAME = "ablations"
DESCRIPTION = "one-factor ablations (depth, heads x2, softmax, FFN, LayerNorm), >= 2 seeds each"


@dataclasses.dataclass(frozen=True)
class Config:
    model: M.ModelConfig = M.BASE
    train: T.TrainConfig = T.TrainConfig()
    eval: EvalConfig = EvalConfig(contexts=256)
    factors: tuple[str, ...] = tuple(A.FACTORS)
    depths: tuple[int, ...] = A.DEPTHS
    heads: tuple[int, ...] = A.HEADS
    seeds: int = 3
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        check_seeds(self.seeds)
        A.grid(self.model, self.factors, self.depths, self.heads)  # validates the grid


# quick: reduced width, depth grid, batch and steps (a 2-core CPU in < 15 min; with depth 8 it
# took 14.8 min and 8 layers were undertrained at 400 steps); the theory's stacked layout,
# since small interleaved models stay on the initial plateau for this budget (tf_vs_gd.py).
# d_model 24 is divisible by every head count of the grid.
QUICK = Config(model=M.ModelConfig(n_layers=2, n_heads=3, d_model=24, token_layout="stacked"),
               train=T.TrainConfig(lr=3e-3, batch=64, steps=400, chunk=100, checkpoint_every=200), depths=(1, 2, 4))
FULL = Config()


def _train_and_score(cfg, arch, ctx, clean, seeds, run_root, progress) -> dict:
    entry = {}
    try:
        if run_root is None:
            res = T.train(arch, cfg.train, seeds=seeds, checkpoint=False, progress=progress)
        else:
            res = T.train_or_load(arch, cfg.train, seeds=seeds, run_root=run_root, progress=progress)
    except T.NonFiniteLossError as e:  # a diverged architecture is a result, not a crash
        return dict(status="diverged", message=str(e))
    curves = E.transformer_curves(res.params, arch, ctx, clean)  # (R, 1, B, T)
    entry.update(status="ok", run_folder=None if res.run_dir is None else res.run_dir.name, train_loaded=res.loaded,
                 nmse=summarise(curves.nmse[:, 0], "seeds"), pl=summarise(curves.pl[:, 0], "seeds"),
                 nmse_per_seed=curves.nmse[:, 0].mean(axis=1), n_params=M.param_count(res.params_of(0)),
                 train_loss_last50=res.losses[:, -50:].mean(axis=1))
    return entry


def figures(res: dict) -> dict:
    return {"": sweeps.ablation_panels(res), "bars": sweeps.ablation_bars(res)}


markdown = report.ablation_markdown


def run(cfg: Config = QUICK, out=None, *, force: bool = False, progress: bool = True, run_root=None) -> dict:
    path = result_path(out, NAME, force)
    variants = A.grid(cfg.model, cfg.factors, cfg.depths, cfg.heads)
    seeds = tuple(cfg.seed + i for i in range(cfg.seeds))
    k_ctx, k_gd = keys.eval_keys(cfg.seed, 2)
    ctx = sample_contexts(k_ctx, cfg.eval.contexts, cfg.model.d, cfg.model.n, cfg.train.queries,
                          cfg.train.query_corr)
    clean = ctx.r_true[:, None, :]  # (B, 1, N): the clean critic, one "level"
    saved = Progress(out, NAME, cfg, force)
    t0 = time.perf_counter()
    groups = A.unique_configs(variants)
    for i, (arch, members) in enumerate(groups.items()):
        key, names = M.config_hash(arch), ", ".join(v.name for v in members)
        if key in saved:
            print(f"[{NAME}] {i + 1}/{len(groups)} {names}: resumed from {saved.path}")
            continue
        t1 = time.perf_counter()
        entry = {"config": arch.to_dict(), "variants": [v.name for v in members],
                 **_train_and_score(cfg, arch, ctx, clean, seeds, run_root, progress)}
        entry["seconds"] = time.perf_counter() - t1
        saved.put(key, entry)
        last = f"nmse(t={cfg.model.n - 1}) {entry['nmse']['mean'][-1]:.3f}" if entry["status"] == "ok" else entry["status"]
        print(f"[{NAME}] {i + 1}/{len(groups)} {names}: {last} ({entry['seconds']:.0f} s)", flush=True)
    gd = {}
    for learner in ("adam", "gd"):
        c = E.gd_curves(k_gd, ctx, clean, learner, cfg.eval.gd_steps)
        gd[learner] = {"nmse": summarise(c.nmse[0], "contexts"), "pl": summarise(c.pl[0], "contexts")}
    m, t = cfg.model, cfg.train
    res = {
        "experiment": NAME, "name": None if out is None else out.name, **config_record(cfg),
        "size_note": (f"base {m.n_layers} layers, {m.n_heads} heads, width {m.d_model}, {m.token_layout} tokens; "
                      f"depths {'/'.join(map(str, cfg.depths))}; batch {t.batch}, {t.steps} steps, lr {t.lr:g}"),
        "seed": cfg.seed, "seeds": list(seeds), "interval": report.INTERVAL_NOTE,
        "base_config": m.to_dict(), "train_config": t.to_dict(), "n_eval_contexts": cfg.eval.contexts,
        "ts": list(range(1, m.n)),
        "variants": [{"name": v.name, "factor": v.factor, "field": v.field, "value": v.value, "is_base": v.is_base,
                      "arch": M.config_hash(A.canonical(v.config)),
                      "changed_fields": A.changed_fields(v.reference, v.config)} for v in variants],
        "architectures": saved.entries, "gd": gd, "devices": describe(sweep_mesh(len(seeds))),
        "seconds": time.perf_counter() - t0, "hardware": hardware(),
    }
    res["claims"] = report.ablation_claims(res)
    res = publish(path, res, figures=figures, markdown=report.ablation_markdown)
    saved.done()
    print(report.ablation_markdown(res, claims_only=True))
    return res
