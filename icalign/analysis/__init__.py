"""Layer 4: analysis of trained models against the theory. TF-vs-GD comparisons
(:mod:`~icalign.analysis.compare`), evaluation under reward corruption
(:mod:`~icalign.analysis.evaluate`), one-factor ablation grids
(:mod:`~icalign.analysis.ablations`), the necessity and mechanism studies, and every verdict:
the claim engine (:mod:`~icalign.analysis.claims`) and each experiment's claim list beside it
(``*_claims``)."""
