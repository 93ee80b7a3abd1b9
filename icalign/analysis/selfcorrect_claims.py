"""The critic sweep of the self-correction experiment and its claims (docs/theory.md
section 5), with the two null controls of the claim engine:

* **the null critic** (scores independent of the answer, ``critics.NULL_CRITIC``): whatever
  the loop gains with it comes from the loop itself. A critic's contribution is its gain
  minus the null critic's, paired per context (seeds for a trained model);
* **an unsaturated uncertainty**: the published PL choice entropy (beta = 1) over N0
  candidates stays within a few percent of log N0 whatever the answer, so it cannot fall.
  The claims use the choice entropy at ``beta`` (> 1), which moves, and are "not resolved
  (saturated)" if its round-0 value is within ``SATURATED`` of the maximum.

Trained transformers use seeds x contexts as the unit (each seed judged on its own block of
the contexts, :mod:`icalign.analysis.claims`) and carry their training health
(:mod:`icalign.analysis.health`): a failed model's numbers do not count.
"""

from __future__ import annotations

import math

import numpy as np

from icalign.analysis import claims as CL
from icalign.selfcorrect.critics import NULL_CRITIC

__all__ = ["KEY_CRITICS", "SATURATED", "loop_claims", "saturation"]

#: the critics whose contribution beyond the loop is a claim (the others are in the figures)
KEY_CRITICS = ("exact", "noise 0.3", "flip 0.25", "flip 0.5", "bias 1 (adversarial)")
SATURATED = 0.05  #: an entropy whose round-0 mean is within 5% of log N0 cannot show a fall


def saturation(entropy0_mean: float, n0: int) -> float:
    """Headroom of an entropy below its maximum, as a fraction of log N0 (0: saturated)."""
    return 1.0 - float(entropy0_mean) / math.log(n0)


def loop_claims(L: dict, label: str, beta: float, n0: int, n_contexts: int, health: dict | None = None) -> list[dict]:
    """The claims of one learner's critic sweep (``metrics.critic_sweep`` or
    ``metrics.combine_seeds`` output with its ``units``), each through the claim engine."""
    u, unit = L["units"], L["units"]["unit"]
    null = L.get("null") or NULL_CRITIC

    def arm(name, key, critic, r):
        label, v = f"{name} ({critic}, round {'0' if r == 0 else 'T'})", u[key][f"{critic}@{r}"]
        if unit == "seeds" and np.ndim(v) == 2:  # every seed on every context (combine_seeds)
            return CL.cells(label, v, health=health)
        return CL.sample(label, v, unit, n_contexts=n_contexts, health=health)

    nm = lambda critic, r: arm("nmse", "nmse", critic, r)
    out = [CL.claim(f"{label}: the loop alone (null critic) improves the answer", nm(null, 0), nm(null, -1))]
    for c in KEY_CRITICS:
        if f"{c}@-1" not in u["nmse"]:
            continue
        if c.startswith("bias 1"):
            out.append(CL.claim(f"{label}: the adversarial critic hurts beyond the loop's own effect",
                                nm(c, -1), nm(null, -1)))
        else:
            out.append(CL.claim(f"{label}: the {c} critic helps beyond the loop's own effect", nm(null, -1),
                                nm(c, -1)))
    key = f"entropy_b{beta:g}"
    if key in u:
        h = lambda critic, r: arm(f"entropy (beta {beta:g})", key, critic, r)
        room = saturation(np.mean(u[key]["exact@0"]), n0)
        for c in (CL.claim(f"{label}: uncertainty (choice entropy, beta = {beta:g}) falls over the rounds with the "
                           f"exact critic", h("exact", 0), h("exact", -1)),
                  CL.claim(f"{label}: uncertainty falls more with the exact critic than with the null critic",
                           h(null, -1), h("exact", -1))):
            if room < SATURATED and c["verdict"] != "not trained":
                c.update(verdict="not resolved", reason=f"the entropy is saturated ({100 * room:.1f}% below its "
                                                         f"maximum log {n0}) and could not fall")
            out.append(c)
    return out
