"""Training hyper-parameters, the per-run settings trained together, and the factual note on
a finished run's loss (:func:`loss_trend`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from scipy import stats

from icalign.core import keys
from icalign.core.losses import LOSSES
from icalign.core.tasks import CORRUPTIONS, QUERIES, check_corruption_levels, check_query_corr
from icalign.core.validate import check_choice, check_distinct, check_int, check_seed, described, python_numbers

__all__ = ["TrainConfig", "RunSpec", "make_runs", "run_settings", "runs_from_keys", "select_run", "check_objective",
           "loss_trend", "plateau", "plateau_stop", "STOPS", "MIN_STEPS", "PLATEAU_FRACTION"]

STOPS = ("budget", "plateau")
MIN_STEPS = 20  #: a shorter training curve cannot show a plateau (its last quarter has < 5 steps)
PLATEAU_FRACTION = 0.05  #: the most of the whole training drop the last quarter may still hold
_LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the published defaults). ``noise`` is the default level of
    the ``corruption`` model applied to the shown rewards (0: clean critic); per-run learning
    rates and noise levels given to ``train`` override ``lr`` and ``noise``.
    ``chunk`` steps run per compiled call (and per log line); checkpoints every
    ``checkpoint_every`` steps (a multiple of ``chunk``). ``queries`` picks the task
    (``tasks.QUERIES``): "shared" (published) or "per_triplet" (each triplet at its own
    query, correlated ``query_corr`` with the test query; stacked token layout only;
    docs/theory.md section 7). ``microbatches`` splits each step's batch into that many
    equal slices whose gradients are averaged (gradient accumulation): the same gradient up
    to float rounding, computed on arrays small enough to stay in a CPU's cache (on the
    2-core CPU, 8 made the base-config step about a quarter faster; keep 1 on a GPU). It
    changes the rounding, so it is part of a run's identity; 1 is the published way.

    ``chunk`` (or ``checkpoint_every``) larger than ``steps`` is allowed and means what the
    grid of chunks cut at ``steps`` gives: the whole run is one compiled call, checkpointed
    once, at its end (:meth:`notes` says so; the CLI prints it). Numeric fields accept numpy
    scalars (``lr=np.float32(1e-3)``) and store the Python number they hold.

    ``loss`` names the ranking loss of the objective (``losses.LOSSES``: "cosine_pl", the
    published one, "sqdist_pl", "cosine_bt", or one added with ``losses.register_loss``).

    The protocol (docs/theory.md, "Training protocol"). ``lr_grid=()`` and ``stop="budget"``
    are the published one: one learning rate ``lr``, exactly ``steps`` steps. A non-empty
    ``lr_grid`` is the fair protocol: every seed trains at every learning rate of the grid in
    one vmapped program, and each architecture (and training-noise level) keeps the learning
    rate whose models have the lowest clean objective on ``valid_contexts`` validation
    contexts of each seed's own validation stream (``keys.VALID``, never evaluated on);
    ``lr`` is then unused (:mod:`icalign.training.protocol`). ``stop="plateau"`` ends training
    at the first checkpoint where every run's loss fell and is on a plateau
    (:func:`plateau_stop`), ``steps`` being the budget."""

    lr: float = 1e-4
    batch: int = 256
    steps: int = 3000
    min_seen: int = described(2, "the loss averages the rows that have seen at least this many triplets")
    corruption: str = described(
        "replace", "reward-corruption model of the shown rewards", choices=lambda: tuple(CORRUPTIONS))
    noise: float = described(0.0, "level of the corruption model (0: a clean critic)")
    chunk: int = described(50, "training steps per compiled call (and per log line)")
    checkpoint_every: int = described(500, "steps between checkpoints (a multiple of chunk)")
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    queries: str = described("shared", "one shared query, or each triplet at its own query", choices=QUERIES)
    query_corr: float = described(0.0, "correlation of a triplet's query with the test query (per_triplet only)")
    microbatches: int = described(1, "equal slices of each batch whose gradients are averaged")
    loss: str = described("cosine_pl", "the ranking loss of the objective (losses.register_loss adds one)",
                          choices=lambda: sorted(LOSSES))
    lr_grid: tuple[float, ...] = described(
        (), "learning rates tried per architecture, the best on validation contexts kept (empty: train.lr only)")
    stop: str = described("budget", "budget: exactly train.steps; plateau: stop once every run's loss is flat "
                          "(train.steps the budget)", choices=STOPS)
    valid_contexts: int = described(256, "validation contexts per seed that choose the learning rate of lr_grid")

    def __post_init__(self):
        python_numbers(self)
        for name, minimum in (("batch", 1), ("steps", 1), ("min_seen", 1), ("chunk", 1),
                              ("checkpoint_every", 1), ("microbatches", 1), ("valid_contexts", 2)):
            try:
                check_int(name, getattr(self, name), minimum)
            except ValueError as e:
                raise ValueError(f"TrainConfig.{e}") from None
        if self.checkpoint_every % self.chunk:
            raise ValueError(
                f"TrainConfig.checkpoint_every={self.checkpoint_every} must be a multiple of "
                f"chunk={self.chunk} (checkpoints are taken between compiled chunks)")
        if self.batch % self.microbatches:
            raise ValueError(f"TrainConfig.microbatches={self.microbatches} must divide batch={self.batch} "
                             "(the batch is split into equal slices)")
        for name in ("lr", "b1", "b2", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("b1", "b2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"TrainConfig.{name} must be < 1, got {getattr(self, name)!r}")
        check_choice("TrainConfig.stop", self.stop, STOPS)
        if isinstance(self.lr_grid, list):  # as JSON stores it: kept hashable (the config is a static argument)
            object.__setattr__(self, "lr_grid", tuple(self.lr_grid))
        if not isinstance(self.lr_grid, tuple):
            raise ValueError(f"TrainConfig.lr_grid must be a tuple of learning rates, got {self.lr_grid!r}")
        if self.lr_grid:
            grid = [float(v) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else float("nan")
                    for v in self.lr_grid]
            if not all(math.isfinite(v) and v > 0 for v in grid):
                raise ValueError(f"TrainConfig.lr_grid must hold finite numbers > 0, got {self.lr_grid!r}")
            if len(grid) < 2 or len(set(grid)) != len(grid):
                raise ValueError(f"TrainConfig.lr_grid needs at least two distinct learning rates to choose from, got "
                                 f"{self.lr_grid!r} (empty: the published protocol, train.lr only)")
            object.__setattr__(self, "lr_grid", tuple(grid))
        check_choice("TrainConfig.corruption", self.corruption, CORRUPTIONS)
        check_choice("TrainConfig.loss", self.loss, LOSSES)
        check_choice("TrainConfig.queries", self.queries, QUERIES)
        check_query_corr("TrainConfig.query_corr", self.query_corr, self.queries)
        check_corruption_levels(self.corruption, self.noise)

    def to_dict(self) -> dict:
        """The fields as JSON stores them (the grid a list), so a record read back compares equal."""
        return {**dataclasses.asdict(self), "lr_grid": list(self.lr_grid)}

    def notes(self) -> list[str]:
        """What these settings mean where it may surprise (said, not refused)."""
        out = []
        if self.chunk > self.steps:
            out.append(f"train.chunk={self.chunk} > train.steps={self.steps}: the run is one compiled call of "
                       f"{self.steps} steps, checkpointed at its end")
        if self.lr_grid:
            out.append(f"train.lr_grid={','.join(f'{v:g}' for v in self.lr_grid)}: every seed trains at each learning "
                       "rate, and the one with the lowest validation objective is kept (train.lr is not used)")
        if self.stop == "plateau":
            out.append(f"train.stop=plateau: training ends at the first checkpoint (every {self.checkpoint_every} "
                       f"steps) where every run's loss is flat, or at the budget train.steps={self.steps}")
        return out

    @property
    def protocol(self) -> str:
        """"fair" (a learning-rate grid), "published" (one learning rate, a fixed step count) or
        "plateau" (one learning rate, plateau stopping)."""
        return "fair" if self.lr_grid else "published" if self.stop == "budget" else "plateau"


def check_objective(n: int, min_seen: int) -> None:
    """The training loss averages rows n_seen = min_seen .. n - 1 of the online PL loss, and a
    row ranks its n_seen candidates: rows with n_seen < 2 are identically 0. So the loss has
    something to rank iff max(min_seen, 2) <= n - 1, i.e. n >= 3 and min_seen <= n - 1;
    otherwise it is 0 at every step and training changes nothing (refused before compiling)."""
    if min_seen > n - 1:
        raise ValueError(f"TrainConfig.min_seen={min_seen} must be <= ModelConfig.n - 1 = {n - 1}: "
                         "the loss averages the rows of predictions that have seen at least min_seen candidates")
    if n < 3:
        raise ValueError(f"ModelConfig.n={n} with TrainConfig.min_seen={min_seen} leaves the training loss nothing "
                         f"to rank: it averages the rows of predictions that have seen {min_seen}..{n - 1} candidates, "
                         "only a row with 2 or more ranks anything, so the loss would be 0 at every step; use n >= 3")


def plateau(curve) -> dict | None:
    """The plateau test of one training curve (each step's loss on fresh contexts): None when
    the curve is shorter than ``MIN_STEPS`` or not finite. On the last quarter of the steps,
    the OLS slope is significantly below 0 (its one-sided 95% upper bound < 0) AND the fitted
    drop across that quarter is more than ``PLATEAU_FRACTION`` (5%) of the whole training drop
    (the mean of the first 1% of steps minus the fitted end): then ``falling`` is True. Why
    both: with a constant learning rate Adam's loss creeps down for very long, so significance
    alone would call nearly every long run unfinished. Fixed before looking at any result; the
    training-health gate (:mod:`icalign.analysis.health`) and the plateau stopping rule
    (:func:`plateau_stop`) both use it."""
    y = np.asarray(curve, float)
    if y.ndim != 1 or len(y) < MIN_STEPS or not np.all(np.isfinite(y)):
        return None
    w = len(y) // 4
    x = np.arange(w, dtype=float)
    fit = stats.linregress(x, y[-w:])
    upper = fit.slope + stats.t.ppf(_LEVEL, w - 2) * fit.stderr
    drop = -fit.slope * (w - 1)
    total = float(y[:max(1, len(y) // 100)].mean() - (fit.intercept + fit.slope * (w - 1)))
    falling = bool(upper < 0 and drop > PLATEAU_FRACTION * total)
    return {"window": w, "slope": float(fit.slope), "slope_upper": float(upper), "window_drop": float(drop),
            "total_drop": total, "falling": falling}


def plateau_stop(losses_RxS) -> str | None:
    """The stopping rule of ``TrainConfig.stop="plateau"``: the reason to stop after these
    steps, or None to go on. Stop when every run's loss fell (:func:`loss_trend`) and is on a
    plateau (:func:`plateau`). A run that has not fallen yet keeps the whole program going:
    a loss still on its initial plateau is flat too, and stopping there would call an
    untrained model finished."""
    losses_RxS = np.atleast_2d(np.asarray(losses_RxS, float))
    tests = [plateau(c) for c in losses_RxS]
    if any(t is None or t["falling"] for t in tests) or not all(loss_trend(losses_RxS)["fell"]):
        return None
    return f"plateau at step {losses_RxS.shape[1]}: every run's loss fell and its last quarter is flat"


def loss_trend(losses_RxS, window: int = 50) -> dict:
    """A short factual note on each run's training loss: its mean over the first and over the
    last ``window`` steps (a quarter of the run when shorter) and whether it fell by more than
    twice the standard error of that difference (each step's loss is on fresh contexts, so the
    steps of a window are independent draws around its mean). A warning names every run whose
    loss did not. Not a verdict: ``icalign.analysis.health`` gates trained models."""
    losses_RxS = np.atleast_2d(np.asarray(losses_RxS, dtype=float))
    steps = losses_RxS.shape[1]
    w = max(1, min(window, steps // 4))
    if steps < 2:
        return {"window": w, "start": losses_RxS[:, :1].mean(1).tolist(), "end": losses_RxS[:, -1:].mean(1).tolist(),
                "fell": [False] * len(losses_RxS), "warning": "the run has fewer than 2 steps: no loss trend"}
    first, last = losses_RxS[:, :w], losses_RxS[:, -w:]
    start, end = first.mean(1), last.mean(1)
    se = np.sqrt((first.var(1, ddof=1) + last.var(1, ddof=1)) / w) if w > 1 else np.zeros(len(start))
    fell = (start - end > 2 * se).tolist()
    bad = [f"run {r}: {a:.4g} -> {b:.4g}" for r, (a, b, f) in enumerate(zip(start, end, fell)) if not f]
    warning = None
    if bad:
        warning = (f"the training loss did not fall (mean of the first vs the last {w} steps, {'; '.join(bad)}; "
                   "a fall counts when it exceeds 2 standard errors): the model may not have trained; try a smaller "
                   "train.lr or more train.steps")
    return {"window": w, "start": start.tolist(), "end": end.tolist(), "fell": fell, "warning": warning}


@struct.dataclass
class RunSpec:
    """What differs between runs trained together (each field has a leading run axis when
    several runs train at once): the init, data and corruption keys, the learning rate, the
    reward-noise level (0 where a model has no corruption) and, for a group of architecture
    variants trained in one program, each run's gates (:mod:`icalign.model.gates`)."""

    k_init: jax.Array
    k_data: jax.Array
    k_corrupt: jax.Array
    lr: jax.Array
    noise: jax.Array
    gates: Any = None  # icalign.model.gates.Gates when the runs are variants of one super model


def select_run(tree, i: int):
    """Run i of a pytree with a leading run axis."""
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _broadcast(seeds, lrs, noise):
    R = max(len(seeds), len(lrs), len(noise))
    for name, vals in (("seeds", seeds), ("lrs", lrs), ("noise_levels", noise)):
        if len(vals) not in (1, R):
            raise ValueError(f"{name} has {len(vals)} values; give 1 or {R} (one per run)")
    return [v * R if len(v) == 1 else v for v in (seeds, lrs, noise)]


def _check_lrs(lrs):
    for lr in lrs:
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rates must be finite numbers > 0, got {lrs}")


def run_settings(seeds: Sequence[int], lrs=None, noise_levels=None, train_cfg: TrainConfig = TrainConfig(), *,
                 distinct: bool = True) -> list:
    """Validate and broadcast per-run settings (nothing computed on a device): the list of
    {"seed", "lr", "noise"} dicts, one per run. A length-1 (or scalar) setting is shared.
    ``distinct=False`` lets settings repeat: a grouped program's rows are other variants."""
    seeds = [check_seed("seed", s) for s in np.atleast_1d(np.asarray(seeds, dtype=object)).tolist()]
    lrs = [train_cfg.lr] if lrs is None else np.atleast_1d(np.asarray(lrs, dtype=float)).tolist()
    noise = [train_cfg.noise] if noise_levels is None else np.atleast_1d(np.asarray(noise_levels, dtype=float)).tolist()
    seeds, lrs, noise = _broadcast(seeds, lrs, noise)
    _check_lrs(lrs)
    check_corruption_levels(train_cfg.corruption, noise)
    runs = [{"seed": s, "lr": lr, "noise": nz} for s, lr, nz in zip(seeds, lrs, noise)]
    # two identical runs are one run trained twice, and a summary would count it as two seeds
    if distinct:
        check_distinct("seeds, lrs and noise_levels", runs,
                       lambda r: f"seed {r['seed']}, lr {r['lr']:g}, noise {r['noise']:g}")
    return runs


def make_runs(seeds: Sequence[int], lrs=None, noise_levels=None, train_cfg: TrainConfig = TrainConfig(), *,
              distinct: bool = True):
    """Validate and broadcast per-run settings (:func:`run_settings`). Returns (RunSpec with
    leading axis R, the settings). The keys are the seed's INIT, DATA and CORRUPT streams
    (:mod:`icalign.core.keys`)."""
    runs = run_settings(seeds, lrs, noise_levels, train_cfg, distinct=distinct)
    seeds, lrs, noise = ([r[k] for r in runs] for k in ("seed", "lr", "noise"))
    spec = RunSpec(
        k_init=jnp.stack([keys.stream(s, keys.INIT) for s in seeds]),
        k_data=jnp.stack([keys.stream(s, keys.DATA) for s in seeds]),
        k_corrupt=jnp.stack([keys.stream(s, keys.CORRUPT) for s in seeds]),
        lr=jnp.asarray(lrs, jnp.float32),
        noise=jnp.asarray(noise, jnp.float32),
    )
    return spec, runs


def runs_from_keys(init_keys, data_keys, lrs) -> RunSpec:
    """A RunSpec for models whose init and data keys come from elsewhere than a seed's
    streams (the latent-concept model and the necessity fits), with no reward corruption."""
    init_keys, data_keys = jnp.asarray(init_keys), jnp.asarray(data_keys)
    lrs = np.atleast_1d(np.asarray(lrs, dtype=float)).tolist()
    _check_lrs(lrs)
    R = init_keys.shape[0]
    if data_keys.shape[0] != R or len(lrs) not in (1, R):
        raise ValueError(f"init_keys, data_keys and lrs must have one entry per run; got {R}, "
                         f"{data_keys.shape[0]} and {len(lrs)}")
    lrs = lrs * R if len(lrs) == 1 else lrs
    return RunSpec(k_init=init_keys, k_data=data_keys, k_corrupt=data_keys,
                   lr=jnp.asarray(lrs, jnp.float32), noise=jnp.zeros((R,), jnp.float32))
