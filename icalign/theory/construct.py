"""Hand-built transformer weights whose forward pass is a gradient step on a ranking loss.

The weights are an ordinary :class:`icalign.model.Params` for an ordinary
:class:`icalign.model.ModelConfig` and run through the same :func:`icalign.model.apply` as
trained weights (docs/theory.md section 3; Wang et al. 2024, Theorems 3.1-3.3, whose exact matrices
were not recovered: this is a construction consistent with their statements).

Claim. With the squared-distance reward s_j = -beta/2 ||y_hat - y_j||^2, the stacked token
layout, no LayerNorm, no positional encodings and full attention, ``T (N-1)`` blocks of two
softmax heads and a ReLU FFN output, at the query token,

    y_hat_T,  where  y_hat_{t+1} = y_hat_t + eta beta sum_{i=1..N-1} (y_tau(i) - ybar_i(y_hat_t)),

i.e. T gradient steps y <- y - eta dL_PL/dy on the Plackett-Luce loss of the ranking given by
the rewards, from y_hat_0 = W0 x. For the linear policy y_hat = W x and the shared query x,
dL/dW = (dL/dy) x^T, so this is exactly T steps of GD on W with step size eta / ||x||^2
(``icalign.gd.gradient_descent``); tests compare with both that and ``jax.grad``. Why not a
context-independent step on W: it would need the product ||x||^2 * g at the readout, which
neither a linear map nor a ReLU FFN computes exactly. Bradley-Terry is the case N = 2: one
attention layer, no FFN.

Residual stream of every token (width 4D + 6):

    X (D) | Y (D) | r | alive a | candidate flag f | ||y||^2/2 | 1 | Y_HAT (D) | G (D) | RMAX

The query token has y = 0, r = 0, a = f = 0. Block k (one PL term, k = 1..N-1):

* head A (selection): logit B r_j + M (a_j - 1) + M/2 (1 - f_j); value (y_j, r_j) -> G, RMAX.
  On the alive set it is a softmax with temperature 1/B over rewards: about y_tau(k).
* head B (PL softmax): logit beta y_hat.y_j - beta ||y_j||^2/2 + M (a_j - 1) + M/2 (1 - f_j);
  value y_j -> -G. By the softmax identity (docs/theory.md section 2) these are exactly the PL
  weights p_kj over the remaining (alive) set, up to e^{-M} leakage to dead tokens.
* The query token is an attention sink (logit -M/2, value 0): a window with no alive
  candidate (only in the causal variant) then adds exactly 0.
* FFN (ReLU): with z_j = r_j - RMAX + L (a_j - 1), a_j -= relu(1 + z_j/c) - relu(z_j/c),
  which is 1 for z_j >= 0 (the selected token: RMAX <= its reward) and 0 for z_j <= -c
  (every other alive token, when rewards differ by at least the gap delta and c = delta/2);
  then RMAX is cleared. At the end of each group of N-1 blocks but the last, the FFN instead
  moves Y_HAT += eta beta G, clears G and restores a = f (the next GD step).
* Readout: Y_HAT + eta beta G.

Preconditions (checked by :func:`check_preconditions`, which raises a ValueError):
distinct rewards with min gap >= ``gap``; rewards in [0, ``r_cap``]; for ``causal=True``
candidates in best-first order (strictly decreasing rewards). With the causal mask token i's
output is then one GD step on the online PL loss over candidates 1..i. For other orders no
per-token alive flag can work: each viewer's remaining sets differ, and a pairwise "r_m <= r_k"
test is not a bilinear function of the two tokens, so it cannot enter an attention logit.

Error bound (one step, :func:`error_bound`): with R = max(max_{j,l} ||y_j - y_l||, max_j ||y_j||),
S = the spread of the PL logits over the candidates, and a_B = (N-1) e^{-B delta}
+ (N-1) e^{B r_cap - M} + e^{-M/2}, a_M = (N-1) e^{S - M} + e^{-M/2 - s_min} (s_min the smallest
PL logit), the output error is at most eta beta (N-1) (a_B + a_M) R, plus a rounding term
16 eps (|y_hat_0| + eta beta (N-1) R) per layer (eps the dtype's machine epsilon). The
selection term (N-1) e^{-B delta} dominates: the precondition M > 2 B r_cap already makes the
M terms smaller than e^{-B r_cap} <= e^{-N B delta}, so M's own effect is not observable once
it is valid; B delta >= 40 gives float64 exactness (measured errors ~1e-16).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from icalign import model as M_
from icalign.core.validate import check_int, check_positive

__all__ = ["PLConstruction", "build", "check_preconditions", "error_bound", "run", "Slots",
           "separated_contexts", "spec_for"]


@dataclasses.dataclass(frozen=True)
class Slots:
    """Feature offsets in the residual stream (see module docstring)."""

    d: int

    @property
    def X(self):
        return slice(0, self.d)

    @property
    def Y(self):
        return slice(self.d, 2 * self.d)

    @property
    def R(self):
        return 2 * self.d

    @property
    def A(self):
        return 2 * self.d + 1

    @property
    def F(self):
        return 2 * self.d + 2

    @property
    def Q(self):
        return 2 * self.d + 3

    @property
    def ONE(self):
        return 2 * self.d + 4

    @property
    def YH(self):
        return slice(2 * self.d + 5, 3 * self.d + 5)

    @property
    def G(self):
        return slice(3 * self.d + 5, 4 * self.d + 5)

    @property
    def RM(self):
        return 4 * self.d + 5

    @property
    def width(self):
        return 4 * self.d + 6


@dataclasses.dataclass(frozen=True)
class PLConstruction:
    """What to build: ``steps`` GD steps on PL (sqdist reward, ``beta``) over ``n``
    candidates of dimension ``d``, step size ``eta`` in prediction space, from W0.

    B: selection inverse temperature; M: mask strength (must exceed 2 B r_cap);
    gap: the smallest reward gap the FFN is built for; r_cap: rewards lie in [0, r_cap].
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

    def __post_init__(self):
        check_int("d", self.d, minimum=1)
        check_int("n", self.n, minimum=2)
        check_int("steps", self.steps, minimum=1)
        for name in ("beta", "eta", "B", "M", "gap", "r_cap"):
            check_positive(name, getattr(self, name))
        if np.shape(self.W0) != (self.d, self.d):
            raise ValueError(f"W0 must have shape ({self.d}, {self.d}), got {np.shape(self.W0)}")
        if self.M <= 2 * self.B * self.r_cap:
            raise ValueError(
                f"M must exceed 2 * B * r_cap = {2 * self.B * self.r_cap:g} so dead tokens stay below "
                f"the sink and the sink below alive ones; got M = {self.M:g}")
        if self.gap > self.r_cap:
            raise ValueError(f"gap must be <= r_cap, got gap = {self.gap} and r_cap = {self.r_cap}")

    @property
    def n_layers(self) -> int:
        return self.steps * (self.n - 1)

    def config(self) -> M_.ModelConfig:
        d = self.d
        return M_.ModelConfig(
            n_layers=self.n_layers, n_heads=2, d_model=Slots(d).width, head_dim=d + 3,
            attention="softmax", ffn=self.n_layers > 1, ffn_width=2 * d + 6, ffn_activation="relu",
            layer_norm=False, final_norm=False, causal=self.causal, positional=False, bias=False,
            token_layout="stacked", d=d, n=self.n,
        )


def _block(spec: PLConstruction, refresh: bool, eliminate: bool):
    """Weights of one block as numpy arrays (float64)."""
    d, S = spec.d, Slots(spec.d)
    W, H, dh = S.width, 2, d + 3
    s = math.sqrt(dh)  # apply divides logits by sqrt(head_dim)
    B, Mm, beta = spec.B, spec.M, spec.beta
    wq, wk, wv = (np.zeros((W, H, dh)) for _ in range(3))
    wo = np.zeros((H, dh, W))
    # Shared logit terms M (a - 1) + M/2 (1 - f): query side constants against key features.
    def mask_terms(h, i):
        wq[S.ONE, h, i] = Mm * s
        wk[S.A, h, i], wk[S.ONE, h, i] = 1.0, -1.0
        wq[S.ONE, h, i + 1] = 0.5 * Mm * s
        wk[S.ONE, h, i + 1], wk[S.F, h, i + 1] = 1.0, -1.0

    # Head A (0): selection by reward.
    wq[S.ONE, 0, 0] = B * s
    wk[S.R, 0, 0] = 1.0
    mask_terms(0, 1)
    for j in range(d):
        wv[S.Y.start + j, 0, j] = 1.0
        wo[0, j, S.G.start + j] = 1.0
    wv[S.R, 0, d] = 1.0
    wo[0, d, S.RM] = 1.0
    # Head B (1): PL softmax over the alive set, logits beta y_hat.y_j - beta ||y_j||^2 / 2.
    for j in range(d):
        wq[S.YH.start + j, 1, j] = beta * s
        wk[S.Y.start + j, 1, j] = 1.0
        wv[S.Y.start + j, 1, j] = 1.0
        wo[1, j, S.G.start + j] = -1.0
    wq[S.ONE, 1, d] = beta * s
    wk[S.Q, 1, d] = -1.0
    mask_terms(1, d + 1)
    attn = dict(wq=wq, wk=wk, wv=wv, wo=wo)

    F = 2 * d + 6
    w1, w2 = np.zeros((W, F)), np.zeros((F, W))
    if eliminate:
        c = spec.gap / 2
        big = 4.0 * spec.r_cap  # L: a dead token's z is below -L + r_cap < -c
        for u, const in ((0, 1.0), (1, 0.0)):
            w1[S.ONE, u] = const - big / c
            w1[S.R, u], w1[S.RM, u], w1[S.A, u] = 1 / c, -1 / c, big / c
        w2[0, S.A], w2[1, S.A] = -1.0, 1.0
    # Clear RMAX: RMAX -= relu(RMAX) - relu(-RMAX).
    w1[S.RM, 2], w1[S.RM, 3] = 1.0, -1.0
    w2[2, S.RM], w2[3, S.RM] = -1.0, 1.0
    if refresh:
        step = spec.eta * beta
        for j in range(d):
            w1[S.G.start + j, 4 + 2 * j], w1[S.G.start + j, 5 + 2 * j] = 1.0, -1.0
            for u, sign in ((4 + 2 * j, 1.0), (5 + 2 * j, -1.0)):
                w2[u, S.YH.start + j] = sign * step
                w2[u, S.G.start + j] = -sign
        u = 4 + 2 * d
        w1[S.F, u], w1[S.A, u] = 1.0, -1.0  # relu(f - a)
        w1[S.F, u + 1], w1[S.A, u + 1] = -1.0, 1.0  # relu(a - f)
        w2[u, S.A], w2[u + 1, S.A] = 1.0, -1.0
    return attn, dict(w1=w1, w2=w2)


def build(spec: PLConstruction, dtype=jnp.float64) -> tuple[M_.ModelConfig, M_.Params]:
    """The config and the hand-built :class:`~icalign.model.Params` for ``spec``."""
    cfg = spec.config()
    d, S = spec.d, Slots(spec.d)
    group = spec.n - 1
    attns, ffns = [], []
    for layer in range(cfg.n_layers):
        last_in_group = (layer + 1) % group == 0
        refresh = last_in_group and layer + 1 < cfg.n_layers
        attn, ffn = _block(spec, refresh=refresh, eliminate=not last_in_group)
        attns.append(attn)
        ffns.append(ffn)
    cast = lambda a: jnp.asarray(a, dtype)
    stack = lambda dicts, k: cast(np.stack([x[k] for x in dicts]))
    attn = M_.Attention(**{k: stack(attns, k) for k in ("wq", "wk", "wv", "wo")})
    ffn = M_.FFN(w1=stack(ffns, "w1"), w2=stack(ffns, "w2")) if cfg.ffn else None
    blocks = M_.Block(attn=attn, ffn=ffn)

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
    w_out = np.zeros((S.width, d))
    for j in range(d):
        w_out[S.YH.start + j, j] = 1.0
        w_out[S.G.start + j, j] = spec.eta * spec.beta
    params = M_.Params(
        read_in=M_.Dense(w=cast(w_in), b=cast(b_in)),
        blocks=blocks,
        read_out=M_.Dense(w=cast(w_out), b=cast(np.zeros(d))),
    )
    return cfg, params


# The same model.apply, compiled (the config is static: a frozen, hashable dataclass).
_apply = jax.jit(M_.apply, static_argnums=2)


def check_preconditions(spec: PLConstruction, rewards) -> None:
    """Raise ValueError if ``rewards`` (..., N) break the construction's preconditions."""
    r = np.asarray(rewards, float)
    if r.shape[-1] != spec.n:
        raise ValueError(f"rewards must have last axis n = {spec.n}, got shape {r.shape}")
    if np.any(r < 0) or np.any(r > spec.r_cap):
        raise ValueError(f"rewards must lie in [0, r_cap = {spec.r_cap}], got range "
                         f"[{r.min():.4g}, {r.max():.4g}]")
    srt = np.sort(r, axis=-1)
    min_gap = float(np.min(np.diff(srt, axis=-1)))
    if min_gap < spec.gap:
        raise ValueError(
            f"rewards must be distinct with gap >= {spec.gap} (the FFN elimination is built for it); "
            f"the smallest gap is {min_gap:.3g}" + (" (tied rewards)" if min_gap == 0 else ""))
    if spec.causal and np.any(np.diff(r, axis=-1) >= 0):
        raise ValueError("causal=True needs candidates in best-first order (strictly decreasing "
                         "rewards along the context); sort the context or use causal=False")


def _ctx_fields(ctx):
    return np.asarray(ctx.x, float), np.asarray(ctx.ys, float), np.asarray(ctx.rewards, float)


def error_bound(spec: PLConstruction, ctx, eps: float = float(np.finfo(np.float64).eps)) -> float:
    """The documented bound on ||constructed - exact|| for one step (module docstring).

    ``ctx`` is a single (unbatched) context; the bound uses its rewards' gap, the spread of the
    PL logits at y_hat_0 = W0 x, and the largest distance R.
    """
    x, ys, r = _ctx_fields(ctx)
    n = spec.n
    delta = float(np.min(np.diff(np.sort(r))))
    diffs = np.linalg.norm(ys[:, None, :] - ys[None, :, :], axis=-1)
    R = max(float(diffs.max()), float(np.linalg.norm(ys, axis=-1).max()))
    y0 = np.asarray(spec.W0) @ x
    logits = spec.beta * ys @ y0 - 0.5 * spec.beta * np.sum(ys**2, -1)
    spread, s_min = float(logits.max() - logits.min()), float(logits.min())
    a_b = (n - 1) * math.exp(-spec.B * delta) + (n - 1) * math.exp(min(spec.B * spec.r_cap - spec.M, 700)) \
        + math.exp(-spec.M / 2)
    a_m = (n - 1) * math.exp(min(spread - spec.M, 700)) + math.exp(min(-spec.M / 2 - s_min, 700))
    step = spec.eta * spec.beta * (n - 1) * R
    rounding = 16 * eps * (float(np.linalg.norm(y0)) + step) * spec.n_layers
    return step * (a_b + a_m) + rounding


def run(spec: PLConstruction, ctx, params: Optional[M_.Params] = None, check: bool = True) -> jax.Array:
    """Outputs of the constructed transformer on ``ctx`` (leading batch axes allowed).

    Non-causal: (..., D), the prediction at the query token. Causal: (..., N + 1, D), row i
    the prediction after candidates 1..i (row 0: the query, y_hat_0; row N: all candidates,
    which equals the non-causal output). Preconditions are checked
    first unless ``check=False`` (used by tests that show what breaking them does).
    """
    if check:
        check_preconditions(spec, ctx.rewards)
    cfg = spec.config()
    if params is None:
        _, params = build(spec, jnp.asarray(ctx.ys).dtype)
    out = _apply(params, M_.tokenize(ctx, cfg), cfg)  # (..., N + 1, D)
    return out if spec.causal else out[..., 0, :]


from icalign.theory.contexts import separated_contexts, spec_for  # noqa: E402  (re-exported: public API)
