"""Hand-built transformer weights whose forward pass is a gradient step on a ranking loss.

The weights are an ordinary :class:`icalign.model.Params` for an ordinary
:class:`icalign.model.ModelConfig` and run through the same :func:`icalign.model.apply` as
trained weights (docs/theory.md section 3; Wang et al. 2024, Theorems 3.1-3.3, whose exact
matrices were not recovered: this is a construction consistent with their statements).

Claim. With the squared-distance reward s_j = -beta/2 ||y_hat - y_j||^2, the stacked token
layout, no LayerNorm and no positional encodings, ``T (N-1)`` blocks of two softmax heads and a
ReLU FFN output, at the query token, y_hat_T where

    y_hat_{t+1} = y_hat_t + eta beta sum_{i=1..N-1} (y_tau(i) - ybar_i(y_hat_t)),

i.e. T steps y <- y - eta dL_PL/dy from y_hat_0 = W0 x: T steps of GD on W with the
normalised step eta / ||x||^2 (``icalign.gd.gradient_descent``). docs/theory.md section 3.8
proves that no weights of this architecture give a context-independent step on W. Bradley-Terry
is N = 2: one attention layer, no FFN.

Residual stream of every token (width 4D + 6, plus 2 (K + 1) with the comparator):

    X (D) | Y (D) | r | alive a | candidate flag f | ||y||^2/2 | 1 | Y_HAT (D) | G (D) | RMAX
          [| KAPPA (K + 1) | THETA (K + 1)]

Block k (PL term k): head A selects the best alive candidate (softmax of B r), head B forms the
PL softmax over the alive set (the softmax identity of docs/theory.md section 2.4), the query
token is an attention sink (logit -M/2, value 0), and the FFN eliminates the selected candidate.
Variants (fields of :class:`PLConstruction`):

* ``causal``: token i outputs the step on the online PL loss over candidates 1..i;
* ``any_order``: elimination by a per-viewer threshold code (the reward comparator of section
  3.6), so the causal variant is exact for candidates in any order, not only best-first;
* ``heads_per_layer=1``: each two-head block split into two one-head blocks (section 3.7).

Every condition the result relies on is checked before running (:func:`check_preconditions`,
docs/theory.md section 3.3), and :func:`error_bound` bounds the error wherever they hold
(section 3.4). Both live in :mod:`icalign.theory.bounds`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M_
from icalign.core.tasks import Context
from icalign.core.validate import check_int, check_key, check_positive
from icalign.theory import blocks
from icalign.theory.basis import Slots, check_writes, layout

__all__ = ["PLConstruction", "build", "check_preconditions", "error_bound", "run", "Slots", "describe",
           "separated_contexts", "spec_for", "LEAK_MARGIN", "REL_TOL"]

LEAK_MARGIN = 20.0  # nats between a kept logit and a leaking one: each leak <= e^-20 = 2e-9
# Default relative tolerance on the step: a context is accepted only where the documented bound
# is at most this fraction of the exact step's size (docs/theory.md section 3.4).
REL_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class PLConstruction:
    """What to build: ``steps`` GD steps on PL (sqdist reward, ``beta``) over ``n``
    candidates of dimension ``d``, step size ``eta`` in prediction space, from W0.

    B: selection inverse temperature; M: mask strength (M/2 - B r_cap >= ``leak_margin``);
    gap: the smallest reward gap the elimination is built for; r_cap: rewards lie in
    [0, r_cap]; ``leak_margin``: the log-margin (nats) every context must keep between the
    kept attention logits and the sink or eliminated tokens (docs/theory.md section 3.3);
    ``rel_tol``: a context is accepted only where the documented error bound is at most this
    fraction of the exact step's size (section 3.4; soft selection needs a looser one).
    """

    d: int
    n: int
    W0: np.ndarray
    steps: int = 1
    beta: float = 1.0
    eta: float = 0.1
    B: float = 2000.0
    M: float = 1e5
    gap: float = 0.02
    r_cap: float = 1.0
    causal: bool = False
    any_order: bool = False
    heads_per_layer: int = 2
    leak_margin: float = LEAK_MARGIN
    rel_tol: float = REL_TOL

    def __post_init__(self):
        check_int("d", self.d, minimum=1)
        check_int("n", self.n, minimum=2)
        check_int("steps", self.steps, minimum=1)
        for name in ("beta", "eta", "B", "M", "gap", "r_cap", "leak_margin", "rel_tol"):
            check_positive(name, getattr(self, name))
        for name in ("causal", "any_order"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.heads_per_layer, bool) or self.heads_per_layer not in (1, 2):
            raise ValueError(f"heads_per_layer must be 1 or 2, got {self.heads_per_layer!r}")
        w0 = np.asarray(self.W0, dtype=float)
        if w0.shape != (self.d, self.d):
            raise ValueError(f"W0 must have shape ({self.d}, {self.d}), got {np.shape(self.W0)}")
        if not np.all(np.isfinite(w0)):
            raise ValueError("W0 must be finite (no NaN or inf entries)")
        margin = self.M / 2 - self.B * self.r_cap
        if margin < self.leak_margin:
            raise ValueError(
                f"M must exceed 2 B r_cap + 2 leak_margin = {2 * (self.B * self.r_cap + self.leak_margin):g} "
                f"so that in head A eliminated tokens stay below the sink and the sink below every alive "
                f"token by leak_margin nats; got M = {self.M:g} (margin M/2 - B r_cap = {margin:g})")
        if self.gap > self.r_cap:
            raise ValueError(f"gap must be <= r_cap, got gap = {self.gap} and r_cap = {self.r_cap}")

    @property
    def n_layers(self) -> int:
        return self.steps * (self.n - 1) * (3 - self.heads_per_layer)

    @property
    def slots(self) -> Slots:
        return Slots(self.d, max(len(blocks.hat_grid(self)) - 2, 0))

    def config(self) -> M_.ModelConfig:
        return M_.ModelConfig(
            n_layers=self.n_layers, n_heads=self.heads_per_layer, d_model=self.slots.width,
            head_dim=blocks.head_dim(self), attention="softmax", ffn=self.steps * (self.n - 1) > 1,
            ffn_width=blocks.ffn_width(self), ffn_activation="relu", layer_norm=False, final_norm=False,
            causal=self.causal, positional=False, bias=False, token_layout="stacked", d=self.d, n=self.n,
        )


def build(spec: PLConstruction, dtype=jnp.float64) -> tuple[M_.ModelConfig, M_.Params]:
    """The config and the hand-built :class:`~icalign.model.Params` for ``spec`` (``dtype``: a
    floating dtype; an integer one would round eta beta and the codes to 0). Every block is
    checked to write only its role's slots (:func:`icalign.theory.basis.check_writes`)."""
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"dtype must be a floating dtype (float16, bfloat16, float32, float64), got {dtype!r}")
    cfg = spec.config()
    d, S = spec.d, spec.slots
    attns, ffns = [], []
    for layer in range(spec.steps * (spec.n - 1)):
        if spec.heads_per_layer == 2:
            attn, ffn = blocks.block(spec, S, layer)
            attns.append(attn)
            ffns.append(ffn)
        else:  # heads <-> depth: head A alone (FFN off), then head B with the block's FFN
            attn_a, _ = blocks.block(spec, S, layer, heads=(0,))
            attn_b, ffn = blocks.block(spec, S, layer, heads=(1,))
            attns += [attn_a, attn_b]
            ffns += [jax.tree_util.tree_map(np.zeros_like, ffn), ffn]
    # who writes what: in one-head layers the heads alternate A, B (heads <-> depth)
    role = lambda i, h: ("head A", "head B")[h if spec.heads_per_layer == 2 else i % 2]
    written = [(f"layer {i + 1} {role(i, h)}", role(i, h), a["wo"][h], -1)
               for i, a in enumerate(attns) for h in range(spec.heads_per_layer)]
    written += [(f"layer {i + 1} FFN", "FFN", f["w2"], -1) for i, f in enumerate(ffns)]
    cast = lambda a: jnp.asarray(a, dtype)
    stack = lambda dicts, k: cast(np.stack([x[k] for x in dicts]))
    attn = M_.Attention(**{k: stack(attns, k) for k in ("wq", "wk", "wv", "wo")})
    ffn = M_.FFN(w1=stack(ffns, "w1"), w2=stack(ffns, "w2")) if cfg.ffn else None

    tw = M_.token_dim(cfg)  # stacked token: x (D) | y (D) | r | flag | ||y||^2 / 2
    w_in = np.zeros((tw, S.width))
    for j in range(d):
        w_in[j, S.X.start + j] = 1.0
        w_in[d + j, S.Y.start + j] = 1.0
    w_in[2 * d, S.R] = 1.0
    w_in[2 * d + 1, S.A] = w_in[2 * d + 1, S.F] = 1.0
    w_in[2 * d + 2, S.Q] = 1.0
    w_in[:d, S.YH] = np.asarray(spec.W0, float).T  # Y_HAT = W0 x
    b_in = np.zeros(S.width)
    b_in[S.ONE] = 1.0
    check_writes(S, written + [("read-in", "read-in", w_in, -1)])
    w_out = np.zeros((S.width, d))
    for j in range(d):
        w_out[S.YH.start + j, j] = 1.0
        w_out[S.G.start + j, j] = spec.eta * spec.beta
    params = M_.Params(
        read_in=M_.Dense(w=cast(w_in), b=cast(b_in)),
        blocks=M_.Block(attn=attn, ffn=ffn),
        read_out=M_.Dense(w=cast(w_out), b=cast(np.zeros(d))),
    )
    return cfg, params


# The same model.apply, compiled (the config is static: a frozen, hashable dataclass).
_apply = jax.jit(M_.apply, static_argnums=2)


def run(spec: PLConstruction, ctx, params: Optional[M_.Params] = None, check: bool = True) -> jax.Array:
    """Outputs of the constructed transformer on ``ctx`` (leading batch axes allowed).

    Non-causal: (..., D), the prediction at the query token. Causal: (..., N + 1, D), row i
    the prediction after candidates 1..i (row 0: the query, y_hat_0; row N: all candidates,
    which equals the non-causal output). Every precondition is checked first and a violated
    one raises a ValueError naming it and its margin; ``check=False`` skips this (only for
    tests that show what breaking a precondition does).
    """
    if check:
        check_preconditions(spec, ctx)
    cfg = spec.config()
    if params is None:
        _, params = build(spec, jnp.asarray(ctx.ys).dtype)
    out = _apply(params, M_.tokenize(ctx, cfg), cfg)  # (..., N + 1, D)
    return out if spec.causal else out[..., 0, :]


def describe(spec: PLConstruction) -> str:
    """A readable printout of the construction: its shape and residual layout."""
    cfg = spec.config()
    return (f"{spec.steps} GD step(s) x {spec.n - 1} blocks = {cfg.n_layers} layers of {cfg.n_heads} head(s), "
            f"head_dim {cfg.head_dim}, FFN width {cfg.ffn_width if cfg.ffn else 0}\n" + layout(spec.slots))


def separated_contexts(key: jax.Array, batch: int, n: int, d: int, best_first: bool = False,
                       dtype=jnp.float64):
    """Random contexts that meet the preconditions: candidates and query ~ N(0, I), rewards a
    random permutation of (k + 1/2 + U(-0.2, 0.2)) / n, so every gap is >= 0.6 / n and all lie
    in [0, 1] (best-first order if asked). y* is not defined here (zeros)."""
    check_key("key", key)
    for name, value, minimum in (("batch", batch, 1), ("n", n, 2), ("d", d, 1)):
        check_int(name, value, minimum)
    k_r, k_p, k_y, k_x = jax.random.split(key, 4)
    base = (jnp.arange(n, dtype=dtype)[None, :] + 0.5 + jax.random.uniform(k_r, (batch, n), dtype, -0.2, 0.2)) / n
    if best_first:
        r = base[:, ::-1]
    else:
        r = jax.vmap(jax.random.permutation)(jax.random.split(k_p, batch), base)
    ys = jax.random.normal(k_y, (batch, n, d), dtype)
    x = jax.random.normal(k_x, (batch, d), dtype)
    return Context(x=x, ys=ys, r_true=r, rewards=r, y_star=jnp.zeros((batch, d), dtype))


def spec_for(n: int, d: int, W0, selection: float = 50.0, **fields) -> PLConstruction:
    """A construction for the contexts of :func:`separated_contexts` (reward gaps >= 0.6 / n):
    built for gap = 0.5 / n, with selection strength B * gap = ``selection`` (50 gives
    float64 exactness) and M = 4 B + 100, unless ``fields`` give B or M."""
    gap = 0.5 / check_int("n", n, minimum=2)
    fields.setdefault("B", selection / gap)
    fields.setdefault("M", 4 * fields["B"] + 100.0)
    return PLConstruction(d=d, n=n, W0=np.asarray(W0), gap=gap, **fields)


from icalign.theory.bounds import check_preconditions, error_bound  # noqa: E402  (public API)
