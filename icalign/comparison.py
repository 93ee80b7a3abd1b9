"""``icalign.compare``: is variant B of a model better or worse than variant A? Trains and
evaluates two or more variants of one experiment's model on the same evaluation contexts and
seeds, and gives the claim engine's paired verdict of each against a reference, with every
variant's training health (the judging is :mod:`icalign.analysis.variants`; the command is
``icalign compare``).

    import icalign
    from icalign.analysis.variants import report
    from icalign.config import override
    from icalign.experiments import tf_vs_gd

    a = override(tf_vs_gd.QUICK, ["seeds=5"])
    b = override(a, ["model.n_layers=1"])
    res = icalign.compare({"a": a, "b": b}, "tf-vs-gd", run_root="runs")
    print(report(res))  # the claims table and one health line per variant

Every variant is a config of ONE experiment whose ``Config`` has ``model``, ``train``,
``eval``, ``seed`` and ``seeds`` (:func:`experiments` lists them). Each trains through
``icalign.experiment.train_or_load`` (so ``train.lr_grid`` gives it the fair protocol, and
``run_root`` keeps and reloads its runs), and is evaluated as ``icalign run tf-vs-gd``
evaluates: ``eval.contexts`` contexts of the evaluation stream of ``seed`` with clean rewards,
every seed's normalised MSE on every context at the largest t (docs/theory.md section 4), and
its health gate (:func:`icalign.analysis.health.run_gate`). Variants that do not share the
contexts and seeds are refused before anything is trained. Only ``model`` and ``train`` (and
the shared ``seed``, ``seeds``, ``eval.contexts``) matter: other keys of the experiment's
config (e.g. reward-noise's ``train_levels``) are not used, and a variant that differs only
there is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import time

import numpy as np

import icalign.experiments
from icalign import config as C
from icalign import model as M
from icalign import training as T
from icalign.analysis import health
from icalign.analysis import variants as V
from icalign.analysis.evaluate import transformer_curves
from icalign.core import keys
from icalign.core.stats import summarise
from icalign.core.tasks import sample_contexts
from icalign.experiment import EvalConfig, preflight, train_or_load

__all__ = ["NEEDS", "experiments", "find", "check_name", "compare"]

NEEDS = ("model", "train", "eval", "seed", "seeds")  #: the Config fields a comparable experiment has
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _qualifies(mod) -> bool:
    cfg, cls = getattr(mod, "QUICK", None), getattr(mod, "Config", None)
    if cls is None or not dataclasses.is_dataclass(cls) or not isinstance(cfg, cls):
        return False
    names = {f.name for f in dataclasses.fields(cls)}
    return (set(NEEDS) <= names and isinstance(cfg.model, M.ModelConfig) and isinstance(cfg.train, T.TrainConfig)
            and isinstance(cfg.eval, EvalConfig))


def experiments() -> dict:
    """{command name: module} of the experiments whose variants can be compared."""
    out = {}
    for info in pkgutil.iter_modules(icalign.experiments.__path__):
        if not info.name.startswith("_"):
            mod = importlib.import_module(f"icalign.experiments.{info.name}")
            if _qualifies(mod):
                out[info.name.replace("_", "-")] = mod
    return out


def find(experiment: str):
    """The module of a comparable experiment, or a ValueError naming the ones there are."""
    table = experiments()
    if experiment not in table:
        raise ValueError(f"experiment {experiment!r} cannot be compared; choose one of {sorted(table)} (the "
                         f"experiments whose Config has {', '.join(NEEDS)})")
    return table[experiment]


def check_name(name) -> str:
    """A variant's name: it labels claims and output, so a plain word (letters, digits, _ . + -)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"variant name {name!r} must start with a letter or digit and hold only letters, digits "
                         "and _ . + -")
    return name


def _named(cfgs, mod, experiment: str) -> dict:
    if isinstance(cfgs, dict):
        items = list(cfgs.items())
    elif isinstance(cfgs, (list, tuple)):
        items = [(f"v{i + 1}", c) for i, c in enumerate(cfgs)]
    else:
        raise ValueError(f"cfgs must be a dict {{name: config}} or a list of configs, got {type(cfgs).__name__}")
    if len(items) < 2:
        raise ValueError(f"compare needs at least two variants, got {len(items)}")
    for name, cfg in items:
        check_name(name)
        if not isinstance(cfg, mod.Config):
            where = type(cfg).__module__
            hint = (f"; pass experiment={where.rsplit('.', 1)[1].replace('_', '-')!r}"
                    if where.startswith("icalign.experiments.") else "")
            raise ValueError(f"variant {name!r} is a {where}.{type(cfg).__qualname__}, not a {experiment} config "
                             f"({mod.__name__}.Config){hint}")
    return dict(items)


def _variant(name, cfg, ctx, seeds, run_root, progress, ref_config) -> dict:
    t0 = time.perf_counter()
    try:
        trained = train_or_load(cfg.model, cfg.train, seeds=seeds, run_root=run_root, progress=progress)
    except T.NonFiniteLossError as err:  # a diverged variant is a result, not a crash
        return V.record(name, C.to_dict(cfg), None, {"status": "failed", "reason": f"training diverged ({err})"},
                        ref_config, selection=None, run_folder=None)
    values = np.asarray(transformer_curves(trained.params, cfg.model, ctx, ctx.r_true[:, None, :]).nmse[:, 0])
    gate = health.run_gate(trained, ctx)  # it fails a model whose predictions are not finite
    nmse = None if not np.all(np.isfinite(values)) else (  # one seed: the interval is over contexts, as tf-vs-gd's
        summarise(values, "seeds", keep=True) if len(seeds) > 1 else summarise(values[0], "contexts", keep=True))
    return V.record(name, C.to_dict(cfg), nmse, gate, ref_config, selection=getattr(trained, "selection", None),
                    run_folder=None if trained.run_dir is None else trained.run_dir.name, train_loaded=trained.loaded,
                    seconds=time.perf_counter() - t0)


def compare(cfgs, experiment: str = "tf-vs-gd", *, run_root=None, progress: bool = False,
            reference: str | None = None) -> dict:
    """Train, evaluate and judge the variants ``cfgs`` ({name: config} or a list, named v1, v2,
    ...) of ``experiment`` (module docstring) against ``reference`` (a name; default the first).
    Returns {"experiment", "kind": "compare", "config" (the reference's), "reference", "t",
    "contexts" (the context identity), "variants": [{"name", "overrides" (config keys that differ
    from the reference's), "config", "health", "nmse" (summary with the (seeds, contexts) cells
    at the largest t), "selection" (the learning-rate choice of the fair protocol, or None), ...}],
    "claims": ["V has lower error than REF", one per other variant]}. Everything is checked
    before anything is trained."""
    mod = find(experiment)
    named = _named(cfgs, mod, experiment)
    reference = next(iter(named)) if reference is None else reference
    if reference not in named:
        raise ValueError(f"reference {reference!r} is not one of the variants {list(named)}")
    dicts = {k: C.to_dict(v) for k, v in named.items()}
    V.check_shared(experiment, {reference: dicts[reference], **dicts})
    for cfg in named.values():
        preflight(cfg)
    ref = named[reference]
    ctx = sample_contexts(keys.eval_keys(ref.seed, 2)[0], ref.eval.contexts, ref.model.d, ref.model.n,
                          ref.train.queries, ref.train.query_corr)  # exactly tf-vs-gd's evaluation contexts
    seeds = tuple(range(ref.seed, ref.seed + ref.seeds))
    out = [_variant(name, cfg, ctx, seeds, run_root, progress, dicts[reference]) for name, cfg in named.items()]
    t = ref.model.n - 1
    return {"experiment": experiment, "kind": "compare", "config": dicts[reference], "reference": reference, "t": t,
            "contexts": V.identity(experiment, dicts[reference]), "variants": out,
            "claims": V.judge(out, reference, t)}
