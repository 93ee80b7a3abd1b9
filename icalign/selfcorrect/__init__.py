"""Multi-round self-correction (docs/theory.md section 5): critics (:mod:`.critics`), the loop
(:mod:`.loop`), per-round metrics and their summaries (:mod:`.metrics`), and the latent-concept
model: its sandbox task (:mod:`.concept`; the analytic posterior is
:mod:`icalign.theory.bayes`), its
transformer and probes (:mod:`.concept_model`) and the study that ties them together
(:mod:`.concept_study`). The critics, the loop and the metrics are re-exported here."""

from icalign.selfcorrect.critics import (CRITIC_SETTINGS, NULL_CRITIC, R_FLOOR, Critic, critic_score, make_critics,
                                         pairwise_accuracy, true_reward, wrong_answer)
from icalign.selfcorrect.loop import (Learner, Slots, Trajectory, choice_entropy, gd_learner, initial_slots,
                                      self_correct, slot_tokens, sweep, transformer_learner)
from icalign.selfcorrect.metrics import convergence_round, critic_sweep, direction_spread, round_metrics

__all__ = ["Critic", "CRITIC_SETTINGS", "NULL_CRITIC", "make_critics", "critic_score", "true_reward", "R_FLOOR", "wrong_answer",
           "pairwise_accuracy", "Slots", "initial_slots", "slot_tokens", "Learner", "gd_learner",
           "transformer_learner", "Trajectory", "self_correct", "sweep", "choice_entropy", "direction_spread",
           "convergence_round", "round_metrics", "critic_sweep"]
