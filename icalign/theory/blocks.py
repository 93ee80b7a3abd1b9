"""Weights of one constructed block, as float64 numpy arrays (docs/theory.md section 3.2).

:func:`block` writes the two heads and the FFN of PL term k for a
:class:`~icalign.theory.construct.PLConstruction`; :mod:`icalign.theory.construct` stacks the
blocks into :class:`icalign.model.Params`. Every logit is written as a sum of terms
``coef * (query feature) * (key feature)``, one head dimension per term (:class:`_Head`), and
every FFN unit is one ReLU of a linear function of the residual (:class:`_FFN`), so the weights
read like the equations they implement.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["block", "head_dim", "ffn_width", "hat_grid", "comparator"]


def hat_grid(spec) -> np.ndarray:
    """Centres c_b = b w, b = -1..K+1, of the comparator's hat code (w = gap / 5; hats
    b = 0..K cover [0, r_cap + w]). Empty when the construction needs no comparator."""
    if not spec.any_order:
        return np.zeros(0)
    w = spec.gap / 5.0
    k = int(math.ceil(spec.r_cap / w)) + 1
    return w * np.arange(-1, k + 2, dtype=float)


def comparator(n_hats: int) -> np.ndarray:
    """H[b, b'] = 1[b - b' >= -2]: phi(r) . H phi(t) is 1 when r - t >= -w and 0 when
    r - t <= -4 w, for the hat codes phi of docs/theory.md section 3.6 (exactly, not
    approximately: hats are a partition of unity and the form interpolates H bilinearly)."""
    b = np.arange(n_hats)
    return (b[:, None] - b[None, :] >= -2).astype(float)


def _n_hats(spec) -> int:
    return max(len(hat_grid(spec)) - 2, 0)


def head_dim(spec) -> int:
    """Query/key size of a head: head B's logit terms (d for y_hat.y, 1 for ||y||^2, the
    mask (1, or one per hat with the comparator) and the sink (1))."""
    k = _n_hats(spec)
    return spec.d + 2 + (k if k else 1)


def ffn_width(spec) -> int:
    """Hidden units: elimination (2), clearing RMAX (2), refresh (2d + 2), and with the
    comparator the key code (K + 3), the threshold code (K + 3) and erasing it (K + 1)."""
    k = _n_hats(spec)
    return 2 * spec.d + 6 + (3 * k if k else 0)


class _Head:
    """One head's wq, wk (d_model, dh), wv (d_model, dh), wo (dh, d_model) slices."""

    def __init__(self, wq, wk, wv, wo, h, scale):
        self.wq, self.wk, self.wv, self.wo, self.h, self.s = wq, wk, wv, wo, h, scale
        self.dim = 0

    def term(self, coef, query: dict, key: dict):
        """Add coef * (sum_i query[i] h_q[i]) * (sum_j key[j] h_k[j]) to the logit; ``apply``
        divides logits by sqrt(head_dim), so the query side is multiplied by it here."""
        i = self.dim
        self.dim += 1
        for slot, c in query.items():
            self.wq[slot, self.h, i] += coef * c * self.s
        for slot, c in key.items():
            self.wk[slot, self.h, i] += c

    def value(self, src: int, dst: int, sign: float = 1.0, i: int = 0):
        self.wv[src, self.h, i] = 1.0
        self.wo[self.h, i, dst] = sign


class _FFN:
    """ReLU units: ``unit({slot: coef}, const)`` adds relu(sum coef h[slot] + const); ``out``
    routes a unit's activation to residual slots."""

    def __init__(self, width, d_model, one):
        self.w1, self.w2 = np.zeros((d_model, width)), np.zeros((width, d_model))
        self.one, self.n = one, 0

    def unit(self, inputs: dict, const: float = 0.0) -> int:
        u = self.n
        self.n += 1
        for slot, c in inputs.items():
            self.w1[slot, u] += c
        self.w1[self.one, u] += const  # the constant-1 feature plays the bias
        return u

    def out(self, u: int, outputs: dict):
        for slot, c in outputs.items():
            self.w2[u, slot] += c

    def hats(self, inputs: dict, const: float, centres, dst: slice, w: float, sign: float = 1.0):
        """Write sign * phi_b(t), b = 0..K, to ``dst``, t = inputs + const: the hat code
        phi_b(t) = (relu(t - c_{b-1}) - 2 relu(t - c_b) + relu(t - c_{b+1})) / w, exact."""
        units = [self.unit(inputs, const - c) for c in centres]
        for b in range(len(centres) - 2):
            for j, coef in ((b, 1.0), (b + 1, -2.0), (b + 2, 1.0)):
                self.out(units[j], {dst.start + b: sign * coef / w})


def _mask_terms(head: _Head, S, spec, any_order: bool):
    """Logit levels: alive candidate 0, eliminated candidate -M, the query token (the
    attention sink) -M/2. Per-token flags: M (a - 1) + M/2 (1 - f) (the query has a = f = 0);
    with the comparator: -M phi(r_j).H theta_i (theta: the viewer's threshold code; the query's
    key code is 0) - M/2 (1 - f)."""
    M = spec.M
    if any_order:
        H = comparator(S.k)
        for b in range(S.k):
            head.term(-M, {S.THR.start + bp: H[b, bp] for bp in range(S.k) if H[b, bp]}, {S.KAP.start + b: 1.0})
    else:
        head.term(M, {S.ONE: 1.0}, {S.A: 1.0, S.ONE: -1.0})
    head.term(-M / 2 if any_order else M / 2, {S.ONE: 1.0}, {S.ONE: 1.0, S.F: -1.0})


def attention(spec, S, heads=(0, 1)) -> dict:
    """Head A (selection: softmax of B r over the alive set, value (y, r) -> G, RMAX) and head B
    (PL softmax, logits beta y_hat.y - beta ||y||^2 / 2 over the alive set, value y -> -G).
    ``heads`` places them: (0, 1) in one two-head block, (0,) or (1,) each alone in a
    one-head block (heads <-> depth, docs/theory.md section 3.7)."""
    W, dh = S.width, head_dim(spec)
    n_heads = 2 if len(heads) == 2 else 1
    wq, wk, wv = (np.zeros((W, n_heads, dh)) for _ in range(3))
    wo = np.zeros((n_heads, dh, W))
    s = math.sqrt(dh)
    d = spec.d
    for h, which in enumerate(heads):
        head = _Head(wq, wk, wv, wo, h, s)
        if which == 0:
            head.term(spec.B, {S.ONE: 1.0}, {S.R: 1.0})
            for j in range(d):
                head.value(S.Y.start + j, S.G.start + j, 1.0, j)
            head.value(S.R, S.RM, 1.0, d)
        else:
            for j in range(d):
                head.term(spec.beta, {S.YH.start + j: 1.0}, {S.Y.start + j: 1.0})
                head.value(S.Y.start + j, S.G.start + j, -1.0, j)
            head.term(-spec.beta, {S.ONE: 1.0}, {S.Q: 1.0})
        _mask_terms(head, S, spec, spec.any_order)
    return dict(wq=wq, wk=wk, wv=wv, wo=wo)


def ffn(spec, S, first: bool, eliminate: bool, refresh: bool) -> dict:
    """The FFN of one block (docs/theory.md section 3.2): eliminate the selected candidate
    (per-token flag, or with the comparator the viewer's threshold code theta <- phi(RMAX)),
    clear RMAX, and at the end of a GD step (``refresh``) move Y_HAT += eta beta G, clear G
    and revive every candidate. ``first``: also write the key code kappa = f phi(r) (once)."""
    f = _FFN(ffn_width(spec), S.width, S.ONE)
    big = 4.0 * spec.r_cap  # L: pushes eliminated tokens (a = 0) and the query far below
    if spec.any_order:
        centres, w = hat_grid(spec), spec.gap / 5.0
        if first:  # kappa_b = phi_b(r - 2w (1 - f)): the query (f = 0, r = 0) sits below every hat
            f.hats({S.R: 1.0, S.F: 2 * w}, -2 * w, centres, S.KAP, w)
        if eliminate:
            f.hats({S.RM: 1.0}, 0.0, centres, S.THR, w)
        if eliminate or refresh:  # erase the old threshold code (hats are >= 0)
            for b in range(S.k):
                f.out(f.unit({S.THR.start + b: 1.0}), {S.THR.start + b: -1.0})
    elif eliminate:
        # z = r - RMAX + L (a - 1); a -= relu(1 + u) - relu(u), u = (z + gap/4) / (gap/2):
        # 1 when z >= -gap/4 (the selected token), 0 when z <= -3 gap/4 (every other).
        c1, c2 = spec.gap / 4.0, spec.gap / 2.0
        for const, sign in ((1.0, -1.0), (0.0, 1.0)):
            u = f.unit({S.R: 1 / c2, S.RM: -1 / c2, S.A: big / c2}, const + (c1 - big) / c2)
            f.out(u, {S.A: sign})
    for sign in (1.0, -1.0):  # RMAX -= relu(RMAX) - relu(-RMAX)
        f.out(f.unit({S.RM: sign}), {S.RM: -sign})
    if refresh:
        step = spec.eta * spec.beta
        for j in range(spec.d):
            for sign in (1.0, -1.0):
                f.out(f.unit({S.G.start + j: sign}), {S.YH.start + j: sign * step, S.G.start + j: -sign})
        if not spec.any_order:  # a <- f: relu(f - a) - relu(a - f)
            f.out(f.unit({S.F: 1.0, S.A: -1.0}), {S.A: 1.0})
            f.out(f.unit({S.A: 1.0, S.F: -1.0}), {S.A: -1.0})
    assert f.n <= f.w1.shape[1], (f.n, f.w1.shape)
    return dict(w1=f.w1, w2=f.w2)


def block(spec, S, layer: int, heads=(0, 1)) -> tuple[dict, dict]:
    """(attention, FFN) weights of block ``layer`` (0-based): PL term layer mod (N - 1) of
    GD step layer // (N - 1)."""
    group = spec.n - 1
    last_in_group = (layer + 1) % group == 0
    refresh = last_in_group and layer + 1 < spec.steps * group
    return attention(spec, S, heads), ffn(spec, S, first=layer == 0, eliminate=not last_in_group, refresh=refresh)
