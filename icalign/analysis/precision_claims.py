"""Verdicts of the precision experiment: bfloat16 against float32 matmuls, two agreement claims
of the claim engine (:func:`icalign.analysis.claims.agreement`), paired by seed: the final
training loss and the final held-out error agree within the float32 seed spread."""

from __future__ import annotations

import numpy as np

from icalign.analysis import claims as CL

__all__ = ["claims"]


def claims(res: dict) -> list[dict]:
    """Agreement claims, bfloat16 against float32, paired by seed; margin: the float32 seed sd."""
    n_ctx = res["eval_contexts"]
    out = []
    for key, what in (("final_train_loss", f"training loss (mean of the last {res['window']} steps)"),
                      ("final_nmse", "held-out normalised MSE at the largest t")):
        a, b = (CL.sample(p, res[p][key], "seeds", n_contexts=n_ctx, health=res[p]["health"])
                for p in ("bfloat16", "float32"))
        margin = float(np.std(res["float32"][key], ddof=1))
        out.append(CL.agreement(f"bfloat16 and float32 reach the same {what}", a, b, margin,
                                margin_text="the float32 seed sd"))
    return out
