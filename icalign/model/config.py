"""The model's static architecture: one frozen :class:`ModelConfig` holds every toggle.

Every architecture variant is a field of this config, never a copy of the model. Sizes and
toggles are validated on construction, so a bad value fails before anything is traced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Optional

from icalign.core.validate import check_choice, check_int, described, python_numbers

__all__ = ["ModelConfig", "BASE", "ATTENTIONS", "ACTIVATIONS", "LAYOUTS", "PRECISIONS", "config_hash"]

ATTENTIONS = ("softmax", "linear", "relu", "linear_mean")
PRECISIONS = ("float32", "bfloat16")
ACTIVATIONS = ("gelu", "relu")
LAYOUTS = ("interleaved", "stacked")


def _field_error(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"ModelConfig.{field} must be {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static architecture of the one transformer (all toggles; validated on construction).

    ``head_dim=None`` means d_model // n_heads (and d_model must then be divisible by
    n_heads); give ``head_dim`` to vary the head count at fixed head size, or the width at a
    fixed head count: the published heads ablation confounded the two. ``ffn_width=None``
    means 4 * d_model (GPT-2). ``final_norm=None`` follows ``layer_norm``. The resolved
    values are the properties ``head_size``, ``ffn_size`` and ``use_final_norm``; the fields
    keep what was given, so ``dataclasses.replace(cfg, n_heads=4)`` re-derives them.

    ``precision="bfloat16"`` runs the blocks' matmuls (q, k, v, output and FFN maps and both
    attention products, forward and backward) on bfloat16 operands with float32 accumulation;
    weights, optimizer state, read-in and read-out, the residual stream, norms and softmax stay
    float32. For training speed on hardware
    with bf16 units; theorem checks and constructions stay float32 / float64.
    """

    n_layers: int = 20
    n_heads: int = 3
    d_model: int = 96
    head_dim: Optional[int] = described(None, "width of one head; none: d_model // n_heads")
    attention: str = described("softmax", "how a query weighs the tokens", choices=ATTENTIONS)
    ffn: bool = True
    ffn_width: Optional[int] = described(None, "hidden width of the FFN; none: 4 * d_model")
    ffn_activation: str = described("gelu", choices=ACTIVATIONS)
    layer_norm: bool = True
    final_norm: Optional[bool] = described(None, "LayerNorm before the read-out; none: as layer_norm")
    causal: bool = True
    positional: bool = True
    bias: bool = True
    token_layout: str = described(
        "interleaved", "one token per x and per (y, r) pair, or one stacked token per triplet", choices=LAYOUTS)
    d: int = 5
    n: int = 20
    init_std: float = 0.02
    precision: str = described("float32", "operand type of the blocks' matmuls", choices=PRECISIONS)

    def __post_init__(self):
        # Messages name the field, the value and what is allowed (icalign._validate).
        python_numbers(self)  # numpy scalars are accepted and stored as Python numbers
        for name in ("n_layers", "n_heads", "d_model", "d"):
            check_int(f"ModelConfig.{name}", getattr(self, name), minimum=1)
        check_int("ModelConfig.n", self.n, minimum=2)
        if self.head_dim is not None:
            check_int("ModelConfig.head_dim", self.head_dim, minimum=1)
        elif self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "either choose d_model as a multiple of n_heads, or give head_dim explicitly "
                "(head_dim is independent of n_heads and d_model)"
            )
        if self.ffn_width is not None:
            check_int("ModelConfig.ffn_width", self.ffn_width, minimum=1)
        check_choice("ModelConfig.attention", self.attention, ATTENTIONS)
        check_choice("ModelConfig.ffn_activation", self.ffn_activation, ACTIVATIONS)
        check_choice("ModelConfig.token_layout", self.token_layout, LAYOUTS)
        check_choice("ModelConfig.precision", self.precision, PRECISIONS)
        for name in ("ffn", "layer_norm", "causal", "positional", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise _field_error(name, getattr(self, name), "True or False")
        if self.final_norm is not None and not isinstance(self.final_norm, bool):
            raise _field_error("final_norm", self.final_norm, "True, False or None (follow layer_norm)")
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and 0 < std <= 10):
            # above ~10 the attention logits overflow float32 and the output collapses to 0
            raise _field_error("init_std", std, "a number in (0, 10] (GPT-2 uses 0.02)")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ffn_size(self) -> int:
        return 4 * self.d_model if self.ffn_width is None else self.ffn_width

    @property
    def use_final_norm(self) -> bool:
        return self.layer_norm if self.final_norm is None else self.final_norm

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The published base config: 20 layers, 3 heads, width 96 (head_dim 32), interleaved tokens.
BASE = ModelConfig()


def config_hash(*parts) -> str:
    """A short stable hash of configs / JSON-able values (names run folders)."""
    def norm(p):
        if dataclasses.is_dataclass(p) and not isinstance(p, type):
            return {"__type__": type(p).__name__, **dataclasses.asdict(p)}
        return p
    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
