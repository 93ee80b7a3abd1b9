"""Layer 2b: the theory as code. Closed-form gradient learners on the linear policy
(:mod:`~icalign.theory.gd`), hand-built transformer weights whose forward pass is a gradient
step (:mod:`~icalign.theory.construct`, block weights in :mod:`~icalign.theory.blocks`), their
preconditions and error bound (:mod:`~icalign.theory.bounds`), the necessity study of each
component's architectures and target (:mod:`~icalign.theory.necessity`), the latent-concept
posterior (:mod:`~icalign.theory.bayes`), the numerical verification of every claim
(:mod:`~icalign.theory.verify`, latent-concept rows in :mod:`~icalign.theory.concept_checks`) and
the adversarial hunt for counterexamples (:mod:`~icalign.theory.search`)."""
