"""What every experiment shares: where its outputs go, resumable sweep progress, and
publishing a result (JSON, then markdown and figures drawn from the JSON as written).

An experiment module (``experiments/NAME.py``, shipped as ``icalign.experiments.NAME``)
defines ``NAME``, ``DESCRIPTION``, a frozen ``Config`` dataclass with presets ``QUICK`` and
``FULL``, and ``run(cfg, out=None, *, force=False, progress=True, run_root=None) -> dict``:

* ``out=None`` computes in memory and writes nothing (training too, unless ``run_root`` is
  given), so a notebook cell can run twice;
* ``out=DIR`` claims ``DIR/<stem>.json`` first (a finished result is never overwritten
  without ``force``), then writes the result and its figures there;
* ``run_root=DIR`` keeps every trained model in a run folder under DIR (``runs/`` on the CLI;
  a result's ``run_folder`` names it, and ``icalign.train.load_run(DIR / run_folder)`` loads
  it), and a second run loads it instead of training again;
* ``keep_params=True`` (taken by :func:`runner`) returns the trained models too, in memory,
  as ``res["trained"]``: a list of ``icalign.train.TrainResult`` (``.params``,
  ``.params_of(i)``, ``.losses``, ``.run_dir``), in the order they were trained.

The CLI (``icalign run NAME``) resolves the config (preset, ``--config``, the module's shortcut
flags ``FLAGS = {"--flag": ("key=value", help)}``, ``--set``) and the folder
``<--out>/<NAME>/<--name>``, then calls ``run``; a module's ``exit_code(result)``, if defined,
gives the command's exit status.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable, Optional

from icalign import config as C
from icalign import io
from icalign.core import validate
from icalign.core.validate import check_int

__all__ = ["default_name", "result_path", "runner", "train_or_load", "run_folders", "Progress", "publish", "redraw",
           "config_record", "EvalConfig", "check_seed", "check_seeds", "preflight"]


def default_name(cfg, presets: dict) -> str:
    """The run name of ``cfg``: a preset's name when it equals that preset, else
    ``variant-<hash>`` (so quick, full and every variant land in different folders)."""
    for name, preset in presets.items():
        if cfg == preset:
            return name
    return f"variant-{C.short_hash(cfg)}"


_CLAIMED: contextvars.ContextVar = contextvars.ContextVar("claimed", default=None)
_KEPT: contextvars.ContextVar = contextvars.ContextVar("kept", default=None)  # trained models, with keep_params
_PROTOCOL: contextvars.ContextVar = contextvars.ContextVar("protocol", default=None)  # how each model was trained


def result_path(out, stem: str, force: bool) -> Optional[Path]:
    """``out/<stem>.json`` claimed for writing (None when ``out`` is None): refused if a
    finished result is there (unless ``force``) or another live run holds it
    (:func:`icalign.io.claim_output`). The claim is given back by :func:`publish`, or when the
    :func:`runner`-decorated ``run`` that took it exits, also by an exception."""
    if out is None:
        return None
    path = io.claim_output(Path(out) / f"{stem}.json", force)
    held = _CLAIMED.get()
    if held is not None:
        held.append(path)
    return path


def preflight(cfg) -> None:
    """Refuse, before any work, a config whose contexts or training cannot fit in memory (the
    config's own constructor has checked every value's range already)."""
    if cfg is None:
        return
    from icalign import model as M
    from icalign import training as T
    from icalign.core.tasks import contexts_bytes
    from icalign.core.validate import check_memory

    model = getattr(cfg, "model", None)
    d, n = (model.d, model.n) if isinstance(model, M.ModelConfig) else (getattr(cfg, "d", 5), getattr(cfg, "n", 20))
    ev = getattr(cfg, "eval", None)
    if isinstance(ev, EvalConfig):
        check_memory(f"{ev.contexts} evaluation contexts", contexts_bytes(ev.contexts, d, n) * 20, "eval.contexts")
    train = getattr(cfg, "train", None)
    if isinstance(model, M.ModelConfig) and isinstance(train, T.TrainConfig):
        T.check_objective(model.n, train.min_seen)
        # the fair protocol trains every seed (and level) at every learning rate of its grid at once
        runs = getattr(cfg, "seeds", 1) * len(getattr(cfg, "train_levels", (0,))) * max(1, len(train.lr_grid))
        check_memory(f"training {runs} run(s) of this model", T.training_bytes(model, train.batch, runs, train.microbatches),
                     "train.batch, seeds or the model size")


def runner(run):
    """Decorator of every experiment's ``run``: claims taken during the call are released
    when it returns or raises, so a failed notebook cell can simply be run again; with
    ``keep_params=True`` the models trained through :func:`train_or_load` come back as
    ``res["trained"]``. ``checked=True`` skips :func:`preflight` (the CLI has made it)."""

    @functools.wraps(run)
    def wrapped(*args, keep_params: bool = False, checked: bool = False, **kwargs):
        if not checked:
            preflight(args[0] if args else kwargs.get("cfg"))
        token, kept, protocol = _CLAIMED.set([]), _KEPT.set([] if keep_params else None), _PROTOCOL.set([])
        try:
            res = run(*args, **kwargs)
            if keep_params:
                res["trained"] = _KEPT.get()
            return res
        finally:
            for path in _CLAIMED.get():
                io.release(path)
            _CLAIMED.reset(token)
            _KEPT.reset(kept)
            _PROTOCOL.reset(protocol)

    return wrapped


def train_or_load(model_cfg, train_cfg, *, run_root, progress: bool, **runs):
    """The one way an experiment gets a trained model (``runs``: seeds, noise_levels) under its
    training protocol (published or fair: :mod:`icalign.training.protocol`): in memory when
    ``run_root`` is None, else loaded from its run folder under ``run_root`` or trained there.
    Kept for ``keep_params``; its protocol record goes into the published result."""
    from icalign.training import protocol

    trained = protocol.train_or_load(model_cfg, train_cfg, run_root=run_root, progress=progress, **runs)
    records = _PROTOCOL.get()
    if records is not None:
        records.append({"model": _model_label(model_cfg), **trained.selection})
    kept = _KEPT.get()
    if kept is not None:
        kept.append(trained)
    return trained


def _model_label(model_cfg) -> str:
    c = model_cfg
    return (f"{c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}, {c.attention} attention"
            + ("" if c.ffn else ", no FFN") + ("" if c.layer_norm else ", no LayerNorm"))


def run_folders(res) -> list[str]:
    """Every training run folder a result names (its ``run_folder`` entries), in order, once each."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "run_folder" and isinstance(v, str) and v not in found:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(res)
    return found


def config_record(cfg) -> dict:
    """The resolved config as stored in a result (``icalign.config.from_dict`` rebuilds it)."""
    return {"config": C.to_dict(cfg), "config_hash": C.short_hash(cfg)}


class Progress:
    """Saved progress of a sweep: entries by key, written after each one, so a killed sweep
    resumes without recomputing what finished. The file is keyed by the config's hash: a
    resume never mixes entries of different settings. With ``out=None`` it lives in memory."""

    def __init__(self, out: Optional[Path], stem: str, cfg, force: bool):
        self.path = None if out is None else Path(out) / f".{stem}.{C.short_hash(cfg, 12)}.partial.json"
        self.entries: dict = {}
        if self.path is not None and self.path.exists() and not force:
            self.entries = io.read_json(self.path)["entries"]

    def __contains__(self, key) -> bool:
        return str(key) in self.entries

    def get(self, key):
        return self.entries[str(key)]

    def put(self, key, entry) -> None:
        # stored as written to JSON, so a resumed entry is exactly a fresh one
        self.entries[str(key)] = json.loads(json.dumps(io.to_jsonable(entry)))
        if self.path is not None:
            io.write_json(self.path, {"entries": self.entries})

    def done(self) -> None:
        if self.path is not None and io.is_writer():
            self.path.unlink(missing_ok=True)


def publish(path: Optional[Path], res: dict, figures: Optional[Callable[[dict], dict]] = None,
            markdown: Optional[Callable[[dict], str]] = None) -> dict:
    """Write the result JSON at ``path``, then its markdown (``path`` with .md) and figures
    (``figures(res) -> {suffix: Figure}``; each saved as ``<stem>_<suffix>`` or ``<stem>`` for
    the suffix ""), both drawn from the JSON as read back, so they show exactly what a reader
    of the file sees. Returns the result as read back (as JSON would give it) and, when
    nothing is written, the result itself with its figures under ``res["figures"]``."""
    import jax

    res = {**res, "identity": io.identity(jax.device_count())}  # what else changes the numbers
    if _PROTOCOL.get():  # how every model behind the result was trained (published or fair protocol)
        res.setdefault("protocol", _PROTOCOL.get())
    if path is None:
        loaded = json.loads(json.dumps(io.to_jsonable(res)))
        if figures is not None:
            loaded["figures"] = figures(loaded)
        return loaded
    io.write_json(path, res)
    loaded = io.read_json(path)
    io.release(path)  # the result is finished; markdown and figures follow from it
    written = [str(path)]
    if markdown is not None:
        written.append(str(io.write_text(path.with_suffix(".md"), markdown(loaded))))
    for suffix, fig in (figures(loaded) if figures is not None else {}).items():
        stem = path.with_suffix("") if not suffix else path.with_name(f"{path.stem}_{suffix}")
        written += [str(p) for p in io.save_figure(fig, stem)]
    print(f"wrote {', '.join(written)}")
    return loaded


def redraw(path: Path, module) -> list[Path]:
    """Redraw the markdown and figures of the result file ``path`` with ``module``'s current
    ``figures`` / ``markdown`` functions (the JSON itself is not touched). Returns the paths
    written. This is how a figure is improved without rerunning (or having) the hardware."""
    path = Path(path)
    res = io.read_json(path)
    written = []
    if getattr(module, "markdown", None) is not None:
        written.append(io.write_text(path.with_suffix(".md"), module.markdown(res)))
    for suffix, fig in module.figures(res).items():
        stem = path.with_suffix("") if not suffix else path.with_name(f"{path.stem}_{suffix}")
        written += io.save_figure(fig, stem)
    return written


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How trained models and GD learners are evaluated: on ``contexts`` fresh contexts of
    the seed's evaluation stream; GD learners run ``gd_steps`` steps; input sensitivities
    (Jacobians) are compared on the first ``sensitivity_contexts`` of them (0: none)."""

    contexts: int = 256
    sensitivity_contexts: int = 0
    gd_steps: int = 50

    def __post_init__(self):
        validate.python_numbers(self)
        try:
            check_int("contexts", self.contexts, minimum=2)  # an interval needs two samples
            check_int("sensitivity_contexts", self.sensitivity_contexts, minimum=0)
            check_int("gd_steps", self.gd_steps, minimum=1)
        except ValueError as e:
            raise ValueError(f"EvalConfig.{e}") from None
        if self.sensitivity_contexts > self.contexts:
            raise ValueError(f"EvalConfig.sensitivity_contexts={self.sensitivity_contexts} must be <= "
                             f"contexts={self.contexts}")


def check_seeds(seeds) -> int:
    """Trained models use seeds as the unit of replication: an interval needs at least two."""
    if check_int("seeds", seeds) < 2:
        raise ValueError(f"seeds must be >= 2 (a 95% interval over seeds needs two), got {seeds}")
    return seeds


def check_seed(seed) -> int:
    """A seed must be a non-negative integer below 2**32 (what PRNGKey takes losslessly)."""
    return validate.check_seed("seed", seed)
