"""The component-ablation grid (docs/theory.md section 3; the paper's synthetic Figure 1, done
properly): every variant changes exactly one :class:`~icalign.model.ModelConfig` field of a
reference config, and every variant keeps the causal mask.

Factors (``FACTORS``):

* ``depth``: ``n_layers``;
* ``heads_fixed_width``: ``n_heads`` with the total attention width fixed (head_dim =
  d_model / n_heads, derived);
* ``heads_fixed_head_dim``: ``n_heads`` with the head dimension fixed at the base's, so the
  attention widens with the head count (the published, confounded grid). Its reference is
  the base with ``head_dim`` written out explicitly, an architecturally identical config
  (same shapes, same function), so that the variants differ from it in ``n_heads`` alone;
* ``attention``: softmax (base), linear (scaled, unnormalised: the published variant) or
  linear_mean (linear divided by the number of visible keys);
* ``ffn``: on (base) or off;
* ``layer_norm``: on (base) or off (the final norm follows it).

Each factor's list includes the base value, so every panel has its reference point. Variants
that are the same architecture (e.g. the base appears in every factor) are trained once:
:func:`canonical` maps a config to the resolved architecture used as the training key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from icalign import model as M
from icalign.core.stats import summarise
from icalign.core.validate import check_choice, check_int, check_positive

__all__ = ["FACTORS", "Variant", "canonical", "reference", "grid", "unique_configs", "changed_fields", "jobs",
           "train_and_score"]

#: factor -> (the one ModelConfig field it varies, a short description)
FACTORS: dict[str, tuple[str, str]] = {
    "depth": ("n_layers", "number of layers"),
    "heads_fixed_width": ("n_heads", "heads at fixed total width (head_dim = d_model / heads)"),
    "heads_fixed_head_dim": ("n_heads", "heads at fixed head dimension (width grows; published grid)"),
    "attention": ("attention", "softmax vs linear attention"),
    "ffn": ("ffn", "FFN on / off"),
    "layer_norm": ("layer_norm", "LayerNorm on / off"),
}

DEPTHS = (1, 2, 5, 10, 15, 20)
HEADS = (1, 2, 3, 4, 6)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the grid: ``config`` = ``reference`` with ``field`` set to ``value``."""

    factor: str
    field: str
    value: Any
    reference: M.ModelConfig
    config: M.ModelConfig

    @property
    def name(self) -> str:
        return f"{self.factor}={self.value}"

    @property
    def is_base(self) -> bool:
        return getattr(self.reference, self.field) == self.value


def canonical(config: M.ModelConfig) -> M.ModelConfig:
    """The config with every derived size written out: two configs with equal canonical forms
    build the same parameter shapes and compute the same function."""
    return dataclasses.replace(config, head_dim=config.head_size, ffn_width=config.ffn_size,
                               final_norm=config.use_final_norm)


def reference(base: M.ModelConfig, factor: str) -> M.ModelConfig:
    """The config a factor's variants differ from in exactly one field."""
    check_choice("factor", factor, FACTORS)
    if factor == "heads_fixed_head_dim":
        return dataclasses.replace(base, head_dim=base.head_size)
    if factor == "heads_fixed_width":
        # head_dim must be derived (None) so that changing n_heads re-derives it.
        return dataclasses.replace(base, head_dim=None)
    return base


def changed_fields(a: M.ModelConfig, b: M.ModelConfig) -> list[str]:
    """Names of the ModelConfig fields whose given values differ between a and b."""
    return [f.name for f in dataclasses.fields(M.ModelConfig) if getattr(a, f.name) != getattr(b, f.name)]


def _values(factor: str, base: M.ModelConfig, depths, heads) -> list:
    return {
        "depth": list(depths),
        "heads_fixed_width": list(heads),
        "heads_fixed_head_dim": list(heads),
        "attention": ["softmax", "linear", "linear_mean"],
        "ffn": [True, False],
        "layer_norm": [True, False],
    }[factor]


def grid(base: M.ModelConfig = M.BASE, factors: Sequence[str] | None = None,
         depths: Sequence[int] = DEPTHS, heads: Sequence[int] = HEADS) -> list[Variant]:
    """All variants of the chosen factors (default: all), in factor order. Raises a clear
    ValueError, before anything is traced, for an unknown factor, a bad size, a head count
    that does not divide the width in the fixed-width family, or a base without the mask."""
    if not isinstance(base, M.ModelConfig):
        raise ValueError(f"base must be a ModelConfig, got {type(base).__name__}")
    if not base.causal:
        raise ValueError("base.causal must be True: every ablation keeps the causal mask "
                         "(the published no-softmax / no-FFN variants lost it and leaked the answer)")
    factors = list(FACTORS) if factors is None else list(factors)
    if not factors:
        raise ValueError(f"factors must name at least one of {sorted(FACTORS)}")
    for f in factors:
        check_choice("factor", f, FACTORS)
    for d in depths:
        check_int("depths", d, minimum=1)
    for h in heads:
        check_int("heads", h, minimum=1)
    out = []
    for factor in factors:
        field = FACTORS[factor][0]
        ref = reference(base, factor)
        if factor == "heads_fixed_width":
            bad = [h for h in heads if ref.d_model % h]
            if bad:
                raise ValueError(f"heads {bad} do not divide d_model={ref.d_model}; the fixed-width "
                                 f"family needs d_model divisible by every head count in {list(heads)}")
        for value in _values(factor, base, depths, heads):
            out.append(Variant(factor, field, value, ref, dataclasses.replace(ref, **{field: value})))
    return out


def unique_configs(variants: Sequence[Variant]) -> dict[M.ModelConfig, list[Variant]]:
    """Canonical config -> the variants that are that architecture (each is trained once)."""
    groups: dict[M.ModelConfig, list[Variant]] = {}
    for v in variants:
        groups.setdefault(canonical(v.config), []).append(v)
    return groups


def jobs(variants: Sequence[Variant], probe_lrs: Sequence[float] = ()) -> list[dict]:
    """What to train: every distinct architecture of ``variants`` once at the sweep's learning
    rate, then the attention factor again at each of ``probe_lrs`` (does an attention kind
    train at another learning rate?; nothing when the grid has no attention factor). Each job: {"key", "arch", "lr" (None: the sweep's),
    "variants": [record]}; a record is what the result file lists per variant."""
    out = []

    def add(members, lr):
        arch = canonical(members[0].config)
        key = M.config_hash(arch) if lr is None else M.config_hash(arch, float(lr))
        recs = [{"name": v.name if lr is None else f"{v.name} (lr {lr:g})",
                 "factor": v.factor if lr is None else f"{v.factor} (lr {lr:g})", "field": v.field, "value": v.value,
                 "is_base": v.is_base, "arch": key, "lr": lr, "changed_fields": changed_fields(v.reference, v.config)}
                for v in members]
        out.append({"key": key, "arch": arch, "lr": lr, "variants": recs})

    for members in unique_configs(variants).values():
        add(members, None)
    att = [v for v in variants if v.factor == "attention"]  # none: the probe has nothing to train
    for lr in probe_lrs:
        check_positive("probe_lrs", lr)
        for v in att:
            add([v], lr)
    return out


def train_and_score(arch: M.ModelConfig, train_cfg, ctx, seeds, run_root=None, progress: bool = True,
                    train=None) -> dict:
    """Train ``arch`` for every seed (one vmapped program; ``train``, default
    ``icalign.training.train_or_load``) and score it on the clean contexts ``ctx``:
    {"status": "ok" | "diverged", "nmse" (summary over seeds), "pl", "nmse_per_seed" (S, T),
    "final_train_loss" (S,), "health" (``health.run_gate``), ...}. A diverged architecture is a result, not a crash."""
    from icalign import training as T
    from icalign.analysis import evaluate as E
    from icalign.analysis.health import WINDOW, run_gate

    try:
        res = (train or T.train_or_load)(arch, train_cfg, seeds=seeds, run_root=run_root, progress=progress)
    except T.NonFiniteLossError as e:
        return dict(status="diverged", message=str(e))
    curves = E.transformer_curves(res.params, arch, ctx, ctx.r_true[:, None, :])  # (R, 1, B, T)
    return dict(status="ok", run_folder=None if res.run_dir is None else res.run_dir.name, train_loaded=res.loaded,
                nmse=summarise(curves.nmse[:, 0], "seeds", keep=True), pl=summarise(curves.pl[:, 0], "seeds"),
                nmse_per_seed=curves.nmse[:, 0].mean(axis=1), n_params=M.param_count(res.params_of(0)),
                final_train_loss=res.losses[:, -WINDOW:].mean(axis=1), health=run_gate(res, ctx))
