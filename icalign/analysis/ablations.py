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
* ``attention``: softmax (base) or linear (scaled, unnormalised);
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
from icalign.core.validate import check_choice, check_int

__all__ = ["FACTORS", "Variant", "canonical", "reference", "grid", "unique_configs", "changed_fields"]

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
        "attention": ["softmax", "linear"],
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
