"""Verdicts of the precision experiment: bfloat16 against float32 matmuls, two agreement claims
of the claim engine (:func:`icalign.analysis.claims.agreement`), paired by seed: the final
training loss and the final held-out error agree within equivalence margins fixed in the
config before the data (``loss_margin``, ``nmse_margin``, with their reason beside them)."""

from __future__ import annotations

from icalign.analysis import claims as CL

__all__ = ["claims"]


def claims(res: dict) -> list[dict]:
    """Agreement claims, bfloat16 against float32, paired by seed, within the config's
    pre-registered margins: the training loss per seed, and the held-out normalised MSE at
    the largest t from every seed on every context (the stored summary)."""
    n_ctx, cfg = res["eval_contexts"], res["config"]
    # each seed's training loss is over its own training stream's contexts: seeds x contexts
    loss = [CL.sample(p, res[p]["final_train_loss"], "seeds", n_contexts=n_ctx, health=res[p]["health"],
                      own_contexts=True) for p in ("bfloat16", "float32")]
    nmse = [CL.arm(p, res[p]["nmse"], n_contexts=n_ctx, health=res[p]["health"]) for p in ("bfloat16", "float32")]
    return [CL.agreement(f"bfloat16 and float32 reach the same training loss (mean of the last {res['window']} steps)",
                         *loss, float(cfg["loss_margin"]), margin_text="the pre-registered loss margin"),
            CL.agreement("bfloat16 and float32 reach the same held-out normalised MSE at the largest t",
                         *nmse, float(cfg["nmse_margin"]), margin_text="the pre-registered error margin")]
