"""Layer 4: analysis of trained models against the theory. TF-vs-GD comparisons
(:mod:`~icalign.analysis.compare`), evaluation under reward corruption
(:mod:`~icalign.analysis.evaluate`), one-factor ablation grids
(:mod:`~icalign.analysis.ablations`) and the verdicts and markdown reports
(:mod:`~icalign.analysis.report`)."""
