"""Named residual subspaces of the constructions (docs/theory.md section 3.2).

A :class:`Slots` names every feature of the residual stream by its role instead of keeping
integer offsets by hand: the slots are laid out from one table (:data:`ROLES`), so their
ranges cannot overlap, and :func:`check_writes` checks built weights against it: every layer
component (read-in, head A, head B, FFN) may write only the slots its role lists in
:data:`WRITERS`, and no two slots share a coordinate. :func:`layout` prints a construction's
layout with who writes each slot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Slots", "ROLES", "WRITERS", "check_writes", "layout"]

# (name, size: "d" | "k" | 1, role). Size-1 slots are addressed by an int, the others by a slice.
ROLES = (
    ("X", "d", "query x"),
    ("Y", "d", "candidate y (zero at the query)"),
    ("R", 1, "shown reward r"),
    ("A", 1, "alive flag a (per-token elimination)"),
    ("F", 1, "candidate flag f (0 at the query)"),
    ("Q", 1, "||y||^2 / 2"),
    ("ONE", 1, "constant 1 (plays the biases)"),
    ("YH", "d", "prediction y_hat (W0 x at the read-in)"),
    ("G", "d", "accumulated step sum_i (y_top - ybar_i)"),
    ("RM", 1, "selected reward RMAX"),
    ("KAP", "k", "key code kappa = f phi(r) (comparator)"),
    ("THR", "k", "viewer's threshold code theta (comparator)"),
)

# Which slots each component may write (read-in: the token's own features and Y_HAT = W0 x).
WRITERS = {
    "read-in": ("X", "Y", "R", "A", "F", "Q", "ONE", "YH"),
    "head A": ("G", "RM"),
    "head B": ("G",),
    "FFN": ("A", "RM", "YH", "G", "KAP", "THR"),
}


@dataclasses.dataclass(frozen=True)
class Slots:
    """The residual layout for dimension ``d`` and ``k`` comparator hats: ``S.X`` (a slice),
    ``S.R`` (an int), ..., ``S.width``; ``S.span(name)`` is a slot's (start, stop)."""

    d: int
    k: int = 0

    def __post_init__(self):
        spans, at = {}, 0
        for name, size, _ in ROLES:
            n = {"d": self.d, "k": self.k}.get(size, size)
            spans[name] = (at, at + n)
            at += n
        object.__setattr__(self, "_spans", spans)
        object.__setattr__(self, "width", at)

    def span(self, name: str) -> tuple[int, int]:
        return self._spans[name]

    def __getattr__(self, name):
        spans = self.__dict__.get("_spans", {})
        if name not in spans:
            raise AttributeError(name)
        start, stop = spans[name]
        sized = dict((n, s) for n, s, _ in ROLES)[name]
        return start if sized == 1 else slice(start, stop)

    def owner(self, column: int) -> str:
        """The slot that holds residual coordinate ``column``."""
        for name, (a, b) in self._spans.items():
            if a <= column < b:
                return name
        raise ValueError(f"column must be in [0, {self.width}), got {column}")


def _written(w: np.ndarray, axis_out: int) -> np.ndarray:
    """Residual columns a weight writes (any non-zero entry along the output axis)."""
    w = np.asarray(w)
    other = tuple(i for i in range(w.ndim) if i != axis_out % w.ndim)
    return np.nonzero(np.any(w != 0, axis=other))[0]


def check_writes(S: Slots, components) -> None:
    """Raise ValueError if a component writes outside its role's slots (:data:`WRITERS`), or
    if two slots overlap. ``components``: (label, role, weight, output axis) tuples, e.g.
    ("block 3 head B", "head B", wo[h], -1)."""
    taken = np.zeros(S.width, int)
    for name, _, _ in ROLES:
        a, b = S.span(name)
        taken[a:b] += 1
    if np.any(taken != 1):
        raise ValueError(f"slots overlap or leave gaps at residual columns {np.nonzero(taken != 1)[0].tolist()}")
    for label, role, w, axis in components:
        allowed = WRITERS[role]
        bad = sorted({S.owner(int(c)) for c in _written(w, axis)} - set(allowed))
        if bad:
            raise ValueError(f"{label} writes slot(s) {bad}, outside its role's slots {list(allowed)}")


def layout(S: Slots) -> str:
    """A readable table of the slots: range, role and which components write each."""
    lines = [f"residual stream, width {S.width} (d = {S.d}, k = {S.k} comparator hats)"]
    for name, _, role in ROLES:
        a, b = S.span(name)
        if a == b:
            continue
        who = ", ".join(c for c, slots in WRITERS.items() if name in slots) or "-"
        lines.append(f"  {name:<4} [{a:>3}:{b:<3})  {role:<48} written by {who}")
    return "\n".join(lines)
